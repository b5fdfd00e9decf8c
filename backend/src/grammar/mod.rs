//! Constrained decoding with llguidance: a grammar (JSON schema, regular expression or Lark) is
//! compiled once per request into a [`Constraint`], which the engine asks for a token mask before
//! each sampling of its sequence and advances with each sampled token.
//!
//! [`Grammars`] owns what compilation needs and is shared by the router (which compiles while
//! validating, so a bad grammar is a 400 before anything is queued) and the engine: the token
//! trie built from the tokenizer's byte strings, and llguidance's parser factory. Nothing here
//! touches candle or HTTP.
//!
//! Bounds ([`GrammarLimits`]): a grammar's source is checked for size and nesting depth first
//! ([`bounds`]); it then compiles on a thread of its own whose stack
//! ([`COMPILE_STACK_BYTES`]) is sized far above what that depth needs, at most
//! `max_concurrent` at once (a burst waits up to `compile_timeout` for a slot), and the caller
//! waits at most `compile_timeout` for the compile (llguidance's compile fuel ends a runaway
//! compile soon after). Each mask computation is bounded by
//! llguidance's step fuel and the lexer's states (its memory) by [`MAX_LEXER_STATES`]; past
//! them the sequence fails with a short error, never the step. Errors carry no parser state.
//!
//! JSON output is laid out in one fixed way (`", "` between items, `": "` after keys, no other
//! whitespace): a small model given free whitespace may emit it forever.

pub mod bounds;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
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
    /// `inner` after the model's reasoning: free text between two markers (whitespace after the
    /// close marker allowed), optional unless `opened` (the prompt already ends with the open
    /// marker, so the output starts inside it).
    AfterReasoning {
        open: String,
        close: String,
        opened: bool,
        inner: Box<GrammarSpec>,
    },
}

/// Why a grammar cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GrammarError {
    /// The compiler (or the matcher, at generation time) refused it; the message is its own,
    /// without parser state.
    #[error("{0}")]
    Invalid(String),
    /// The source is over one of [`GrammarLimits`].
    #[error("the {what} is over the limit of {limit}")]
    TooLarge { what: &'static str, limit: usize },
    /// It did not compile within `compile_timeout`.
    #[error("it did not compile within the limit of {} ms", limit.as_millis())]
    Timeout { limit: Duration },
    /// Every compile slot is taken; retry later.
    #[error("all {limit} grammar compile slots are taken")]
    Busy { limit: usize },
}

impl GrammarError {
    /// llguidance's message cut to its first line and 200 bytes (its messages can quote the
    /// whole grammar).
    fn short(e: impl std::fmt::Display) -> Self {
        let text = e.to_string();
        let line = text.lines().next().unwrap_or("").trim();
        let mut end = line.len().min(200);
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        let cut = if end < line.len() { "..." } else { "" };
        GrammarError::Invalid(format!("{}{cut}", &line[..end]))
    }
}

/// What one grammar may cost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GrammarLimits {
    /// Size and depth of the source.
    pub source: bounds::SourceLimits,
    /// Longest the caller waits for a compile.
    pub compile_timeout: Duration,
    /// Compiles running at once (a compile that timed out keeps its slot until it ends); a
    /// compile waits up to `compile_timeout` for a slot before it is refused as busy.
    pub max_concurrent: usize,
}

impl Default for GrammarLimits {
    fn default() -> Self {
        GrammarLimits {
            source: bounds::SourceLimits {
                max_bytes: 64 << 10,
                max_depth: 128,
            },
            compile_timeout: Duration::from_secs(5),
            max_concurrent: 4,
        }
    }
}

/// Stack of a compile thread. llguidance needs a few kB per level of nesting (its JSON schema
/// code says ~2.5 kB); 64 MiB is hundreds of times what [`GrammarLimits`]' default depth needs,
/// and only the pages a compile touches are ever committed.
pub const COMPILE_STACK_BYTES: usize = 64 << 20;

