#!/usr/bin/env bash
# The global selection experiment of docs/results.md on one GPU: the module's test fixture, then four
# models trained side by side for SECONDS each on gapped associative recall, plain and with the module
# (K_g = 16), at gap 8 and at gap 1 (the local layout). Models, logs and JSON go to OUT.
#   usage: tools/global_selection_runs.sh OUT [SECONDS]
set -euo pipefail
out=$1 seconds=${2:-240}
tool="$(dirname "$0")/train_global_selection.py"
mkdir -p "$out"
python3 "$tool" --fixture "$out/fixture" 2>&1 | tee "$out/fixture.log"
python3 "$tool" --out "$out/smoke" --global-kernel 16 --seconds 3 --eval-sequences 256 > "$out/smoke.log" 2>&1 ||
  { tail -n 30 "$out/smoke.log"; exit 1; }
for gap in 8 1; do
  python3 "$tool" --out "$out/gap$gap-plain" --gap $gap --seconds "$seconds" > "$out/gap$gap-plain.log" 2>&1 &
  python3 "$tool" --out "$out/gap$gap-global" --gap $gap --global-kernel 16 --seconds "$seconds" \
    > "$out/gap$gap-global.log" 2>&1 &
done
status=0
for job in $(jobs -p); do wait "$job" || status=1; done
tail -n 3 "$out"/gap*.log
exit $status
