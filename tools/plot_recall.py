#!/usr/bin/env python3
"""Plots tools/train_global_selection.py's training.json files: training accuracy against step, or with
--held-out the held-out accuracy of each run as bars, next to its accuracy when keys share their last
token (ngram) and, for fine-tuned runs, the accuracies they started from as marks.

usage: plot_recall.py [--held-out] OUT.png LABEL=training.json [LABEL=training.json ...]
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def curves(ax, runs):
    for label, result in runs:
        curve = result["curve"]
        ax.plot([c["step"] for c in curve], [c["batch_accuracy"] for c in curve],
                label=f"{label} (held out {result['accuracy']:.2f})")
    ax.set_xlabel("training step (256 sequences)")
    ax.set_ylabel("recall accuracy (training batches)")


def held_out(ax, runs):
    width = 0.38
    for i, (label, result) in enumerate(runs):
        bars = [("held out", "accuracy", "initial_accuracy", -width / 2, "tab:blue"),
                ("keys sharing their last token", "robustness_accuracy", "initial_robustness_accuracy", width / 2,
                 "tab:orange")]
        for name, key, start, offset, color in bars:
            if key not in result:
                continue
            ax.bar(i + offset, result[key], width, color=color, label=name if i == 0 else None)
            ax.text(i + offset, result[key] + 0.01, f"{result[key]:.2f}", ha="center", fontsize=8)
            if start in result:
                ax.plot([i + offset - width / 2, i + offset + width / 2], [result[start]] * 2, color="black",
                        label="before fine-tuning" if i == 0 and offset > 0 else None)
    ax.set_xticks(range(len(runs)), [label for label, _ in runs], fontsize=8)
    ax.set_ylabel("held-out accuracy (value tokens)")


def main():
    args = sys.argv[1:]
    bars = args[:1] == ["--held-out"]
    args = args[1:] if bars else args
    if len(args) < 2:
        sys.exit(__doc__)
    runs = [(label, json.load(open(path))) for label, path in (run.split("=", 1) for run in args[1:])]
    fig, ax = plt.subplots(figsize=(8 if bars else 7, 4))
    (held_out if bars else curves)(ax, runs)
    ax.set_ylim(0, 1.05 if bars else 1)
    ax.grid(alpha=0.3, axis="y" if bars else "both")
    ax.legend(fontsize=8, loc="lower right" if bars else "best")
    fig.tight_layout()
    fig.savefig(args[0], dpi=120)


if __name__ == "__main__":
    main()
