#!/usr/bin/env bash
# Where a decoding step's time goes on the device: copies include/ to build-timeline/ with probes in
# matvec_kernel, step_kernel and step_product_kernel (%globaltimer at a block's start, after its wait
# for the previous kernel, after its inputs, after its weights, after its products, at its end;
# earliest start and wait, latest of the others over the blocks), then decodes one token of
# mamba-130m-shaped models (fp32 and bf16) from a CUDA graph and prints each kernel's times in ns.
# Needs a GPU; DEPS as in tools/device_check.sh. Usage: bash tools/decode_timeline/run.sh > timeline.txt
set -euo pipefail
cd "$(dirname "$0")/../.."
deps=${DEPS:-.deps}
python3 tools/decode_timeline/probe_headers.py
nvcc -std=c++20 -O3 -arch=sm_90 -Ibuild-timeline/include -Ibench -I"$deps" -I"$deps/openblas/include" \
  tools/decode_timeline/timeline.cu -L"$deps/openblas/lib" -lopenblas -lcublas -o build-timeline/timeline
LD_LIBRARY_PATH="$PWD/$deps/openblas/lib:${LD_LIBRARY_PATH:-}" build-timeline/timeline
