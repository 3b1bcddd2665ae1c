#!/usr/bin/env bash
# Builds and runs the CUDA tests (plain and under compute-sanitizer memcheck), ssm-run on the device and
# the CUDA benchmarks on a GPU machine without Debian's packages: Catch2, Google Benchmark, nlohmann-json
# and OpenBLAS come from DEPS (default .deps/, filled by tools/collect_device_deps.sh). Results go to
# OUT (default ./device-out). Arguments are passed to the benchmarks (e.g. --benchmark_filter=...).
set -euo pipefail
cd "$(dirname "$0")/.."
deps=${DEPS:-.deps}
out=${OUT:-device-out}
mkdir -p "$out" build-device
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
flags=(-std=c++20 -O3 -arch=sm_90 -Iinclude -Itests -I"$deps" -I"$deps/benchmark/include" -I"$deps/openblas/include"
       -DSSM_FIXTURES_DIR="\"$PWD/tests/fixtures/hf\"")
libs=(-L"$deps/openblas/lib" -lopenblas -lcublas -L"$deps/benchmark/lib")
b=build-device
tests=(main selective_scan_test complex_scan_test ssd_test step_test matvec_test models_test)
for t in "${tests[@]}"; do nvcc "${flags[@]}" -lineinfo -c tests/cuda/$t.cu -o $b/$t.o & done
nvcc "${flags[@]}" bench/cuda_scan_bench.cu "${libs[@]}" -lbenchmark -o $b/cuda_scan_bench &
nvcc "${flags[@]}" bench/cuda_model_bench.cu "${libs[@]}" -lbenchmark -o $b/cuda_model_bench &
nvcc "${flags[@]}" -DSSM_RUN_CUDA -x cu examples/ssm_run.cpp "${libs[@]}" -o $b/ssm-run &
for job in $(jobs -p); do wait "$job"; done
objects=(); for t in "${tests[@]}"; do objects+=("$b/$t.o"); done
nvcc -arch=sm_90 "${objects[@]}" "${libs[@]}" -o $b/cuda_test
export LD_LIBRARY_PATH="$PWD/$deps/benchmark/lib:$PWD/$deps/openblas/lib:${LD_LIBRARY_PATH:-}"

echo "== tests"
$b/cuda_test --durations yes | tee "$out/cuda_test.txt" | tail -n 40
echo "== compute-sanitizer memcheck"
compute-sanitizer --tool memcheck --leak-check full --error-exitcode 1 \
  $b/cuda_test "device step decodes like the scan" 2>&1 | tee "$out/memcheck.txt" | tail -n 5
compute-sanitizer --tool memcheck --error-exitcode 1 $b/cuda_test "device scans reject bad shapes before launching" \
  2>&1 | tail -n 3
compute-sanitizer --tool memcheck --error-exitcode 1 \
  $b/cuda_test "device models match Hugging Face transformers on the reference fixtures" 2>&1 |
  tee "$out/memcheck_models.txt" | tail -n 3
compute-sanitizer --tool memcheck --error-exitcode 1 $b/cuda_test "[decimation]" 2>&1 | tail -n 3
compute-sanitizer --tool memcheck --error-exitcode 1 $b/cuda_test "[matvec]" 2>&1 | tail -n 3
compute-sanitizer --tool memcheck --error-exitcode 1 $b/cuda_test "device SSD matches the float64 reference" 2>&1 |
  tail -n 3
echo "== ssm-run on the shipped model"
for dev in "--device cpu --threads 16" "--device cuda" "--device cuda --dtype bf16"; do
  /usr/bin/time -f "%e s wall" $b/ssm-run ppl examples/models/kjv-mamba1 examples/data/kjv-heldout.txt \
    --window 1024 --max-windows 32 --quiet $dev 2>&1 | tail -n 3
done
$b/ssm-run generate examples/models/kjv-mamba1 --prompt "And God said" --tokens 200 --device cuda | tee "$out/generate.txt"
echo "== benchmarks"
$b/cuda_model_bench --benchmark_repetitions=3 --benchmark_report_aggregates_only=true \
  --benchmark_out="$out/cuda_model_bench.json" --benchmark_out_format=json "$@" 2>&1 |
  tee "$out/cuda_model_bench.txt" | grep -E "median"
