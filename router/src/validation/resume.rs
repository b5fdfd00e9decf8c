//! A cut stream's request, as its resume token carries it ([`ResumeBase`]), checked back into a
//! [`ValidRequest`] that continues it: the prompt plus the ids already generated, with the
//! original prompt length (penalties count the generated ids as output) and the original
//! `max_tokens` (the scheduler replays the generated ids into the sequence's output text, which
//! counts them).

use super::{ValidRequest, Validator};
use crate::error::ApiError;
use serde::{Deserialize, Serialize};
use wick_proto::SamplingParams;

/// What a resumable generation keeps for its resume token: its request as validated, and the
/// ids generated before this server took it over (a resumed request's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResumeBase {
    pub prompt: Vec<u32>,
    pub sent: Vec<u32>,
    pub params: SamplingParams,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    pub logprobs: bool,
    pub priority: i32,
    /// A reasoning model's conversation: whether the prompt opened the reasoning.
    pub reasoning: Option<bool>,
}

impl ResumeBase {
    /// The base of a valid request: its prompt, and the ids generated before (a resumed
    /// request's prompt holds them after the original prompt).
    pub fn of(valid: &ValidRequest) -> ResumeBase {
        let (prompt, sent) = valid.prompt.split_at(valid.params.prompt_len);
        ResumeBase {
            prompt: prompt.to_vec(),
            sent: sent.to_vec(),
            params: valid.params.clone(),
            max_tokens: valid.criteria.max_tokens,
            stop: valid.criteria.stop.clone(),
            ignore_eos: valid.criteria.ignore_eos,
            logprobs: valid.logprobs,
            priority: valid.priority,
            reasoning: valid.reasoning,
        }
    }
}

impl Validator {
    /// Checks a cut request (from a signed token, but perhaps made under other limits) into the
    /// request that continues it.
    pub fn resume(&self, base: ResumeBase) -> Result<ValidRequest, ApiError> {
        let bad = |message: String| ApiError::invalid("resume_token", message);
        let vocab_size = self.info.vocab_size;
        if let Some(t) = (base.prompt.iter().chain(&base.sent)).find(|&&t| t as usize >= vocab_size)
        {
            return Err(bad(format!(
                "the token's ids must be below the vocabulary size {vocab_size}, got {t}"
            )));
        }
        if base.sent.len() >= base.max_tokens {
            return Err(bad(format!(
                "the cut stream had already generated its {} tokens",
                base.max_tokens
            )));
        }
        if base.params.prompt_len != base.prompt.len() {
            return Err(bad(
                "the token's prompt length disagrees with its prompt".into()
            ));
        }
        self.check_stop(&base.stop)?;
        self.max_tokens(
            "resume_token",
            base.prompt.len(),
            Some(base.max_tokens as u64),
        )?;
        if base.logprobs {
            let top = base.params.top_logprobs as u64;
            self.check_logprob_entries(1, base.max_tokens, top)?;
        }
        let mut prompt = base.prompt;
        prompt.extend_from_slice(&base.sent);
        Ok(ValidRequest {
            prompt,
            criteria: (self.vocab).criteria(base.max_tokens, base.stop, base.ignore_eos),
            params: base.params,
            n: 1,
            logprobs: base.logprobs,
            constraint: None,
            reasoning: base.reasoning,
            priority: base.priority,
        })
    }
}
