//! Wick's tokenizers against llama.cpp's token ids on the catalogue models: every
//! `fixtures/tokenize-<name>.json` (SmolLM2's included; the others written by
//! `scripts/make-tokenizer-fixture.py` from llama-server) must match id for id, and decoding
//! must give the text back. Qwen2.5-Coder-1.5B has no fixture of its own: its vocabulary is the
//! 0.5B's, and llama-server gives both the same ids on every case. The models come
//! from `scripts/fetch-model.sh <name>` (scripts/test.sh fetches them).

use std::path::PathBuf;
use wick_backend::tokenizer::load_tokenizer;
use wick_router::cli::catalogue_path;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn catalogue_tokenizers_match_llama_cpp_ids_and_round_trip() {
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(root().join("fixtures")).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        let Some(name) = file
            .strip_prefix("tokenize-")
            .and_then(|f| f.strip_suffix(".json"))
        else {
            continue;
        };
        let Some(model) = catalogue_path(name, &root().join("models")) else {
            continue;
        };
        assert!(
            model.exists(),
            "{} is missing: run scripts/fetch-model.sh {name}",
            model.display()
        );
        let tok = load_tokenizer(&model).unwrap();
        let fixture: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for case in fixture["cases"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let want: Vec<u32> = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let got = tok
                .tokenizer
                .encode(text, false)
                .unwrap()
                .get_ids()
                .to_vec();
            assert_eq!(got, want, "{name}: encoding {text:?}");
            let back = tok.tokenizer.decode(&want, false).unwrap();
            // SentencePiece writes spaces as `▁`, so a `▁` in the text comes back as a space
            // (in llama.cpp too).
            let spaced = text.replace('\u{2581}', " ");
            assert!(
                back == text || back == spaced,
                "{name}: decoding {want:?} gave {back:?}"
            );
        }
        checked.push(name.to_string());
    }
    assert!(!checked.is_empty(), "no catalogue tokenizer fixture found");
}
