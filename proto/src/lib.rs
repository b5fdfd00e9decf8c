//! Plain messages between Wick's router and its backend worker.
//!
//! The router owns scheduling and KV block accounting; the backend owns the weights and the KV
//! tensors. Everything that crosses between them is one of the types here: std and serde only, no
//! candle and no HTTP types.
//!
//! # Layout
//! - [`ModelInfo`]: what the backend reports once the model is loaded.
//! - [`Step`] / [`StepEntry`]: one forward pass over a packed batch, with each sequence's block table.
//! - [`StepOutput`] / [`Generation`]: the sampled tokens of one step.
//! - [`SamplingParams`]: how a sequence's next token is chosen.
//! - [`FinishReason`]: why a sequence ended, with its one mapping to OpenAI's strings.

use serde::{Deserialize, Serialize};

/// Identifies a sequence for the lifetime of a request; chosen by the router, unique while live.
pub type SeqId = u64;

/// Index of a KV cache block, in `0..ModelInfo::num_kv_blocks`.
pub type BlockId = u32;

/// Model and cache facts the backend reports once loading succeeded. The tokenizer's facts (BOS,
/// EOS, chat template) are not here: the router reads the tokenizer itself, once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Name derived from the model file or directory.
    pub model_id: String,
    /// Architecture as the model file names it (`llama`, `mistral`, `qwen2`, `gemma3`).
    pub architecture: String,
    /// Weight type as loaded, e.g. `q4_1` or `f32` (mixed files name their dominant type).
    pub dtype: String,
    /// Device the weights and KV cache live on (`cpu`, `cuda:0`).
    pub device: String,
    pub vocab_size: usize,
    /// Longest sequence (prompt plus generation) the model supports.
    pub max_context: usize,
    /// Tokens per KV block.
    pub kv_block_size: usize,
    /// Blocks in the KV cache, sized at load time from the memory budget.
    pub num_kv_blocks: usize,
}

impl ModelInfo {
    /// Total tokens the KV cache holds.
    pub fn kv_capacity_tokens(&self) -> usize {
        self.kv_block_size * self.num_kv_blocks
    }
}

/// One forward pass over a packed batch of sequences.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub entries: Vec<StepEntry>,
}

/// One sequence's part of a [`Step`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepEntry {
    pub seq: SeqId,
    /// Tokens to run: a prefill chunk, or the last sampled token for a decode.
    pub tokens: Vec<u32>,
    /// Absolute position of `tokens[0]`; every earlier position must already be in the cache.
    pub start_pos: usize,
    /// The sequence's block table: block `i` holds positions `i*block_size..(i+1)*block_size`.
    /// Must cover `start_pos + tokens.len()` positions.
    pub blocks: Vec<BlockId>,
    /// Sample a token after the last of `tokens`, with these parameters; `None` for a prefill chunk
    /// that is not the prompt's last.
    pub sample: Option<SamplingParams>,
    /// Speculative decoding: the last `draft` of `tokens` are proposals, not yet the sequence's.
    /// The backend samples after the token before them and after each proposal in turn, exactly
    /// as single decode steps would, and stops at the first sample that differs from the next
    /// proposal: the step gives this entry the samples up to and including that one (the
    /// accepted proposals and one more), between 1 and `draft + 1` generations. 0 for a plain
    /// entry.
    #[serde(default)]
    pub draft: usize,
    /// Draft-model speculation: the backend's draft model proposes this many tokens after
    /// `tokens` (greedily), and they are verified as `draft` proposals are. The block table must
    /// cover them too. 0 for none; only with `sample` and `draft == 0`.
    #[serde(default)]
    pub propose: usize,
    /// The sequence's tokens before `start_pos`, where the backend has not seen them: the first
    /// entry of a sequence admitted onto cached blocks. Penalties and the draft model read the
    /// whole sequence. Empty otherwise; else exactly `start_pos` tokens.
    #[serde(default)]
    pub context: Vec<u32>,
}

