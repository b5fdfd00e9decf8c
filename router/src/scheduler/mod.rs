//! The scheduler task: owns the waiting queue, the running set and the KV block accounting
//! ([`batcher::Batcher`]), drives the backend one step at a time, and turns sampled tokens into
//! per-request events ([`OutputText`]).
//!
//! Handlers reach it through [`Scheduler`], a cheap clonable handle, and get back a bounded
//! receiver of [`Event`]s. Dropping that receiver cancels the request: the task sees the closed
//! channel before the next step and frees the sequence's blocks.
//!
//! Each iteration: take new commands -> drop sequences whose client is gone or whose queue
//! deadline passed -> hold costly grammars back ([`mask_budget::MaskBudget`]) -> plan a step ->
//! run it on the backend -> hand out tokens, check stops, free finished sequences. Metrics are
//! updated here, where the events happen.

pub mod batcher;
pub mod blocks;
mod live;
pub mod mask_budget;
use crate::backend::Backend;
use crate::metrics::METRICS;
use crate::request::OutputText;
use crate::validation::ValidRequest;
use batcher::{BatchConfig, Batcher};
use live::Live;
use mask_budget::MaskBudget;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokenizers::Tokenizer;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use wick_proto::{FinishReason, SeqId, TokenLogprob};

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
    },
    Error {
        choice: usize,
        failure: Failure,
        message: String,
    },
}

/// Counters the scheduler task publishes (single writer: the task).
#[derive(Debug, Default)]
pub struct SchedulerStats {
    pub running: AtomicU64,
    pub waiting: AtomicU64,
    pub free_blocks: AtomicU64,
    pub total_blocks: AtomicU64,
    pub steps: AtomicU64,
    /// Steps that ran more than one sequence.
    pub batched_steps: AtomicU64,
    pub preemptions: AtomicU64,
}

/// A validated request on its way to the task.
pub struct Submission {
    pub request: ValidRequest,
    pub request_id: String,
    pub arrived: Instant,
    /// Give up if not admitted by then.
    pub deadline: Option<Instant>,
    /// Held while the request waits for admission (`--max-queued-requests`).
    pub queue_permit: Option<OwnedSemaphorePermit>,
}

enum Command {
    Submit(Box<Submission>, mpsc::Sender<Event>),
    /// End every live request with a shutting-down error.
    AbortAll,
}

/// Handle to the scheduler task.
#[derive(Clone)]
pub struct Scheduler {
    /// Closed when every handle is dropped, which ends the task.
    tx: mpsc::Sender<Command>,
    stats: Arc<SchedulerStats>,
}

/// Commands waiting for the task. The task drains this every step, so the bound only matters under
/// a burst; a full queue makes submitters wait, it never drops.
const COMMAND_CAPACITY: usize = 256;

