#!/usr/bin/env bash
# Copies the Debian-packaged test, benchmark and model dependencies (Catch2's header, Google Benchmark,
# nlohmann-json, OpenBLAS with its runtime libraries) into .deps/ so that tools/device_check.sh can
# build on a GPU machine that lacks them.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .deps/catch2 .deps/benchmark/include .deps/benchmark/lib .deps/openblas/include .deps/openblas/lib
cp /usr/include/catch2/catch.hpp .deps/catch2/
cp -r /usr/include/benchmark .deps/benchmark/include/
cp /usr/lib/x86_64-linux-gnu/libbenchmark.so.1.7.1 .deps/benchmark/lib/
ln -sf libbenchmark.so.1.7.1 .deps/benchmark/lib/libbenchmark.so.1debian
ln -sf libbenchmark.so.1.7.1 .deps/benchmark/lib/libbenchmark.so
cp -r /usr/include/nlohmann .deps/
blas_headers=$(dirname "$(readlink -f /usr/include/x86_64-linux-gnu/cblas.h)")
cp "$blas_headers"/cblas.h "$blas_headers"/openblas_config.h .deps/openblas/include/
for lib in libopenblas.so.0 libgfortran.so.5 libquadmath.so.0; do
  cp "$(readlink -f /usr/lib/x86_64-linux-gnu/$lib)" ".deps/openblas/lib/$lib"
done
ln -sf libopenblas.so.0 .deps/openblas/lib/libopenblas.so
