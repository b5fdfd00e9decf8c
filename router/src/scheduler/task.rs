//! The scheduler task's loop and the state it owns alone: the batcher, the live sequences and
//! the grammar-mask budget. Each iteration: take new commands -> drop sequences whose client is
//! gone or whose queue deadline passed -> hold costly grammars back -> plan a step -> run it on
//! the worker -> hand out tokens, check stops, free finished sequences -> count speculative
//! entries' accepted proposals in, and the step's time into the step-time model. With a time
//! target, the loop starts with a few timed steps on a scratch sequence ([`Task::calibrate`]);
//! the task says when it serves (after them) on a watch channel, which `/ready` waits for.

use super::batcher::{BatchConfig, Batcher};
use super::live::{Live, SeqTrace};
use super::mask_budget::MaskBudget;
use super::speculate::draft_charge;
use super::step_time::{self, Work};
use super::{Command, Event, Failure, Submission, Worker};
use crate::metrics::METRICS;
use crate::request::OutputText;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tokenizers::Tokenizer;
use tokio::sync::{mpsc, watch};
use wick_proto::{SamplingParams, SeqId, Step, StepEntry};

/// The scratch sequence of the start-up timing steps (requests' ids start at 1).
const SCRATCH: SeqId = 0;
/// What the start-up timing steps run (any tokens would do; these are ordinary ones).
const CALIBRATION_TEXT: &str = "The quick brown fox jumps over the lazy dog, and then it \
    runs back home along the river, counting the trees it passes on the way.";

pub(super) struct Task<W> {
    worker: W,
    tokenizer: Arc<Tokenizer>,
    batcher: Batcher,
    /// Which costly constrained sequences sit out the next step.
    masks: MaskBudget,
    live: HashMap<SeqId, Live>,
    next_id: SeqId,
}

impl<W: Worker> Task<W> {
    pub fn new(worker: W, tokenizer: Arc<Tokenizer>, cfg: BatchConfig, num_blocks: usize) -> Self {
        Task {
            worker,
            tokenizer,
            batcher: Batcher::new(cfg, num_blocks),
            masks: MaskBudget::default(),
            live: HashMap::new(),
            next_id: 1,
        }
    }

