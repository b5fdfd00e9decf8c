//! Wick's backend: llama-family models (Llama, Mistral, Qwen 2, Gemma 3) on candle with a paged
//! KV cache, sampling, and the worker thread that owns them. Knows nothing of HTTP; talks to the router in `wick_proto` messages.
//!
//! # Layout
//! - [`config`]: architecture hyper-parameters from GGUF metadata or `config.json`.
//! - [`gguf`]: a GGUF header read into memory and checked against the file's size before candle
//!   reads it.
//! - [`weights`]: a loaded model as one description (config, matrices, norms, RoPE) that both
//!   forward paths are built from.
//! - [`loader`]: weights from GGUF or a Hugging Face directory; GGUF to safetensors export.
//! - [`tokenizer`]: tokenizers (byte-level BPE, SentencePiece) from GGUF metadata or
//!   `tokenizer.json`, chat template, special ids.
//! - [`ops`]: the CPU kernels (quantized matmul, paged attention, per-token ops).
//! - [`team`]: the compute threads that run a step's parallel work.
//! - [`kv`]: the paged KV cache tensors.
//! - [`memory`]: large buffers (packed weights, the KV cache) in huge pages.
//! - [`model`]: the engine's [`Model`](model::Model): Wick's CPU kernels' forward pass over a
//!   packed batch, or [`generic`]'s.
//! - [`generic`]: the same forward pass in candle ops only (CUDA; CPU on request).
//! - [`grammar`]: constrained decoding (JSON schema, regex, Lark) with llguidance.
//! - [`sampling`]: penalties, greedy and seeded sampling, log-probabilities.
//! - [`draft`]: draft-model speculation: a second model and its cache proposing tokens.
//! - [`engine`]: model + cache + per-sequence history; one `step` call per batch.
//! - [`worker`]: the dedicated thread and the [`Backend`] handle.

pub mod config;
pub mod draft;
pub mod engine;
pub mod error;
pub mod generic;
pub mod gguf;
pub mod grammar;
pub mod kv;
pub mod loader;
pub mod memory;
pub mod model;
pub mod ops;
pub mod sampling;
pub mod team;
pub mod tokenizer;
pub mod weights;
pub mod worker;

pub use engine::Engine;

/// The revision of Wick's numerics: raised whenever a change can move any output's bits (a
/// kernel's order of operations, an activation's formula, a sampler's arithmetic), so that
/// servers built before and after it report different `system_fingerprint`s. 2: SwiGLU's sigmoid
/// takes Wick's vectorised `exp` instead of libm's `expf`. 3: GELU is `x / (1 + e^(-2 z))` on
/// that `exp` instead of `0.5 x (1 + tanh z)` on libm's `tanhf`.
pub const NUMERICS: u32 = 3;
pub use error::{BackendError, LoadError};
pub use kv::KvDType;
pub use worker::{load_engine, release_free_heap, Backend, BackendConfig, DeviceSpec};
