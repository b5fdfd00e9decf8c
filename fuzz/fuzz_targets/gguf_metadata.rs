//! GGUF files: the header check, candle's reader behind it, and the model and tokenizer
//! configuration read from the metadata. A malformed file must be a load error, never an abort.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Cursor;
use wick_backend::config::ModelConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(ct) = wick_backend::gguf::read_content(&mut Cursor::new(data), "fuzz.gguf") else {
        return;
    };
    let _ = ModelConfig::from_gguf(&ct, 0);
    let _ = wick_backend::tokenizer::from_gguf(&ct);
});
