//! Logs and traces: the `tracing` subscriber (text or JSON logs on stderr, filtered by
//! `RUST_LOG`) and, with `--otlp-endpoint`, OpenTelemetry traces exported over OTLP/HTTP
//! (protobuf) through `tracing-opentelemetry`.
//!
//! Each generation request is one trace span, [`request_span`] (a child of the caller's W3C
//! `traceparent` when it sends one), with child spans for its stages: `validation`, then per
//! choice `queue` (until admission), `prefill` (with a `prefill_chunk` per step that computes part
//! of its prompt) and `decode` (first token to finish). The request span carries the request id,
//! the prompt, cached and generated tokens and the finish reason (choice 0's; each `decode` span
//! carries its own choice's).
//!
//! The spans are at TRACE level under their own target ([`TARGET`]), which only the OpenTelemetry
//! layer listens to: without `--otlp-endpoint` nothing listens, every span is `Span::none()`,
//! and nothing is recorded or sent. With it, traces are sampled by `--otlp-sample-ratio` unless the
//! caller's `traceparent` decides, batched and exported by the SDK's own thread; [`Telemetry`]
//! flushes them at shut-down.

use crate::cli::{CliError, LogFormat};
use axum::http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The target of the request spans (the OpenTelemetry layer's only one).
pub const TARGET: &str = "wick::trace";

/// Tracing flags.
#[derive(Debug, Clone, clap::Args)]
pub struct TraceArgs {
    /// OpenTelemetry collector to export request traces to, over OTLP/HTTP with protobuf
    /// (`http://collector:4318`; `/v1/traces` is added to a URL without a path). Unset: no
    /// traces are recorded or sent.
    #[arg(long, env = "WICK_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Fraction of requests traced when the caller's `traceparent` does not decide (0 to 1).
    #[arg(long, env = "WICK_OTLP_SAMPLE_RATIO", default_value_t = 1.0)]
    pub otlp_sample_ratio: f64,
}

impl TraceArgs {
    pub fn check(&self) -> Result<(), CliError> {
        if !(0.0..=1.0).contains(&self.otlp_sample_ratio) {
            return Err(CliError::Flag {
                flag: "--otlp-sample-ratio",
                rule: "a fraction from 0 to 1",
            });
        }
        let bad_url = self.otlp_endpoint.as_deref().is_some_and(|url| {
            let scheme = url.starts_with("http://") || url.starts_with("https://");
            !scheme || traces_url(url).parse::<axum::http::Uri>().is_err()
        });
        if bad_url {
            return Err(CliError::Flag {
                flag: "--otlp-endpoint",
                rule: "an http:// or https:// URL",
            });
        }
        Ok(())
    }
}

/// The collector URL spans go to: `/v1/traces` added to a URL without a path.
fn traces_url(endpoint: &str) -> String {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    match rest.find('/') {
        Some(at) if at + 1 < rest.len() => endpoint.to_string(),
        _ => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
    }
}

/// What must outlive the server for its traces to leave: the tracer provider, flushed by
/// [`Telemetry::shutdown`].
#[derive(Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            if let Err(e) = p.shutdown() {
                eprintln!("wick: flushing traces failed: {e}");
            }
        }
    }
}

/// Installs the process's subscriber: logs in `format`, and traces when an endpoint is given.
/// A second call (tests) keeps the first subscriber.
pub fn init(format: LogFormat, trace: &TraceArgs) -> Result<Telemetry, CliError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let registry = tracing_subscriber::registry().with(logs.with_filter(filter));
    let Some(endpoint) = &trace.otlp_endpoint else {
        let _already = registry.try_init();
        return Ok(Telemetry::default());
    };
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(traces_url(endpoint))
        .build()
        .map_err(|e| CliError::Telemetry(e.to_string()))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            trace.otlp_sample_ratio,
        ))))
        .with_resource(Resource::builder().with_service_name("wick").build())
        .build();
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("wick"))
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_filter(Targets::new().with_target(TARGET, tracing::Level::TRACE));
    let _already = registry.with(spans).try_init();
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// The span of one request: `method route`, a child of the caller's `traceparent` (W3C trace
/// context) when it sends one. `Span::none()` when traces are off.
pub fn request_span(method: &str, route: &str, request_id: &str, headers: &HeaderMap) -> Span {
    let span = tracing::trace_span!(
        target: TARGET,
        "request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %method,
        http.route = %route,
        wick.request_id = %request_id,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        wick.cached_tokens = Empty,
        gen_ai.response.finish_reasons = Empty,
        error.message = Empty,
    );
    if !span.is_disabled() {
        let parent =
            TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
        // A request without a (valid) traceparent starts its own trace.
        let _no_remote_parent = span.set_parent(parent);
    }
    span
}

/// Records a count on a span (as an integer attribute).
pub fn count(span: &Span, field: &str, n: usize) {
    span.record(field, n as i64);
}

/// Marks a request span failed.
pub fn failed(span: &Span, message: &str) {
    span.record("otel.status_code", "ERROR");
    span.record("error.message", message);
}

/// The stages of one request, each a child span of its request's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Validation,
    /// A choice waiting for admission.
    Queue,
    /// A choice's prompt being computed.
    Prefill,
    /// A choice's first token to its finish.
    Decode,
}

/// The span of a request's `stage` (for choice `choice`).
pub fn stage(parent: &Span, stage: Stage, choice: usize) -> Span {
    // Integers as i64, which the exporter keeps as integers.
    let choice = choice as i64;
    match stage {
        Stage::Validation => tracing::trace_span!(target: TARGET, parent: parent, "validation"),
        Stage::Queue => {
            tracing::trace_span!(target: TARGET, parent: parent, "queue", wick.choice = choice)
        }
        Stage::Prefill => tracing::trace_span!(
            target: TARGET, parent: parent, "prefill",
            wick.choice = choice, wick.cached_tokens = Empty
        ),
        Stage::Decode => tracing::trace_span!(
            target: TARGET, parent: parent, "decode",
            wick.choice = choice, gen_ai.usage.output_tokens = Empty,
            gen_ai.response.finish_reasons = Empty
        ),
    }
}

/// One step's part of a prompt: `tokens` prompt tokens from position `start`.
pub fn prefill_chunk(prefill: &Span, start: usize, tokens: usize) -> Span {
    tracing::trace_span!(
        target: TARGET, parent: prefill, "prefill_chunk",
        wick.start_position = start as i64, wick.tokens = tokens as i64
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_added_to_a_bare_collector_url() {
        assert_eq!(traces_url("http://otel:4318"), "http://otel:4318/v1/traces");
        assert_eq!(
            traces_url("http://otel:4318/"),
            "http://otel:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://otel/custom/path"),
            "https://otel/custom/path"
        );
    }

    #[test]
    fn without_an_endpoint_request_spans_record_nothing() {
        let _ = init(
            LogFormat::Text,
            &TraceArgs {
                otlp_endpoint: None,
                otlp_sample_ratio: 1.0,
            },
        );
        let span = request_span("POST", "/v1/chat/completions", "req-1", &HeaderMap::new());
        assert!(span.is_disabled());
        assert!(stage(&span, Stage::Queue, 0).is_disabled());
    }
}
