//! What a validated request carries besides its prompt and sampling parameters, built by
//! validation (and by `wick generate`) and used by the scheduler: how prompt text becomes ids
//! ([`Vocab::encode`]), when a sequence stops ([`StopCriteria`]), and how its sampled tokens
//! become text ([`OutputText`]). Validation and the scheduler both depend on this module and not
//! on each other.
//!
//! Text is released only when it is final: never a partial UTF-8 character, and never text that
//! could still turn into a stop string (a suffix that is a prefix of a stop string is held back
//! until the next token settles it). Stops: an EOS token (unless `ignore_eos`), a stop string (its
//! text and anything after it are not returned), or the token limit. Cost: each token decodes the
//! sequence's output so far, O(output) per token.

use crate::backend::TokenizerInfo;
use std::sync::Arc;
use tokenizers::Tokenizer;
use wick_proto::FinishReason;

/// The model's vocabulary as requests need it, read once from the model file at start-up.
#[derive(Clone)]
pub struct Vocab {
    pub tokenizer: Arc<Tokenizer>,
    /// Put before plain-text prompts, when the model asks for it (`add_bos_token`); chat
    /// templates write their own BOS.
    pub plain_bos: Option<u32>,
    /// Every token id that ends generation.
    pub eos_token_ids: Vec<u32>,
}

impl From<TokenizerInfo> for Vocab {
    fn from(tok: TokenizerInfo) -> Self {
        Vocab {
            plain_bos: tok.bos_token_id.filter(|_| tok.add_bos_token),
            eos_token_ids: tok.eos_token_ids,
            tokenizer: Arc::new(tok.tokenizer),
        }
    }
}

impl Vocab {
    /// Prompt text as ids: `templated` text (a rendered chat template) may hold control tokens
    /// and gets no BOS of ours; plain text gets the model's BOS rule.
    pub fn encode(&self, text: &str, templated: bool) -> Result<Vec<u32>, String> {
        let mut ids = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| e.to_string())?
            .get_ids()
            .to_vec();
        if !templated {
            ids.splice(0..0, self.plain_bos);
        }
        Ok(ids)
    }

    /// The stop criteria of a request on this vocabulary.
    pub fn criteria(&self, max_tokens: usize, stop: Vec<String>, ignore_eos: bool) -> StopCriteria {
        StopCriteria {
            max_tokens,
            stop,
            eos_token_ids: self.eos_token_ids.clone(),
            ignore_eos,
        }
    }
}

/// When a sequence stops.
#[derive(Debug, Clone, PartialEq)]
pub struct StopCriteria {
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub eos_token_ids: Vec<u32>,
    pub ignore_eos: bool,
}

impl StopCriteria {
    /// Whether `token` ends the sequence as end-of-sequence (and is then not output).
    pub fn is_eos(&self, token: u32) -> bool {
        !self.ignore_eos && self.eos_token_ids.contains(&token)
    }

    /// The token-level stop after `token`, with `generated` output tokens so far (stop strings
    /// are [`OutputText`]'s): end-of-sequence, else the token limit.
    pub fn finish(&self, token: u32, generated: usize) -> Option<FinishReason> {
        if self.is_eos(token) {
            Some(FinishReason::Stop)
        } else if generated >= self.max_tokens {
            Some(FinishReason::Length)
        } else {
            None
        }
    }
}

/// What one token changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Emit {
    /// Text that became final with this token (may be empty).
    pub text: String,
    pub finish: Option<FinishReason>,
    /// The stop string that ended the sequence, when one did.
    pub stop: Option<String>,
}

pub struct OutputText {
    tokenizer: Arc<Tokenizer>,
    criteria: StopCriteria,
    ids: Vec<u32>,
    /// Bytes of the decoded output already released.
    released: usize,
}

impl OutputText {
    pub fn new(tokenizer: Arc<Tokenizer>, criteria: StopCriteria) -> Self {
        OutputText {
            tokenizer,
            criteria,
            ids: Vec::new(),
            released: 0,
        }
    }

    fn decode(&self) -> String {
        self.tokenizer.decode(&self.ids, true).unwrap_or_default()
    }

    /// Longest suffix of `text` that is a proper prefix of some stop string.
    fn held_suffix(&self, text: &str) -> usize {
        let mut held = 0;
        for stop in &self.criteria.stop {
            for (k, _) in stop.char_indices().skip(1) {
                if k > held && text.ends_with(&stop[..k]) {
                    held = k;
                }
            }
        }
        held
    }

