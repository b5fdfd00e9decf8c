//! The backend's error types: [`LoadError`] for anything that stops a model from loading,
//! [`BackendError`] for a step or request that the worker cannot run.
//!
//! Messages name the file, field or limit involved and the value found, so that they can be shown
//! to an operator (load) or mapped to an HTTP error by the router (step) unchanged.

use std::path::PathBuf;
use wick_proto::{BlockId, SeqId};

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is neither a GGUF file nor a directory with config.json")]
    UnknownFormat { path: PathBuf },
    #[error("model metadata: missing `{key}`")]
    MissingKey { key: String },
    #[error("model metadata: `{key}` is invalid: {reason}")]
    InvalidKey { key: String, reason: String },
    #[error("unsupported architecture `{architecture}` (supported: llama, mistral, qwen2)")]
    UnsupportedArchitecture { architecture: String },
    #[error("missing tensor `{name}`")]
    MissingTensor { name: String },
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("tensor `{name}` has type {dtype}, which Wick cannot run ({reason})")]
    UnsupportedTensorType {
        name: String,
        dtype: String,
        reason: String,
    },
    #[error("tokenizer: {reason}")]
    Tokenizer { reason: String },
    #[error(
        "KV cache budget of {budget_bytes} bytes holds {blocks} blocks; at least {needed} needed"
    )]
    KvBudget {
        budget_bytes: usize,
        blocks: usize,
        needed: usize,
    },
    #[error("draft model {path}: {reason}")]
    DraftModel { path: PathBuf, reason: String },
    #[error("device `{device}` is not available: {reason}")]
    Device { device: String, reason: String },
    #[error("matmul kernel: {reason}")]
    Kernel { reason: String },
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("the worker thread ended before reporting its load result")]
    WorkerGone,
}

impl LoadError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LoadError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        LoadError::InvalidKey {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Why a step (or another worker request) failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(
        "sequence {seq}: block id {block} is out of range (the cache has {num_blocks} blocks)"
    )]
    BlockOutOfRange {
        seq: SeqId,
        block: BlockId,
        num_blocks: usize,
    },
    #[error("sequence {seq}: block table of {blocks} blocks covers {covered} positions, {needed} needed")]
    BlockTableTooShort {
        seq: SeqId,
        blocks: usize,
        covered: usize,
        needed: usize,
    },
    #[error("sequence {seq}: position {end} is past the model's context of {max_context}")]
    ContextOverflow {
        seq: SeqId,
        end: usize,
        max_context: usize,
    },
    #[error("sequence {seq}: token id {token} is outside the vocabulary of {vocab_size}")]
    TokenOutOfRange {
        seq: SeqId,
        token: u32,
        vocab_size: usize,
    },
    #[error("sequence {seq}: an entry must carry at least one token")]
    EmptyEntry { seq: SeqId },
    #[error(
        "sequence {seq}: {draft} proposals need a sampling entry of more tokens (it has {tokens})"
    )]
    BadDraft {
        seq: SeqId,
        draft: usize,
        tokens: usize,
    },
    #[error(
        "sequence {seq}: {propose} proposals from the draft model need a sampling entry without \
         proposals of its own and a draft model (loaded: {drafter})"
    )]
    BadPropose {
        seq: SeqId,
        propose: usize,
        drafter: bool,
    },
    #[error("sequence {seq} starts at position {start_pos} but its context has {context} tokens")]
    BadContext {
        seq: SeqId,
        context: usize,
        start_pos: usize,
    },
    #[error("sequence {seq} appears twice in one step")]
    DuplicateSequence { seq: SeqId },
    #[error("forward pass failed: {0}")]
    Forward(#[from] candle_core::Error),
    #[error("the backend worker has stopped")]
    WorkerGone,
}