/// Lexer states one matcher may build (llguidance: 1-2 kB each, so at most ~32 MiB).
pub const MAX_LEXER_STATES: usize = 20_000;

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
    factory: Arc<ParserFactory>,
    vocab_size: usize,
    limits: GrammarLimits,
    /// Compiles running now, counting those whose caller gave up.
    slots: Arc<Slots>,
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
        limits: GrammarLimits,
    ) -> Result<Self, GrammarError> {
        let err = |e: &dyn std::fmt::Display| GrammarError::Invalid(format!("token trie: {e}"));
        let json: Value = serde_json::from_str(&tokenizer.to_string(false).map_err(|e| err(&e))?)
            .map_err(|e| err(&e))?;
        let mut words = llguidance::token_bytes_from_tokenizer_json(&json).map_err(|e| err(&e))?;
        if words.len() > vocab_size {
            return Err(GrammarError::Invalid(format!(
                "the tokenizer has {} tokens, more than the model's {vocab_size}",
                words.len()
            )));
        }
        words.resize(vocab_size, Vec::new());
        let eos = *eos_token_ids.first().ok_or_else(|| {
            GrammarError::Invalid("the model has no end-of-sequence token".into())
        })?;
        if let Some(&bad) = eos_token_ids.iter().find(|&&t| t as usize >= vocab_size) {
            return Err(GrammarError::Invalid(format!(
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
        let l = factory.limits_mut();
        // Errors must not quote parser state or the grammar back to the client.
        l.verbose_errors = false;
        l.max_lexer_states = MAX_LEXER_STATES;
        Ok(Grammars {
            factory: Arc::new(factory),
            vocab_size,
            limits,
            slots: Arc::new(Slots {
                running: Mutex::new(0),
                freed: Condvar::new(),
                max: limits.max_concurrent,
            }),
        })
    }

    pub fn limits(&self) -> &GrammarLimits {
        &self.limits
    }

    /// Checks `spec` against the limits and compiles it on a compile thread (see the module
    /// doc); errors carry the compiler's message.
    pub fn compile(&self, spec: &GrammarSpec) -> Result<Constraint, GrammarError> {
        bounds::check(spec, self.limits.source)?;
        let slot = self
            .slots
            .take(self.limits.compile_timeout)
            .ok_or(GrammarError::Busy {
                limit: self.limits.max_concurrent,
            })?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (factory, spec) = (self.factory.clone(), spec.clone());
        std::thread::Builder::new()
            .name("wick-grammar".into())
            .stack_size(COMPILE_STACK_BYTES)
            .spawn(move || {
                let _slot = slot;
                // A caller that gave up hears nothing; the result is dropped here.
                let _unheard = tx.send(compile_here(&factory, &spec));
            })
            .map_err(|e| GrammarError::Invalid(format!("no compile thread: {e}")))?;
        match rx.recv_timeout(self.limits.compile_timeout) {
            Ok(result) => result,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(GrammarError::Timeout {
                limit: self.limits.compile_timeout,
            }),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                Err(GrammarError::Invalid("the grammar compiler failed".into()))
            }
        }
    }
}

/// The compile slots: at most `max` compiles run at once.
struct Slots {
    running: Mutex<usize>,
    freed: Condvar,
    max: usize,
}

impl Slots {
    /// Takes a slot, waiting up to `wait` for one to free up.
    fn take(self: &Arc<Self>, wait: Duration) -> Option<Slot> {
        let deadline = Instant::now() + wait;
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        while *running >= self.max {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            running = self
                .freed
                .wait_timeout(running, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *running += 1;
        Some(Slot(self.clone()))
    }
}

/// One compile slot, given back when dropped (by the compile thread, when it ends).
struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        let mut running = self.0.running.lock().unwrap_or_else(|e| e.into_inner());
        *running -= 1;
        self.0.freed.notify_one();
    }
}

/// The llguidance grammar of `spec`.
fn top_level(spec: &GrammarSpec) -> Result<TopLevelGrammar, GrammarError> {
    Ok(match spec {
        GrammarSpec::JsonSchema { schema, strict } => {
            TopLevelGrammar::from_json_schema(json_layout(schema, *strict)?)
        }
        GrammarSpec::Regex(rx) => TopLevelGrammar::from_regex(rx),
        GrammarSpec::Lark(src) => TopLevelGrammar::from_lark(src.clone()),
        GrammarSpec::AfterReasoning {
            open,
            close,
            opened,
            inner,
        } => {
            // The answer is the inner grammar, referenced by name from the start grammar.
            let mut answer = top_level(inner)?;
            answer.grammars[0].name = Some(ANSWER.into());
            let quoted = |s: &str| serde_json::to_string(s).unwrap_or_default();
            // The reasoning is free text up to and with the close marker (lazily: the first
            // close marker ends it).
            let thought = format!(
                "thought[suffix={}]: /(?s:.*)/\nSPACE: /[ \\t\\r\\n]*/\n",
                quoted(close)
            );
            let start = if *opened {
                format!("start: thought SPACE @{ANSWER}\n{thought}")
            } else {
                format!(
                    "start: reasoning @{ANSWER}\nreasoning: ({} thought SPACE)?\n{thought}",
                    quoted(open)
                )
            };
            let mut top = TopLevelGrammar::from_lark(start);
            top.grammars.append(&mut answer.grammars);
            top
        }
    })
}

/// The name the answer's grammar goes by after reasoning.
const ANSWER: &str = "answer";

/// Compiles on the calling thread (a compile thread: see [`COMPILE_STACK_BYTES`]).
fn compile_here(factory: &ParserFactory, spec: &GrammarSpec) -> Result<Constraint, GrammarError> {
    let grammar = top_level(spec)?;
    let parser = factory
        .create_parser(grammar)
        .map_err(GrammarError::short)?;
    let matcher = Matcher::new(Ok(parser));
    if let Some(e) = matcher.get_error() {
        return Err(GrammarError::short(e));
    }
    Ok(Constraint { matcher })
}

/// The schema with Wick's fixed JSON layout (and, when strict, closed objects).
fn json_layout(schema: &Value, strict: bool) -> Result<Value, GrammarError> {
    let Value::Object(_) = schema else {
        // `true` and `false` are schemas too, but not ones worth constraining output with.
        return Err(GrammarError::Invalid(
            "the JSON schema must be an object".into(),
        ));
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
pub fn close_objects(v: &mut Value) {
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
            .map_err(GrammarError::short)
    }

    /// Advances past a sampled token.
    pub fn advance(&mut self, token: u32) -> Result<(), GrammarError> {
        if self.matcher.is_stopped() {
            // End-of-sequence after a complete grammar: nothing left to match.
            return Ok(());
        }
        self.matcher
            .consume_token(token)
            .map_err(GrammarError::short)
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
        (
            Grammars::new(&tok, vocab, &[0], GrammarLimits::default()).unwrap(),
            tok,
        )
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
    fn a_grammar_after_reasoning_allows_free_reasoning_first() {
        let (g, tok) = grammars();
        let after = |opened| GrammarSpec::AfterReasoning {
            open: "<think>".into(),
            close: "</think>".into(),
            opened,
            inner: Box::new(GrammarSpec::Regex("(yes|no)".into())),
        };
        let mut c = g.compile(&after(false)).unwrap();
        assert_eq!(
            drive(&mut c, &tok, "<think>no{maybe}</think>yes"),
            "<think>no{maybe}</think>yes"
        );
        assert!(c.is_accepting());
        let mut c = g.compile(&after(false)).unwrap();
        assert_eq!(drive(&mut c, &tok, "yes"), "yes");
        // Opened by the prompt: reasoning until the close marker, then the answer.
        let mut c = g.compile(&after(true)).unwrap();
        assert_eq!(drive(&mut c, &tok, "a<b</think>no"), "a<b</think>no");
        assert!(c.is_accepting());
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
        assert!(!err.to_string().is_empty());
        let err = g
            .compile(&GrammarSpec::Lark("start: undefined_rule".into()))
            .unwrap_err();
        assert!(err.to_string().contains("undefined_rule"), "{err}");
        let schema = json!({"type": "object", "oneOf": 3});
        let err = g
            .compile(&GrammarSpec::JsonSchema {
                schema,
                strict: true,
            })
            .unwrap_err();
        assert!(!err.to_string().is_empty());
        let err = g
            .compile(&GrammarSpec::JsonSchema {
                schema: json!(true),
                strict: false,
            })
            .unwrap_err();
        assert!(err.to_string().contains("object"), "{err}");
    }

    /// A reference chain as deep as the default limit allows compiles on a compile thread;
    /// one past it is refused before the compiler sees it.
    #[test]
    fn the_deepest_allowed_reference_chain_compiles() {
        let (g, _) = grammars();
        let chain = |n: usize| GrammarSpec::JsonSchema {
            schema: bounds::tests::ref_chain(n),
            strict: false,
        };
        let max = g.limits().source.max_depth;
        // Reached through `$defs`: the root, `$defs`, each link, the target's keyword.
        g.compile(&chain(max - 3)).unwrap();
        let err = g.compile(&chain(max + 10)).unwrap_err();
        assert!(matches!(err, GrammarError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn a_burst_past_the_slots_waits_its_turn() {
        let tok = tiny_tokenizer();
        let limits = GrammarLimits {
            max_concurrent: 1,
            ..GrammarLimits::default()
        };
        let g = Arc::new(Grammars::new(&tok, tok.get_vocab_size(true), &[0], limits).unwrap());
        let burst: Vec<_> = (0..6)
            .map(|i| {
                let g = g.clone();
                std::thread::spawn(move || g.compile(&GrammarSpec::Regex(format!("a{{{i}}}b"))))
            })
            .collect();
        for t in burst {
            assert!(t.join().unwrap().is_ok());
        }
    }

    #[test]
    fn compiles_past_the_concurrency_limit_are_refused() {
        let tok = tiny_tokenizer();
        let limits = GrammarLimits {
            max_concurrent: 0,
            compile_timeout: Duration::from_millis(50),
            ..GrammarLimits::default()
        };
        let g = Grammars::new(&tok, tok.get_vocab_size(true), &[0], limits).unwrap();
        let err = g.compile(&GrammarSpec::Regex("a".into())).unwrap_err();
        assert_eq!(err, GrammarError::Busy { limit: 0 });
    }
}
