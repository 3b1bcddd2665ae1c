#!/usr/bin/env python3
"""Condenses `ncu --csv --metrics ...` output (stdin) to one line per kernel launch: a short kernel
name and each metric's value, e.g.

    ncu --csv --metrics gpu__time_duration.sum,smsp__inst_executed.sum ./bench | tools/ncu_summary.py
"""
import csv
import re
import sys


def short(name):
    """The kernel's name without template arguments and parameters."""
    base = re.sub(r"\(.*", "", name)
    depth, out = 0, []
    for ch in base:
        depth += ch == "<"
        if depth == 0:
            out.append(ch)
        depth -= ch == ">"
    return "".join(out).replace("void ", "").strip()


def main():
    rows = [r for r in csv.reader(line for line in sys.stdin if line.startswith('"'))]
    if not rows:
        sys.exit("ncu_summary: no CSV rows on stdin")
    header, launches = rows[0], {}
    at = {name: header.index(name) for name in ("ID", "Kernel Name", "Metric Name", "Metric Value")}
    for r in rows[1:]:
        launch = launches.setdefault(r[at["ID"]], {"kernel": short(r[at["Kernel Name"]])})
        launch[r[at["Metric Name"]]] = r[at["Metric Value"]]
    for launch_id, values in launches.items():
        kernel = values.pop("kernel")
        print(f"{launch_id:>4} {kernel:<40} " + "  ".join(f"{k}={v}" for k, v in values.items()))


if __name__ == "__main__":
    main()
