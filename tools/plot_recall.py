#!/usr/bin/env python3
"""Plots training accuracy against step from tools/train_global_selection.py's training.json files.

usage: plot_recall.py OUT.png LABEL=training.json [LABEL=training.json ...]
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    fig, ax = plt.subplots(figsize=(7, 4))
    for run in sys.argv[2:]:
        label, path = run.split("=", 1)
        result = json.load(open(path))
        curve = result["curve"]
        ax.plot([c["step"] for c in curve], [c["batch_accuracy"] for c in curve],
                label=f"{label} (held out {result['accuracy']:.2f})")
    ax.set_xlabel("training step (256 sequences)")
    ax.set_ylabel("recall accuracy (training batches)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(sys.argv[1], dpi=120)


if __name__ == "__main__":
    main()
