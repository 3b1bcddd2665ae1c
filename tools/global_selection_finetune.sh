#!/usr/bin/env bash
# Global selection added to a pretrained model, as the paper does (docs/results.md): the shipped plain
# ngram model (examples/models/ngram-plain) fine-tuned side by side for SECONDS each, with and without
# the module (K_g = 128, gate starting at 1), on the training task as it was and with half of the
# batches from the robustness variant (keys sharing their last token); and the module trained alone
# on a frozen model. Models, logs and JSON go to OUT.
#   usage: tools/global_selection_finetune.sh OUT [SECONDS]
set -euo pipefail
out=$1 seconds=${2:-300}
here="$(dirname "$0")"
tool="$here/train_global_selection.py"
base=(--task ngram --pairs 4 --length 64 --init-from "$here/../examples/models/ngram-plain" --lr 1e-3)
module=(--global-kernel 128 --global-init identity)
mkdir -p "$out"
python3 "$tool" --out "$out/smoke" "${base[@]}" "${module[@]}" --train module --robust-fraction 0.5 --seconds 3 \
  --eval-sequences 256 > "$out/smoke.log" 2>&1 || { tail -n 30 "$out/smoke.log"; exit 1; }
declare -A runs=(
  [plain]=""
  [plain-robust]="--robust-fraction 0.5"
  [module]="${module[*]}"
  [module-robust]="${module[*]} --robust-fraction 0.5"
  [module-only-robust]="${module[*]} --robust-fraction 0.5 --train module"
)
for name in "${!runs[@]}"; do
  python3 "$tool" --out "$out/$name" "${base[@]}" ${runs[$name]} --seconds "$seconds" > "$out/$name.log" 2>&1 &
done
status=0
for job in $(jobs -p); do wait "$job" || status=1; done
for name in "${!runs[@]}"; do echo "== $name"; grep -E "accuracy" "$out/$name.log"; done
exit $status
