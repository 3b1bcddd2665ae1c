#!/usr/bin/env python3
"""The passkey prompt format shared by tools/train_passkey.py and ``ssm-run passkey`` (keep them equal).

  filler   "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
           repeated and cut to the room the needle and the question leave
  needle   "The pass key is 12345. Remember it. 12345 is the pass key. "
           inserted at the last sentence start at or before floor(depth * room)
  question "What is the pass key? The pass key is "

Run as a script, it writes samples (prompt + 5-digit answer, each exactly LENGTH + 5 bytes, no
separator) for ``ssm-run ppl/calibrate --window LENGTH+5 --score-last 5``, which then measure or
calibrate the loss of the answer given the prompt:

  python3 tools/passkey_format.py --length 2048 --count 8 --seed 1 > passkey_2048.txt
"""

import argparse
import math
import random
import sys

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
QUESTION = "What is the pass key? The pass key is "


def needle(key):
    return f"The pass key is {key}. Remember it. {key} is the pass key. "


def passkey_prompt(length, depth, key):
    """The prompt of exactly `length` bytes (without the answer)."""
    n = needle(key)
    room = length - len(n) - len(QUESTION)
    if room < 0:
        raise ValueError(f"length {length} is shorter than the needle and question ({len(n) + len(QUESTION)})")
    filler = (FILLER * (room // len(FILLER) + 1))[:room]
    at = int(math.floor(depth * room))
    start = 0
    i = filler.find(". ")
    while i >= 0 and i + 2 <= at:
        start = i + 2
        i = filler.find(". ", i + 1)
    return (filler[:start] + n + filler[start:] + QUESTION).encode()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--length", type=int, required=True, help="prompt length in bytes")
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    for i in range(args.count):
        key = rng.randint(10000, 99999)
        depth = i / max(1, args.count - 1)  # depths spread evenly over [0, 1]
        sys.stdout.buffer.write(passkey_prompt(args.length, depth, key) + str(key).encode())


if __name__ == "__main__":
    main()
