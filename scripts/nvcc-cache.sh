#!/usr/bin/env bash
# nvcc with a cache of what it writes, for CI's CUDA build (.ci/run): candle-kernels compiles
# 26 CUDA files, one at a time, in its build script (most of the CUDA step's time on 2
# cores), and they only change with candle's version, the CUDA toolkit or the target GPU.
#
# Usage: scripts/nvcc-cache.sh install ROOT  makes ROOT a CUDA root for cudaforge's NVCC
#          (bin/nvcc is this script; include/ and lib64/ are the real toolkit's), printing the
#          NVCC path; the real nvcc is the one on PATH at install time.
#        ROOT/bin/nvcc ARGS...  compiles like nvcc, from the cache when it can.
#
# A compile is cached when it writes one file: `-c -o FILE`, or `--ptx --output-directory DIR`
# (DIR/NAME.ptx). The key is the real nvcc's version, the arguments without the output, and the
# contents of every CUDA source and header under the input's `src` directory (its crate's
# sources), so an edited header misses. Anything else runs nvcc as it is. The cache lives in
# WICK_NVCC_CACHE (default ~/.cache/wick/nvcc); a miss stores its output there.
set -euo pipefail

if [[ "${1:-}" == install ]]; then
  root="${2:?usage: nvcc-cache.sh install ROOT}"
  real="$(command -v nvcc)" || { echo "nvcc-cache: no nvcc on PATH" >&2; exit 1; }
  real_root="$(cd "$(dirname "$real")/.." && pwd)"
  mkdir -p "$root/bin"
  for d in include lib lib64 nvvm; do ln -sfn "$real_root/$d" "$root/$d"; done
  echo "$real" >"$root/bin/real-nvcc"
  cp "${BASH_SOURCE[0]}" "$root/bin/nvcc"
  chmod +x "$root/bin/nvcc"
  echo "$root/bin/nvcc"
  exit 0
fi

real="$(cat "$(dirname "${BASH_SOURCE[0]}")/real-nvcc")"
out="" outdir="" input="" ptx=0
key_args=()
prev=""
for a in "$@"; do
  case "$prev" in
    -o) out="$a"; prev=""; continue ;;
    --output-directory) outdir="$a"; prev=""; continue ;;
  esac
  case "$a" in
    -o | --output-directory) prev="$a" ;;
    --ptx) ptx=1; key_args+=("$a") ;;
    *.cu) input="$a"; key_args+=("$a") ;;
    *) key_args+=("$a") ;;
  esac
done
if [[ -z "$input" ]]; then
  exec "$real" "$@"
fi
if [[ -z "$out" && -n "$outdir" && "$ptx" == 1 ]]; then
  name="$(basename "$input")"
  out="$outdir/${name%.cu}.ptx"
fi
if [[ -z "$out" ]]; then
  exec "$real" "$@"
fi
src="$(dirname "$input")"
while [[ "$src" != / && "$(basename "$src")" != src ]]; do src="$(dirname "$src")"; done
[[ "$src" == / ]] && src="$(dirname "$input")"

key="$(
  {
    "$real" --version
    printf '%s\n' "${key_args[@]}"
    find "$src" -type f \( -name '*.cu' -o -name '*.cuh' -o -name '*.h' \) -print0 | sort -z |
      xargs -0 sha256sum
  } | sha256sum | cut -c1-32
)"
cache="${WICK_NVCC_CACHE:-$HOME/.cache/wick/nvcc}"
hit="$cache/$key"
if [[ -f "$hit" ]]; then
  cp "$hit" "$out"
  exit 0
fi
"$real" "$@"
mkdir -p "$cache"
tmp="$(mktemp "$cache/.tmp.XXXXXX")"
cp "$out" "$tmp"
chmod 644 "$tmp"
mv "$tmp" "$hit"
