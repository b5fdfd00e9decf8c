#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` (the CPU peer of docs/benchmarks.md) from the llama.cpp that
# the PyPI source distribution of llama-cpp-python==0.3.36 vendors, into a cache folder outside the
# repository, and prints the binary's path on stdout. Idempotent: a built binary is reused.
#
#   scripts/build-llama-server.sh            # build (about 5-10 minutes on 2 cores) or reuse
#   WICK_PEER_CACHE=/some/dir scripts/...    # another cache folder
#
# CMake and Ninja come from PyPI into a private virtual environment; only the server target is
# built, with GGML_NATIVE so that the peer uses every instruction this machine has (it is built
# and run here, unlike our image).
set -euo pipefail

VERSION=0.3.36
CACHE="${WICK_PEER_CACHE:-$HOME/.cache/wick/llama-cpp-python-$VERSION}"
BIN="$CACHE/build/bin/llama-server"
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
log "configuring $SRC"
cmake -S "$SRC" -B "$CACHE/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_CURL=OFF -DGGML_NATIVE=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >&2
log "building llama-server with $(nproc) jobs"
cmake --build "$CACHE/build" --target llama-server -j "$(nproc)" >&2
echo "$BIN"
