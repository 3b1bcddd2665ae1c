#!/usr/bin/env python3
"""Plots passkey-retrieval grids from `ssm-run passkey --json` outputs: one heat map (context length x
needle depth, accuracy) per file, side by side.

usage: plot_passkey.py OUT.png LABEL=FILE.json [LABEL=FILE.json ...] [--title TEXT] [--train-length N]
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
    ap.add_argument("--train-length", type=int, default=0, help="mark the training length")
    args = ap.parse_args()
    n = len(args.runs)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols + 1, 2.8 * rows + 0.6), squeeze=False,
                             constrained_layout=True)
    image = None
    for k, run in enumerate(args.runs):
        label, path = run.split("=", 1)
        cells = json.load(open(path))["cells"]
        lengths = sorted({c["length"] for c in cells})
        depths = sorted({c["depth"] for c in cells})
        grid = [[next(c["accuracy"] for c in cells if c["length"] == L and c["depth"] == d) for L in lengths]
                for d in depths]
        mean = sum(c["accuracy"] for c in cells) / len(cells)
        ax = axes[k // cols][k % cols]
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="lower")
        ax.set_xticks(range(len(lengths)), [str(L) for L in lengths], fontsize=7)
        ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths], fontsize=7)
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.2f}".lstrip("0") if v < 1 else "1", ha="center", va="center", fontsize=6)
        if args.train_length in lengths:
            ax.axvline(lengths.index(args.train_length) + 0.5, color="black", linewidth=1)
        ax.set_title(f"{label} (mean {mean:.2f})", fontsize=8)
        if k // cols == rows - 1 or k + cols >= n:
            ax.set_xlabel("context length (bytes)", fontsize=7)
        if k % cols == 0:
            ax.set_ylabel("needle depth", fontsize=7)
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.colorbar(image, ax=axes, shrink=0.6, label="accuracy")
    if args.title:
        fig.suptitle(args.title, fontsize=9)
    fig.savefig(args.out, dpi=130)


if __name__ == "__main__":
    main()
