#!/usr/bin/env bash
# (From the team's shared notes, ../shared/cuda/setup-cuda13.sh, kept here so that a clean clone builds the
# CUDA variant in CI; see ../shared/cuda-build.md for the pitfalls behind each step.)
# Build-only CUDA 13.0 toolchain for candle 0.11 (`cuda` feature) from PyPI wheels, no GPU, no NVIDIA repo.
# Usage: setup-cuda13.sh PREFIX [full|lite]
#   full: + cublas/curand/nvrtc wheels (~675 MB download, 1.2 GB on disk): link against the real libraries
#   lite: compiler + headers + cudart only (~105 MB download, 0.3 GB); the big libraries are replaced
#         by generated link-time stubs (same sonames). Enough to compile and link in CI.
set -euo pipefail
PREFIX=${1:?prefix}; MODE=${2:-full}
mkdir -p "$PREFIX"; PREFIX=$(cd "$PREFIX" && pwd)
# Pin every wheel to CUDA 13.0: the GPU box has driver 580 (= CUDA 13.0) and candle JIT-loads PTX,
# which a 580 driver only accepts from nvcc <= 13.0. cudarc 0.19.10 also panics on nvcc > 13.4.
# nvidia-nvvm must be pinned too, or pip pulls the newest cicc (13.5) under nvcc 13.0.
PKGS="nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85"
[ "$MODE" = full ] && PKGS="$PKGS nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88"
python3 -m venv "$PREFIX/venv"
"$PREFIX/venv/bin/pip" install -q $PKGS
W=$("$PREFIX/venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
R="$PREFIX/cuda"                       # the CUDA_ROOT that cudarc/cudaforge expect
rm -rf "$R"; mkdir -p "$R/lib64/stubs"
ln -s "$W/bin" "$R/bin"; ln -s "$W/include" "$R/include"; ln -s "$W/nvvm" "$R/nvvm"; ln -s lib64 "$R/lib"
for f in "$W"/lib/lib*.so.*; do            # versioned libs + the unversioned names the linker wants
  b=$(basename "$f"); ln -s "$f" "$R/lib64/$b"; [ -e "$R/lib64/${b%%.so.*}.so" ] || ln -s "$b" "$R/lib64/${b%%.so.*}.so"
done
# Link-time stubs generated from cudarc's own declarations (cudarc must be in ~/.cargo/registry:
# run `cargo fetch` in the project first). libcuda.so.1 is always a stub: no wheel ships it.
CUDARC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* | sort -V | tail -1)
mkstub() { # mkstub SYS_MODULE SONAME [EXTRA_C]
  local mod=$1 so=$2 base=${2%%.so.*} c; c=$(mktemp --suffix=.c)
  { echo "${3:-}"; grep -ohE '^pub unsafe fn [A-Za-z0-9_]+' "$CUDARC/src/$mod/sys/mod.rs" | sed 's/^pub unsafe fn //' \
      | sort -u | grep -vxE 'cuGetErrorString|cuGetErrorName' | sed 's/.*/int &(void) { return 100; }/'; } > "$c"
  gcc -shared -fPIC -O2 -Wl,-soname,"$so" -o "$R/lib64/stubs/$so" "$c"; ln -sf "$so" "$R/lib64/stubs/$base.so"; rm -f "$c"
}
mkstub driver libcuda.so.1 'static const char *m = "no NVIDIA driver (libcuda stub)";
int cuGetErrorString(int e, const char **s) { (void)e; if (s) *s = m; return 0; }
int cuGetErrorName(int e, const char **s) { (void)e; if (s) *s = "CUDA_ERROR_NO_DEVICE"; return 0; }'
if [ "$MODE" = lite ]; then
  mkstub cublas libcublas.so.13; mkstub cublaslt libcublasLt.so.13; mkstub curand libcurand.so.10; mkstub nvrtc libnvrtc.so.13
fi
cat > "$PREFIX/env.sh" <<ENV
export CUDA_ROOT=$R CUDA_HOME=$R CUDA_PATH=$R
export PATH=$R/bin:\$PATH
export CUDA_COMPUTE_CAP=90   # no nvidia-smi here; 90 -> sm_90a (H100/H200 only)
ENV
"$R/bin/nvcc" --version | tail -2
echo "ok: . $PREFIX/env.sh && cargo build --release"