/// The outcome of a [`Step`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepOutput {
    /// One per entry that asked to sample (one or more for a speculative entry, in position
    /// order), in the order of the step's entries.
    pub generations: Vec<Generation>,
    /// Wall time of the forward pass, in microseconds (the scheduler sizes the grammar-mask
    /// budget of a step from it).
    pub forward_us: u64,
    /// Wall time of the draft model's part of the step (0 without one), in microseconds.
    #[serde(default)]
    pub draft_us: u64,
    /// Of `draft_us`, the draft's first pass (the tokens it caught up on, whose last rows gave
    /// each proposing entry its first proposal; the rest are one-row rounds of proposals).
    #[serde(default)]
    pub draft_catch_up_us: u64,
    /// The rows of that first pass.
    #[serde(default)]
    pub draft_catch_up_rows: usize,
    /// Entries that asked for proposals (`StepEntry::propose`) and got none this step: the
    /// draft model was still catching up on their tokens. They ran as plain decodes.
    #[serde(default)]
    pub not_proposed: Vec<SeqId>,
}

/// A token sampled for one sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    pub seq: SeqId,
    pub token: u32,
    /// Log-probability of `token` under the model's distribution (before sampling transforms).
    pub logprob: f32,
    /// The most likely alternatives, best first, when `SamplingParams::top_logprobs > 0`.
    pub top_logprobs: Vec<TokenLogprob>,
    /// Set when the sequence's grammar failed: the token is then not to be used, and the
    /// sequence ends with this error.
    #[serde(default)]
    pub constraint_error: Option<String>,
    /// Wall time of this sequence's grammar mask for this token, in microseconds (0 when it
    /// has no grammar): the scheduler keeps costly grammars from holding back the batch.
    #[serde(default)]
    pub mask_us: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
}

/// How the next token of a sequence is chosen. The defaults give greedy decoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// 0 disables top-k.
    pub top_k: usize,
    /// 1.0 disables nucleus sampling.
    pub top_p: f32,
    /// 0.0 disables min-p.
    pub min_p: f32,
    /// Multiplicative penalty (HF style) on every token seen in prompt or output; 1.0 disables.
    pub repetition_penalty: f32,
    /// Subtracted once per occurrence of a token in the output (OpenAI style); 0.0 disables.
    pub frequency_penalty: f32,
    /// Subtracted once for a token present in the output (OpenAI style); 0.0 disables.
    pub presence_penalty: f32,
    /// Added to the logits of the given tokens before anything else.
    pub logit_bias: Vec<(u32, f32)>,
    /// Seed of the sampling random stream. The stream depends only on the seed and the position
    /// sampled, so a seeded request gives the same tokens whatever it is batched with.
    pub seed: u64,
    /// Number of alternatives to report with each token.
    pub top_logprobs: usize,
    /// Length of the original prompt: tokens at positions past it count as output for the
    /// frequency and presence penalties.
    pub prompt_len: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: 0,
            top_logprobs: 0,
            prompt_len: 0,
        }
    }
}

impl SamplingParams {
    /// Whether the previously seen tokens influence the next choice.
    pub fn uses_history(&self) -> bool {
        self.repetition_penalty != 1.0
            || self.frequency_penalty != 0.0
            || self.presence_penalty != 0.0
    }
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FinishReason {
    /// The model produced an end-of-sequence token.
    Stop,
    /// The token limit (`max_tokens` or the context) was reached.
    Length,
    /// A requested stop string appeared.
    StopSequence,
    /// The client went away.
    Cancelled,
    /// The backend failed.
    Error,
    /// The output is a call of one of the request's tools.
    ToolCalls,
}

impl FinishReason {
    /// The `finish_reason` string of OpenAI's API.
    pub fn as_openai(self) -> &'static str {
        match self {
            FinishReason::Stop | FinishReason::StopSequence => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
            FinishReason::Error => "error",
            FinishReason::ToolCalls => "tool_calls",
        }
    }

    /// A stable label for logs and metrics.
    pub fn as_label(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::StopSequence => "stop_sequence",
            FinishReason::Cancelled => "cancelled",
            FinishReason::Error => "error",
            FinishReason::ToolCalls => "tool_calls",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_reasons_map_to_openai_strings() {
        assert_eq!(FinishReason::Stop.as_openai(), "stop");
        assert_eq!(FinishReason::StopSequence.as_openai(), "stop");
        assert_eq!(FinishReason::Length.as_openai(), "length");
        assert_eq!(FinishReason::StopSequence.as_label(), "stop_sequence");
        assert_eq!(FinishReason::ToolCalls.as_openai(), "tool_calls");
    }

    #[test]
    fn default_sampling_is_greedy_without_history() {
        let p = SamplingParams::default();
        assert_eq!(p.temperature, 0.0);
        assert!(!p.uses_history());
    }
}
