//! One live sequence (a choice of a request) as the scheduler task tracks it: where its events go,
//! its output text, its caller's key (charged its tokens), its timings for metrics and the
//! per-request log line, and its trace spans ([`SeqTrace`]).

use super::Event;
use crate::metrics::METRICS;
use crate::quota::Account;
use crate::request::OutputText;
use crate::telemetry::{self, Stage};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tracing::Span;
use wick_proto::FinishReason;

pub(super) struct Live {
    /// Closed by the client dropping its receiver: the cancellation signal.
    pub events: mpsc::Sender<Event>,
    pub choice: usize,
    pub output: OutputText,
    pub request_id: String,
    /// The caller's key, charged each generated token.
    pub account: Option<Arc<Account>>,
    pub prompt_tokens: usize,
    pub sampled: usize,
    pub arrived: Instant,
    pub deadline: Option<Instant>,
    pub admitted: Option<Instant>,
    pub first_token: Option<Instant>,
    pub last_token: Option<Instant>,
    /// Dropped at admission, freeing a place in the waiting queue.
    pub queue_permit: Option<OwnedSemaphorePermit>,
    /// Speculative proposals made for this sequence, and those accepted.
    pub proposed: usize,
    pub accepted: usize,
    pub trace: SeqTrace,
}

/// A sequence's trace spans: its request's, and the stage it is in (`queue`, `prefill`,
/// `decode`), which ends when the next begins. All `Span::none()` when traces are off.
pub(super) struct SeqTrace {
    request: Span,
    stage: Span,
    choice: usize,
}

impl SeqTrace {
    pub fn queued(request: Span, choice: usize) -> SeqTrace {
        SeqTrace {
            stage: telemetry::stage(&request, Stage::Queue, choice),
            request,
            choice,
        }
    }

    fn next(&mut self, stage: Stage) {
        // The stage before ends first.
        self.stage = Span::none();
        self.stage = telemetry::stage(&self.request, stage, self.choice);
    }

    /// A span for the part of the prompt one step computes (while prefilling).
    pub fn chunk(&self, start: usize, tokens: usize) -> Span {
        telemetry::prefill_chunk(&self.stage, start, tokens)
    }

    pub fn failed(&self, message: &str) {
        telemetry::failed(&self.request, message);
    }
}

impl Live {
    /// The sequence's first admission, `cached` prompt tokens from the prefix cache.
    pub fn on_admitted(&mut self, now: Instant, cached: usize) {
        if self.admitted.is_none() {
            self.trace.next(Stage::Prefill);
            telemetry::count(&self.trace.stage, "wick.cached_tokens", cached);
            self.admitted = Some(now);
            self.queue_permit = None;
            METRICS
                .request_queue_time
                .observe((now - self.arrived).as_secs_f64());
        }
    }

    pub fn on_token(&mut self, now: Instant) {
        self.sampled += 1;
        METRICS.generation_tokens.inc();
        if let Some(account) = &self.account {
            account.charge_generated(now);
        }
        if self.first_token.is_none() {
            self.first_token = Some(now);
            self.trace.next(Stage::Decode);
        }
        match self.last_token {
            None => METRICS
                .time_to_first_token
                .observe((now - self.arrived).as_secs_f64()),
            Some(prev) => METRICS
                .inter_token_latency
                .observe((now - prev).as_secs_f64()),
        }
        self.last_token = Some(now);
    }

    /// Counts and logs a sequence that finished normally.
    pub fn on_finished(&self, reason: FinishReason, cached_tokens: usize, now: Instant) {
        let total = now - self.arrived;
        let t = &self.trace;
        telemetry::count(&t.stage, "gen_ai.usage.output_tokens", self.sampled);
        t.stage
            .record("gen_ai.response.finish_reasons", reason.as_openai());
        if self.choice == 0 {
            telemetry::count(&t.request, "gen_ai.usage.output_tokens", self.sampled);
            telemetry::count(&t.request, "wick.cached_tokens", cached_tokens);
            t.request
                .record("gen_ai.response.finish_reasons", reason.as_openai());
        }
        METRICS
            .request_success
            .with_label_values(&[reason.as_label()])
            .inc();
        METRICS.e2e_request_latency.observe(total.as_secs_f64());
        let ms = |a: Option<Instant>| a.map(|t| (t - self.arrived).as_secs_f64() * 1e3);
        tracing::info!(
            request_id = %self.request_id,
            key = self.account.as_ref().map(|a| a.label()),
            choice = self.choice,
            prompt_tokens = self.prompt_tokens,
            cached_tokens,
            generated_tokens = self.sampled,
            queue_ms = ms(self.admitted).unwrap_or(0.0),
            ttft_ms = ms(self.first_token).unwrap_or(0.0),
            total_ms = total.as_secs_f64() * 1e3,
            finish_reason = reason.as_label(),
            spec_proposed = self.proposed,
            spec_accepted = self.accepted,
            spec_acceptance = (self.proposed > 0).then(|| self.accepted as f64 / self.proposed as f64),
            "request finished"
        );
    }
}
