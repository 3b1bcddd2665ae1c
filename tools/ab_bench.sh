#!/usr/bin/env bash
# A/B of the CUDA model benchmarks: cuda_model_bench built from a baseline's headers and from the
# working tree's, run alternately in one call so that both see the same GPU, clocks and neighbours.
# The device machine gets the working tree but not the history, so the baseline's include/ is
# exported on the host first:
#   bash tools/ab_bench.sh prepare [COMMIT]        # default HEAD: writes build-ab/base/include
# then, on the GPU machine (carry .deps and build-ab; DEPS as in tools/device_check.sh):
#   bash tools/ab_bench.sh run [benchmark arguments]   # default: decode at batch 1 from a graph
# ROUNDS (default 2) pairs, medians of 3 repetitions each, printed as "== base|tree ROUND".
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  prepare)
    rm -rf build-ab/base && mkdir -p build-ab/base
    git archive "${2:-HEAD}" include | tar -x -C build-ab/base
    git rev-parse "${2:-HEAD}" > build-ab/base/commit ;;
  run)
    shift
    deps=${DEPS:-.deps}
    [ -d build-ab/base/include ] || { echo "ab_bench: run 'prepare' on the host first" >&2; exit 1; }
    build() {
      nvcc -std=c++20 -O3 -arch=sm_90 -I"$1" -Itests -I"$deps" -I"$deps/benchmark/include" \
        -I"$deps/openblas/include" bench/cuda_model_bench.cu -L"$deps/openblas/lib" -lopenblas -lcublas \
        -L"$deps/benchmark/lib" -lbenchmark -o "$2"
    }
    build build-ab/base/include build-ab/bench_base &
    build include build-ab/bench_tree &
    for job in $(jobs -p); do wait "$job"; done
    export LD_LIBRARY_PATH="$PWD/$deps/benchmark/lib:$PWD/$deps/openblas/lib:${LD_LIBRARY_PATH:-}"
    args=("$@")
    [ ${#args[@]} -gt 0 ] || args=(--benchmark_min_time=0.2 '--benchmark_filter=decode.*/batch:1/graph:1')
    echo "base: $(cat build-ab/base/commit)"
    for round in $(seq "${ROUNDS:-2}"); do
      for side in base tree; do
        echo "== $side $round"
        build-ab/bench_$side --benchmark_repetitions=3 --benchmark_report_aggregates_only=true "${args[@]}" 2>&1 |
          grep -E "median|rror"
      done
    done ;;
  *) echo "usage: tools/ab_bench.sh prepare [COMMIT] | run [benchmark arguments]" >&2; exit 2 ;;
esac
