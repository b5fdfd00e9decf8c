//! Every Prometheus metric of the server: names as constants, registered once (with help text) in
//! one registry, and rendered as the text exposition format for `GET /metrics`.
//!
//! These are the one source of the live figures: `/info` reads them too. Figures are updated
//! where the event happens: the scheduler sets the gauges each step and
//! observes TTFT and inter-token latency when the worker returns the token, queue time at
//! admission; the error mapping counts failures by reason; the listener counts connections; each
//! API key's account ([`crate::quota`]) counts its requests, tokens, streams and refusals.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::sync::LazyLock;

pub const REQUESTS_RUNNING: &str = "wick_requests_running";
pub const REQUESTS_WAITING: &str = "wick_requests_waiting";
pub const KV_CACHE_USAGE_RATIO: &str = "wick_kv_cache_usage_ratio";
pub const KV_CACHE_BLOCKS_TOTAL: &str = "wick_kv_cache_blocks_total";
pub const KV_CACHE_BLOCKS_FREE: &str = "wick_kv_cache_blocks_free";
pub const REQUEST_SUCCESS_TOTAL: &str = "wick_request_success_total";
pub const REQUEST_FAILURE_TOTAL: &str = "wick_request_failure_total";
pub const PROMPT_TOKENS_TOTAL: &str = "wick_prompt_tokens_total";
pub const GENERATION_TOKENS_TOTAL: &str = "wick_generation_tokens_total";
pub const PREFIX_CACHE_QUERIES_TOTAL: &str = "wick_prefix_cache_queries_total";
pub const PREFIX_CACHE_HITS_TOTAL: &str = "wick_prefix_cache_hits_total";
pub const PREEMPTIONS_TOTAL: &str = "wick_preemptions_total";
pub const TIME_TO_FIRST_TOKEN: &str = "wick_time_to_first_token_seconds";
pub const INTER_TOKEN_LATENCY: &str = "wick_inter_token_latency_seconds";
pub const E2E_REQUEST_LATENCY: &str = "wick_e2e_request_latency_seconds";
pub const REQUEST_QUEUE_TIME: &str = "wick_request_queue_time_seconds";
pub const BATCH_SIZE: &str = "wick_batch_size";
pub const BATCHED_STEPS_TOTAL: &str = "wick_batched_steps_total";
pub const SPEC_PROPOSED_TOTAL: &str = "wick_spec_proposed_tokens_total";
pub const SPEC_ACCEPTED_TOTAL: &str = "wick_spec_accepted_tokens_total";
pub const STEP_DURATION: &str = "wick_step_duration_seconds";
pub const HTTP_CONNECTIONS: &str = "wick_http_connections";
pub const HTTP_CONNECTIONS_REFUSED_TOTAL: &str = "wick_http_connections_refused_total";
pub const API_KEY_REQUESTS_TOTAL: &str = "wick_api_key_requests_total";
pub const API_KEY_PROMPT_TOKENS_TOTAL: &str = "wick_api_key_prompt_tokens_total";
pub const API_KEY_GENERATION_TOKENS_TOTAL: &str = "wick_api_key_generation_tokens_total";
pub const API_KEY_STREAMS: &str = "wick_api_key_streams";
pub const API_KEY_RATE_LIMITED_TOTAL: &str = "wick_api_key_rate_limited_total";

/// Latency buckets in seconds (vLLM's TTFT range, extended for slow CPU prefill).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

