#!/usr/bin/env python3
"""Make reference fixtures for the C++ Mamba / Mamba-2 checkpoint loaders from Hugging Face transformers.

For every config below: build the HF model (MambaForCausalLM / Mamba2ForCausalLM) with a fixed
seed, perturb every parameter (and make A_log, D, dt biases and norm weights non-trivial and
different per channel), compute float32 logits on the CPU (no TF32) for random input_ids of
shape (2, 37), and write

  <out>/<name>/config.json, model.safetensors      (model.save_pretrained, safetensors)
  <out>/<name>/reference.safetensors               input_ids F32 [2,37] (exact small integers),
                                                   logits F32 [2,37,vocab],
                                                   decode_logits F32 [2,7,vocab] (HF's own cached
                                                   decoding: prefill tokens 0..29, then feed tokens
                                                   30..36 one at a time), when HF's cache works
  <out>/manifest.json                              what was made, checks, HF behaviour findings

Every fixture's HF logits are also compared with an independent float64 sequential-recurrence
forward written here (ref_mamba1 / ref_mamba2); for Mamba-2 in four variants (gated RMSNorm over
all of d_inner or per group of d_inner/n_groups; time_step_limit applied or not), which tells
exactly which semantics the fixtures embody.  Whether HF applies time_step_limit at all is
decided numerically (same weights, limit (0, 0.3) vs default) before the fixtures are made.

Also writes --notes: the transformers version, the source (inspect.getsource) of every method of
the HF Mamba-2 and Mamba-1 mixers, the gated RMSNorm and the scan/conv/norm functions (kernel
fallbacks included) they call, and copies those HF modules into --src-dir when given.

Usage:
  python3 tools/make_hf_fixtures.py --out tests/fixtures/hf --notes hf_notes.txt [--src-dir DIR]
"""

import argparse
import inspect
import json
import math
import os
import re
import shutil
import sys
import traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
import torch.nn.functional as F

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
try:
    torch.set_float32_matmul_precision("highest")
except Exception:  # noqa: BLE001
    pass

from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import transformers  # noqa: E402
from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM  # noqa: E402
import transformers.models.mamba.modeling_mamba as hf_m1  # noqa: E402
import transformers.models.mamba2.modeling_mamba2 as hf_m2  # noqa: E402

BATCH, SEQ, N_PREFILL = 2, 37, 30


def src(obj):
    try:
        return inspect.getsource(obj)
    except Exception as e:  # noqa: BLE001
        return f"<getsource failed: {e!r}>"


def related_objects():
    """HF functions/classes that implement the Mamba / Mamba-2 forward (incl. kernel fallbacks)."""
    pat = re.compile(r"(scan|ssd|selective|conv1d|rms|norm|segment|chunk|mamba|associative|state_update|softplus)", re.I)
    modpat = re.compile(r"(mamba|kernel|ssd|scan)", re.I)
    seen, out = set(), []

    def add(title, obj, depth=0):
        if obj is None or id(obj) in seen or depth > 2:
            return
        seen.add(id(obj))
        out.append((title, obj))
        inner = getattr(obj, "__wrapped__", None)
        if inner is not None:
            add(title + ".__wrapped__", inner, depth + 1)
        for cell in (getattr(obj, "__closure__", None) or ()):
            try:
                c = cell.cell_contents
            except ValueError:
                continue
            if inspect.isfunction(c) or inspect.isclass(c):
                add(f"{title} <closure {getattr(c, '__qualname__', c)}>", c, depth + 1)

    mods = [hf_m1, hf_m2] + [m for n, m in sorted(sys.modules.items())
                             if m is not None and n.startswith("transformers") and modpat.search(n)
                             and m not in (hf_m1, hf_m2)]
    for mod in mods:
        for name, obj in sorted(vars(mod).items()):
            if not (inspect.isfunction(obj) or inspect.isclass(obj) or callable(obj)):
                continue
            if not pat.search(name):
                continue
            modname = getattr(obj, "__module__", "") or ""
            if mod not in (hf_m1, hf_m2) and not modname.startswith("transformers"):
                continue
            add(f"{mod.__name__}.{name} (defined in {modname})", obj)
    return mods, out