    /// The loop, after the start-up steps; `serving` becomes true between the two.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Command>, serving: watch::Sender<bool>) {
        self.calibrate().await;
        // Nobody waiting is fine.
        let _unwatched = serving.send(true);
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
            METRICS.preemptions.inc_by(plan.preempted.len() as u64);
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
            if self.batcher.prefix_caching() {
                for a in &plan.admitted {
                    METRICS.prefix_cache_queries.inc_by(a.looked_up as u64);
                    METRICS.prefix_cache_hits.inc_by(a.cached as u64);
                }
            }
            let now = Instant::now();
            // Every first admission, also one onto cached blocks (its first entry starts past
            // them): its queue time ends, and with it its queue deadline.
            for a in &plan.admitted {
                if let Some(l) = self.live.get_mut(&a.seq) {
                    l.on_admitted(now, a.cached);
                }
            }
            let chunks = self.prefill_spans(&plan.step);
            let seqs: Vec<SeqId> = plan.step.entries.iter().map(|e| e.seq).collect();
            // The speculation's cost model reads decode steps only (a prefill chunk's rows cost
            // less each than a decode's few).
            let decode_only =
                (plan.step.entries.iter()).all(|e| e.draft > 0 || e.tokens.len() == 1);
            let drafts: Vec<(SeqId, usize)> = (plan.step.entries.iter())
                .filter(|e| e.draft + e.propose > 0)
                .map(|e| (e.seq, e.draft + e.propose))
                .collect();
            let proposed_by_model: usize = plan.step.entries.iter().map(|e| e.propose).sum();
            // Its rows count the proposals the backend's draft model makes.
            let work = Work::of(&plan.step.entries);
            if seqs.len() > 1 {
                METRICS.batched_steps.inc();
            }
            METRICS.batch_size.observe(seqs.len() as f64);
            self.publish();
            let started = Instant::now();
            let result = self.worker.step(plan.step).await;
            drop(chunks);
            match result {
                Ok(out) => {
                    let took = started.elapsed();
                    METRICS.step_duration.observe(took.as_secs_f64());
                    tracing::debug!(
                        tokens = work.tokens,
                        pairs = work.pairs,
                        samples = work.samples,
                        took_us = took.as_micros() as u64,
                        predicted_us = self.batcher.clock().and_then(|c| c.predict(work)),
                        "step"
                    );
                    self.batcher.observe_work(work, took);
                    let now = Instant::now();
                    let masks = out.generations.iter().map(|g| (g.seq, g.mask_us));
                    self.masks.observe(out.forward_us, masks);
                    let verified = self.on_verified(&drafts, &out);
                    if decode_only {
                        // Proposals planned but not made (the draft model was catching up)
                        // took no rows.
                        let unmade: usize = (drafts.iter().zip(&verified))
                            .map(|((_, planned), (_, proposed, _, _))| planned - proposed)
                            .sum();
                        let made = proposed_by_model.saturating_sub(unmade);
                        let proposing = (verified.iter())
                            .filter(|(_, proposed, _, _)| *proposed > 0)
                            .count();
                        let draft_us = draft_charge(
                            out.draft_us,
                            out.draft_catch_up_us,
                            out.draft_catch_up_rows,
                            proposing,
                        );
                        self.batcher.observe_step(
                            work.tokens - unmade,
                            out.forward_us,
                            made,
                            draft_us,
                        );
                    }
                    for g in out.generations {
                        if let Some(done) = self.on_token(g, now) {
                            self.finish(done).await;
                        }
                    }
                    for (seq, proposed, accepted, next) in verified {
                        self.batcher.accept(seq, proposed, accepted, next);
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

    /// With time-budgeted steps, runs the step-time model's start-up steps
    /// ([`step_time::calibration`]) on a scratch sequence, before any request is served (those
    /// that arrive meanwhile wait in the channel; `/ready` answers after them). Without free
    /// blocks for them, or if the backend fails one, the model learns from the served steps
    /// alone.
    async fn calibrate(&mut self) {
        if self.batcher.clock().is_none() {
            return;
        }
        let steps = step_time::calibration(self.batcher.calibration_context());
        let Some(end) = steps.iter().map(|&(start, len, _)| start + len).max() else {
            return;
        };
        let Some(blocks) = self.batcher.scratch(end) else {
            tracing::warn!("no free KV blocks to time the start-up steps");
            return;
        };
        let text = self.tokenizer.encode(CALIBRATION_TEXT, false).ok();
        let ids = text
            .map(|e| e.get_ids().to_vec())
            .filter(|ids| !ids.is_empty());
        let ids = ids.unwrap_or_else(|| vec![0]);
        let started = Instant::now();
        for (i, &(start, len, sample)) in steps.iter().enumerate() {
            let entry = StepEntry {
                seq: SCRATCH,
                tokens: (start..start + len).map(|p| ids[p % ids.len()]).collect(),
                start_pos: start,
                blocks: blocks.clone(),
                sample: sample.then(SamplingParams::default),
                draft: 0,
                propose: 0,
                context: Vec::new(),
            };
            let t = Instant::now();
            if let Err(e) = self
                .worker
                .step(Step {
                    entries: vec![entry],
                })
                .await
            {
                tracing::warn!(error = %e, "a start-up timing step failed");
                break;
            }
            // The first touches the weights for the first time.
            let work = match sample {
                true => Work::decode(start, len),
                false => Work::chunk(start, len),
            };
            if let (Some(clock), true) = (self.batcher.clock(), i > 0) {
                clock.anchor(work, t.elapsed());
            }
        }
        // A worker that is gone fails the next step anyway.
        let _gone = self.worker.release(SCRATCH).await;
        self.batcher.free_scratch(&blocks);
        if let Some(c) = self.batcher.clock().and_then(|c| c.coefficients()) {
            tracing::info!(
                took_ms = started.elapsed().as_millis() as u64,
                fixed_ms = c[0] / 1e3,
                per_token_ms = c[1] / 1e3,
                per_1k_attention_pairs_ms = c[2] / 1e3,
                per_sample_ms = c[3] / 1e3,
                "step time model"
            );
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
        if let Some(account) = &sub.account {
            account.charge_prompt(req.prompt().len(), Instant::now());
        }
        let mut permit = sub.queue_permit;
        for choice in 0..req.n() {
            let id = self.next_id;
            self.next_id += 1;
            let mut params = req.params().clone();
            params.seed = params.seed.wrapping_add(choice as u64);
            if let Some(c) = req.constraint() {
                // Sent before any step of this sequence; a worker that is gone fails that step.
                let _gone = self.worker.constrain(id, c.clone()).await;
            }
            self.batcher
                .add(id, req.prompt().to_vec(), params, req.priority());
            let mut output = OutputText::new(self.tokenizer.clone(), req.criteria().clone());
            // A resumed request's prompt ends with the ids generated before its stream was cut
            // (`prompt_len` is the original prompt's): its output text continues from them.
            let generated = &req.prompt()[req.params().prompt_len..];
            for &token in generated {
                output.push(token);
            }
            self.live.insert(
                id,
                Live {
                    events: events.clone(),
                    choice,
                    output,
                    request_id: sub.request_id.clone(),
                    account: sub.account.clone(),
                    prompt_tokens: req.params().prompt_len,
                    sampled: generated.len(),
                    arrived: sub.arrived,
                    deadline: sub.deadline,
                    admitted: None,
                    first_token: None,
                    last_token: None,
                    queue_permit: permit.take(),
                    proposed: 0,
                    accepted: 0,
                    trace: SeqTrace::queued(sub.span.clone(), choice),
                },
            );
        }
    }

    async fn finish(&mut self, seq: SeqId) {
        self.batcher.remove(seq);
        self.masks.forget(seq);
        self.live.remove(&seq);
        // A worker that is gone fails the next step, which reports it.
        let _gone = self.worker.release(seq).await;
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
            if let Some(l) = self.live.get(&seq) {
                l.trace.failed("cancelled: the client went away");
            }
            self.finish(seq).await;
        }
        for seq in expired {
            let message = "the request waited longer than the queue time limit";
            self.fail(seq, Failure::QueueTimeout, message).await;
        }
    }

    async fn fail(&mut self, seq: SeqId, failure: Failure, message: &str) {
        if let Some(l) = self.live.get(&seq) {
            l.trace.failed(message);
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
            // Of the prompt's tokens (a resumed request's cache hits may reach past them).
            let cached_tokens = self.batcher.cached_tokens(g.seq).min(live.prompt_tokens);
            live.on_finished(reason, cached_tokens, now);
            events.push(Event::Finished {
                choice: live.choice,
                reason,
                prompt_tokens: live.prompt_tokens,
                cached_tokens,
                completion_tokens: live.sampled,
                stop_sequence: emit.stop.clone(),
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

    /// Counts the speculative entries' outcomes (every generation but the last of such an
    /// entry is an accepted proposal; an entry the draft model made none for proposed none);
    /// returns each one's proposals, accepted proposals and last generated token.
    fn on_verified(
        &mut self,
        drafts: &[(SeqId, usize)],
        out: &wick_proto::StepOutput,
    ) -> Vec<(SeqId, usize, usize, Option<u32>)> {
        drafts
            .iter()
            .map(|&(seq, planned)| {
                let proposed = match out.not_proposed.contains(&seq) {
                    true => 0,
                    false => planned,
                };
                let mine = || out.generations.iter().filter(move |g| g.seq == seq);
                let given = mine().count();
                let accepted = given.saturating_sub(1).min(proposed);
                METRICS.spec_proposed.inc_by(proposed as u64);
                METRICS.spec_accepted.inc_by(accepted as u64);
                if let Some(l) = self.live.get_mut(&seq) {
                    l.proposed += proposed;
                    l.accepted += accepted;
                }
                (seq, proposed, accepted, mine().next_back().map(|g| g.token))
            })
            .collect()
    }

    /// The prompt chunks `step` computes, as trace spans that end with it (none when traces
    /// are off).
    fn prefill_spans(&self, step: &wick_proto::Step) -> Vec<tracing::Span> {
        (step.entries.iter())
            .filter_map(|e| {
                let l = self.live.get(&e.seq)?;
                (l.first_token.is_none()).then(|| l.trace.chunk(e.start_pos, e.tokens.len()))
            })
            .collect()
    }

    fn publish(&self) {
        METRICS.requests_running.set(self.batcher.running() as i64);
        METRICS.requests_waiting.set(self.batcher.waiting() as i64);
        METRICS
            .kv_cache_blocks_free
            .set(self.batcher.free_blocks() as i64);
        METRICS.kv_cache_usage_ratio.set(self.batcher.kv_usage());
    }
}
