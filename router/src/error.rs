//! The router's one error type and its one mapping to an HTTP status and OpenAI's error body
//! `{"error": {"message", "type", "param", "code"}}`. The same mapping builds SSE error events;
//! Anthropic's routes reshape the body only (`server::anthropic::AnthropicError`), keeping the
//! status, the failure metric and `Retry-After`.

use crate::quota::Quota;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// A parameter is malformed or outside its limits.
    #[error("{message}")]
    InvalidParam { param: String, message: String },
    /// A parameter Wick does not implement.
    #[error("`{param}` is not supported by this server")]
    Unsupported { param: String },
    /// The request body is not valid JSON for this endpoint.
    #[error("invalid request body: {message}")]
    InvalidBody {
        param: Option<String>,
        message: String,
    },
    /// The prompt (plus the tokens to generate) does not fit; `param` is the request's prompt
    /// field (`messages`, `prompt`, `inputs`).
    #[error("{message}")]
    ContextLength {
        param: &'static str,
        message: String,
    },
    #[error("the model `{model}` does not exist; this server serves `{served}`")]
    ModelNotFound { model: String, served: String },
    #[error("no route for {path}")]
    RouteNotFound { path: String },
    /// The backend worker failed a step this request was part of.
    #[error("the backend failed: {message}")]
    Backend { message: String },
    /// A blocking task of this request (validation, tokenization) panicked or was cancelled.
    #[error("the {task} task failed: {message}")]
    TaskFailed { task: &'static str, message: String },
    /// The output grammar could not be followed at generation time (it needs more work per
    /// token than a step allows, or it rejects every continuation).
    #[error("the output grammar failed during generation: {message}")]
    GrammarFailed { message: String },
    #[error("{0}")]
    Unavailable(Unavailable),
    #[error("the model is still loading")]
    Loading,
    #[error("the server is overloaded: all {limit} {what} are taken; retry later")]
    Overloaded { what: &'static str, limit: usize },
    /// An API key is over one of its limits (`--api-key-file`).
    #[error("API key `{key}` is over its limit of {limit} {}; retry in {retry_after_s} s", quota.what())]
    QuotaExceeded {
        key: String,
        quota: Quota,
        limit: u64,
        retry_after_s: u64,
    },
    #[error("the request waited longer than the queue time limit of {limit_s} s")]
    QueueTimeout { limit_s: f64 },
    #[error("invalid or missing API key: send `Authorization: Bearer <key>` (or `x-api-key`)")]
    Unauthorized,
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request body did not arrive within the limit of {limit_s} s")]
    BodyTimeout { limit_s: f64 },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    /// A resume token made by a server whose output could differ from this one's.
    #[error("the resume token comes from a server with system_fingerprint {token}; this server is {server}, and its continuation could differ")]
    FingerprintMismatch { token: String, server: String },
}

/// Why the server cannot serve a request now (503).
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum Unavailable {
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The scheduler task has ended (the server is stopping).
    #[error("the scheduler has stopped")]
    SchedulerGone,
    /// The backend worker did not answer a health ping in time (it may be stuck in a step).
    #[error("the backend worker did not answer within {timeout_s} s")]
    WorkerUnresponsive { timeout_s: f64 },
    /// The backend worker thread has ended.
    #[error("the backend worker has stopped")]
    WorkerGone,
}

/// Seconds a client should wait before retrying an overloaded server.
pub const RETRY_AFTER_SECS: u64 = 1;

impl ApiError {
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::InvalidParam {
            param: param.into(),
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidParam { .. }
            | ApiError::Unsupported { .. }
            | ApiError::InvalidBody { .. }
            | ApiError::ContextLength { .. }
            | ApiError::GrammarFailed { .. } => StatusCode::BAD_REQUEST,
            ApiError::ModelNotFound { .. } | ApiError::RouteNotFound { .. } => {
                StatusCode::NOT_FOUND
            }
            ApiError::Backend { .. } | ApiError::TaskFailed { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ApiError::Unavailable(_) | ApiError::Loading | ApiError::QueueTimeout { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Overloaded { .. } | ApiError::QuotaExceeded { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::FingerprintMismatch { .. } => StatusCode::CONFLICT,
        }
    }

    /// Counts this failure in `wick_request_failure_total` (every response and stream error
    /// event that carries one does, once).
    pub fn count(&self) {
        crate::metrics::METRICS
            .request_failure
            .with_label_values(&[self.reason()])
            .inc();
    }

    /// The `reason` label of `wick_request_failure_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::InvalidParam { .. }
            | ApiError::Unsupported { .. }
            | ApiError::InvalidBody { .. }
            | ApiError::ContextLength { .. }
            | ApiError::PayloadTooLarge { .. }
            | ApiError::FingerprintMismatch { .. } => "validation",
            ApiError::BodyTimeout { .. } => "timeout",
            ApiError::ModelNotFound { .. }
            | ApiError::RouteNotFound { .. }
            | ApiError::MethodNotAllowed { .. } => "not_found",
            ApiError::Backend { .. } => "backend",
            ApiError::TaskFailed { .. } => "internal",
            ApiError::GrammarFailed { .. } => "grammar",
            ApiError::Unavailable(_) | ApiError::Loading => "unavailable",
            ApiError::Overloaded { .. } => "overloaded",
            ApiError::QuotaExceeded { .. } => "quota",
            ApiError::QueueTimeout { .. } => "queue_timeout",
            ApiError::Unauthorized => "unauthorized",
        }
    }

    /// OpenAI's error body.
    pub fn body(&self) -> ErrorBody {
        let (kind, param, code) = match self {
            ApiError::InvalidParam { param, .. } => {
                ("invalid_request_error", Some(param.clone()), None)
            }
            ApiError::Unsupported { param } => (
                "invalid_request_error",
                Some(param.clone()),
                Some("unsupported_parameter"),
            ),
            ApiError::InvalidBody { param, .. } => ("invalid_request_error", param.clone(), None),
            ApiError::ContextLength { param, .. } => (
                "invalid_request_error",
                Some(param.to_string()),
                Some("context_length_exceeded"),
            ),
            ApiError::ModelNotFound { .. } => (
                "invalid_request_error",
                Some("model".to_string()),
                Some("model_not_found"),
            ),
            ApiError::RouteNotFound { .. } => ("invalid_request_error", None, Some("not_found")),
            ApiError::Backend { .. } | ApiError::TaskFailed { .. } => ("server_error", None, None),
            ApiError::GrammarFailed { .. } => {
                ("invalid_request_error", None, Some("grammar_failed"))
            }
            ApiError::Unavailable(_) | ApiError::Loading => {
                ("server_error", None, Some("unavailable"))
            }
            ApiError::Overloaded { .. } => ("rate_limit_error", None, Some("overloaded")),
            ApiError::QuotaExceeded { .. } => {
                ("rate_limit_error", None, Some("rate_limit_exceeded"))
            }
            ApiError::QueueTimeout { .. } => ("server_error", None, Some("queue_timeout")),
            ApiError::Unauthorized => ("invalid_request_error", None, Some("invalid_api_key")),
            ApiError::PayloadTooLarge { .. } => {
                ("invalid_request_error", None, Some("payload_too_large"))
            }
            ApiError::BodyTimeout { .. } => {
                ("invalid_request_error", None, Some("request_timeout"))
            }
            ApiError::MethodNotAllowed { .. } => {
                ("invalid_request_error", None, Some("method_not_allowed"))
            }
            ApiError::FingerprintMismatch { .. } => (
                "invalid_request_error",
                Some("resume_token".to_string()),
                Some("fingerprint_mismatch"),
            ),
        };
        ErrorBody {
            error: ErrorDetail {
                message: self.to_string(),
                r#type: kind.to_string(),
                param,
                code: code.map(String::from),
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"message": "`temperature` must be in [0, 2], got 3", "type": "invalid_request_error", "param": "temperature", "code": null}))]
pub struct ErrorDetail {
    pub message: String,
    pub r#type: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.count();
        let mut response = (self.status(), axum::Json(self.body())).into_response();
        let retry_after = match self {
            ApiError::Overloaded { .. } => Some(RETRY_AFTER_SECS),
            ApiError::QuotaExceeded { retry_after_s, .. } => Some(retry_after_s),
            _ => None,
        };
        if let Some(secs) = retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_status_and_openai_shape() {
        let e = ApiError::invalid("temperature", "`temperature` must be in [0, 2], got 3");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let body = serde_json::to_value(e.body()).unwrap();
        assert_eq!(body["error"]["param"], "temperature");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        let e = ApiError::ModelNotFound {
            model: "gpt-4".into(),
            served: "smol".into(),
        };
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            serde_json::to_value(e.body()).unwrap()["error"]["code"],
            "model_not_found"
        );
    }

    #[test]
    fn context_errors_name_the_prompt_field_of_their_api() {
        for param in ["messages", "prompt", "inputs"] {
            let e = ApiError::ContextLength {
                param,
                message: "too long".into(),
            };
            let body = serde_json::to_value(e.body()).unwrap();
            assert_eq!(body["error"]["param"], param);
            assert_eq!(body["error"]["code"], "context_length_exceeded");
        }
    }

    #[test]
    fn unavailability_says_why() {
        let stuck = ApiError::Unavailable(Unavailable::WorkerUnresponsive { timeout_s: 10.0 });
        assert_eq!(stuck.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            stuck.to_string(),
            "the backend worker did not answer within 10 s"
        );
        let draining = ApiError::Unavailable(Unavailable::ShuttingDown);
        assert_eq!(draining.to_string(), "the server is shutting down");
        let failed = ApiError::TaskFailed {
            task: "validation",
            message: "panicked".into(),
        };
        assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(failed.reason(), "internal");
    }
}
