#!/usr/bin/env bash
# Copies the Debian-packaged test and benchmark dependencies (Catch2's header, Google Benchmark) into
# .deps/ so that tools/device_check.sh can build on a GPU machine that lacks them.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .deps/catch2 .deps/benchmark/include .deps/benchmark/lib
cp /usr/include/catch2/catch.hpp .deps/catch2/
cp -r /usr/include/benchmark .deps/benchmark/include/
cp /usr/lib/x86_64-linux-gnu/libbenchmark.so.1.7.1 .deps/benchmark/lib/
ln -sf libbenchmark.so.1.7.1 .deps/benchmark/lib/libbenchmark.so.1debian
ln -sf libbenchmark.so.1.7.1 .deps/benchmark/lib/libbenchmark.so
