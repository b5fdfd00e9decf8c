//! Turning one sequence's sampled tokens into text and deciding when it stops.
//!
//! Text is released only when it is final: never a partial UTF-8 character, and never text that
//! could still turn into a stop string (a suffix that is a prefix of a stop string is held back
//! until the next token settles it). Stops: an EOS token (unless `ignore_eos`), a stop string (its
//! text and anything after it are not returned), or the token limit. Cost: each token decodes the
//! sequence's output so far, O(output) per token.

use std::sync::Arc;
use tokenizers::Tokenizer;
use wick_proto::FinishReason;

/// When a sequence stops.
#[derive(Debug, Clone, PartialEq)]
pub struct StopCriteria {
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub eos_token_ids: Vec<u32>,
    pub ignore_eos: bool,
}

/// What one token changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Emit {
    /// Text that became final with this token (may be empty).
    pub text: String,
    pub finish: Option<FinishReason>,
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

    pub fn tokens(&self) -> usize {
        self.ids.len()
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
        let is_eos = !self.criteria.ignore_eos && self.criteria.eos_token_ids.contains(&token);
        if !is_eos {
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
            .filter_map(|s| text[from..].find(s.as_str()).map(|i| from + i))
            .min();
        if let Some(at) = hit {
            let out = text
                .get(self.released..at.max(self.released))
                .unwrap_or("")
                .to_string();
            self.released = text.len();
            return Emit {
                text: out,
                finish: Some(FinishReason::StopSequence),
            };
        }
        let finish = if is_eos {
            Some(FinishReason::Stop)
        } else if self.ids.len() >= self.criteria.max_tokens {
            Some(FinishReason::Length)
        } else {
            None
        };
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
        Emit { text: out, finish }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::models::wordlevel::WordLevel;

    /// A tokenizer whose tokens are the given strings, concatenated on decode.
    fn tokenizer(words: &[&str]) -> Arc<Tokenizer> {
        let vocab = words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.to_string(), i as u32))
            .collect();
        let model = WordLevel::builder()
            .vocab(vocab)
            .unk_token(words[0].into())
            .build()
            .unwrap();
        let mut tok = Tokenizer::new(model);
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
