#!/usr/bin/env python3
"""Train small Mamba-1 models with and without the global selection module on associative recall
tasks, and write the module's test fixture.

Global selection (arXiv 2410.15678, as its public code implements it): per layer, a causal depthwise
convolution of K_g taps (with bias, like the short conv) over in_proj's x before the short conv;
SiLU of it gates Δ before Δ's bias: Δ = softplus(dt_proj(Δ rank)·SiLU(global_conv(x) + b) + dt_bias).
Weights ``mixer.global_conv.weight`` (d_inner, 1, K_g) and ``mixer.global_conv.bias`` (d_inner);
config key ``global_selection_kernel`` = K_g. Initialized as PyTorch does by default (as in that code),
or with --global-init identity: taps 0 and bias SiLU⁻¹(1), so that the gate starts at 1.

Tasks:
- ``recall`` (gapped associative recall; token ids: keys 1..K, values K+1..K+V): P key-value pairs laid
  out in blocks of G keys followed by their G values, so each value sits G tokens after its key, then
  Q queries (a key, then its value); the value predicted at each query key counts.
- ``ngram`` (multi-query associative recall with multi-token keys and values, after the paper's
  n-gram task): P pairs "S1 key S2 value S1" (keys of --key-length tokens, values of --value-length),
  then a region of random key/value tokens in which P queries "S1 key S2 M..M S1" sit in random
  slots, M a mask token in place of each value token; each value token is predicted at the token
  before it (S2, then the masks). Accuracy counts value tokens. Held-out accuracy is also measured on
  the paper's robustness variant: every key of a sequence ends with the same token, so only a key's
  earlier tokens tell it apart (a model that keys on the last token before S2 fails there).

Fine-tuning, as the paper adds the module to a pretrained model: --init-from DIR starts from a trained
plain model (its task settings must match), with the module added when --global-kernel is given
(--global-init identity then starts it as the plain model); --train module trains only the module;
--robust-fraction F draws that share of the training batches from the robustness variant.

Usage (writes <out>/config.json, model.safetensors, training.json):
  python3 tools/train_global_selection.py --out DIR --task ngram --global-kernel 128 --seconds 240
  python3 tools/train_global_selection.py --out DIR --task ngram --pairs 4 --length 64 \
      --init-from examples/models/ngram-plain --global-kernel 128 --global-init identity --robust-fraction 0.5
  python3 tools/train_global_selection.py --fixture tests/fixtures/hf/mamba1-global-selection
"""

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_byte_mamba import init_weights, patch_model, set_exact_fp32  # noqa: E402


SILU_ONE = 1.2785  # SiLU(1.2785) = 1.0000


def add_global_selection(model, kernel, init="default"):
    """Adds the module's conv to every mixer: PyTorch's default initialization, or "identity" (taps 0,
    bias SILU_ONE: the gate starts at 1 and the model as its plain self)."""
    model.config.global_selection_kernel = kernel
    for layer in model.backbone.layers:
        m = layer.mixer
        m.global_conv = torch.nn.Conv1d(m.intermediate_size, m.intermediate_size, kernel, groups=m.intermediate_size,
                                        bias=True, padding=kernel - 1)
        if init == "identity":
            torch.nn.init.zeros_(m.global_conv.weight)
            torch.nn.init.constant_(m.global_conv.bias, SILU_ONE)


def build(vocab, args, kernel):
    from transformers import MambaConfig, MambaForCausalLM
    if args.init_from:
        model = MambaForCausalLM.from_pretrained(args.init_from)
        assert model.config.vocab_size == vocab, "--init-from: the model's vocabulary does not fit the task"
        assert getattr(model.config, "global_selection_kernel", 0) == 0, "--init-from: expected a plain model"
        if kernel:
            add_global_selection(model, kernel, args.global_init)
        return model
    cfg = MambaConfig(vocab_size=vocab, hidden_size=args.hidden, state_size=args.state,
                      num_hidden_layers=args.layers, expand=2, conv_kernel=4, use_bias=False, use_conv_bias=True,
                      tie_word_embeddings=True, pad_token_id=0, bos_token_id=0, eos_token_id=0)
    model = MambaForCausalLM(cfg)
    init_weights(model, cfg)
    if kernel:
        add_global_selection(model, kernel, getattr(args, "global_init", "default"))
    return model