    /// Takes one sampled token.
    pub fn push(&mut self, token: u32) -> Emit {
        let finish = self.criteria.finish(token, self.ids.len() + 1);
        if !self.criteria.is_eos(token) {
            self.ids.push(token);
        }
        let text = self.decode();
        // A stop string may start in text already released only if it was held; search from the
        // earliest byte a stop string could begin in unreleased text.
        let longest = self
            .criteria
            .stop
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(0);
        let mut from = self.released.saturating_sub(longest);
        while !text.is_char_boundary(from) {
            from -= 1;
        }
        let hit = self
            .criteria
            .stop
            .iter()
            .filter_map(|s| text[from..].find(s.as_str()).map(|i| (from + i, s)))
            .min_by_key(|&(at, _)| at);
        if let Some((at, stop)) = hit {
            let out = text
                .get(self.released..at.max(self.released))
                .unwrap_or("")
                .to_string();
            self.released = text.len();
            return Emit {
                text: out,
                finish: Some(FinishReason::StopSequence),
                stop: Some(stop.clone()),
            };
        }
        let end = if finish.is_some() {
            text.len()
        } else if text.ends_with('\u{FFFD}') {
            self.released
        } else {
            text.len() - self.held_suffix(&text)
        };
        let out = if end > self.released && text.is_char_boundary(end) {
            let s = text[self.released..end].to_string();
            self.released = end;
            s
        } else {
            String::new()
        };
        Emit {
            text: out,
            finish,
            stop: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::word_level;

    /// A tokenizer whose tokens are the given strings, concatenated on decode.
    fn tokenizer(words: &[&str]) -> Arc<Tokenizer> {
        let mut tok = word_level(words);
        tok.with_decoder(Some(tokenizers::decoders::fuse::Fuse::new()));
        Arc::new(tok)
    }

    fn output(stop: &[&str], max_tokens: usize) -> OutputText {
        OutputText::new(
            tokenizer(&["<unk>", "Hel", "lo", " wor", "ld", "!", "</s>", "EN", "D"]),
            StopCriteria {
                max_tokens,
                stop: stop.iter().map(|s| s.to_string()).collect(),
                eos_token_ids: vec![6],
                ignore_eos: false,
            },
        )
    }

    fn texts(out: &mut OutputText, tokens: &[u32]) -> Vec<(String, Option<FinishReason>)> {
        tokens
            .iter()
            .map(|&t| {
                let e = out.push(t);
                (e.text, e.finish)
            })
            .collect()
    }

    #[test]
    fn text_streams_token_by_token_and_eos_stops() {
        let mut out = output(&[], 10);
        assert_eq!(
            texts(&mut out, &[1, 2, 6]),
            vec![
                ("Hel".into(), None),
                ("lo".into(), None),
                ("".into(), Some(FinishReason::Stop))
            ]
        );
    }

    #[test]
    fn a_stop_string_across_two_tokens_is_never_partly_released() {
        let mut out = output(&["END"], 10);
        let got = texts(&mut out, &[1, 7, 8, 2]);
        assert_eq!(got[0], ("Hel".into(), None));
        // "EN" could begin "END": held back.
        assert_eq!(got[1], ("".into(), None));
        assert_eq!(got[2], ("".into(), Some(FinishReason::StopSequence)));
    }

    #[test]
    fn the_stop_string_that_ends_the_text_is_named() {
        let mut out = output(&["wor", "lo"], 10);
        let first = out.push(1);
        assert_eq!((first.text.as_str(), first.stop), ("He", None));
        let end = out.push(2);
        assert_eq!(end.finish, Some(FinishReason::StopSequence));
        assert_eq!(end.stop.as_deref(), Some("lo"));
        assert_eq!(end.text, "l");
    }

    #[test]
    fn held_text_is_released_when_the_stop_string_does_not_follow() {
        let mut out = output(&["END"], 10);
        let got = texts(&mut out, &[7, 5]);
        assert_eq!(got[0], ("".into(), None));
        assert_eq!(got[1], ("EN!".into(), None));
    }

    #[test]
    fn text_before_a_stop_string_in_the_same_token_is_kept() {
        let mut out = output(&["lo wor"], 10);
        let got = texts(&mut out, &[1, 2, 3]);
        // "l" and then "lo" could begin the stop string: only what cannot is released.
        assert_eq!(got[0], ("He".into(), None));
        assert_eq!(got[1], ("l".into(), None));
        assert_eq!(got[2], ("".into(), Some(FinishReason::StopSequence)));
        let mut out = output(&["o"], 10);
        let got = texts(&mut out, &[1, 2]);
        assert_eq!(got[1], ("l".into(), Some(FinishReason::StopSequence)));
    }

    #[test]
    fn the_token_limit_flushes_held_text() {
        let mut out = output(&["END"], 2);
        let got = texts(&mut out, &[1, 7]);
        assert_eq!(got[1], ("EN".into(), Some(FinishReason::Length)));
    }

    #[test]
    fn ignore_eos_keeps_going() {
        let mut out = OutputText::new(
            tokenizer(&["<unk>", "a", "</s>"]),
            StopCriteria {
                max_tokens: 3,
                stop: vec![],
                eos_token_ids: vec![2],
                ignore_eos: true,
            },
        );
        let got = texts(&mut out, &[1, 2, 1]);
        assert_eq!(got[1].1, None);
        assert_eq!(got[2].1, Some(FinishReason::Length));
    }
}
