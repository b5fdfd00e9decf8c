//! Constrained decoding with llguidance: a grammar (JSON schema, regular expression or Lark) is
//! compiled once per request into a [`Constraint`], which the engine asks for a token mask before
//! each sampling of its sequence and advances with each sampled token.
//!
//! [`Grammars`] owns what compilation needs and is shared by the router (which compiles while
//! validating, so a bad grammar is a 400 before anything is queued) and the engine: the token
//! trie built from the tokenizer's byte strings, and llguidance's parser factory. Nothing here
//! touches candle or HTTP.
//!
//! JSON output is laid out in one fixed way (`", "` between items, `": "` after keys, no other
//! whitespace): a small model given free whitespace may emit it forever.

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};
use std::sync::Arc;
use tokenizers::Tokenizer;

/// What a sequence's output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum GrammarSpec {
    /// A JSON Schema. `strict` (OpenAI's flag): objects that do not say otherwise admit no
    /// properties beyond those listed, and keywords the compiler does not support are errors;
    /// otherwise unsupported keywords are ignored.
    JsonSchema { schema: Value, strict: bool },
    /// A regular expression (Rust `regex` syntax) the whole output must match.
    Regex(String),
    /// A grammar in llguidance's Lark dialect (may embed JSON schemas with `%json`).
    Lark(String),
}

/// A grammar that cannot be compiled; the message is the compiler's.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct GrammarError(pub String);

/// The tokenizer as llguidance sees it: every token's bytes in a trie, and canonical
/// tokenization through the model's own tokenizer.
struct TokenizerBytes {
    trie: TokTrie,
    tokenizer: Tokenizer,
}

impl TokenizerEnv for TokenizerBytes {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        // Only complete UTF-8 text can go through the model's tokenizer; anything else is
        // tokenized greedily on the trie, which is what llguidance does for non-canonical
        // tokenizers anyway.
        match std::str::from_utf8(s) {
            Ok(text) => match self.tokenizer.encode(text, false) {
                Ok(enc) => enc.get_ids().to_vec(),
                Err(_) => self.trie.greedy_tokenize(s),
            },
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}

/// Compiles grammars for one tokenizer. Cheap to share behind an `Arc`.
pub struct Grammars {
    factory: ParserFactory,
    vocab_size: usize,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars")
            .field("vocab_size", &self.vocab_size)
            .finish()
    }
}