def recall_batch(gen, batch, pairs, gap, queries, keys, values, device):
    """Token ids (batch, 2·pairs + 2·queries) and targets (-100 except the value after each query key)."""
    assert pairs % gap == 0 and queries <= pairs <= keys
    k = torch.argsort(torch.rand(batch, keys, generator=gen), dim=1)[:, :pairs] + 1
    v = torch.randint(keys + 1, keys + values + 1, (batch, pairs), generator=gen)
    blocks = pairs // gap
    context = torch.cat([k.view(batch, blocks, gap), v.view(batch, blocks, gap)], dim=2).view(batch, 2 * pairs)
    asked = torch.argsort(torch.rand(batch, pairs, generator=gen), dim=1)[:, :queries]
    q = torch.stack([k.gather(1, asked), v.gather(1, asked)], dim=2).view(batch, 2 * queries)
    ids = torch.cat([context, q], dim=1)
    targets = torch.full_like(ids, -100)
    targets[:, 2 * pairs::2] = v.gather(1, asked)
    return ids.to(device), targets.to(device)


S1, S2, MASK, FIRST_KEY = 1, 2, 3, 4  # the ngram task's marker ids; its keys, then its values, follow


def ngram_batch(gen, batch, length, pairs, key_length, value_length, keys, values, device, shared_suffix=False):
    """Token ids (batch, length) and targets (-100 except the value tokens to predict), see the docstring."""
    span = 3 + key_length + value_length
    context = pairs * span
    slots = (length - context) // span
    assert slots >= pairs, "the query region has fewer slots than pairs"
    k = torch.randint(FIRST_KEY, FIRST_KEY + keys, (batch, pairs, key_length), generator=gen)
    if shared_suffix:
        k[:, :, 1:] = k[:, :1, 1:]
    v = torch.randint(FIRST_KEY + keys, FIRST_KEY + keys + values, (batch, pairs, value_length), generator=gen)
    ids = torch.randint(FIRST_KEY, FIRST_KEY + keys + values, (batch, length), generator=gen)  # the noise
    targets = torch.full_like(ids, -100)

    def place(rows, at, key, value, query):
        ids[rows, at] = S1
        for j in range(key_length):
            ids[rows, at + 1 + j] = key[:, j]
        ids[rows, at + 1 + key_length] = S2
        for j in range(value_length):
            pos = at + 2 + key_length + j
            ids[rows, pos] = MASK if query else value[:, j]
            if query:
                targets[rows, pos - 1] = value[:, j]
        ids[rows, at + 2 + key_length + value_length] = S1

    rows = torch.arange(batch)
    for p in range(pairs):
        place(rows, torch.full((batch,), p * span), k[:, p], v[:, p], False)
    order = torch.argsort(torch.rand(batch, pairs, generator=gen), dim=1)
    chosen = torch.sort(torch.argsort(torch.rand(batch, slots, generator=gen), dim=1)[:, :pairs], dim=1).values
    for q in range(pairs):
        asked = order[:, q]
        place(rows, context + chosen[:, q] * span, k[rows, asked], v[rows, asked], True)
    return ids.to(device), targets.to(device)


def task_batch(gen, batch, args, device, robust=False):
    if args.task == "recall":
        return recall_batch(gen, batch, args.pairs, args.gap, args.queries, args.keys, args.values, device)
    return ngram_batch(gen, batch, args.length, args.pairs, args.key_length, args.value_length, args.keys,
                       args.values, device, shared_suffix=robust)


def vocabulary(args):
    return (1 if args.task == "recall" else FIRST_KEY) + args.keys + args.values


def accuracy(logits, targets):
    mask = targets >= 0
    return ((logits.argmax(-1) == targets) & mask).sum().item() / mask.sum().item()


def held_out_accuracy(model, args, device, robust):
    gen = torch.Generator().manual_seed(12345 + robust)
    hits = total = 0
    with torch.no_grad():
        for _ in range(0, args.eval_sequences, 256):
            ids, targets = task_batch(gen, 256, args, device, robust)
            logits = model(input_ids=ids, use_cache=False).logits.float()
            mask = targets >= 0
            hits += ((logits.argmax(-1) == targets) & mask).sum().item()
            total += mask.sum().item()
    return hits / total, total


