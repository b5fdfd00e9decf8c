//! What a client puts in a chat prompt or a grammar: message content rendered through a ChatML
//! template and split into text and control tokens by the content guard, and the same bytes as
//! Lark, regex and JSON-schema sources for the grammar bounds check (which walks them before
//! llguidance does). Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tokenizers::Tokenizer;
use wick_backend::grammar::bounds::{check, SourceLimits};
use wick_backend::grammar::GrammarSpec;
use wick_router::chat_tokens::ContentGuard;
use wick_router::template::{ChatMessage, ChatTemplate};

const CHATML: &str = "{% for message in messages %}<|im_start|>{{ message['role'] }}\n\
{{ message['content'] | trim }}<|im_end|>\n{% endfor %}\
{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// A byte-level tokenizer with ChatML's two control tokens.
fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let mut vocab = serde_json::Map::new();
        vocab.insert("<|im_start|>".into(), 0.into());
        vocab.insert("<|im_end|>".into(), 1.into());
        for b in 0u32..256 {
            vocab.insert(format!("<0x{b:02X}>"), (b + 2).into());
        }
        let json = serde_json::json!({
            "version": "1.0",
            "added_tokens": [
                {"id": 0, "content": "<|im_start|>", "single_word": false, "lstrip": false,
                 "rstrip": false, "normalized": false, "special": true},
                {"id": 1, "content": "<|im_end|>", "single_word": false, "lstrip": false,
                 "rstrip": false, "normalized": false, "special": true}],
            "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": false, "byte_fallback": true, "ignore_merges": false,
                      "vocab": vocab, "merges": []},
        });
        Tokenizer::from_bytes(json.to_string()).expect("fuzz tokenizer")
    })
}

fn template() -> &'static ChatTemplate {
    static T: OnceLock<ChatTemplate> = OnceLock::new();
    T.get_or_init(|| ChatTemplate::new(Some(CHATML), None, None).expect("ChatML compiles"))
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let limits = SourceLimits {
        max_bytes: 1 << 16,
        max_depth: 128,
    };
    let _ = check(&GrammarSpec::Lark(text.to_string()), limits);
    let _ = check(&GrammarSpec::Regex(text.to_string()), limits);
    if let Ok(schema) = serde_json::from_slice(data) {
        let _ = check(&GrammarSpec::JsonSchema { schema, strict: true }, limits);
    }

    let parts: Vec<&str> = text.splitn(3, '\u{0}').collect();
    let messages: Vec<ChatMessage> = parts
        .iter()
        .enumerate()
        .map(|(i, c)| ChatMessage::new(if i % 2 == 0 { "user" } else { "assistant" }, *c))
        .collect();
    let Ok(plain) = template().render(&messages, true) else {
        return;
    };
    let guard = ContentGuard::new(tokenizer());
    if let Some(token) = messages.iter().find_map(|m| guard.special_in(&m.content)) {
        let marked: Vec<ChatMessage> = messages
            .iter()
            .map(|m| ChatMessage::new(m.role.clone(), ContentGuard::wrap(&m.content)))
            .collect();
        if let Ok(marked) = template().render(&marked, true) {
            if let Ok(ids) = guard.encode_marked(tokenizer(), &plain, &marked, token) {
                // The template writes one <|im_start|> per message and one for the answer;
                // content never adds one.
                let starts = ids.iter().filter(|&&t| t == 0).count();
                assert_eq!(starts, messages.len() + 1);
            }
        }
    }
});
