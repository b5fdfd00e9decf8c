//! Wick's router: the `wick` command, the HTTP APIs (OpenAI's chat, completions and responses,
//! Anthropic's messages, TGI's generate), validation, the continuous-batching scheduler and
//! chat templates. Knows nothing of candle.
//!
//! # Layout
//! - [`cli`]: the `wick` command line (`serve`, `generate`).
//! - [`serve`]: `wick serve`'s start-up, readiness and drain.
//! - [`backend`]: everything the router takes from the backend crate, in one place.
//! - [`server`]: axum routes, OpenAI, Anthropic and TGI wire types, SSE streaming, the
//!   connection listener and its limits.
//! - [`validation`]: requests checked and tokenized into a `ValidRequest`.
//! - [`request`]: what a valid request carries: prompt encoding, stop criteria, output text.
//! - [`scheduler`]: the task that owns the queue, the running set and KV blocks.
//! - [`template`]: chat templates through minijinja.
//! - [`chat_tokens`]: message content tokenized as text, never as control tokens.
//! - [`reasoning`]: a reasoning model's reasoning apart from its answer.
//! - [`tools`]: tool calling in the model's own format: tool prompt, call grammar, reading
//!   calls back (whole or streamed).
//! - [`quota`]: each API key's account: its limits (requests and tokens per minute, concurrent
//!   streams) and what it has used.
//! - [`metrics`]: every Prometheus metric, registered in one place.
//! - [`telemetry`]: logs, and OpenTelemetry traces of requests (`--otlp-endpoint`).
//! - [`fingerprint`]: `system_fingerprint`, what must match for the same tokens.
//! - [`error`]: the one error type and its mapping to HTTP and OpenAI's error JSON (Anthropic's
//!   routes reshape the body).
//! - [`generate`]: one sequence start to finish on the backend (`wick generate`).
//! - `testing` (unit tests only): helpers the tests share.

pub mod backend;
pub mod chat_tokens;
pub mod cli;
pub mod error;
pub mod fingerprint;
pub mod generate;
pub mod metrics;
pub mod quota;
pub mod reasoning;
pub mod request;
pub mod scheduler;
pub mod serve;
pub mod server;
pub mod telemetry;
pub mod template;
#[cfg(test)]
mod testing;
pub mod tools;
pub mod validation;