def reference_logits(model, ids):
    """An independent float64 forward: the recurrence step by step, the module as documented above."""
    sd = {k: v.double() for k, v in model.state_dict().items()}
    cfg = model.config
    x = sd["backbone.embeddings.weight"][ids]                                  # (B, L, d)
    Bsz, L, _ = x.shape

    def rms(h, w):
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + cfg.layer_norm_epsilon) * w

    for i in range(cfg.num_hidden_layers):
        p = f"backbone.layers.{i}.mixer."
        h = rms(x, sd[f"backbone.layers.{i}.norm.weight"]) @ sd[p + "in_proj.weight"].T
        x_in, z = h.chunk(2, dim=-1)
        Di, N, R = x_in.shape[-1], cfg.state_size, model.backbone.layers[i].mixer.time_step_rank

        def causal(seq, w):                                                     # w: (Di, 1, K)
            K = w.shape[-1]
            padded = F.pad(seq, (0, 0, K - 1, 0))
            return sum(w[:, 0, j] * padded[:, j:j + L] for j in range(K))
        u = causal(x_in, sd[p + "conv1d.weight"]) + sd[p + "conv1d.bias"]
        u = u * torch.sigmoid(u)
        sel = u @ sd[p + "x_proj.weight"].T
        dt = sel[..., :R] @ sd[p + "dt_proj.weight"].T
        if p + "global_conv.weight" in sd:
            g = causal(x_in, sd[p + "global_conv.weight"]) + sd[p + "global_conv.bias"]
            dt = dt * g * torch.sigmoid(g)
        dt = F.softplus(dt + sd[p + "dt_proj.bias"])
        Bm, Cm = sel[..., R:R + N], sel[..., R + N:]
        A = -torch.exp(sd[p + "A_log"])
        state = torch.zeros(Bsz, Di, N, dtype=torch.float64)
        ys = []
        for t in range(L):
            state = torch.exp(dt[:, t, :, None] * A) * state + (dt[:, t] * u[:, t])[..., None] * Bm[:, t, None, :]
            ys.append((state * Cm[:, t, None, :]).sum(-1))
        y = (torch.stack(ys, 1) + u * sd[p + "D"]) * (z * torch.sigmoid(z))
        x = x + y @ sd[p + "out_proj.weight"].T
    x = rms(x, sd["backbone.norm_f.weight"])
    return x @ sd["backbone.embeddings.weight"].T


