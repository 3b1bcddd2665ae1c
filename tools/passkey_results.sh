#!/usr/bin/env bash
# The passkey experiments of docs/results.md for one model: per-layer factors calibrated on 8 passkey
# prompts of 2048 bytes (answer loss, `calibrate --score-last 5`), then `ssm-run passkey` grids (lengths
# 256-4096, depths 0-1, 20 trials a cell) for the model as trained and with each method. JSON goes to OUT.
#   usage: tools/passkey_results.sh MODEL OUT [SSM_RUN] [THREADS]
set -euo pipefail
model=$1 out=$2 run=${3:-build/examples/ssm-run} threads=${4:-0}
mkdir -p "$out"
python3 "$(dirname "$0")/passkey_format.py" --length 2048 --count 8 --seed 1 > "$out/calibration_2048.txt"
echo '{"a": 0.75}' > "$out/a075.json"
for factors in a delta delta,a; do
  echo "== calibrate $factors"
  "$run" calibrate "$model" "$out/calibration_2048.txt" --window 2053 --score-last 5 --max-windows 8 \
    --factors "$factors" --threads "$threads" --quiet --out "$out/calibrated_${factors/,/_}.json"
done
grid() {
  local name=$1; shift
  echo "== $name"
  "$run" passkey "$model" --lengths 256,512,1024,2048,4096 --trials 20 --json --quiet --threads "$threads" "$@" \
    > "$out/grid_$name.json"
}
grid vanilla
grid a075 --scaling "$out/a075.json"
grid calibrated_a --scaling "$out/calibrated_a.json"
grid calibrated_delta --scaling "$out/calibrated_delta.json"
grid calibrated_delta_a --scaling "$out/calibrated_delta_a.json"
grid clip5_95 --spectrum-percentiles 5,95
grid decimate2 --decimate 2 --decimation-base 256
grid decimate2_calibrated_a --scaling "$out/calibrated_a.json" --decimate 2 --decimation-base 256