def grep_sources(mods, words=("time_step_limit", "dt_limit", "group_size", "n_groups", "norm_before_gate")):
    lines = []
    for mod in mods:
        try:
            text = inspect.getsource(mod)
        except Exception:  # noqa: BLE001
            continue
        for i, line in enumerate(text.splitlines(), 1):
            if any(w in line for w in words):
                lines.append(f"{mod.__name__}:{i}: {line.strip()}")
    return lines


def limit_is_applied():
    """Build mamba2-groups-odd with and without time_step_limit (0, 0.3); same weights; do logits differ?"""
    base = fixture_specs(False)[-1]
    lim = fixture_specs(True)[-1]
    res = {}
    logits = []
    sds = []
    for spec in (lim, base):
        model, cfg = build(spec)
        perturb(model, spec)
        model.eval()
        g = torch.Generator().manual_seed(spec["seed"] + 99)
        ids = torch.randint(0, cfg.vocab_size, (BATCH, SEQ), generator=g)
        logits.append(forward_logits(model, ids))
        sds.append(model.state_dict())
        res[f"config.time_step_limit[{'limited' if spec is lim else 'default'}]"] = repr(cfg.time_step_limit)
    res["same_weights"] = all(torch.equal(sds[0][k], sds[1][k]) for k in sds[0])
    res["max_abs_logit_diff_limit_vs_default"] = float((logits[0] - logits[1]).abs().max())
    res["applied"] = res["max_abs_logit_diff_limit_vs_default"] > 1e-6
    return res


def fixture_specs(apply_limit):
    m2odd = dict(hidden_size=48, expand=2, num_heads=8, head_dim=12, n_groups=2, state_size=24, conv_kernel=3,
                 use_conv_bias=False, use_bias=True, tie_word_embeddings=False, chunk_size=8,
                 num_hidden_layers=3, vocab_size=53)
    if apply_limit:
        m2odd["time_step_limit"] = (0.0, 0.3)
    return [
        dict(name="mamba1-tied", family="mamba1", seed=1001, bf16=False, dt_range=(0.01, 0.5),
             cfg=dict(hidden_size=32, state_size=8, num_hidden_layers=2, expand=2, conv_kernel=4, vocab_size=61,
                      tie_word_embeddings=True, use_conv_bias=True, use_bias=False),
             exercises="Mamba-1 basics: tied lm_head (no lm_head.weight in the file), conv bias, no in/out_proj "
                       "bias, default time_step_rank = ceil(32/16) = 2, default layer_norm_epsilon 1e-5."),
        dict(name="mamba1-odd-untied", family="mamba1", seed=1002, bf16=False, dt_range=(0.01, 0.5),
             cfg=dict(hidden_size=37, state_size=5, num_hidden_layers=3, expand=2, conv_kernel=3, time_step_rank=7,
                      use_conv_bias=False, use_bias=True, tie_word_embeddings=False, vocab_size=53,
                      layer_norm_epsilon=1e-6),
             exercises="Mamba-1 odd sizes (hidden 37, d_inner 74, N 5, kernel 3), explicit time_step_rank 7, "
                       "no conv bias, in_proj/out_proj biases, separate lm_head.weight, eps 1e-6, 3 layers."),
        dict(name="mamba1-bf16", family="mamba1", seed=1003, bf16=True, dt_range=(0.01, 0.5),
             cfg=dict(hidden_size=48, state_size=8, num_hidden_layers=2, expand=2, conv_kernel=4, vocab_size=61,
                      tie_word_embeddings=True, use_conv_bias=True, use_bias=False),
             exercises="bfloat16 weights in the file (BF16 dtype in safetensors); reference logits computed in "
                       "float32 from the bf16-rounded weights, so a loader that widens bf16->f32 exactly must match "
                       "to float32 rounding; time_step_rank = ceil(48/16) = 3."),
        dict(name="mamba2-basic", family="mamba2", seed=2001, bf16=False, dt_range=(0.01, 0.5),
             cfg=dict(hidden_size=64, expand=2, num_heads=8, head_dim=16, state_size=16, n_groups=1, chunk_size=16,
                      num_hidden_layers=2, conv_kernel=4, vocab_size=61, tie_word_embeddings=True),
             exercises="Mamba-2 basics: 8 heads x head_dim 16, one group, N 16, chunk 16 (37 tokens = 2 full chunks "
                       "+ a padded one in HF's torch path), tied lm_head, conv bias, no in/out_proj bias, default "
                       "time_step_limit (0, inf)."),
        dict(name="mamba2-groups-odd", family="mamba2", seed=2002, bf16=False, dt_range=(0.02, 2.0),
             cfg=m2odd,
             exercises="Mamba-2 with 2 groups (heads 0-3 use group 0's B/C, heads 4-7 group 1's), head_dim 12, "
                       "N 24, conv kernel 3 without bias, in/out_proj biases, untied lm_head, chunk 8, 3 layers, "
                       "dt biases spread so that softplus(dt) exceeds 0.3 for some heads"
                       + (", time_step_limit (0.0, 0.3) (clamps dt)" if apply_limit else
                          " (time_step_limit left at default: HF's torch path does not apply it)")
                       + "; gated RMSNorm over d_inner=96 with n_groups=2 (see findings for how HF groups it)."),
    ]


