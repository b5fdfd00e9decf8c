#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` (the CPU peer of docs/benchmarks.md) from the llama.cpp that
# the PyPI source distribution of llama-cpp-python==0.3.36 vendors, into a cache folder outside the
# repository, and prints the binary's path on stdout. Idempotent: a built binary is reused.
#
#   scripts/build-llama-server.sh            # build (about 5-10 minutes on 2 cores) or reuse
#   WICK_PEER_CACHE=/some/dir scripts/...    # another cache folder
#
# CMake and Ninja come from PyPI into a private virtual environment; only the server target is
# built. Not with GGML_NATIVE: on a Xeon with AMX, llama.cpp's native build runs tile instructions
# without asking the kernel for the tile permission and dies with "Illegal instruction" at the
# first request. Instead every x86 extension this CPU reports (/proc/cpuinfo) is named for the
# build (AVX2, FMA, F16C, BMI2, AVX-VNNI, AVX-512 and its VNNI, VBMI and BF16 parts), and AMX is
# always off, so the peer uses what the machine has and runs anywhere it was built.
set -euo pipefail

VERSION=0.3.36
CACHE="${WICK_PEER_CACHE:-$HOME/.cache/wick/llama-cpp-python-$VERSION}"
BUILD="$CACHE/build-named-isa"
BIN="$BUILD/bin/llama-server"
log() { echo "build-llama-server: $*" >&2; }

if [ -x "$BIN" ]; then
    echo "$BIN"
    exit 0
fi
mkdir -p "$CACHE"
if [ ! -x "$CACHE/venv/bin/cmake" ]; then
    log "installing cmake and ninja from PyPI into $CACHE/venv"
    python3 -m venv "$CACHE/venv"
    "$CACHE/venv/bin/pip" install -q cmake==4.1.2 ninja==1.13.0
fi
SRC="$CACHE/llama_cpp_python-$VERSION/vendor/llama.cpp"
if [ ! -d "$SRC" ]; then
    log "downloading the llama-cpp-python==$VERSION source distribution"
    "$CACHE/venv/bin/pip" download -q --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$VERSION" -d "$CACHE/dist"
    tar -xzf "$CACHE/dist/llama_cpp_python-$VERSION.tar.gz" -C "$CACHE"
fi
export PATH="$CACHE/venv/bin:$PATH"
# ON when the CPU reports flag $1.
has() { grep -qw "$1" /proc/cpuinfo && echo ON || echo OFF; }
ISA=(
    -DGGML_AVX="$(has avx)" -DGGML_AVX2="$(has avx2)" -DGGML_FMA="$(has fma)"
    -DGGML_F16C="$(has f16c)" -DGGML_BMI2="$(has bmi2)" -DGGML_AVX_VNNI="$(has avx_vnni)"
    -DGGML_AVX512="$(has avx512f)" -DGGML_AVX512_VNNI="$(has avx512_vnni)"
    -DGGML_AVX512_VBMI="$(has avx512vbmi)" -DGGML_AVX512_BF16="$(has avx512_bf16)"
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
)
log "configuring $SRC with ${ISA[*]}"
cmake -S "$SRC" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF "${ISA[@]}" \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >&2
log "building llama-server with $(nproc) jobs"
cmake --build "$BUILD" --target llama-server -j "$(nproc)" >&2
echo "$BIN"
