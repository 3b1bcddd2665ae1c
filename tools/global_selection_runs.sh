#!/usr/bin/env bash
# The global selection experiment of docs/results.md on one GPU: the module's test fixture, then models
# trained side by side for SECONDS each, plain and with the module (K_g = 128, as the paper's code uses
# for Mamba-130M): associative recall with each value next to its key (gap 1), and multi-query recall
# with two-token keys and values (ngram: 4 pairs in 64 tokens), held out also with keys that share
# their last token.
# Models, logs and JSON go to OUT.
#   usage: tools/global_selection_runs.sh OUT [SECONDS]
set -euo pipefail
out=$1 seconds=${2:-240}
tool="$(dirname "$0")/train_global_selection.py"
mkdir -p "$out"
python3 "$tool" --fixture "$out/fixture" 2>&1 | tee "$out/fixture.log"
declare -A task_args=([recall]="--task recall" [ngram]="--task ngram --pairs 4 --length 64")
for task in recall ngram; do
  python3 "$tool" --out "$out/smoke-$task" ${task_args[$task]} --global-kernel 128 --seconds 3 --eval-sequences 256 \
    > "$out/smoke-$task.log" 2>&1 || { tail -n 30 "$out/smoke-$task.log"; exit 1; }
done
for task in recall ngram; do
  for kernel in 0 128; do
    name=$task-$([ $kernel = 0 ] && echo plain || echo global)
    python3 "$tool" --out "$out/$name" ${task_args[$task]} --global-kernel $kernel --seconds "$seconds" \
      > "$out/$name.log" 2>&1 &
  done
done
status=0
for job in $(jobs -p); do wait "$job" || status=1; done
tail -n 3 "$out"/recall-*.log "$out"/ngram-*.log
exit $status
