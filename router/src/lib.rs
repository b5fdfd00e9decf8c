//! Wick's router: the `wick` command, chat templates and (next) the HTTP API and scheduler.
//!
//! # Layout
//! - [`cli`]: the `wick` command line (`generate`, `serve`).
//! - [`template`]: chat templates through minijinja.
//! - [`generate`]: one sequence start to finish on the backend, with streamed text.

pub mod cli;
pub mod generate;
pub mod template;
