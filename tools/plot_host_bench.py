#!/usr/bin/env python3
"""Plots and tabulates the host scan benchmark (bench/host_scan_bench.cpp).

Usage:
    python3 tools/plot_host_bench.py docs/bench/host_scan.json \
        [--plot docs/bench/host_strategies.png] [--table]

Reads Google Benchmark JSON written with --benchmark_out_format=json. When the run used
--benchmark_repetitions, the median aggregate of each benchmark is used; otherwise the single run.
--plot draws elements/s against sequence length for each strategy at 2 threads, one panel per
channel count (16 and 1536), with sequential at 1 thread as a dashed reference. --table prints
Markdown tables: the strategy crossover, every strategy run and the other runs (ms, elements/s,
GB/s).
"""
import argparse
import json
import re
import sys

STRATEGY = re.compile(r"^strategy/(?P<strategy>\w+)/length:(?P<length>\d+)/channels:(?P<channels>\d+)"
                      r"/threads:(?P<threads>\d+)")
STRATEGIES = ["sequential", "chunked", "parallel_prefix"]


def load(path):
    with open(path) as f:
        data = json.load(f)
    runs = {}
    for b in data["benchmarks"]:
        if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "median":
            continue
        name = b.get("run_name", b["name"])
        # A median beats a plain iteration of the same benchmark.
        if name in runs and b.get("run_type") != "aggregate":
            continue
        runs[name] = b
    return data.get("context", {}), runs


def to_ms(b):
    scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b.get("time_unit", "ns")]
    return b["real_time"] * scale


def strategy_points(runs):
    points = {}
    for name, b in runs.items():
        m = STRATEGY.match(name)
        if not m:
            continue
        key = (m["strategy"], int(m["channels"]), int(m["threads"]))
        points.setdefault(key, []).append((int(m["length"]), b["items_per_second"]))
    for v in points.values():
        v.sort()
    return points


def plot(runs, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = strategy_points(runs)
    channel_counts = [16, 1536]
    fig, axes = plt.subplots(1, len(channel_counts), figsize=(11, 4.2), sharey=True)
    for ax, channels in zip(axes, channel_counts):
        for strategy, marker in zip(STRATEGIES, "osD"):
            series = points.get((strategy, channels, 2))
            if series:
                xs, ys = zip(*series)
                ax.plot(xs, [y / 1e9 for y in ys], marker=marker, label=f"{strategy}, 2 threads")
        reference = points.get(("sequential", channels, 1))
        if reference:
            xs, ys = zip(*reference)
            ax.plot(xs, [y / 1e9 for y in ys], "--", color="grey", linewidth=1, label="sequential, 1 thread")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length (tokens)")
        ax.set_title(f"Mamba-1 scan, {channels} channels, state 16")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("state elements / s (billions)")
    axes[0].legend(fontsize=8)
    fig.suptitle("Host selective scan by strategy (fp32, batch 1)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def table(runs):
    """Prints the strategy crossover (2 threads), the strategy runs and the other runs as Markdown."""
    points = strategy_points(runs)
    lengths = sorted({length for series in points.values() for length, _ in series})
    print("Elements/s (millions) at 2 threads; `seq 1t` is sequential at 1 thread.\n")
    print("| channels | length | seq 1t | sequential | chunked | parallel_prefix | fastest at 2 threads |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for channels in sorted({c for _, c, _ in points}):
        for length in lengths:
            rate = {}
            for strategy in STRATEGIES:
                for threads in (1, 2):
                    for x, y in points.get((strategy, channels, threads), []):
                        if x == length:
                            rate[strategy, threads] = y
            if not rate:
                continue
            best = max(STRATEGIES, key=lambda st: rate.get((st, 2), 0))
            cells = [rate.get(("sequential", 1))] + [rate.get((st, 2)) for st in STRATEGIES]
            text = " | ".join("" if v is None else f"{v / 1e6:,.0f}" for v in cells)
            print(f"| {channels} | {length:,} | {text} | {best} |")

    print("\n| strategy | length | channels | threads | ms | elements/s | GB/s | parameter |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    others = []
    for name, b in runs.items():
        m = STRATEGY.match(name)
        if not m:
            others.append((name, b))
            continue
        print(f"| {m['strategy']} | {int(m['length']):,} | {m['channels']} | {m['threads']} | {to_ms(b):.4g} | "
              f"{b['items_per_second'] / 1e6:,.0f} M | {b['bytes_per_second'] / 1e9:.2f} | {b.get('label', '')} |")

    print("\n| benchmark | time | elements/s | GB/s | speed-up over ggml (170 ms) |")
    print("|---|---:|---:|---:|---:|")
    for name, b in others:
        time = f"{to_ms(b):.4g} ms" if to_ms(b) >= 0.1 else f"{to_ms(b) * 1e3:.4g} us"
        bytes_ = b.get("bytes_per_second")
        gbs = "" if bytes_ is None else f"{bytes_ / 1e9:.2f}"
        ggml = f"{b['x_ggml']:.2f}x" if "x_ggml" in b else ""
        print(f"| {name} | {time} | {b['items_per_second'] / 1e6:,.0f} M | {gbs} | {ggml} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json")
    parser.add_argument("--plot", help="PNG to write")
    parser.add_argument("--table", action="store_true", help="print a Markdown table of all results")
    args = parser.parse_args()
    _, runs = load(args.json)
    if not runs:
        sys.exit(f"{args.json}: no benchmarks")
    if args.plot:
        plot(runs, args.plot)
    if args.table:
        table(runs)


if __name__ == "__main__":
    main()
