//! What the criterion benchmarks share: where the real model is.

use std::path::PathBuf;

/// The real model: `WICK_MODEL`, or the one `scripts/fetch-model.sh` puts in `models/`.
pub fn model_path() -> PathBuf {
    std::env::var_os("WICK_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../models/SmolLM2-135M-Instruct.Q4_1.gguf")
        })
}