pub struct Metrics {
    pub registry: Registry,
    pub requests_running: IntGauge,
    pub requests_waiting: IntGauge,
    pub kv_cache_usage_ratio: prometheus::Gauge,
    pub kv_cache_blocks_total: IntGauge,
    pub kv_cache_blocks_free: IntGauge,
    pub request_success: IntCounterVec,
    pub request_failure: IntCounterVec,
    pub prompt_tokens: IntCounter,
    pub generation_tokens: IntCounter,
    pub prefix_cache_queries: IntCounter,
    pub prefix_cache_hits: IntCounter,
    pub preemptions: IntCounter,
    pub time_to_first_token: Histogram,
    pub inter_token_latency: Histogram,
    pub e2e_request_latency: Histogram,
    pub request_queue_time: Histogram,
    pub batch_size: Histogram,
    pub batched_steps: IntCounter,
    pub spec_proposed: IntCounter,
    pub spec_accepted: IntCounter,
    pub step_duration: Histogram,
    pub connections_open: IntGauge,
    pub connections_refused: IntCounter,
    /// Per API key (`key`: its name from the key file, or `key-` and a hash prefix).
    pub key_requests: IntCounterVec,
    pub key_prompt_tokens: IntCounterVec,
    pub key_generation_tokens: IntCounterVec,
    pub key_streams: IntGaugeVec,
    /// Labels `key` and `limit` (`requests_per_minute`, `tokens_per_minute`,
    /// `concurrent_streams`).
    pub key_rate_limited: IntCounterVec,
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("valid histogram");
    registry.register(Box::new(h.clone())).expect("unique name");
    h
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid counter");
    registry.register(Box::new(c.clone())).expect("unique name");
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    counter_vec_by(registry, name, help, &[label])
}

fn counter_vec_by(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
    registry.register(Box::new(c.clone())).expect("unique name");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid gauge");
    registry.register(Box::new(g.clone())).expect("unique name");
    g
}

