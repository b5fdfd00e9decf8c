#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/) for a bounded time each: the request parsers, chat
# content and grammar sources, GGUF metadata. Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]
# (default 30). Starts from the seeds in fuzz/seeds/ plus any corpus kept in fuzz/corpus/.
# The machine's toolchain is stable; cargo-fuzz passes nightly flags, so RUSTC_BOOTSTRAP=1.
# No sanitizer: the code under test is safe Rust, and libFuzzer alone finds panics, aborts,
# stack overflows and runaway memory (-rss_limit_mb).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"
seconds="${1:-30}"
if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --locked --version "=0.13.2" --quiet
fi
export RUSTC_BOOTSTRAP=1
targets=(requests chat_input gguf_metadata)
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  log="$(mktemp)"
  echo "fuzz: $t for ${seconds}s"
  if ! cargo fuzz run --sanitizer none "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$seconds" -rss_limit_mb=4096 -max_len=65536 -print_final_stats=1 \
      >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz: $t failed (a finding is saved under fuzz/artifacts/$t)" >&2
    exit 1
  fi
  grep -E "^stat::(number_of_executed_units|peak_rss_mb)" "$log" || true
  rm -f "$log"
done
