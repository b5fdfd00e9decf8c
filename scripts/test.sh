#!/usr/bin/env bash
# The whole test suite: fetches the real model if needed, runs every unit and integration test,
# then drives the server with the `openai` Python SDK (metrics checked with a Prometheus parser;
# structured output and tool calls checked with `jsonschema` and Pydantic), with hostile inputs
# (tests/python/test_hostile.py), with schemathesis, and as an OpenTelemetry trace source
# (tests/python/test_tracing.py: an OTLP/HTTP receiver decodes its spans), and the web
# playground in Debian's headless Chromium through Playwright (tests/python/test_playground.py),
# installed in a virtualenv under target/; then the deployment files (kubectl kustomize,
# kubernetes-validate --strict, hadolint, manifests checked against the server), and the GPU
# smoke script on the CPU.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# Each part's wall time, printed as it ends (CI keeps its total under 45 minutes).
mark=$SECONDS
took() { echo "test: $1 took $((SECONDS - mark))s"; mark=$SECONDS; }
model="$(./scripts/fetch-model.sh)"
# The tokenizer fixtures of other catalogue models (router/tests/tokenizers.rs) need them, and
# the draft-model speculation tests the two Qwen models.
./scripts/fetch-model.sh qwen2.5-coder-0.5b >/dev/null
./scripts/fetch-model.sh qwen2.5-coder-1.5b >/dev/null
./scripts/fetch-model.sh gemma3-270m >/dev/null
cargo_args=("$@")
# The benches crate has no tests (clippy checks it, with its criterion benches): building its
# test targets here would only compile criterion for nothing.
cargo test --workspace --exclude wick-benches "$@"
took "cargo test --workspace (build and run)"
# The fixture tests again on Qwen2.5-Coder-0.5B (Q5_0/Q8_0/Q4_K/Q6_K weights, biases): Wick's
# chat prompts against llama.cpp's ids, teacher-forced agreement with llama.cpp, batch and
# block-size invariance.
# Selected from the whole workspace, as above (`-p wick-backend` alone would unify other
# features and rebuild every dependency, minutes on 2 cores).
fixture_tests() {
  local name="$1" fixture="$2"
  shift 2
  WICK_TEST_MODEL="$(./scripts/fetch-model.sh "$name")" WICK_TEST_CHAT_FIXTURE="$fixture" \
    cargo test --workspace --exclude wick-benches --test chat_prompts "${cargo_args[@]}" \
    -- --exact prompts_give_llama_cpp_ids
  WICK_TEST_MODEL="$(./scripts/fetch-model.sh "$name")" WICK_TEST_CHAT_FIXTURE="$fixture" \
    cargo test --workspace --exclude wick-benches --test engine_real "${cargo_args[@]}" \
    -- --exact "$@"
}
fixture_tests qwen2.5-coder-0.5b chat-qwen2.5-coder-0.5b.json \
  teacher_forced_logits_agree_with_llama_cpp batching_and_chunking_do_not_change_logits \
  block_sizes_give_bit_identical_logits
# And on Gemma 3 270M (SentencePiece, q/k and post norms, GELU, sliding windows; a base model, so
# plain-text prompts, one of 677 tokens that runs past the 512-token window), on both paths.
fixture_tests gemma3-270m chat-gemma3-270m.json \
  teacher_forced_logits_agree_with_llama_cpp \
  teacher_forced_logits_agree_with_llama_cpp_on_the_device_generic_path \
  batching_and_chunking_do_not_change_logits block_sizes_give_bit_identical_logits
# And Qwen2.5-Coder-1.5B (Q4_K and Q6_K only, 1.1 GB): prompts and teacher forcing.
fixture_tests qwen2.5-coder-1.5b chat-qwen2.5-coder-1.5b.json \
  teacher_forced_logits_agree_with_llama_cpp
took "the other catalogue models' fixture tests"

# The playground's browser test drives Debian's Chromium (never a downloaded browser): installed
# here when it is missing, where this runs as root with apt.
if [[ ! -x /usr/bin/chromium ]]; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    apt-get install -y -qq chromium >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null; }
  else
    echo "test: the playground test needs Debian's chromium (apt-get install chromium)" >&2
    exit 1
  fi
fi
venv=target/py-venv
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
cargo build --quiet -p wick-router --bin wick
took "the Python environment"
"$venv/bin/python" tests/python/test_openai_sdk.py target/debug/wick "$model"
"$venv/bin/python" tests/python/test_structured.py target/debug/wick "$model"
"$venv/bin/python" tests/python/test_agent_tools.py target/debug/wick \
  "$(./scripts/fetch-model.sh qwen2.5-coder-0.5b)" "$(./scripts/fetch-model.sh qwen2.5-coder-1.5b)"
"$venv/bin/python" tests/python/test_hostile.py target/debug/wick "$model"
"$venv/bin/python" tests/python/test_schemathesis.py target/debug/wick "$model"
"$venv/bin/python" tests/python/test_deploy.py target/debug/wick "$model"
"$venv/bin/python" tests/python/test_tracing.py target/debug/wick "$model"
took "the Python clients, schemathesis, deployment and tracing checks"
# The web playground in headless Chromium; its screenshots are kept under target/playground.
"$venv/bin/python" tests/python/test_playground.py target/debug/wick "$model" target/playground
took "the playground in a browser"
# The GPU smoke script, on the CPU through the device-generic path (the code CUDA runs).
PATH="$venv/bin:$PATH" ./scripts/gpu-smoke.sh --wick target/debug/wick --model "$model" \
  --device cpu --generic-path --seconds 3 --max-tokens 16 --out target/smoke-report-cpu.json
took "the GPU smoke script on the CPU"