def build(spec):
    torch.manual_seed(spec["seed"])
    if spec["family"] == "mamba1":
        cfg = MambaConfig(**spec["cfg"])
        model = MambaForCausalLM(cfg)
    else:
        c = spec["cfg"]
        assert c["num_heads"] * c["head_dim"] == c["expand"] * c["hidden_size"], "num_heads*head_dim != expand*hidden"
        cfg = Mamba2Config(**c)
        model = Mamba2ForCausalLM(cfg)
    return model.float(), cfg


def inv_softplus(y):
    return y + torch.log(-torch.expm1(-y))


@torch.no_grad()
def perturb(model, spec):
    g = torch.Generator().manual_seed(spec["seed"] + 17)

    def randn(shape):
        return torch.randn(shape, generator=g)

    def unif(shape, lo, hi):
        return torch.empty(shape).uniform_(lo, hi, generator=g)

    lo, hi = spec["dt_range"]
    touched = {}
    for name, p in model.named_parameters():
        std = float(p.float().std()) if p.numel() > 1 else 0.0
        if not (std > 1e-8 and math.isfinite(std)):
            std = 0.05
        p.add_(0.1 * std * randn(p.shape))
        kind = "noise"
        if name.endswith("A_log"):
            p.copy_(torch.log(unif(p.shape, 0.3, 6.0)))
            kind = "A_log = log U(0.3, 6) per entry"
        elif name.endswith("mixer.D"):
            p.copy_(1.0 + 0.5 * randn(p.shape))
            kind = "D = 1 + 0.5 N(0,1)"
        elif name.endswith("dt_proj.bias") or name.endswith("dt_bias"):
            dt = torch.exp(unif(p.shape, math.log(lo), math.log(hi)))
            p.copy_(inv_softplus(dt))
            kind = f"softplus^-1(logU({lo}, {hi}))"
        elif "norm" in name and name.endswith("weight"):
            p.copy_(1.0 + 0.3 * randn(p.shape))
            kind = "1 + 0.3 N(0,1)"
        elif name.endswith("conv1d.bias"):
            p.copy_(0.2 * randn(p.shape))
            kind = "0.2 N(0,1)"
        elif name.endswith("bias"):
            p.copy_(0.1 * randn(p.shape))
            kind = "0.1 N(0,1)"
        touched[name] = {"shape": list(p.shape), "init": kind}
    return touched


def forward_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits.float()


