//! One live sequence (a choice of a request) as the scheduler task tracks it: where its events go,
//! its output text, its caller's key (charged its tokens), and its timings for metrics and the
//! per-request log line.

use super::Event;
use crate::metrics::METRICS;
use crate::quota::Account;
use crate::request::OutputText;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
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
}

impl Live {
    pub fn on_admitted(&mut self, now: Instant) {
        if self.admitted.is_none() {
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
        self.first_token.get_or_insert(now);
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
