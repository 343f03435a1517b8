#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` and `llama-quantize` (the CPU yardstick of benchmarks/llamacpp_yardstick.py) from
# the llama.cpp source vendored in the `llama-cpp-python` sdist on PyPI: CMake, CPU only, no network at build time.
# Source and binaries stay under .cache/llama.cpp/ (never committed). Prints the bin directory.
# Usage: benchmarks/build_llama_server.sh   (needs cmake and a C++ compiler: apt-get install cmake g++)
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
ROOT=.cache/llama.cpp
SRC=$ROOT/llama_cpp_python-$VERSION/vendor/llama.cpp
BUILD=$ROOT/build-$VERSION-cpu
BIN=$BUILD/bin
PYTHON=${PYTHON:-.venv/bin/python}
if [[ -x $BIN/llama-server && -x $BIN/llama-quantize ]]; then
  echo "$BIN"; exit 0
fi
for tool in cmake c++; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install cmake g++)" >&2; exit 2; }
done
mkdir -p "$ROOT"
if [[ ! -f $SRC/CMakeLists.txt ]]; then
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-binary :all: --no-deps -d "$ROOT" \
    "llama-cpp-python==$VERSION" >&2
  tar -xzf "$ROOT/llama_cpp_python-$VERSION.tar.gz" -C "$ROOT"
fi
# Kernels for this machine's CPU, as a user building it for their own server would get, except AMX: -march=native
# turns on ggml's AMX matmul, whose first tile instruction is an invalid opcode (SIGILL) in a VM that advertises AMX
# without granting its tile state (this benchmark machine). So the ISA flags are set one by one from /proc/cpuinfo.
flags=$(grep -m1 '^flags' /proc/cpuinfo)
isa=()
for pair in avx:AVX avx2:AVX2 fma:FMA f16c:F16C avx512f:AVX512 avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16 \
            avx512vbmi:AVX512_VBMI; do
  if [[ " $flags " == *" ${pair%%:*} "* ]]; then isa+=("-DGGML_${pair#*:}=ON"); fi
done
cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF "${isa[@]}" -DGGML_AMX_TILE=OFF \
  -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$BUILD" --config Release -j "$(nproc)" --target llama-server llama-quantize >&2
echo "$BIN"
