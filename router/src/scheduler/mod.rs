//! The scheduler task: owns the waiting queue, the running set and the KV block accounting
//! ([`batcher::Batcher`]), drives the backend worker one step at a time, and turns sampled tokens
//! into per-request events ([`OutputText`](crate::request::OutputText)). The loop is in [`task`];
//! it reaches the worker through the [`Worker`] trait ([`Backend`] in the server, a scripted fake
//! in the unit tests).
//!
//! Handlers reach it through [`Scheduler`], a cheap clonable handle, and get back a bounded
//! receiver of [`Event`]s. Dropping that receiver cancels the request: the task sees the closed
//! channel before the next step and frees the sequence's blocks.
//!
//! Each iteration: take new commands -> drop sequences whose client is gone or whose queue
//! deadline passed -> hold costly grammars back ([`mask_budget::MaskBudget`]) -> plan a step
//! (with speculation, decoding sequences' proposals from [`speculate::Speculator`]; with a time
//! target, prefill chunks cut to fit, [`step_time::StepClock`]) -> run it on the backend -> hand
//! out tokens, check stops, free finished sequences -> count accepted proposals in, and the
//! step's time into the step-time model. Before the first iteration, with a time target, a few
//! timed steps on a scratch sequence seed that model. Metrics are updated here, where the events
//! happen.

pub mod batcher;
pub mod blocks;
mod live;
pub mod mask_budget;
pub mod ngram;
pub mod speculate;
pub mod step_time;
mod task;
#[cfg(test)]
mod tests;

use crate::backend::{Backend, BackendError, Constraint};
use crate::metrics::METRICS;
use crate::quota::Account;
use crate::validation::ValidRequest;
use batcher::BatchConfig;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tokenizers::Tokenizer;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use wick_proto::{FinishReason, SeqId, Step, StepOutput, TokenLogprob};

/// Why a request failed after it was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// It waited longer than `--max-queue-time`.
    QueueTimeout,
    /// The server is shutting down and its drain time is over.
    ShuttingDown,
    /// The backend failed the step.
    Backend,
    /// The sequence's output grammar failed (its message is short and holds no parser state).
    Grammar,
}

/// The scheduler task has ended (every request is refused from then on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the scheduler has stopped")]
pub struct SchedulerGone;

/// What a request hears about its choices.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Token {
        choice: usize,
        token: u32,
        /// Text that became final with this token (may be empty).
        text: String,
        logprob: f32,
        top_logprobs: Vec<TokenLogprob>,
    },
    Finished {
        choice: usize,
        reason: FinishReason,
        prompt_tokens: usize,
        /// Prompt tokens found in the prefix cache at first admission.
        cached_tokens: usize,
        completion_tokens: usize,
        /// The stop string that ended it (`reason` is then `StopSequence`).
        stop_sequence: Option<String>,
    },
    Error {
        choice: usize,
        failure: Failure,
        message: String,
    },
}

impl Event {
    /// The same event for choice `choice + by` (generations merged into one response).
    pub fn shifted(mut self, by: usize) -> Event {
        match &mut self {
            Event::Token { choice, .. }
            | Event::Finished { choice, .. }
            | Event::Error { choice, .. } => *choice += by,
        }
        self
    }
}

/// What the scheduler task asks of the backend worker, in the order it asks.
pub trait Worker: Send + Sync + 'static {
    /// Runs one step and returns its sampled tokens.
    fn step(&self, step: Step) -> impl Future<Output = Result<StepOutput, BackendError>> + Send;
    /// Constrains the later samplings of `seq` (sent before its first step).
    fn constrain(
        &self,
        seq: SeqId,
        constraint: Constraint,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// `seq` is finished: the worker may drop its sampling and grammar state.
    fn release(&self, seq: SeqId) -> impl Future<Output = Result<(), BackendError>> + Send;
}

impl Worker for Backend {
    fn step(&self, step: Step) -> impl Future<Output = Result<StepOutput, BackendError>> + Send {
        self.step_async(step)
    }
    fn constrain(
        &self,
        seq: SeqId,
        constraint: Constraint,
    ) -> impl Future<Output = Result<(), BackendError>> + Send {
        self.constrain_async(seq, constraint)
    }
    fn release(&self, seq: SeqId) -> impl Future<Output = Result<(), BackendError>> + Send {
        self.release_async(seq)
    }
}

/// A validated request on its way to the task.
pub struct Submission {
    pub request: ValidRequest,
    pub request_id: String,
    /// The caller's key, charged the tokens the request uses (none without API keys).
    pub account: Option<Arc<Account>>,
    /// The request's trace span, parent of each choice's stage spans.
    pub span: tracing::Span,
    pub arrived: Instant,
    /// Give up if not admitted by then.
    pub deadline: Option<Instant>,
    /// Held while the request waits for admission (`--max-queued-requests`).
    pub queue_permit: Option<OwnedSemaphorePermit>,
}

pub(crate) enum Command {
    Submit(Box<Submission>, mpsc::Sender<Event>),
    /// End every live request with a shutting-down error.
    AbortAll,
}

/// Handle to the scheduler task.
#[derive(Clone)]
pub struct Scheduler {
    /// Closed when every handle is dropped, which ends the task.
    tx: mpsc::Sender<Command>,
    /// Becomes true once the task serves requests (after its start-up steps, if any).
    serving: watch::Receiver<bool>,
}

/// Commands waiting for the task. The task drains this every step, so the bound only matters under
/// a burst; a full queue makes submitters wait, it never drops.
const COMMAND_CAPACITY: usize = 256;

impl Scheduler {
    /// Starts the scheduler task on the current tokio runtime.
    pub fn start(
        worker: impl Worker,
        tokenizer: Arc<Tokenizer>,
        cfg: BatchConfig,
        num_blocks: usize,
    ) -> Self {
        let (tx, rx) = mpsc::channel(COMMAND_CAPACITY);
        METRICS.kv_cache_blocks_total.set(num_blocks as i64);
        METRICS.kv_cache_blocks_free.set(num_blocks as i64);
        let (serving_tx, serving) = watch::channel(false);
        tokio::spawn(task::Task::new(worker, tokenizer, cfg, num_blocks).run(rx, serving_tx));
        Scheduler { tx, serving }
    }

    /// Returns once the task serves requests: at once, or after the step-time model's
    /// start-up steps with a time target (so that `/ready` waits for them), or when the task
    /// has ended.
    pub async fn serving(&self) {
        let mut serving = self.serving.clone();
        // An error means the task is gone: nothing left to wait for.
        let _gone = serving.wait_for(|s| *s).await;
    }

    /// Queues a request; its events arrive on the returned receiver.
    pub async fn submit(&self, sub: Submission) -> Result<mpsc::Receiver<Event>, SchedulerGone> {
        // Room for every event the request can produce (a token per step and a final event, per
        // choice), so the task never has to wait on a slow client.
        let capacity = sub.request.n() * (sub.request.criteria().max_tokens + 2);
        let (events, rx) = mpsc::channel(capacity);
        self.tx
            .send(Command::Submit(Box::new(sub), events))
            .await
            .map_err(|_| SchedulerGone)?;
        Ok(rx)
    }

    /// Ends every live request with an error event (drain time is over).
    pub async fn abort_all(&self) {
        // A task that is gone has nothing left to abort.
        let _gone = self.tx.send(Command::AbortAll).await;
    }
}