def hf_decode(model, ids):
    """Prefill ids[:, :N_PREFILL] with a cache, then feed the rest one token at a time."""
    params = inspect.signature(model.forward).parameters
    cache_kw = "cache_params" if "cache_params" in params else ("past_key_values" if "past_key_values" in params else None)
    if cache_kw is None:
        raise RuntimeError(f"no cache argument in forward{tuple(params)}")
    with torch.no_grad():
        out = model(input_ids=ids[:, :N_PREFILL], use_cache=True)
        cache = getattr(out, "cache_params", None)
        if cache is None:
            cache = getattr(out, "past_key_values", None)
        if cache is None:
            raise RuntimeError("prefill returned no cache")
        steps = []
        for t in range(N_PREFILL, ids.shape[1]):
            kw = {cache_kw: cache, "use_cache": True}
            if "cache_position" in params:
                kw["cache_position"] = torch.tensor([t], dtype=torch.long)
            o = model(input_ids=ids[:, t:t + 1], **kw)
            nc = getattr(o, "cache_params", None)
            if nc is None:
                nc = getattr(o, "past_key_values", None)
            if nc is not None:
                cache = nc
            steps.append(o.logits[:, -1].float())
    return out.logits.float(), torch.stack(steps, dim=1), cache_kw


def save_model(model, folder):
    try:
        model.save_pretrained(folder, safe_serialization=True)
    except TypeError:
        model.save_pretrained(folder)


