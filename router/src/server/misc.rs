//! Small routes: `GET /v1/models`, `GET /info`, `GET /health`, `POST /tokenize`,
//! `POST /detokenize`, and the OpenAI-shaped 404 for unknown routes.

use super::openai::{ModelCard, ModelList};
use super::{ApiJson, SharedState};
use crate::error::{ApiError, Unavailable};
use crate::metrics::METRICS;
use crate::template::ChatMessage;
use crate::validation::PromptInput;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa::ToSchema;

#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = ModelList)))]
pub async fn models(State(state): State<SharedState>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: vec![ModelCard {
            id: state.served_name.clone(),
            object: "model",
            created: state.created,
            owned_by: "wick",
            max_model_len: state.validator.limits().max_total_tokens,
        }],
    })
}

/// Limits, model facts and live scheduler figures.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"model_id": "SmolLM2-135M-Instruct", "served_model_name": "SmolLM2-135M-Instruct", "version": "0.1.0"}))]
pub struct Info {
    pub model_id: String,
    pub served_model_name: String,
    pub architecture: String,
    pub dtype: String,
    pub device: String,
    pub version: &'static str,
    pub max_input_tokens: usize,
    pub max_total_tokens: usize,
    pub max_context: usize,
    pub kv_block_size: usize,
    pub kv_blocks_total: u64,
    pub kv_blocks_free: u64,
    pub requests_running: u64,
    pub requests_waiting: u64,
    pub steps: u64,
    /// Steps that ran more than one sequence.
    pub batched_steps: u64,
    pub preemptions: u64,
}

#[utoipa::path(get, path = "/info", responses((status = 200, body = Info)))]
pub async fn info(State(state): State<SharedState>) -> Json<Info> {
    let m = &*METRICS;
    let limits = state.validator.limits();
    Json(Info {
        model_id: state.info.model_id.clone(),
        served_model_name: state.served_name.clone(),
        architecture: state.info.architecture.clone(),
        dtype: state.info.dtype.clone(),
        device: state.info.device.clone(),
        version: env!("CARGO_PKG_VERSION"),
        max_input_tokens: limits.max_input_tokens,
        max_total_tokens: limits.max_total_tokens,
        max_context: state.info.max_context,
        kv_block_size: state.info.kv_block_size,
        kv_blocks_total: m.kv_cache_blocks_total.get() as u64,
        kv_blocks_free: m.kv_cache_blocks_free.get() as u64,
        requests_running: m.requests_running.get() as u64,
        requests_waiting: m.requests_waiting.get() as u64,
        steps: m.batch_size.get_sample_count(),
        batched_steps: m.batched_steps.get(),
        preemptions: m.preemptions.get(),
    })
}

/// How long the worker may take to answer a health ping (it may be mid-step).
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);

#[utoipa::path(get, path = "/health", responses((status = 200, description = "The backend worker answers"), (status = 503, description = "The backend worker does not answer", body = crate::error::ErrorBody)))]
pub async fn health(State(state): State<SharedState>) -> Result<StatusCode, ApiError> {
    match tokio::time::timeout(HEALTH_TIMEOUT, state.backend.ping()).await {
        Ok(Ok(())) => Ok(StatusCode::OK),
        Ok(Err(_)) => Err(ApiError::Unavailable(Unavailable::WorkerGone)),
        Err(_) => Err(ApiError::Unavailable(Unavailable::WorkerUnresponsive {
            timeout_s: HEALTH_TIMEOUT.as_secs_f64(),
        })),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"prompt": "Hello world!"}))]
pub struct TokenizeRequest {
    pub model: Option<String>,
    /// Text to tokenize as a plain prompt.
    pub prompt: Option<String>,
    /// A conversation, rendered with the chat template first.
    pub messages: Option<Vec<TokenizeMessage>>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct TokenizeMessage {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"count": 3, "max_model_len": 8192, "tokens": [19556, 905, 17]}))]
pub struct TokenizeResponse {
    pub count: usize,
    pub max_model_len: usize,
    pub tokens: Vec<u32>,
}

#[utoipa::path(post, path = "/tokenize", request_body = TokenizeRequest, responses((status = 200, body = TokenizeResponse), (status = 400, body = crate::error::ErrorBody)))]
pub async fn tokenize(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<TokenizeRequest>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    state.check_model(req.model.as_deref())?;
    let prompt = match (req.prompt, req.messages) {
        (Some(p), None) => PromptInput::text("prompt", p),
        (None, Some(m)) => PromptInput::chat(
            m.into_iter()
                .map(|m| ChatMessage::new(m.role, m.content))
                .collect(),
        ),
        _ => {
            return Err(ApiError::invalid(
                "prompt",
                "give exactly one of `prompt` and `messages`",
            ))
        }
    };
    let tokens = state.tokenize(prompt).await?;
    Ok(Json(TokenizeResponse {
        count: tokens.len(),
        max_model_len: state.validator.limits().max_total_tokens,
        tokens,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"tokens": [19556, 905, 17]}))]
pub struct DetokenizeRequest {
    pub model: Option<String>,
    pub tokens: Vec<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"prompt": "Hello world!"}))]
pub struct DetokenizeResponse {
    pub prompt: String,
}

#[utoipa::path(post, path = "/detokenize", request_body = DetokenizeRequest, responses((status = 200, body = DetokenizeResponse), (status = 400, body = crate::error::ErrorBody)))]
pub async fn detokenize(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<DetokenizeRequest>,
) -> Result<Json<DetokenizeResponse>, ApiError> {
    state.check_model(req.model.as_deref())?;
    let vocab = state.info.vocab_size;
    if let Some(bad) = req.tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::invalid(
            "tokens",
            format!("token id {bad} is outside the vocabulary of {vocab}"),
        ));
    }
    let prompt = state
        .validator
        .tokenizer()
        .decode(&req.tokens, false)
        .map_err(|e| ApiError::invalid("tokens", e.to_string()))?;
    Ok(Json(DetokenizeResponse { prompt }))
}

pub async fn method_not_allowed(method: axum::http::Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::RouteNotFound {
        path: uri.path().to_string(),
    }
}
