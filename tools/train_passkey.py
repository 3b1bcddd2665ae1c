#!/usr/bin/env python3
"""Train a small byte-level Mamba-1 (or, with --arch mamba2, Mamba-2) on passkey retrieval at a short length.

A prompt is filler text with a needle holding a random 5-digit key at some depth, then a question;
the answer is the key. The prompt format is tools/passkey_format.py's, the one ``ssm-run passkey``
builds.

Training draws a length uniformly in [context/4, context] per step and a depth in [0, 1] and a key in
[10000, 99999] per sequence; the loss is the cross-entropy of the 5 answer bytes only. The model and
its training path (the chunked-scan mixer, checked against transformers' forward) come from
train_byte_mamba.py. Evaluation: greedy retrieval accuracy (teacher-forced argmax of all 5 digits,
which equals greedy decoding) at lengths context x {1, 2, 4, 8, 16} and depths {0, 0.25, 0.5, 0.75, 1}.

Usage:
  python3 tools/train_passkey.py --out examples/models/passkey-mamba1 --context 256 --seconds 300
"""

import argparse
import json
import math
import os
import random
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from passkey_format import QUESTION, needle, passkey_prompt  # noqa: E402
from train_byte_mamba import add_training_arguments, build_model, patch_model, set_exact_fp32  # noqa: E402

def batch_of(rng, size, length):
    """Token ids (size, length + 4) and the answers (size, 5)."""
    rows, answers = [], []
    for _ in range(size):
        key = rng.randint(10000, 99999)
        p = passkey_prompt(length, rng.random(), key)
        a = str(key).encode()
        rows.append(list(p + a[:4]))
        answers.append(list(a))
    return torch.tensor(rows), torch.tensor(answers)


@torch.no_grad()
def accuracy(model, length, depth, trials, device, seed):
    rng = random.Random(seed)
    hits = 0
    for s in range(0, trials, 16):
        rows, answers = [], []
        for _ in range(min(16, trials - s)):
            key = rng.randint(10000, 99999)
            a = str(key).encode()
            rows.append(list(passkey_prompt(length, depth, key) + a[:4]))
            answers.append(list(a))
        ids = torch.tensor(rows, device=device)
        lg = model(input_ids=ids, use_cache=False).logits[:, -5:].float()
        hits += int((lg.argmax(-1).cpu() == torch.tensor(answers)).all(-1).sum())
    return hits / trials


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--seconds", type=float, default=300.0)
    add_training_arguments(ap)
    ap.add_argument("--trials", type=int, default=48)
    ap.add_argument("--log-every", type=int, default=100)
    args = ap.parse_args()
    if args.context < 4 * (len(needle(10000)) + len(QUESTION)) // 2:
        ap.error("--context is too short for the needle and the question")

    import transformers
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dev_name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    print(f"torch {torch.__version__} transformers {transformers.__version__} device {dev_name}", flush=True)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    model, cfg = build_model(args)
    model.to(device)
    nparams = sum(p.numel() for p in model.parameters())

    torch.backends.cuda.matmul.allow_tf32 = True
    undo = patch_model(model)
    model.train()
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (decay if (p.ndim == 2 and "embeddings" not in n and "lm_head" not in n and "A_log" not in n) else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    shortest = max(len(needle(10000)) + len(QUESTION) + 8, args.context // 4)
    curve, step, t0, acc = [], 0, time.time(), []
    while time.time() - t0 < args.seconds:
        progress = (time.time() - t0) / args.seconds
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (
            args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))
        for g in opt.param_groups:
            g["lr"] = lr
        ids, answers = batch_of(rng, args.batch, rng.randint(shortest, args.context))
        ids, answers = ids.to(device), answers.to(device)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
            lg = model(input_ids=ids, use_cache=False).logits[:, -5:]
        loss = F.cross_entropy(lg.float().reshape(-1, 256), answers.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        step += 1
        acc.append((lg.argmax(-1) == answers).all(-1).float().mean().item())
        if step % args.log_every == 0:
            row = {"step": step, "time_s": round(time.time() - t0, 1), "loss": round(loss.item(), 4),
                   "batch_accuracy": round(sum(acc) / len(acc), 3), "lr": lr}
            curve.append(row)
            acc = []
            print(row, flush=True)
    undo()

    os.makedirs(args.out, exist_ok=True)
    model.eval().float()
    model.save_pretrained(args.out, safe_serialization=True)
    set_exact_fp32()
    undo = patch_model(model)
    grid = []
    for mult in (1, 2, 4, 8, 16):
        for depth in (0.0, 0.25, 0.5, 0.75, 1.0):
            a = accuracy(model, args.context * mult, depth, args.trials, device, seed=1000 * mult + int(100 * depth))
            grid.append({"length": args.context * mult, "depth": depth, "accuracy": a})
            print(grid[-1], flush=True)
    undo()
    with open(os.path.join(args.out, "training.json"), "w") as f:
        json.dump({"model": f"{type(model).__name__} (byte-level, vocab 256), trained on passkey retrieval",
                   "parameters": nparams, "hyperparameters": vars(args), "steps": step,
                   "train_wall_time_s": time.time() - t0, "loss_curve": curve,
                   "passkey_grid_hf_fp32": grid, "command": "python3 " + " ".join(sys.argv),
                   "device": dev_name, "torch": torch.__version__, "transformers": transformers.__version__},
                  f, indent=1)


if __name__ == "__main__":
    main()