impl Scheduler {
    /// Starts the scheduler task on the current tokio runtime.
    pub fn start(
        backend: Backend,
        tokenizer: Arc<Tokenizer>,
        cfg: BatchConfig,
        num_blocks: usize,
    ) -> Self {
        let (tx, rx) = mpsc::channel(COMMAND_CAPACITY);
        let stats = Arc::new(SchedulerStats::default());
        stats
            .total_blocks
            .store(num_blocks as u64, Ordering::Relaxed);
        stats
            .free_blocks
            .store(num_blocks as u64, Ordering::Relaxed);
        METRICS.kv_cache_blocks_total.set(num_blocks as i64);
        let task = Task {
            backend,
            tokenizer,
            batcher: Batcher::new(cfg, num_blocks),
            masks: MaskBudget::default(),
            live: HashMap::new(),
            next_id: 1,
            stats: stats.clone(),
        };
        tokio::spawn(task.run(rx));
        Scheduler { tx, stats }
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

    pub fn stats(&self) -> &SchedulerStats {
        &self.stats
    }
}

struct Task {
    backend: Backend,
    tokenizer: Arc<Tokenizer>,
    batcher: Batcher,
    /// Which costly constrained sequences sit out the next step.
    masks: MaskBudget,
    live: HashMap<SeqId, Live>,
    next_id: SeqId,
    stats: Arc<SchedulerStats>,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        loop {
            if self.live.is_empty() {
                match rx.recv().await {
                    Some(cmd) => self.command(cmd).await,
                    None => return,
                }
            }
            while let Ok(cmd) = rx.try_recv() {
                self.command(cmd).await;
            }
            self.drop_cancelled_and_expired().await;
            self.batcher.hold(self.masks.held());
            let plan = self.batcher.plan();
            let preempted = plan.preempted.len() as u64;
            self.stats
                .preemptions
                .fetch_add(preempted, Ordering::Relaxed);
            METRICS.preemptions.inc_by(preempted);
            if plan.step.entries.is_empty() {
                self.publish();
                if !self.live.is_empty() {
                    // Waiting requests that cannot run yet: look again shortly (deadlines).
                    let wait = tokio::time::sleep(std::time::Duration::from_millis(20));
                    tokio::select! {
                        cmd = rx.recv() => if let Some(cmd) = cmd { self.command(cmd).await },
                        _ = wait => {},
                    }
                }
                continue;
            }
            self.batcher.commit(&plan.step);
            for &(seq, queried, cached) in &plan.admitted {
                if let Some(l) = self.live.get_mut(&seq) {
                    l.cached_tokens = cached;
                }
                if self.batcher.prefix_caching() {
                    METRICS.prefix_cache_queries.inc_by(queried as u64);
                    METRICS.prefix_cache_hits.inc_by(cached as u64);
                }
            }
            let now = Instant::now();
            for e in plan.step.entries.iter().filter(|e| e.start_pos == 0) {
                if let Some(l) = self.live.get_mut(&e.seq) {
                    l.on_admitted(now);
                }
            }
            let seqs: Vec<SeqId> = plan.step.entries.iter().map(|e| e.seq).collect();
            self.stats.steps.fetch_add(1, Ordering::Relaxed);
            if seqs.len() > 1 {
                self.stats.batched_steps.fetch_add(1, Ordering::Relaxed);
            }
            METRICS.batch_size.observe(seqs.len() as f64);
            self.publish();
            let started = Instant::now();
            match self.backend.step_async(plan.step).await {
                Ok(out) => {
                    METRICS
                        .step_duration
                        .observe(started.elapsed().as_secs_f64());
                    let now = Instant::now();
                    let masks = out.generations.iter().map(|g| (g.seq, g.mask_us));
                    self.masks.observe(out.forward_us, masks);
                    for g in out.generations {
                        if let Some(done) = self.on_token(g, now) {
                            self.finish(done).await;
                        }
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    tracing::error!(error = %message, "backend step failed");
                    for seq in seqs {
                        self.fail(seq, Failure::Backend, &message).await;
                    }
                }
            }
            self.publish();
        }
    }

    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Submit(sub, events) => self.admit(*sub, events).await,
            Command::AbortAll => {
                let all: Vec<SeqId> = self.live.keys().copied().collect();
                for seq in all {
                    self.fail(seq, Failure::ShuttingDown, "the server is shutting down")
                        .await;
                }
            }
        }
    }

    async fn admit(&mut self, sub: Submission, events: mpsc::Sender<Event>) {
        let req = &sub.request;
        METRICS.prompt_tokens.inc_by(req.prompt().len() as u64);
        let mut permit = sub.queue_permit;
        for choice in 0..req.n() {
            let id = self.next_id;
            self.next_id += 1;
            let mut params = req.params().clone();
            params.seed = params.seed.wrapping_add(choice as u64);
            if let Some(c) = req.constraint() {
                // Sent before any step of this sequence; a worker that is gone fails that step.
                let _gone = self.backend.constrain_async(id, c.clone()).await;
            }
            self.batcher.add(id, req.prompt().to_vec(), params);
            let output = OutputText::new(self.tokenizer.clone(), req.criteria().clone());
            self.live.insert(
                id,
                Live {
                    events: events.clone(),
                    choice,
                    output,
                    request_id: sub.request_id.clone(),
                    prompt_tokens: req.prompt().len(),
                    cached_tokens: 0,
                    sampled: 0,
                    arrived: sub.arrived,
                    deadline: sub.deadline,
                    admitted: None,
                    first_token: None,
                    last_token: None,
                    queue_permit: permit.take(),
                },
            );
        }
    }

    async fn finish(&mut self, seq: SeqId) {
        self.batcher.remove(seq);
        self.masks.forget(seq);
        self.live.remove(&seq);
        // A worker that is gone fails the next step, which reports it.
        let _gone = self.backend.release_async(seq).await;
    }

    async fn drop_cancelled_and_expired(&mut self) {
        let now = Instant::now();
        let mut gone = Vec::new();
        let mut expired = Vec::new();
        for (&id, l) in &self.live {
            if l.events.is_closed() {
                gone.push(id);
            } else if l.admitted.is_none() && l.deadline.is_some_and(|d| now >= d) {
                expired.push(id);
            }
        }
        for seq in gone {
            METRICS
                .request_failure
                .with_label_values(&["cancelled"])
                .inc();
            self.finish(seq).await;
        }
        for seq in expired {
            let message = "the request waited longer than the queue time limit";
            self.fail(seq, Failure::QueueTimeout, message).await;
        }
    }

    async fn fail(&mut self, seq: SeqId, failure: Failure, message: &str) {
        if let Some(l) = self.live.get(&seq) {
            let event = Event::Error {
                choice: l.choice,
                failure,
                message: message.to_string(),
            };
            // The client may be gone already; the sequence ends either way.
            let _unheard = l.events.try_send(event);
        }
        self.finish(seq).await;
    }

    /// Hands a sampled token to its request; returns the sequence if it is now done (finished,
    /// or its client is gone).
    fn on_token(&mut self, g: wick_proto::Generation, now: Instant) -> Option<SeqId> {
        let live = self.live.get_mut(&g.seq)?;
        if let Some(error) = g.constraint_error {
            tracing::warn!(request_id = %live.request_id, %error, "grammar failed");
            let event = Event::Error {
                choice: live.choice,
                failure: Failure::Grammar,
                message: error,
            };
            // The sequence ends either way; a client that is gone has nothing to hear.
            let _unheard = live.events.try_send(event);
            return Some(g.seq);
        }
        self.batcher.push_token(g.seq, g.token);
        live.on_token(now);
        let emit = live.output.push(g.token);
        let mut events = vec![Event::Token {
            choice: live.choice,
            token: g.token,
            text: emit.text,
            logprob: g.logprob,
            top_logprobs: g.top_logprobs,
        }];
        if let Some(reason) = emit.finish {
            live.on_finished(reason, now);
            events.push(Event::Finished {
                choice: live.choice,
                reason,
                prompt_tokens: live.prompt_tokens,
                cached_tokens: live.cached_tokens,
                completion_tokens: live.sampled,
            });
        }
        let delivered = events.into_iter().all(|e| live.events.try_send(e).is_ok());
        if !delivered && emit.finish.is_none() {
            METRICS
                .request_failure
                .with_label_values(&["cancelled"])
                .inc();
        }
        (emit.finish.is_some() || !delivered).then_some(g.seq)
    }

    fn publish(&self) {
        let s = &self.stats;
        let (running, waiting) = (self.batcher.running(), self.batcher.waiting());
        s.running.store(running as u64, Ordering::Relaxed);
        s.waiting.store(waiting as u64, Ordering::Relaxed);
        s.free_blocks
            .store(self.batcher.free_blocks() as u64, Ordering::Relaxed);
        METRICS.requests_running.set(running as i64);
        METRICS.requests_waiting.set(waiting as i64);
        METRICS.kv_cache_usage_ratio.set(self.batcher.kv_usage());
    }
}
