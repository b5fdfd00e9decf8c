//! The scheduler task: owns the waiting queue, the running set and the KV block accounting
//! ([`batcher::Batcher`]), drives the backend one step at a time, and turns sampled tokens into
//! per-request events ([`stop::OutputText`]).
//!
//! Handlers reach it through [`Scheduler`], a cheap clonable handle, and get back a bounded
//! receiver of [`Event`]s. Dropping that receiver cancels the request: the task sees the closed
//! channel before the next step and frees the sequence's blocks.
//!
//! Each iteration: take new requests -> drop sequences whose client is gone -> plan a step ->
//! run it on the backend -> hand out tokens, check stops, free finished sequences.

pub mod batcher;
pub mod blocks;
pub mod stop;

pub use stop::StopCriteria;

use crate::validation::ValidRequest;
use batcher::{BatchConfig, Batcher};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use stop::OutputText;
use tokenizers::Tokenizer;
use tokio::sync::mpsc;
use wick_backend::Backend;
use wick_proto::{FinishReason, SeqId, TokenLogprob};

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
        completion_tokens: usize,
    },
    Error {
        choice: usize,
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

struct Submission {
    request: ValidRequest,
    events: mpsc::Sender<Event>,
}

/// Handle to the scheduler task.
#[derive(Clone)]
pub struct Scheduler {
    /// Closed when every handle is dropped, which ends the task.
    tx: mpsc::Sender<Submission>,
    stats: Arc<SchedulerStats>,
}

/// New requests waiting for the task to take them. The task drains this every step, so the bound
/// only matters under a burst; a full queue makes submitters wait, it never drops.
const SUBMIT_CAPACITY: usize = 256;

impl Scheduler {
    /// Starts the scheduler task on the current tokio runtime.
    pub fn start(
        backend: Backend,
        tokenizer: Arc<Tokenizer>,
        cfg: BatchConfig,
        num_blocks: usize,
    ) -> Self {
        let (tx, rx) = mpsc::channel(SUBMIT_CAPACITY);
        let stats = Arc::new(SchedulerStats::default());
        stats
            .total_blocks
            .store(num_blocks as u64, Ordering::Relaxed);
        stats
            .free_blocks
            .store(num_blocks as u64, Ordering::Relaxed);
        let task = Task {
            backend,
            tokenizer,
            batcher: Batcher::new(cfg, num_blocks),
            live: HashMap::new(),
            next_id: 1,
            stats: stats.clone(),
        };
        tokio::spawn(task.run(rx));
        Scheduler { tx, stats }
    }

    /// Queues a request; its events arrive on the returned receiver.
    pub async fn submit(&self, request: ValidRequest) -> Result<mpsc::Receiver<Event>, ()> {
        // Room for every event the request can produce (a token per step and a final event, per
        // choice), so the task never has to wait on a slow client.
        let capacity = request.n() * (request.criteria().max_tokens + 2);
        let (events, rx) = mpsc::channel(capacity);
        self.tx
            .send(Submission { request, events })
            .await
            .map_err(|_| ())?;
        Ok(rx)
    }

    pub fn stats(&self) -> &SchedulerStats {
        &self.stats
    }
}

/// One live sequence: a choice of a request.
struct Live {
    events: mpsc::Sender<Event>,
    choice: usize,
    output: OutputText,
    prompt_tokens: usize,
    sampled: usize,
}

struct Task {
    backend: Backend,
    tokenizer: Arc<Tokenizer>,
    batcher: Batcher,
    live: HashMap<SeqId, Live>,
    next_id: SeqId,
    stats: Arc<SchedulerStats>,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Submission>) {
        loop {
            if self.live.is_empty() {
                match rx.recv().await {
                    Some(sub) => self.admit(sub),
                    None => return,
                }
            }
            while let Ok(sub) = rx.try_recv() {
                self.admit(sub);
            }
            self.drop_cancelled().await;
            let plan = self.batcher.plan();
            let preempted = plan.preempted.len() as u64;
            self.stats
                .preemptions
                .fetch_add(preempted, Ordering::Relaxed);
            if plan.step.entries.is_empty() {
                self.publish();
                // Nothing can run until something changes: wait for the next request.
                if let Some(sub) = rx.recv().await {
                    self.admit(sub);
                }
                continue;
            }
            self.batcher.commit(&plan.step);
            let seqs: Vec<SeqId> = plan.step.entries.iter().map(|e| e.seq).collect();
            self.stats.steps.fetch_add(1, Ordering::Relaxed);
            if seqs.len() > 1 {
                self.stats.batched_steps.fetch_add(1, Ordering::Relaxed);
            }
            self.publish();
            match self.backend.step_async(plan.step).await {
                Ok(out) => {
                    for g in out.generations {
                        if let Some(done) = self.on_token(g) {
                            self.finish(done).await;
                        }
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    for seq in seqs {
                        self.fail(seq, &message).await;
                    }
                }
            }
            self.publish();
        }
    }

    fn admit(&mut self, sub: Submission) {
        let req = &sub.request;
        for choice in 0..req.n() {
            let id = self.next_id;
            self.next_id += 1;
            let mut params = req.params().clone();
            params.seed = params.seed.wrapping_add(choice as u64);
            self.batcher.add(id, req.prompt().to_vec(), params);
            self.live.insert(
                id,
                Live {
                    events: sub.events.clone(),
                    choice,
                    output: OutputText::new(self.tokenizer.clone(), req.criteria().clone()),
                    prompt_tokens: req.prompt().len(),
                    sampled: 0,
                },
            );
        }
    }

    async fn finish(&mut self, seq: SeqId) {
        self.batcher.remove(seq);
        self.live.remove(&seq);
        // A worker that is gone fails the next step, which reports it.
        let _gone = self.backend.release_async(seq).await;
    }

    async fn drop_cancelled(&mut self) {
        let gone: Vec<SeqId> = self
            .live
            .iter()
            .filter(|(_, l)| l.events.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for seq in gone {
            self.finish(seq).await;
        }
    }

    async fn fail(&mut self, seq: SeqId, message: &str) {
        if let Some(l) = self.live.get(&seq) {
            let event = Event::Error {
                choice: l.choice,
                message: message.to_string(),
            };
            // The client may be gone already; the sequence ends either way.
            let _unheard = l.events.try_send(event);
        }
        self.finish(seq).await;
    }

    /// Hands a sampled token to its request; returns the sequence if it is now done (finished,
    /// or its client is gone).
    fn on_token(&mut self, g: wick_proto::Generation) -> Option<SeqId> {
        let live = self.live.get_mut(&g.seq)?;
        self.batcher.push_token(g.seq, g.token);
        live.sampled += 1;
        let emit = live.output.push(g.token);
        let mut events = vec![Event::Token {
            choice: live.choice,
            token: g.token,
            text: emit.text,
            logprob: g.logprob,
            top_logprobs: g.top_logprobs,
        }];
        if let Some(reason) = emit.finish {
            events.push(Event::Finished {
                choice: live.choice,
                reason,
                prompt_tokens: live.prompt_tokens,
                completion_tokens: live.sampled,
            });
        }
        let delivered = events.into_iter().all(|e| live.events.try_send(e).is_ok());
        (emit.finish.is_some() || !delivered).then_some(g.seq)
    }

    fn publish(&self) {
        let s = &self.stats;
        s.running
            .store(self.batcher.running() as u64, Ordering::Relaxed);
        s.waiting
            .store(self.batcher.waiting() as u64, Ordering::Relaxed);
        s.free_blocks
            .store(self.batcher.free_blocks() as u64, Ordering::Relaxed);
    }
}