def write_fixture(folder):
    """A random-init model with the module (every weight perturbed) and its float32 logits."""
    from safetensors.torch import save_file
    torch.manual_seed(5)
    args = argparse.Namespace(hidden=24, state=8, layers=2)
    model = build(50, args, kernel=6)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "A_log" not in n:
                p.add_(0.05 * torch.randn_like(p))
    set_exact_fp32()
    ids = torch.randint(0, 50, (2, 37), generator=torch.Generator().manual_seed(11))
    undo = patch_model(model)
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits.float()
    undo()
    expected = reference_logits(model, ids)
    diff = (logits.double() - expected).abs().max().item()
    print(f"fixture: training-path float32 vs float64 reference max |diff| {diff:.2e}", flush=True)
    assert diff < 1e-4, diff
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    save_file({"input_ids": ids.float().contiguous(), "logits": expected.float().contiguous()},
              os.path.join(folder, "reference.safetensors"),
              metadata={"fixture": "mamba1-global-selection", "made_by": "tools/train_global_selection.py",
                        "logits": "F32 [2,37,vocab]: the script's float64 step-by-step forward"})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--fixture", help="write the test fixture to this folder and stop")
    ap.add_argument("--task", choices=["recall", "ngram"], default="recall")
    ap.add_argument("--gap", type=int, default=1, help="recall: tokens between a key and its value")
    ap.add_argument("--queries", type=int, default=8, help="recall: queries a sequence")
    ap.add_argument("--length", type=int, default=128, help="ngram: tokens a sequence")
    ap.add_argument("--key-length", type=int, default=2, help="ngram: tokens a key")
    ap.add_argument("--value-length", type=int, default=2, help="ngram: tokens a value")
    ap.add_argument("--global-kernel", type=int, default=0, help="0: the plain model")
    ap.add_argument("--global-init", choices=["default", "identity"], default="default",
                    help="the module's conv: PyTorch's default init (the paper's code) or gate 1 at the start")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--keys", type=int, default=64, help="ids keys are drawn from")
    ap.add_argument("--values", type=int, default=64, help="ids values are drawn from")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--state", type=int, default=16)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=240.0)
    ap.add_argument("--eval-sequences", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init-from", help="a trained plain model to start from (fine-tuning)")
    ap.add_argument("--train", choices=["all", "module"], default="all", help="module: only the module's weights")
    ap.add_argument("--robust-fraction", type=float, default=0.0,
                    help="ngram: share of training batches whose keys share their last token")
    args = ap.parse_args()
    if args.robust_fraction and args.task != "ngram":
        ap.error("--robust-fraction applies to the ngram task")
    if args.fixture:
        write_fixture(args.fixture)
        return
    if not args.out:
        ap.error("--out or --fixture is required")

    import transformers
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dev_name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    torch.manual_seed(args.seed)
    vocab = vocabulary(args)
    model = build(vocab, args, args.global_kernel).to(device)
    params = sum(p.numel() for p in model.parameters())
    extra = sum(p.numel() for n, p in model.named_parameters() if ".global_" in n)
    print(f"{dev_name}: task {args.task}, global kernel {args.global_kernel}, {params} parameters ({extra} in the "
          f"module)", flush=True)

    if args.train == "module":
        assert extra, "--train module needs --global-kernel"
        for n, p in model.named_parameters():
            p.requires_grad_(".global_" in n)
    torch.backends.cuda.matmul.allow_tf32 = True
    undo = patch_model(model)
    if args.init_from:
        model.eval()
        variants = (False, True) if args.task == "ngram" else (False,)
        initial = [held_out_accuracy(model, args, device, robust)[0] for robust in variants]
        print("starting held-out accuracy " + ", keys sharing their last token ".join(f"{a:.4f}" for a in initial),
              flush=True)
        model.train()
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    matrices = [p for n, p in trained if p.ndim == 2 and "embeddings" not in n]
    others = [p for n, p in trained if not (p.ndim == 2 and "embeddings" not in n)]
    opt = torch.optim.AdamW([{"params": matrices, "weight_decay": 0.1}, {"params": others, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(args.seed)
    curve, step, t0, seen = [], 0, time.time(), []
    while time.time() - t0 < args.seconds:
        progress = (time.time() - t0) / args.seconds
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, (step + 1) / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        # Drawn only when asked for, so that runs without it see the batches they always saw.
        robust = args.robust_fraction > 0 and torch.rand(1, generator=gen).item() < args.robust_fraction
        ids, targets = task_batch(gen, args.batch, args, device, robust)
        logits = model(input_ids=ids, use_cache=False).logits
        loss = F.cross_entropy(logits.float().reshape(-1, vocab), targets.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        seen.append(accuracy(logits.detach(), targets))
        if step % 200 == 0:
            curve.append({"step": step, "time_s": round(time.time() - t0, 1), "loss": round(loss.item(), 4),
                          "batch_accuracy": round(sum(seen) / len(seen), 4)})
            seen = []
            print(curve[-1], flush=True)

    model.eval()
    set_exact_fp32()
    result, total = held_out_accuracy(model, args, device, robust=False)
    print(f"held-out accuracy {result:.4f} over {total} predictions", flush=True)
    summary = {"accuracy": result, "predictions": total}
    if args.init_from:
        summary["initial_accuracy"] = initial[0]
        if args.task == "ngram":
            summary["initial_robustness_accuracy"] = initial[1]
    if args.task == "ngram":
        summary["robustness_accuracy"], _ = held_out_accuracy(model, args, device, robust=True)
        print(f"held-out accuracy, keys sharing their last token: {summary['robustness_accuracy']:.4f}", flush=True)
    undo()
    os.makedirs(args.out, exist_ok=True)
    model.cpu().save_pretrained(args.out, safe_serialization=True)
    with open(os.path.join(args.out, "training.json"), "w") as f:
        json.dump({"task": args.task, **summary, "parameters": params, "module_parameters": extra, "steps": step,
                   "train_wall_time_s": round(time.time() - t0, 1), "curve": curve, "hyperparameters": vars(args),
                   "command": "python3 " + " ".join(sys.argv), "device": dev_name, "torch": torch.__version__,
                   "transformers": transformers.__version__}, f, indent=1)


if __name__ == "__main__":
    main()
