#!/usr/bin/env bash
# The device smoke run: `wick serve` on the given device, teacher-forced agreement with llama.cpp
# (fixtures/chat-ref.json, within 0.5 logits), a load test at 1, 16 and 64 clients, one JSON
# report (scripts/smoke.py; standard-library Python only).
#
# On a GPU machine (no Rust there): build here first, then carry the binary and the model,
#   . /tmp/cuda13/env.sh && cargo build --release -p wick-router --features cuda
#   scripts/gpu-smoke.sh --wick target/release/wick --device cuda:0 --out "$OUT/smoke.json"
# In CI, the same script on the CPU through the device-generic path (the code CUDA runs):
#   scripts/gpu-smoke.sh --device cpu --generic-path --seconds 5 --max-tokens 16 --clients 1,16,64
#
# Options (all passed to smoke.py): --wick BIN (default target/release/wick), --model GGUF
# (default models/SmolLM2-135M-Instruct.Q4_1.gguf), --device, --generic-path, --out FILE
# (default target/smoke-report.json), --seconds, --max-tokens, --clients, --kv-cache-memory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
args=("$@")
has() { local a; for a in "${args[@]}"; do [[ $a == "$1" ]] && return 0; done; return 1; }
has --wick || args+=(--wick target/release/wick)
has --model || args+=(--model models/SmolLM2-135M-Instruct.Q4_1.gguf)
has --out || args+=(--out target/smoke-report.json)
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
exec env PYTHONUNBUFFERED=1 python3 scripts/smoke.py "${args[@]}"
