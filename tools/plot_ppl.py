#!/usr/bin/env python3
"""Plots loss against position from `ssm-run ppl --json` outputs, one line per file.

usage: plot_ppl.py OUT.png LABEL=FILE.json [LABEL=FILE.json ...] [--title TEXT] [--train-length N]
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("runs", nargs="+", help="LABEL=FILE.json")
    ap.add_argument("--title", default="")
    ap.add_argument("--train-length", type=int, default=0, help="draw a line at the training length")
    args = ap.parse_args()
    fig, ax = plt.subplots(figsize=(7, 4))
    for run in args.runs:
        label, path = run.split("=", 1)
        result = json.load(open(path))
        centers = [(b["start"] + b["end"]) / 2 for b in result["bins"]]
        ax.plot(centers, [b["bits_per_token"] for b in result["bins"]], marker="o", markersize=3,
                label=f"{label} ({result['bits_per_token']:.4f} overall)")
    if args.train_length:
        ax.axvline(args.train_length, color="gray", linestyle="--", linewidth=1, label="training length")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("position in window (tokens)")
    ax.set_ylabel("bits per token")
    ax.set_title(args.title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)


if __name__ == "__main__":
    main()
