#!/usr/bin/env bash
# The global selection experiment of docs/results.md on one GPU: the module's test fixture, then three
# models trained side by side for SECONDS each on gapped associative recall: plain and with the module
# (K_g = 32) at gap 16, and plain at gap 1 (the local layout). Models, logs and JSON go to OUT.
#   usage: tools/global_selection_runs.sh OUT [SECONDS]
set -euo pipefail
out=$1 seconds=${2:-240}
tool="$(dirname "$0")/train_global_selection.py"
mkdir -p "$out"
python3 "$tool" --fixture "$out/fixture" 2>&1 | tee "$out/fixture.log"
python3 "$tool" --out "$out/smoke" --gap 16 --global-kernel 32 --seconds 3 --eval-sequences 256 > "$out/smoke.log" 2>&1 ||
  { tail -n 30 "$out/smoke.log"; exit 1; }
python3 "$tool" --out "$out/gap16-plain" --gap 16 --seconds "$seconds" > "$out/gap16-plain.log" 2>&1 &
python3 "$tool" --out "$out/gap16-global" --gap 16 --global-kernel 32 --seconds "$seconds" > "$out/gap16-global.log" 2>&1 &
python3 "$tool" --out "$out/gap1-plain" --gap 1 --seconds "$seconds" > "$out/gap1-plain.log" 2>&1 &
status=0
for job in $(jobs -p); do wait "$job" || status=1; done
tail -n 3 "$out"/gap*.log
exit $status