impl Grammars {
    /// Builds the token trie of `tokenizer` over `vocab_size` ids (ids the tokenizer lacks are
    /// never allowed) with `eos_token_ids` as the tokens that end a finished grammar.
    pub fn new(
        tokenizer: &Tokenizer,
        vocab_size: usize,
        eos_token_ids: &[u32],
    ) -> Result<Self, GrammarError> {
        let err = |e: &dyn std::fmt::Display| GrammarError(format!("token trie: {e}"));
        let json: Value = serde_json::from_str(&tokenizer.to_string(false).map_err(|e| err(&e))?)
            .map_err(|e| err(&e))?;
        let mut words = llguidance::token_bytes_from_tokenizer_json(&json).map_err(|e| err(&e))?;
        if words.len() > vocab_size {
            return Err(GrammarError(format!(
                "the tokenizer has {} tokens, more than the model's {vocab_size}",
                words.len()
            )));
        }
        words.resize(vocab_size, Vec::new());
        let eos = *eos_token_ids
            .first()
            .ok_or_else(|| GrammarError("the model has no end-of-sequence token".into()))?;
        if let Some(&bad) = eos_token_ids.iter().find(|&&t| t as usize >= vocab_size) {
            return Err(GrammarError(format!(
                "end-of-sequence token {bad} is outside the vocabulary"
            )));
        }
        let info = TokRxInfo::new(vocab_size as u32, eos);
        let trie = TokTrie::from(&info, &words).with_eos_tokens(eos_token_ids);
        let env: TokEnv = Arc::new(TokenizerBytes {
            trie,
            tokenizer: tokenizer.clone(),
        });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| err(&e))?;
        factory.quiet();
        Ok(Grammars {
            factory,
            vocab_size,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Compiles `spec`; errors carry the compiler's message.
    pub fn compile(&self, spec: &GrammarSpec) -> Result<Constraint, GrammarError> {
        let grammar = match spec {
            GrammarSpec::JsonSchema { schema, strict } => {
                TopLevelGrammar::from_json_schema(json_layout(schema, *strict)?)
            }
            GrammarSpec::Regex(rx) => TopLevelGrammar::from_regex(rx),
            GrammarSpec::Lark(src) => TopLevelGrammar::from_lark(src.clone()),
        };
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| GrammarError(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(GrammarError(e));
        }
        Ok(Constraint { matcher })
    }
}

/// The schema with Wick's fixed JSON layout (and, when strict, closed objects).
fn json_layout(schema: &Value, strict: bool) -> Result<Value, GrammarError> {
    let Value::Object(_) = schema else {
        // `true` and `false` are schemas too, but not ones worth constraining output with.
        return Err(GrammarError("the JSON schema must be an object".into()));
    };
    let mut schema = schema.clone();
    if strict {
        close_objects(&mut schema);
    }
    let mut options = json!({
        "whitespace_flexible": false,
        "item_separator": ", ",
        "key_separator": ": ",
        "lenient": !strict,
    });
    // A schema's own `x-guidance` options win over the layout.
    if let (Some(own), Some(opts)) = (schema.get("x-guidance"), options.as_object_mut()) {
        if let Some(own) = own.as_object() {
            opts.extend(own.clone());
        }
    }
    schema["x-guidance"] = options;
    Ok(schema)
}

/// Adds `"additionalProperties": false` to every object schema that lists properties and says
/// nothing about others (OpenAI's strict mode).
fn close_objects(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            map.values_mut().for_each(close_objects);
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

/// One sequence's grammar state.
pub struct Constraint {
    matcher: Matcher,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("stopped", &self.matcher.is_stopped())
            .finish()
    }
}

impl Clone for Constraint {
    /// An independent copy (for the choices of an `n > 1` request).
    fn clone(&self) -> Self {
        Constraint {
            matcher: self.matcher.deep_clone(),
        }
    }
}

/// Allowed tokens as a bit set: bit `t % 32` of word `t / 32` is set when token `t` is allowed.
pub type TokenMask = Vec<u32>;

impl Constraint {
    /// The tokens that may come next; only the end-of-sequence tokens once the grammar is
    /// complete and nothing may follow.
    pub fn mask(&mut self) -> Result<TokenMask, GrammarError> {
        self.matcher
            .compute_mask_or_eos()
            .map(|m| m.as_slice().to_vec())
            .map_err(|e| GrammarError(e.to_string()))
    }

    /// Advances past a sampled token.
    pub fn advance(&mut self, token: u32) -> Result<(), GrammarError> {
        if self.matcher.is_stopped() {
            // End-of-sequence after a complete grammar: nothing left to match.
            return Ok(());
        }
        self.matcher
            .consume_token(token)
            .map_err(|e| GrammarError(e.to_string()))
    }

    /// Whether the output so far is a complete match.
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }
}

/// Whether `mask` allows `token`.
pub fn allows(mask: &[u32], token: u32) -> bool {
    mask.get(token as usize / 32)
        .is_some_and(|w| w >> (token % 32) & 1 == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-level BPE tokenizer over printable ASCII, a few merges, and an EOS token.
    pub(crate) fn tiny_tokenizer() -> Tokenizer {
        let mut vocab = serde_json::Map::new();
        let mut id = 0u32;
        vocab.insert("<|end|>".into(), json!(id));
        id += 1;
        for b in 0x21u8..=0x7e {
            vocab.insert((b as char).to_string(), json!(id));
            id += 1;
        }
        // GPT-2's byte-level alphabet writes a space as `Ġ`.
        vocab.insert("Ġ".into(), json!(id));
        id += 1;
        for merged in ["\"a", "\":", "Ġ\"", "12"] {
            vocab.insert(merged.into(), json!(id));
            id += 1;
        }
        let merges = ["\" a", "\" :", "Ġ \"", "1 2"];
        let tok = json!({
            "version": "1.0",
            "added_tokens": [{"id": 0, "content": "<|end|>", "single_word": false, "lstrip": false,
                              "rstrip": false, "normalized": false, "special": true}],
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                              "use_regex": true},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                        "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab, "merges": merges},
        });
        Tokenizer::from_bytes(tok.to_string()).expect("tiny tokenizer")
    }

    fn grammars() -> (Grammars, Tokenizer) {
        let tok = tiny_tokenizer();
        let vocab = tok.get_vocab_size(true) + 3;
        (Grammars::new(&tok, vocab, &[0]).unwrap(), tok)
    }

    /// Greedy decoding of the lowest allowed id: whatever the grammar permits.
    fn drive(c: &mut Constraint, tok: &Tokenizer, prefer: &str) -> String {
        let preferred = tok.encode(prefer, false).unwrap().get_ids().to_vec();
        let mut out = Vec::new();
        for step in 0..64 {
            let mask = c.mask().unwrap();
            let want = preferred.get(step).copied();
            let token = match want.filter(|&t| allows(&mask, t)) {
                Some(t) => t,
                None => (0..mask.len() as u32 * 32)
                    .find(|&t| allows(&mask, t))
                    .unwrap(),
            };
            if token == 0 {
                break;
            }
            c.advance(token).unwrap();
            out.push(token);
        }
        tok.decode(&out, false).unwrap()
    }

    #[test]
    fn a_regex_allows_only_matching_text_then_eos() {
        let (g, tok) = grammars();
        let mut c = g.compile(&GrammarSpec::Regex("(yes|no)".into())).unwrap();
        assert_eq!(drive(&mut c, &tok, "maybe"), "no");
        assert!(c.is_accepting());
        let mask = c.mask().unwrap();
        assert!(allows(&mask, 0));
        assert_eq!(mask.iter().map(|w| w.count_ones()).sum::<u32>(), 1);
    }

    #[test]
    fn json_schemas_get_a_fixed_layout_and_strict_closes_objects() {
        let (g, tok) = grammars();
        let id = |s: &str| tok.encode(s, false).unwrap().get_ids().to_vec();
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}},
                            "required": ["a"]});
        for strict in [true, false] {
            let spec = GrammarSpec::JsonSchema {
                schema: schema.clone(),
                strict,
            };
            let mut c = g.compile(&spec).unwrap();
            // No whitespace but the fixed separator: `{"a":1` is refused, `{"a": 1` is not.
            for t in id("{\"a\":") {
                c.advance(t).unwrap();
            }
            let mask = c.mask().unwrap();
            assert!(!allows(&mask, id("1")[0]) && allows(&mask, id(" ")[0]));
            for t in id(" 12") {
                c.advance(t).unwrap();
            }
            let mask = c.mask().unwrap();
            assert!(allows(&mask, id("}")[0]));
            assert_eq!(allows(&mask, id(",")[0]), !strict, "strict {strict}");
        }
        let mut c = g
            .compile(&GrammarSpec::JsonSchema {
                schema,
                strict: true,
            })
            .unwrap();
        assert_eq!(drive(&mut c, &tok, "{\"a\": 12}"), "{\"a\": 12}");
        assert!(c.is_accepting());
    }

    #[test]
    fn clones_are_independent() {
        let (g, tok) = grammars();
        let mut a = g.compile(&GrammarSpec::Regex("[a-c]{2}".into())).unwrap();
        let first = tok.encode("a", false).unwrap().get_ids()[0];
        a.advance(first).unwrap();
        let mut b = a.clone();
        let second = tok.encode("b", false).unwrap().get_ids()[0];
        b.advance(second).unwrap();
        assert!(b.is_accepting());
        assert!(!a.is_accepting());
    }

    #[test]
    fn broken_grammars_fail_with_the_compilers_message() {
        let (g, _) = grammars();
        let err = g
            .compile(&GrammarSpec::Regex("(unclosed".into()))
            .unwrap_err();
        assert!(!err.0.is_empty());
        let err = g
            .compile(&GrammarSpec::Lark("start: undefined_rule".into()))
            .unwrap_err();
        assert!(err.0.contains("undefined_rule"), "{err}");
        let schema = json!({"type": "object", "oneOf": 3});
        let err = g
            .compile(&GrammarSpec::JsonSchema {
                schema,
                strict: true,
            })
            .unwrap_err();
        assert!(!err.0.is_empty());
        let err = g
            .compile(&GrammarSpec::JsonSchema {
                schema: json!(true),
                strict: false,
            })
            .unwrap_err();
        assert!(err.0.contains("object"), "{err}");
    }
}
