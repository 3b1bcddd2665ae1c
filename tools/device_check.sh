#!/usr/bin/env bash
# Builds and runs the CUDA tests (plain and under compute-sanitizer memcheck) and the CUDA benchmark
# on a GPU machine without Debian's packages: Catch2's header and Google Benchmark come from DEPS
# (default .deps/, filled by tools/collect_device_deps.sh). Results go to OUT (default ./device-out).
set -euo pipefail
cd "$(dirname "$0")/.."
deps=${DEPS:-.deps}
out=${OUT:-device-out}
mkdir -p "$out" build-device
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
flags=(-std=c++20 -O3 -arch=sm_90 -Iinclude -Itests -I"$deps" -I"$deps/benchmark/include")
nvcc "${flags[@]}" -lineinfo tests/cuda/selective_scan_test.cu -o build-device/cuda_test &
nvcc "${flags[@]}" bench/cuda_scan_bench.cu -L"$deps/benchmark/lib" -lbenchmark -o build-device/cuda_scan_bench &
wait %1 && wait %2
export LD_LIBRARY_PATH="$PWD/$deps/benchmark/lib:${LD_LIBRARY_PATH:-}"

echo "== tests"
build-device/cuda_test --durations yes | tee "$out/cuda_test.txt" | tail -n 25
echo "== compute-sanitizer memcheck"
compute-sanitizer --tool memcheck --leak-check full --error-exitcode 1 \
  build-device/cuda_test "device step decodes like the scan" 2>&1 | tee "$out/memcheck.txt" | tail -n 5
compute-sanitizer --tool memcheck --error-exitcode 1 \
  build-device/cuda_test "device scans reject bad shapes before launching" 2>&1 | tail -n 3
echo "== benchmark"
build-device/cuda_scan_bench --benchmark_min_time=0.2 --benchmark_repetitions=3 \
  --benchmark_report_aggregates_only=true --benchmark_out="$out/cuda_scan_bench.json" \
  --benchmark_out_format=json "$@" 2>&1 | tee "$out/cuda_scan_bench.txt" | grep -E "median|copy" 
