#!/usr/bin/env bash
# Global selection where keys are longer than the short convolution (docs/results.md, "Keys longer than
# the short convolution"): ngram recall with 6-token keys (4 pairs in 128 tokens), so that at S2 the
# 4-tap convolution sees only the key's last three tokens, and in the robustness variant (keys sharing
# all but their first token) only the scan state or the module's 128 taps reach what tells keys apart.
# For each seed, the plain model and the model with the module (gate starting at 1), trained from
# scratch for SECONDS each, one run a GPU where there are enough (round robin otherwise).
# Models, logs and JSON go to OUT.
#   usage: tools/global_selection_key_length.sh OUT [SECONDS [SEED...]]
set -euo pipefail
out=$1 seconds=${2:-420}
seeds=("${@:3}"); [ ${#seeds[@]} -gt 0 ] || seeds=(0 1)
tool="$(dirname "$0")/train_global_selection.py"
task=(--task ngram --pairs 4 --length 128 --key-length 6)
mkdir -p "$out"
python3 "$tool" --out "$out/smoke" "${task[@]}" --global-kernel 128 --seconds 3 --eval-sequences 256 \
  > "$out/smoke.log" 2>&1 || { tail -n 30 "$out/smoke.log"; exit 1; }
gpus=$(nvidia-smi --list-gpus | wc -l)
names=() i=0
for seed in "${seeds[@]}"; do
  for model in plain module; do
    args=(--seed "$seed"); [ $model = plain ] || args+=(--global-kernel 128 --global-init identity)
    CUDA_VISIBLE_DEVICES=$((i % gpus)) python3 "$tool" --out "$out/$model$seed" "${task[@]}" "${args[@]}" \
      --seconds "$seconds" > "$out/$model$seed.log" 2>&1 &
    names+=("$model$seed") i=$((i + 1))
  done
done
status=0
for job in $(jobs -p); do wait "$job" || status=1; done
for name in "${names[@]}"; do echo "== $name"; grep -E "accuracy" "$out/$name.log" | tail -n 2; done
exit $status
