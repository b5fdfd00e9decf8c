//! Tokenizers and chat-template metadata, from GGUF metadata or a Hugging Face directory.
//!
//! GGUF: built with the `tokenizers` crate from `tokenizer.ggml.tokens`: a byte-level BPE from
//! `tokenizer.ggml.merges` with the pre-tokenizer that `tokenizer.ggml.pre` names (`gpt2`), or a
//! SentencePiece vocabulary from `tokenizer.ggml.scores` ([`spm`], `llama`); control tokens
//! (`token_type` 3) as special added tokens, user-defined ones (4) as added tokens matched in the
//! raw text, BOS/EOS ids and `tokenizer.chat_template`.
//! Directory: `tokenizer.json`, with `tokenizer_config.json` (chat template, special tokens) and
//! `generation_config.json` (EOS ids). The same [`TokenizerInfo`] comes out of both.

mod spm;

use crate::config::{gguf_str, gguf_usize, gguf_value};
use crate::error::LoadError;
use candle_core::quantized::gguf_file;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::Path;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

/// A loaded tokenizer and what the rest of the server needs to know about its vocabulary.
pub struct TokenizerInfo {
    pub tokenizer: Tokenizer,
    pub bos_token_id: Option<u32>,
    /// Whether plain prompts start with BOS (chat templates add it themselves when they want it).
    pub add_bos_token: bool,
    pub eos_token_ids: Vec<u32>,
    pub chat_template: Option<String>,
    /// Control tokens by text.
    pub special_tokens: BTreeMap<String, u32>,
}

impl TokenizerInfo {
    pub fn bos_token(&self) -> Option<String> {
        self.bos_token_id
            .and_then(|id| self.tokenizer.id_to_token(id))
    }

    pub fn eos_token(&self) -> Option<String> {
        self.eos_token_ids
            .first()
            .and_then(|&id| self.tokenizer.id_to_token(id))
    }
}

/// Loads the tokenizer of a model file or directory (the same path as the weights).
pub fn load_tokenizer(path: &Path) -> Result<TokenizerInfo, LoadError> {
    if path.is_dir() {
        from_hf_dir(path)
    } else {
        let mut file = std::fs::File::open(path).map_err(|e| LoadError::io(path, e))?;
        let ct = crate::gguf::read_content(&mut file, &path.display().to_string())?;
        from_gguf(&ct)
    }
}

fn tok_err(reason: impl std::fmt::Display) -> LoadError {
    LoadError::Tokenizer {
        reason: reason.to_string(),
    }
}

fn gguf_strings(ct: &gguf_file::Content, key: &str) -> Result<Vec<String>, LoadError> {
    let arr = gguf_value(ct, key)?
        .to_vec()
        .map_err(|e| LoadError::invalid(key, e.to_string()))?;
    arr.iter()
        .map(|v| {
            v.to_string()
                .map(|s| s.to_string())
                .map_err(|e| LoadError::invalid(key, e.to_string()))
        })
        .collect()
}

/// Llama 3's split (also `llama-bpe`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 2's split.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn split(pattern: &str) -> Result<PreTokenizerWrapper, LoadError> {
    let split = Split::new(
        SplitPattern::Regex(pattern.into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(tok_err)?;
    Ok(split.into())
}

/// The pre-tokenizer llama.cpp uses for a `tokenizer.ggml.pre` name.
fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper, LoadError> {
    let byte_level =
        |use_regex: bool| -> PreTokenizerWrapper { ByteLevel::new(false, false, use_regex).into() };
    Ok(match pre {
        // ByteLevel's own regex is the GPT-2 split.
        "default" | "gpt-2" | "gpt2" => byte_level(true),
        // Digits one by one, then the GPT-2 split.
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level(true)]).into(),
        "llama3" | "llama-v3" | "llama-bpe" => {
            Sequence::new(vec![split(LLAMA3_SPLIT)?, byte_level(false)]).into()
        }
        "qwen2" => Sequence::new(vec![split(QWEN2_SPLIT)?, byte_level(false)]).into(),
        other => {
            return Err(tok_err(format!(
                "pre-tokenizer `{other}` is not supported (supported: default, gpt2, smollm, llama3, llama-bpe, qwen2)"
            )))
        }
    })
}

/// GGUF token types (llama.cpp `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The byte-level BPE of a `gpt2` GGUF vocabulary: its merges and the pre-tokenizer that
/// `tokenizer.ggml.pre` names.
fn byte_level_bpe(ct: &gguf_file::Content, tokens: &[String]) -> Result<Tokenizer, LoadError> {
    let merges = gguf_strings(ct, "tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| tok_err(format!("merge `{m}` is not two tokens")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(tok_err)?;
    let mut tokenizer = Tokenizer::new(bpe);
    let pre = gguf_str(ct, "tokenizer.ggml.pre").unwrap_or_else(|_| "default".into());
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer(&pre)?));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tokenizer)
}

fn gguf_f32s(ct: &gguf_file::Content, key: &str) -> Result<Vec<f32>, LoadError> {
    gguf_value(ct, key)?
        .to_vec()
        .map_err(|e| LoadError::invalid(key, e.to_string()))?
        .iter()
        .map(|v| {
            v.to_f32()
                .map_err(|e| LoadError::invalid(key, e.to_string()))
        })
        .collect()
}

