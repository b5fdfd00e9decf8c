//! One sequence, start to finish, on the backend: what `wick generate` runs.
//!
//! The sequence owns blocks `0..n` of the cache (nothing else runs), the prompt goes in chunks of
//! at most [`PREFILL_CHUNK`] tokens, then one decode step per token until its [`StopCriteria`]
//! stop it (EOS, the token limit) or the context ends. Callers stream text with
//! [`OutputText`](crate::request::OutputText), which never emits a partial UTF-8 character.

use crate::backend::{Backend, BackendError};
use crate::request::StopCriteria;
use wick_proto::{FinishReason, ModelInfo, SamplingParams, Step, StepEntry};

/// Prompt tokens per prefill step: bounds the activations of one forward pass.
pub const PREFILL_CHUNK: usize = 512;

/// The sequence id used for the single sequence.
const SEQ: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("prompt of {prompt} tokens leaves no room in a context of {max} tokens")]
    PromptTooLong { prompt: usize, max: usize },
    #[error("the prompt is empty")]
    EmptyPrompt,
}

/// What a finished generation produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub tokens: Vec<u32>,
    pub finish_reason: FinishReason,
}

fn blocks_for(positions: usize, block_size: usize) -> Vec<u32> {
    (0..positions.div_ceil(block_size) as u32).collect()
}

/// Runs `prompt` to completion, calling `on_token` with each generated token.
pub fn generate(
    backend: &Backend,
    info: &ModelInfo,
    prompt: &[u32],
    params: &SamplingParams,
    criteria: &StopCriteria,
    mut on_token: impl FnMut(u32),
) -> Result<Generated, GenerateError> {
    if prompt.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    let max = info.max_context.min(info.kv_capacity_tokens());
    if prompt.len() >= max {
        return Err(GenerateError::PromptTooLong {
            prompt: prompt.len(),
            max,
        });
    }
    let params = SamplingParams {
        prompt_len: prompt.len(),
        ..params.clone()
    };
    let mut tokens: Vec<u32> = Vec::new();
    let mut pos = 0;
    let mut next: Vec<u32> = Vec::new();
    let result = loop {
        let chunk: Vec<u32> = if pos < prompt.len() {
            prompt[pos..(pos + PREFILL_CHUNK).min(prompt.len())].to_vec()
        } else {
            std::mem::take(&mut next)
        };
        let end = pos + chunk.len();
        let last_prefill = end >= prompt.len();
        let step = Step {
            entries: vec![StepEntry {
                seq: SEQ,
                blocks: blocks_for(end, info.kv_block_size),
                start_pos: pos,
                tokens: chunk,
                sample: last_prefill.then(|| params.clone()),
                draft: 0,
                propose: 0,
                context: Vec::new(),
            }],
        };
        let out = backend.step(step)?;
        pos = end;
        let Some(g) = out.generations.first() else {
            continue;
        };
        tokens.push(g.token);
        on_token(g.token);
        let context_full = (pos + 1 >= max).then_some(FinishReason::Length);
        if let Some(finish_reason) = criteria.finish(g.token, tokens.len()).or(context_full) {
            break Generated {
                tokens,
                finish_reason,
            };
        }
        next = vec![g.token];
    };
    backend.release(SEQ)?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_tables_cover_the_positions() {
        assert_eq!(blocks_for(1, 16), vec![0]);
        assert_eq!(blocks_for(16, 16), vec![0]);
        assert_eq!(blocks_for(17, 16), vec![0, 1]);
    }
}