impl Metrics {
    fn new() -> Self {
        let r = Registry::new();
        let kv_usage = prometheus::Gauge::new(
            KV_CACHE_USAGE_RATIO,
            "Fraction of KV cache blocks held by waiting or running sequences (0 to 1).",
        )
        .expect("valid gauge");
        r.register(Box::new(kv_usage.clone())).expect("unique name");
        Metrics {
            requests_running: gauge(
                &r,
                REQUESTS_RUNNING,
                "Sequences in the running batch (a request with `n` choices has `n`).",
            ),
            requests_waiting: gauge(
                &r,
                REQUESTS_WAITING,
                "Sequences waiting to be admitted to the running batch (a request with `n` choices has `n`).",
            ),
            kv_cache_usage_ratio: kv_usage,
            kv_cache_blocks_total: gauge(
                &r,
                KV_CACHE_BLOCKS_TOTAL,
                "KV cache blocks in the cache.",
            ),
            kv_cache_blocks_free: gauge(
                &r,
                KV_CACHE_BLOCKS_FREE,
                "KV cache blocks free or holding only evictable cached prefixes.",
            ),
            request_success: counter_vec(
                &r,
                REQUEST_SUCCESS_TOTAL,
                "Finished sequences, by finish reason.",
                "finish_reason",
            ),
            request_failure: counter_vec(
                &r,
                REQUEST_FAILURE_TOTAL,
                "Failed requests, by reason.",
                "reason",
            ),
            prompt_tokens: counter(
                &r,
                PROMPT_TOKENS_TOTAL,
                "Prompt tokens of admitted requests.",
            ),
            generation_tokens: counter(&r, GENERATION_TOKENS_TOTAL, "Tokens generated."),
            prefix_cache_queries: counter(
                &r,
                PREFIX_CACHE_QUERIES_TOTAL,
                "Prompt tokens looked up in the prefix cache.",
            ),
            prefix_cache_hits: counter(
                &r,
                PREFIX_CACHE_HITS_TOTAL,
                "Prompt tokens found in the prefix cache.",
            ),
            preemptions: counter(
                &r,
                PREEMPTIONS_TOTAL,
                "Sequences preempted (recomputed later) for lack of KV blocks.",
            ),
            time_to_first_token: histogram(
                &r,
                TIME_TO_FIRST_TOKEN,
                "Time from arrival to the first generated token.",
                LATENCY_BUCKETS,
            ),
            inter_token_latency: histogram(
                &r,
                INTER_TOKEN_LATENCY,
                "Time between consecutive tokens of a sequence.",
                LATENCY_BUCKETS,
            ),
            e2e_request_latency: histogram(
                &r,
                E2E_REQUEST_LATENCY,
                "Time from arrival to the end of a sequence.",
                LATENCY_BUCKETS,
            ),
            request_queue_time: histogram(
                &r,
                REQUEST_QUEUE_TIME,
                "Time from arrival to admission into the running batch.",
                LATENCY_BUCKETS,
            ),
            batch_size: histogram(
                &r,
                BATCH_SIZE,
                "Sequences in one forward step (its count is the steps run).",
                BATCH_BUCKETS,
            ),
            batched_steps: counter(
                &r,
                BATCHED_STEPS_TOTAL,
                "Forward steps that ran more than one sequence.",
            ),
            spec_proposed: counter(
                &r,
                SPEC_PROPOSED_TOTAL,
                "Speculative proposals verified (tokens).",
            ),
            spec_accepted: counter(
                &r,
                SPEC_ACCEPTED_TOTAL,
                "Speculative proposals accepted: tokens the target model gave as plain decoding would.",
            ),
            step_duration: histogram(
                &r,
                STEP_DURATION,
                "Wall time of one forward step and its sampling.",
                LATENCY_BUCKETS,
            ),
            connections_open: gauge(&r, HTTP_CONNECTIONS, "Open HTTP connections."),
            connections_refused: counter(
                &r,
                HTTP_CONNECTIONS_REFUSED_TOTAL,
                "HTTP connections closed at once because --max-connections were open.",
            ),
            key_requests: counter_vec(
                &r,
                API_KEY_REQUESTS_TOTAL,
                "Generation requests admitted under an API key's limits, by key.",
                "key",
            ),
            key_prompt_tokens: counter_vec(
                &r,
                API_KEY_PROMPT_TOKENS_TOTAL,
                "Prompt tokens of admitted requests, by API key.",
                "key",
            ),
            key_generation_tokens: counter_vec(
                &r,
                API_KEY_GENERATION_TOKENS_TOTAL,
                "Tokens generated, by API key.",
                "key",
            ),
            key_streams: {
                let g = IntGaugeVec::new(
                    Opts::new(API_KEY_STREAMS, "Generation requests in flight, by API key."),
                    &["key"],
                )
                .expect("valid gauge");
                r.register(Box::new(g.clone())).expect("unique name");
                g
            },
            key_rate_limited: counter_vec_by(
                &r,
                API_KEY_RATE_LIMITED_TOTAL,
                "Requests refused (429) by an API key's limit, by key and limit.",
                &["key", "limit"],
            ),
            registry: r,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exposed_with_help() {
        METRICS.requests_running.set(0);
        METRICS
            .request_success
            .with_label_values(&["stop"])
            .inc_by(0);
        METRICS
            .request_failure
            .with_label_values(&["validation"])
            .inc_by(0);
        // Labelled series appear once a label is used (each API key's, when its account is made).
        let _account = crate::quota::Account::new(
            "metrics-test".into(),
            Default::default(),
            std::time::Instant::now(),
        );
        let text = METRICS.render();
        for name in [
            REQUESTS_RUNNING,
            REQUESTS_WAITING,
            KV_CACHE_USAGE_RATIO,
            KV_CACHE_BLOCKS_TOTAL,
            KV_CACHE_BLOCKS_FREE,
            REQUEST_SUCCESS_TOTAL,
            REQUEST_FAILURE_TOTAL,
            PROMPT_TOKENS_TOTAL,
            GENERATION_TOKENS_TOTAL,
            PREFIX_CACHE_QUERIES_TOTAL,
            PREFIX_CACHE_HITS_TOTAL,
            PREEMPTIONS_TOTAL,
            TIME_TO_FIRST_TOKEN,
            INTER_TOKEN_LATENCY,
            E2E_REQUEST_LATENCY,
            REQUEST_QUEUE_TIME,
            BATCH_SIZE,
            BATCHED_STEPS_TOTAL,
            STEP_DURATION,
            HTTP_CONNECTIONS,
            HTTP_CONNECTIONS_REFUSED_TOTAL,
            API_KEY_REQUESTS_TOTAL,
            API_KEY_PROMPT_TOKENS_TOTAL,
            API_KEY_GENERATION_TOKENS_TOTAL,
            API_KEY_STREAMS,
            API_KEY_RATE_LIMITED_TOTAL,
        ] {
            assert!(text.contains(&format!("# HELP {name} ")), "{name} missing");
        }
    }
}