def gated_norm_probe(model):
    """Numerically determine how HF's gated RMSNorm groups d_inner (call it like the mixer does)."""
    m = model.backbone.layers[0].mixer
    norm = m.norm
    Di = m.intermediate_size
    G = m.n_groups
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
    g = torch.Generator().manual_seed(7)
    y = torch.randn(2, 5, Di, generator=g)
    y[..., : Di // 2] *= 10.0          # make the two groups' scales very different
    z = torch.randn(2, 5, Di, generator=g)
    with torch.no_grad():
        out = norm(y, z)
        w = norm.weight.float()
        yg = y * F.silu(z)
        full = w * (yg * torch.rsqrt(yg.pow(2).mean(-1, keepdim=True) + eps))
        r = yg.view(2, 5, G, Di // G)
        grouped = w * (r * torch.rsqrt(r.pow(2).mean(-1, keepdim=True) + eps)).view(2, 5, Di)
        before = w * (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps)) * F.silu(z)
    res = {
        "norm_class": type(norm).__name__,
        "norm_attrs": {k: (v if isinstance(v, (int, float, str, bool)) or v is None else repr(v))
                       for k, v in vars(norm).items() if not k.startswith("_")},
        "n_groups": G, "d_inner": Di, "eps": eps,
        "max_diff_vs_norm_over_all_d_inner_after_gate": float((out - full).abs().max()),
        "max_diff_vs_norm_per_group_after_gate": float((out - grouped).abs().max()),
        "max_diff_vs_norm_before_gate": float((out - before).abs().max()),
    }
    best = min(("over all d_inner (y*silu(z)), ignoring n_groups", res["max_diff_vs_norm_over_all_d_inner_after_gate"]),
               ("per group of d_inner/n_groups (y*silu(z))", res["max_diff_vs_norm_per_group_after_gate"]),
               ("norm(y) * silu(z) (norm before gate)", res["max_diff_vs_norm_before_gate"]), key=lambda t: t[1])
    res["conclusion"] = f"HF normalises {best[0]} (max diff {best[1]:.3g})"
    return res


def time_step_limit_probe(model, ids, ref_logits):
    mixers = [l.mixer for l in model.backbone.layers]
    old = [m.time_step_limit for m in mixers]
    for m in mixers:
        m.time_step_limit = (0.0, float("inf"))
    try:
        nolim = forward_logits(model, ids)
    finally:
        for m, o in zip(mixers, old):
            m.time_step_limit = o
    return {"time_step_limit": list(old[0]) if old else None,
            "max_abs_logit_change_when_limit_removed": float((nolim - ref_logits).abs().max())}


def _lin(x, sd, name):
    y = x @ sd[name + ".weight"].T
    b = sd.get(name + ".bias")
    return y if b is None else y + b


def _rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _causal_conv_silu(x, sd, name):
    """x [B, L, C]; depthwise causal conv (weight [C, 1, K]) + optional bias, then SiLU."""
    w = sd[name + ".weight"][:, 0, :]                   # [C, K]
    K = w.shape[1]
    L = x.shape[1]
    xp = F.pad(x, (0, 0, K - 1, 0))                     # left-pad time
    y = sum(xp[:, k:k + L, :] * w[:, k] for k in range(K))
    b = sd.get(name + ".bias")
    if b is not None:
        y = y + b
    return F.silu(y)


@torch.no_grad()
def ref_mamba1(model, cfg, ids):
    """Independent float64 Mamba-1 forward (sequential recurrence) from the state dict."""
    sd = {k: v.double() for k, v in model.state_dict().items()}
    eps = cfg.layer_norm_epsilon
    h = sd["backbone.embeddings.weight"][ids]
    Bsz, L, _ = h.shape
    for i in range(cfg.num_hidden_layers):
        p = f"backbone.layers.{i}."
        x = _rms(h, sd[p + "norm.weight"], eps)
        xz = _lin(x, sd, p + "mixer.in_proj")
        Di = xz.shape[-1] // 2
        xs, z = xz[..., :Di], xz[..., Di:]
        xs = _causal_conv_silu(xs, sd, p + "mixer.conv1d")
        A = -torch.exp(sd[p + "mixer.A_log"])            # [Di, N]
        N = A.shape[1]
        R = sd[p + "mixer.dt_proj.weight"].shape[1]
        dbc = xs @ sd[p + "mixer.x_proj.weight"].T
        dt, Bm, Cm = dbc[..., :R], dbc[..., R:R + N], dbc[..., R + N:]
        dt = F.softplus(_lin(dt, sd, p + "mixer.dt_proj"))
        s = torch.zeros(Bsz, Di, N, dtype=torch.float64)
        ys = []
        for t in range(L):
            s = torch.exp(dt[:, t, :, None] * A) * s + (dt[:, t] * xs[:, t])[:, :, None] * Bm[:, t, None, :]
            ys.append((s * Cm[:, t, None, :]).sum(-1))
        y = torch.stack(ys, 1) + xs * sd[p + "mixer.D"]
        y = y * F.silu(z)
        h = h + _lin(y, sd, p + "mixer.out_proj")
    h = _rms(h, sd["backbone.norm_f.weight"], eps)
    W = sd.get("lm_head.weight", sd["backbone.embeddings.weight"])
    return (h @ W.T).float()


@torch.no_grad()
def ref_mamba2(model, cfg, ids, grouped_norm, apply_limit):
    """Independent float64 Mamba-2 forward (sequential recurrence) from the state dict.
    grouped_norm: gated RMSNorm per group of d_inner/n_groups (mamba_ssm) instead of over all d_inner.
    apply_limit: clamp softplus(dt + dt_bias) to config.time_step_limit."""
    sd = {k: v.double() for k, v in model.state_dict().items()}
    eps = cfg.layer_norm_epsilon
    H, P, G, N = cfg.num_heads, cfg.head_dim, cfg.n_groups, cfg.state_size
    Di = H * P
    lo, hi = cfg.time_step_limit
    h = sd["backbone.embeddings.weight"][ids]
    Bsz, L, _ = h.shape
    hg = torch.arange(H) // (H // G)                    # head -> group
    for i in range(cfg.num_hidden_layers):
        p = f"backbone.layers.{i}."
        x = _rms(h, sd[p + "norm.weight"], eps)
        zxbcdt = _lin(x, sd, p + "mixer.in_proj")
        assert zxbcdt.shape[-1] == 2 * Di + 2 * G * N + H, zxbcdt.shape
        z = zxbcdt[..., :Di]
        xBC = _causal_conv_silu(zxbcdt[..., Di:2 * Di + 2 * G * N], sd, p + "mixer.conv1d")
        dt = zxbcdt[..., 2 * Di + 2 * G * N:]
        xs = xBC[..., :Di].reshape(Bsz, L, H, P)
        Bm = xBC[..., Di:Di + G * N].reshape(Bsz, L, G, N)[:, :, hg]
        Cm = xBC[..., Di + G * N:].reshape(Bsz, L, G, N)[:, :, hg]
        dt = F.softplus(dt + sd[p + "mixer.dt_bias"])
        if apply_limit:
            dt = dt.clamp(lo, hi)
        A = -torch.exp(sd[p + "mixer.A_log"])            # [H]
        D = sd[p + "mixer.D"]
        s = torch.zeros(Bsz, H, P, N, dtype=torch.float64)
        ys = []
        for t in range(L):
            s = (torch.exp(dt[:, t] * A)[:, :, None, None] * s
                 + (dt[:, t, :, None] * xs[:, t])[..., None] * Bm[:, t, :, None, :])
            ys.append((s * Cm[:, t, :, None, :]).sum(-1) + D[:, None] * xs[:, t])
        y = torch.stack(ys, 1).reshape(Bsz, L, Di)
        yg = y * F.silu(z)
        if grouped_norm:
            r = yg.reshape(Bsz, L, G, Di // G)
            yn = (r * torch.rsqrt(r.pow(2).mean(-1, keepdim=True) + eps)).reshape(Bsz, L, Di)
        else:
            yn = yg * torch.rsqrt(yg.pow(2).mean(-1, keepdim=True) + eps)
        yn = yn * sd[p + "mixer.norm.weight"]
        h = h + _lin(yn, sd, p + "mixer.out_proj")
    h = _rms(h, sd["backbone.norm_f.weight"], eps)
    W = sd.get("lm_head.weight", sd["backbone.embeddings.weight"])
    return (h @ W.T).float()


def reference_check(model, cfg, spec, ids, logits):
    out = {}
    try:
        if spec["family"] == "mamba1":
            out["float64_reference"] = float((ref_mamba1(model, cfg, ids) - logits).abs().max())
        else:
            for grouped in (False, True):
                for lim in (True, False):
                    key = f"norm_{'per_group' if grouped else 'over_all_d_inner'}__limit_{'applied' if lim else 'ignored'}"
                    out[key] = float((ref_mamba2(model, cfg, ids, grouped, lim) - logits).abs().max())
        best = min(out, key=out.get)
        out["best"] = best
    except Exception as e:  # noqa: BLE001
        out["error"] = repr(e)
        out["traceback"] = traceback.format_exc()[-1500:]
    return out


def make_one(spec, out_root, apply_limit):
    name = spec["name"]
    folder = os.path.join(out_root, name)
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    model, cfg = build(spec)
    touched = perturb(model, spec)
    model.eval()
    vocab = cfg.vocab_size
    g = torch.Generator().manual_seed(spec["seed"] + 99)
    ids = torch.randint(0, vocab, (BATCH, SEQ), generator=g)
    rec = {"name": name, "family": spec["family"], "exercises": spec["exercises"], "config_kwargs": spec["cfg"],
           "seed": spec["seed"], "weights_dtype": "bfloat16" if spec["bf16"] else "float32"}
    if spec["family"] == "mamba1":
        rec["time_step_rank"] = cfg.time_step_rank
    tied = model.lm_head.weight.data_ptr() == model.backbone.embeddings.weight.data_ptr()
    rec["lm_head_tied_in_memory"] = tied

    if spec["bf16"]:
        model.to(torch.bfloat16)
        model.to(torch.float32)        # weights are now exactly bf16-representable
    logits = forward_logits(model, ids)
    rec["logits_abs_max"] = float(logits.abs().max())
    rec["logits_std"] = float(logits.std())
    tensors = {"input_ids": ids.float().contiguous(), "logits": logits.contiguous()}
    rec["max_abs_diff_vs_independent_float64_reference"] = reference_check(model, cfg, spec, ids, logits)

    try:
        pre, dec, kw = hf_decode(model, ids)
        d_pre = float((pre - logits[:, :N_PREFILL]).abs().max())
        d_dec = float((dec - logits[:, N_PREFILL:]).abs().max())
        rec["decode"] = {"cache_argument": kw, "prefill_max_abs_diff_vs_logits": d_pre,
                         "decode_max_abs_diff_vs_logits": d_dec}
        if d_dec < 1e-3 and d_pre < 1e-3:
            tensors["decode_logits"] = dec.contiguous()
            rec["decode"]["stored"] = True
        else:
            rec["decode"]["stored"] = False
            rec["decode"]["why_not"] = "HF cached decode disagrees with the full forward"
    except Exception as e:  # noqa: BLE001
        rec["decode"] = {"stored": False, "error": repr(e), "traceback": traceback.format_exc()[-2000:]}

    if spec["name"] == "mamba2-groups-odd":
        try:
            rec["gated_norm_probe"] = gated_norm_probe(model)
        except Exception as e:  # noqa: BLE001
            rec["gated_norm_probe"] = {"error": repr(e)}
        try:
            rec["time_step_limit_probe"] = time_step_limit_probe(model, ids, logits)
        except Exception as e:  # noqa: BLE001
            rec["time_step_limit_probe"] = {"error": repr(e)}

    if spec["bf16"]:
        model.to(torch.bfloat16)
        rounded_sd = {k: v.float().clone() for k, v in model.state_dict().items()}
    save_model(model, folder)
    save_file(tensors, os.path.join(folder, "reference.safetensors"),
              metadata={"fixture": name, "transformers": transformers.__version__, "torch": torch.__version__,
                        "input_ids": "F32 [2,37] exact integers", "logits": "F32 [2,37,vocab] float32 CPU",
                        "decode_logits": "F32 [2,7,vocab]: step logits of HF cached decoding of tokens 30..36 "
                                         "after prefilling tokens 0..29"})

    # ---- checks on what was written ----
    files = sorted(os.listdir(folder))
    rec["files"] = {f: os.path.getsize(os.path.join(folder, f)) for f in files}
    st = os.path.join(folder, "model.safetensors")
    keys = {}
    if os.path.exists(st):
        with safe_open(st, framework="pt") as f:
            for k in sorted(f.keys()):
                t = f.get_tensor(k)
                keys[k] = {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape)}
                if spec["bf16"]:
                    ref = rounded_sd.get(k)
                    if ref is not None and not torch.equal(ref, t.float()):
                        keys[k]["MISMATCH_vs_reference_weights"] = True
    rec["safetensors_tensors"] = keys
    with open(os.path.join(folder, "config.json")) as f:
        rec["config_json"] = f.read()
    Cls = MambaForCausalLM if spec["family"] == "mamba1" else Mamba2ForCausalLM
    try:
        re = Cls.from_pretrained(folder).float().eval()
        rec["reload_max_abs_diff"] = float((forward_logits(re, ids) - logits).abs().max())
    except Exception as e:  # noqa: BLE001
        rec["reload_error"] = repr(e)
    print(f"[{name}] logits |max| {rec['logits_abs_max']:.3f} std {rec['logits_std']:.3f}; "
          f"reload diff {rec.get('reload_max_abs_diff', rec.get('reload_error'))}; "
          f"vs float64 ref {({k: v for k, v in rec['max_abs_diff_vs_independent_float64_reference'].items() if k != 'traceback'})}; "
          f"decode {({k: v for k, v in rec['decode'].items() if k != 'traceback'})}; files {rec['files']}", flush=True)
    return rec, touched


def write_notes(path, limit_res, specs_out):
    mods, objs = related_objects()
    parts = [f"transformers {transformers.__version__} ({transformers.__file__})", f"torch {torch.__version__}",
             f"python {sys.version}", ""]
    parts.append(f"time_step_limit numeric check (mamba2-groups-odd built with (0, 0.3) vs default): "
                 f"{json.dumps(limit_res, default=str)}")
    parts.append(f"Mamba2Config.__init__ signature: {inspect.signature(Mamba2Config.__init__)}")
    parts.append(f"MambaConfig.__init__ signature: {inspect.signature(MambaConfig.__init__)}")
    try:
        c = MambaConfig()
        parts.append(f"MambaConfig() use_mambapy: {getattr(c, 'use_mambapy', '<absent>')}, "
                     f"use_associative_scan: {getattr(c, 'use_associative_scan', '<absent>')}")
        from transformers.utils.import_utils import is_mambapy_available
        parts.append(f"is_mambapy_available(): {is_mambapy_available()}")
    except Exception as e:  # noqa: BLE001
        parts.append(f"mambapy: {e!r}")
    parts.append("modules searched: " + ", ".join(m.__name__ for m in mods))
    parts.append("")
    parts.append("lines mentioning time_step_limit / dt_limit / group_size / n_groups / norm_before_gate:")
    parts.extend(grep_sources(mods))
    parts.append("")
    sections = []
    for cls in (hf_m2.Mamba2Mixer, hf_m1.MambaMixer):
        for name, obj in cls.__dict__.items():
            if inspect.isfunction(obj):
                sections.append((f"{cls.__module__}.{cls.__name__}.{name}", obj))
    sections.extend(objs)
    for n in ("Mamba2Block", "Mamba2RMSNorm"):
        if hasattr(hf_m2, n):
            sections.append((f"modeling_mamba2.{n}", getattr(hf_m2, n)))
    for n in ("MambaBlock", "MambaRMSNorm"):
        if hasattr(hf_m1, n):
            sections.append((f"modeling_mamba.{n}", getattr(hf_m1, n)))
    sections.append(("Mamba2Config", Mamba2Config))
    sections.append(("MambaConfig", MambaConfig))
    done = set()
    for title, obj in sections:
        if id(obj) in done:
            continue
        done.add(id(obj))
        parts.append("=" * 100)
        parts.append(title)
        parts.append("=" * 100)
        parts.append(src(obj))
    parts.append("=" * 100)
    parts.append("manifest")
    parts.append(json.dumps(specs_out, indent=1, default=str))
    with open(path, "w") as f:
        f.write("\n".join(parts))
    return mods


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/hf")
    ap.add_argument("--notes", default=None, help="write HF source notes here")
    ap.add_argument("--src-dir", default=None, help="copy the HF modules the notes were taken from here")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--only", default=None, help="comma-separated fixture names")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}", flush=True)

    try:
        limit_res = limit_is_applied()
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        limit_res = {"error": repr(e), "applied": False}
    apply_limit = bool(limit_res.get("applied"))
    print("HF applies time_step_limit (numeric check):", json.dumps(limit_res, default=str), flush=True)

    os.makedirs(args.out, exist_ok=True)
    records = []
    for spec in fixture_specs(apply_limit):
        if args.only and spec["name"] not in args.only.split(","):
            continue
        try:
            rec, touched = make_one(spec, args.out, apply_limit)
            rec["parameter_perturbation"] = touched
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            rec = {"name": spec["name"], "error": repr(e), "traceback": traceback.format_exc()[-3000:]}
        records.append(rec)

    findings = {"hf_applies_time_step_limit": limit_res}
    for r in records:
        if "gated_norm_probe" in r:
            findings["gated_norm"] = r["gated_norm_probe"]
        if "time_step_limit_probe" in r:
            findings["time_step_limit"] = r["time_step_limit_probe"]
        ref = r.get("max_abs_diff_vs_independent_float64_reference")
        if ref:
            findings.setdefault("float64_reference_best_variant", {})[r["name"]] = ref.get("best", ref.get("error"))
    manifest = {
        "generator": "tools/make_hf_fixtures.py",
        "command": "python3 " + " ".join(sys.argv),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "input": f"input_ids [{BATCH},{SEQ}] uniform in [0, vocab); decode: prefill {N_PREFILL}, then "
                 f"{SEQ - N_PREFILL} single-token steps",
        "findings": findings,
        "fixtures": records,
    }
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, default=str)
    if args.notes:
        try:
            mods = write_notes(args.notes, limit_res, manifest)
        except Exception:  # noqa: BLE001
            traceback.print_exc()
            mods = [hf_m1, hf_m2]
        if args.src_dir:
            os.makedirs(args.src_dir, exist_ok=True)
            for mod in mods:
                f = getattr(mod, "__file__", None)
                if f and os.path.exists(f):
                    shutil.copy(f, os.path.join(args.src_dir, mod.__name__ + ".py"))
    total = 0
    for dp, _, fs in os.walk(args.out):
        total += sum(os.path.getsize(os.path.join(dp, f)) for f in fs)
    print(f"findings: {json.dumps(findings, default=str)}", flush=True)
    print(f"total size of {args.out}: {total} bytes", flush=True)
    bad = [r["name"] for r in records if "error" in r]
    if bad:
        print("FAILED fixtures:", bad, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