/// The tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.
pub fn from_gguf(ct: &gguf_file::Content) -> Result<TokenizerInfo, LoadError> {
    let model = gguf_str(ct, "tokenizer.ggml.model")?;
    let tokens = gguf_strings(ct, "tokenizer.ggml.tokens")?;
    let types: Vec<i64> = match ct.metadata.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(|e| LoadError::invalid("tokenizer.ggml.token_type", e.to_string()))?
            .iter()
            .map(|t| t.to_i32().map(i64::from).unwrap_or(1))
            .collect(),
        None => vec![1; tokens.len()],
    };
    let id_key = |k: &str| gguf_usize(ct, k).ok().map(|v| v as u32);
    let flag = |k: &str, default: bool| match ct.metadata.get(k) {
        Some(v) => v.to_bool().unwrap_or(default),
        None => default,
    };
    let mut tokenizer = match model.as_str() {
        "gpt2" => byte_level_bpe(ct, &tokens)?,
        "llama" => {
            let scores = gguf_f32s(ct, "tokenizer.ggml.scores")?;
            spm::tokenizer(&spm::SpmVocab {
                tokens: &tokens,
                scores: &scores,
                types: &types,
                unknown: id_key("tokenizer.ggml.unknown_token_id"),
                add_space_prefix: flag("tokenizer.ggml.add_space_prefix", true),
            })?
        }
        other => {
            return Err(tok_err(format!(
                "tokenizer model `{other}` is not supported (supported: `gpt2` byte-level BPE, `llama` SentencePiece)"
            )))
        }
    };

    let mut special_tokens = BTreeMap::new();
    let (mut control, mut user) = (Vec::new(), Vec::new());
    for (id, (text, &ty)) in tokens.iter().zip(&types).enumerate() {
        match ty {
            TOKEN_TYPE_CONTROL => {
                special_tokens.insert(text.clone(), id as u32);
                control.push(AddedToken::from(text.clone(), true));
            }
            // Matched in the raw text, before any normalizer (SentencePiece's `▁`) sees it.
            TOKEN_TYPE_USER_DEFINED => {
                user.push(AddedToken::from(text.clone(), false).normalized(false))
            }
            _ => {}
        }
    }
    tokenizer.add_special_tokens(control).map_err(tok_err)?;
    tokenizer.add_tokens(user).map_err(tok_err)?;

    let mut eos_token_ids: Vec<u32> =
        ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"]
            .iter()
            .filter_map(|k| id_key(k))
            .collect();
    // Gemma ends a chat turn with `<end_of_turn>` and declares no end-of-turn id (llama.cpp
    // recognises it by its text too).
    if let Some(&id) = special_tokens.get("<end_of_turn>") {
        eos_token_ids.push(id);
    }
    eos_token_ids.dedup();
    // llama.cpp's default: SentencePiece vocabularies start prompts with BOS, BPE ones do not.
    let add_bos_token = flag("tokenizer.ggml.add_bos_token", model == "llama");
    Ok(TokenizerInfo {
        tokenizer,
        bos_token_id: id_key("tokenizer.ggml.bos_token_id"),
        add_bos_token,
        eos_token_ids,
        chat_template: gguf_str(ct, "tokenizer.chat_template").ok(),
        special_tokens,
    })
}

fn read_json(path: &Path) -> Result<Option<Json>, LoadError> {
    match std::fs::read_to_string(path) {
        Ok(s) => serde_json::from_str(&s)
            .map(Some)
            .map_err(|e| LoadError::invalid(path.display().to_string(), e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LoadError::io(path, e)),
    }
}

/// A token given in tokenizer_config.json either as a string or as `{"content": ...}`.
fn token_text(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(String::from),
        _ => None,
    }
}

fn from_hf_dir(dir: &Path) -> Result<TokenizerInfo, LoadError> {
    let tok_path = dir.join("tokenizer.json");
    let tokenizer = Tokenizer::from_file(&tok_path)
        .map_err(|e| tok_err(format!("{}: {e}", tok_path.display())))?;
    let cfg = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Json::Null);
    let gen = read_json(&dir.join("generation_config.json"))?.unwrap_or(Json::Null);

    let id_of = |text: Option<String>| text.and_then(|t| tokenizer.token_to_id(&t));
    let bos_token_id = id_of(token_text(cfg.get("bos_token"))).or_else(|| {
        gen.get("bos_token_id")
            .and_then(Json::as_u64)
            .map(|v| v as u32)
    });
    let mut eos_token_ids: Vec<u32> = match gen.get("eos_token_id") {
        Some(Json::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_u64().map(|v| v as u32))
            .collect(),
        Some(v) => v.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
        None => Vec::new(),
    };
    if let Some(id) = id_of(token_text(cfg.get("eos_token"))) {
        if !eos_token_ids.contains(&id) {
            eos_token_ids.insert(0, id);
        }
    }
    let chat_template = match cfg.get("chat_template") {
        Some(Json::String(s)) => Some(s.clone()),
        Some(Json::Array(named)) => named
            .iter()
            .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
            .and_then(|t| t.get("template").and_then(Json::as_str))
            .map(String::from),
        _ => None,
    };
    let special_tokens = tokenizer
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, t)| t.special)
        .map(|(id, t)| (t.content, id))
        .collect();
    Ok(TokenizerInfo {
        add_bos_token: cfg
            .get("add_bos_token")
            .and_then(Json::as_bool)
            .unwrap_or(false),
        tokenizer,
        bos_token_id,
        eos_token_ids,
        chat_template,
        special_tokens,
    })
}
