//! The HTTP edge: axum routes, shared state, the JSON rejection wrapper, and the path every
//! generation request takes (model check -> validation on a blocking thread -> scheduler).
//!
//! # Layout
//! - [`openai`]: OpenAI wire types; [`chat`]: chat and completions handlers, streamed or not.
//! - [`tgi`]: TGI's `/generate` and `/generate_stream`.
//! - [`misc`]: models, info, health, tokenize, detokenize.
//! - [`docs`]: the OpenAPI document.

pub mod chat;
pub mod docs;
pub mod misc;
pub mod openai;
pub mod tgi;

use crate::error::ApiError;
use crate::scheduler::{Event, Scheduler};
use crate::validation::{GenerationInput, PromptInput, ValidRequest, Validator};
use axum::extract::{FromRequest, Request};
use axum::routing::{get, post};
use axum::Router;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;
use wick_backend::Backend;
use wick_proto::{FinishReason, ModelInfo, TokenLogprob};

/// What every handler shares.
pub struct AppState {
    pub validator: Arc<Validator>,
    pub scheduler: Scheduler,
    pub backend: Backend,
    pub info: ModelInfo,
    /// The name clients use for the model.
    pub served_name: String,
    pub created: u64,
}

pub type SharedState = Arc<AppState>;

/// Every route of the server.
pub fn app(state: SharedState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(chat::completions))
        .route("/v1/models", get(misc::models))
        .route("/generate", post(tgi::generate))
        .route("/generate_stream", post(tgi::generate_stream))
        .route("/tokenize", post(misc::tokenize))
        .route("/detokenize", post(misc::detokenize))
        .route("/info", get(misc::info))
        .route("/health", get(misc::health))
        .route("/openapi.json", get(docs::openapi))
        .fallback(misc::not_found)
        .with_state(state)
}

/// `axum::Json`, with rejections answered as OpenAI errors naming the offending field.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    axum::Json<T>: FromRequest<S, Rejection = axum::extract::rejection::JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => {
                let message = rejection.body_text();
                Err(ApiError::InvalidBody {
                    param: field_named_in(&message),
                    message,
                })
            }
        }
    }
}

/// The field a serde error message names (``unknown field `x` ``, ``missing field `x` ``).
fn field_named_in(message: &str) -> Option<String> {
    let at = message.find("field `")? + "field `".len();
    let len = message[at..].find('`')?;
    Some(message[at..at + len].to_string())
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A response id with the given prefix, unique within the process.
pub fn new_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "{prefix}-{:x}{:06x}",
        now(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A generation that has been validated and queued.
pub struct Started {
    pub events: mpsc::Receiver<Event>,
    pub prompt_tokens: usize,
    pub n: usize,
    pub logprobs: bool,
    pub seed: u64,
}

impl AppState {
    pub fn check_model(&self, model: Option<&str>) -> Result<(), ApiError> {
        match model {
            Some(m) if m != self.served_name && m != self.info.model_id => {
                Err(ApiError::ModelNotFound {
                    model: m.to_string(),
                    served: self.served_name.clone(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Validates (on a blocking thread) and queues a generation.
    pub async fn start(
        &self,
        prompt: PromptInput,
        input: GenerationInput,
    ) -> Result<Started, ApiError> {
        let validator = self.validator.clone();
        let valid: ValidRequest =
            tokio::task::spawn_blocking(move || validator.validate(&prompt, input))
                .await
                .map_err(|e| ApiError::Backend(format!("validation task failed: {e}")))??;
        let (prompt_tokens, n, logprobs, seed) = (
            valid.prompt().len(),
            valid.n(),
            valid.logprobs(),
            valid.params().seed,
        );
        let events = self
            .scheduler
            .submit(valid)
            .await
            .map_err(|()| ApiError::Unavailable)?;
        Ok(Started {
            events,
            prompt_tokens,
            n,
            logprobs,
            seed,
        })
    }

    /// The text of one token, for log-probability reports.
    pub fn token_text(&self, token: u32) -> String {
        self.validator
            .tokenizer()
            .decode(&[token], false)
            .unwrap_or_default()
    }
}

/// One choice of a finished, non-streamed generation.
#[derive(Debug, Default)]
pub struct ChoiceOutput {
    pub text: String,
    pub tokens: Vec<(u32, f32, Vec<TokenLogprob>)>,
    pub finish: Option<FinishReason>,
    pub completion_tokens: usize,
}

/// Waits for every choice of a generation to finish.
pub async fn collect(started: &mut Started) -> Result<Vec<ChoiceOutput>, ApiError> {
    let mut choices: Vec<ChoiceOutput> = (0..started.n).map(|_| ChoiceOutput::default()).collect();
    let mut done = 0;
    while done < started.n {
        match started.events.recv().await {
            Some(Event::Token {
                choice,
                token,
                text,
                logprob,
                top_logprobs,
            }) => {
                let c = &mut choices[choice];
                c.text.push_str(&text);
                c.tokens.push((token, logprob, top_logprobs));
            }
            Some(Event::Finished {
                choice,
                reason,
                completion_tokens,
                ..
            }) => {
                choices[choice].finish = Some(reason);
                choices[choice].completion_tokens = completion_tokens;
                done += 1;
            }
            Some(Event::Error { message, .. }) => return Err(ApiError::Backend(message)),
            None => return Err(ApiError::Unavailable),
        }
    }
    Ok(choices)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_name_their_field() {
        assert_eq!(
            field_named_in("Failed to deserialize the JSON body into the target type: missing field `messages` at line 1 column 2"),
            Some("messages".into())
        );
        assert_eq!(field_named_in("expected value at line 1"), None);
    }
}
