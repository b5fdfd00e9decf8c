#!/usr/bin/env bash
# The whole test suite: fetches the real model if needed, then every unit and integration test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/fetch-model.sh >/dev/null
cargo test --workspace "$@"
