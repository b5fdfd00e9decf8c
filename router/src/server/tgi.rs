//! TGI's native API: `POST /generate` and `POST /generate_stream` (`inputs` and `parameters`), so
//! that text-generation-inference clients work unchanged. Streams send one `data:` event per token
//! and put `generated_text` and `details` on the last; TGI sends no `[DONE]`.

use super::chat::{sse_error, sse_json, sse_response};
use super::keys::Caller;
use super::{collect, ApiJson, SharedState, Started};
use crate::backend::GrammarSpec;
use crate::error::ApiError;
use crate::scheduler::Event;
use crate::validation::{GenerationInput, PromptInput};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use wick_proto::FinishReason;

/// Parameters Wick implements; any other (`typical_p`, `watermark`, `truncate`, ...) is refused
/// by name.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateParameters {
    /// Sample instead of choosing the most likely token (implied by temperature, top_k, top_p).
    #[serde(default)]
    pub do_sample: bool,
    pub temperature: Option<f32>,
    pub top_k: Option<i64>,
    pub top_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    #[schema(example = 20)]
    pub max_new_tokens: Option<u64>,
    #[serde(default)]
    pub stop: Vec<String>,
    pub seed: Option<u64>,
    /// Return per-token details.
    #[serde(default)]
    pub details: bool,
    /// Prepend the prompt to the generated text.
    #[serde(default)]
    pub return_full_text: bool,
    /// Alternatives to report with each token.
    pub top_n_tokens: Option<u64>,
    /// What the generated text must match: `{"type": "json" | "json_schema" | "regex" |
    /// "lark", "value": ...}`.
    #[schema(value_type = Option<Object>, example = json!({"type": "json", "value": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}}))]
    pub grammar: Option<TgiGrammar>,
    /// Wick extension (as vLLM): scheduling priority, lower first (default 0).
    pub priority: Option<i64>,
}

/// TGI's `grammar`: a JSON schema (`json`, or `json_schema` with the schema under `schema`), a
/// regular expression, or (Wick extension) a Lark grammar.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum TgiGrammar {
    Json(serde_json::Value),
    JsonSchema(serde_json::Value),
    Regex(String),
    Lark(String),
}

impl TgiGrammar {
    fn spec(self) -> GrammarSpec {
        match self {
            TgiGrammar::Json(schema) => GrammarSpec::JsonSchema {
                schema,
                strict: false,
            },
            TgiGrammar::JsonSchema(mut v) => GrammarSpec::JsonSchema {
                schema: match v.get_mut("schema") {
                    Some(schema) => schema.take(),
                    None => v,
                },
                strict: false,
            },
            TgiGrammar::Regex(rx) => GrammarSpec::Regex(rx),
            TgiGrammar::Lark(src) => GrammarSpec::Lark(src),
        }
    }
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"inputs": "What is Deep Learning?", "parameters": {"max_new_tokens": 20}}))]
pub struct GenerateRequest {
    pub inputs: String,
    #[serde(default)]
    pub parameters: GenerateParameters,
    /// Only on `/generate`: same as calling `/generate_stream`.
    #[serde(default)]
    pub stream: bool,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TgiToken {
    pub id: u32,
    pub text: String,
    pub logprob: f32,
    pub special: bool,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TgiDetails {
    /// `length`, `eos_token` or `stop_sequence`.
    pub finish_reason: &'static str,
    pub generated_tokens: usize,
    pub seed: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<TgiToken>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"generated_text": "Deep learning is a subset of machine learning"}))]
pub struct GenerateResponse {
    pub generated_text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<TgiDetails>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StreamResponse {
    pub index: usize,
    pub token: TgiToken,
    pub generated_text: Option<String>,
    pub details: Option<TgiDetails>,
}

fn tgi_finish(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "eos_token",
        FinishReason::StopSequence => "stop_sequence",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "eos_token",
        FinishReason::Cancelled | FinishReason::Error => "error",
    }
}

impl GenerateRequest {
    fn into_inputs(self) -> Result<(PromptInput, GenerationInput, bool, String), ApiError> {
        let p = self.parameters;
        let sampling =
            p.do_sample || p.temperature.is_some() || p.top_k.is_some() || p.top_p.is_some();
        let input = GenerationInput {
            temperature: Some(if sampling {
                p.temperature.unwrap_or(1.0)
            } else {
                0.0
            }),
            top_k: p.top_k,
            top_p: p.top_p,
            repetition_penalty: p.repetition_penalty,
            frequency_penalty: p.frequency_penalty,
            seed: p.seed,
            stop: p.stop,
            max_tokens: Some(p.max_new_tokens.unwrap_or(100)),
            logprobs: p.top_n_tokens.or(Some(0)),
            grammar: p.grammar.map(|g| ("grammar", g.spec())),
            priority: p.priority,
            ..GenerationInput::default()
        };
        let prefix = if p.return_full_text {
            self.inputs.clone()
        } else {
            String::new()
        };
        Ok((
            PromptInput::text("inputs", self.inputs),
            input,
            p.details,
            prefix,
        ))
    }
}

fn token(state: &SharedState, id: u32, logprob: f32) -> TgiToken {
    TgiToken {
        id,
        text: state.token_text(id),
        logprob,
        special: state.validator.vocab().eos_token_ids.contains(&id),
    }
}

#[utoipa::path(post, path = "/generate", request_body = GenerateRequest,
    responses((status = 200, description = "Generated text", body = GenerateResponse),
              (status = 400, description = "Invalid parameter", body = crate::error::ErrorBody)))]
pub async fn generate(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(req): ApiJson<GenerateRequest>,
) -> Result<Response, ApiError> {
    if req.stream {
        return generate_stream(State(state), caller, ApiJson(req)).await;
    }
    let (prompt, input, details, prefix) = req.into_inputs()?;
    let mut started = state.start(&caller, prompt, input).await?;
    let mut choices = collect(&mut started).await?;
    let c = choices.remove(0);
    let details = details.then(|| TgiDetails {
        finish_reason: tgi_finish(c.finish.unwrap_or(FinishReason::Length)),
        generated_tokens: c.completion_tokens,
        seed: Some(started.seed),
        tokens: c
            .tokens
            .iter()
            .map(|(id, lp, _)| token(&state, *id, *lp))
            .collect(),
    });
    let response = GenerateResponse {
        generated_text: prefix + &c.text,
        details,
    };
    Ok(axum::Json(response).into_response())
}

#[utoipa::path(post, path = "/generate_stream", request_body = GenerateRequest,
    responses((status = 200, description = "SSE stream of `StreamResponse` events", body = StreamResponse),
              (status = 400, description = "Invalid parameter", body = crate::error::ErrorBody)))]
pub async fn generate_stream(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(req): ApiJson<GenerateRequest>,
) -> Result<Response, ApiError> {
    let (prompt, input, _, prefix) = req.into_inputs()?;
    let mut started = state.start(&caller, prompt, input).await?;
    started.first().await?;
    Ok(sse_response(tgi_stream(state, started, prefix)))
}

fn tgi_stream(
    state: SharedState,
    mut started: Started,
    prefix: String,
) -> impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>> {
    async_stream::stream! {
        let mut text = prefix;
        let mut index = 0;
        // The last token is held back until its Finished event says whether it ends the stream.
        let mut pending: Option<TgiToken> = None;
        while let Some(event) = started.next().await {
            match event {
                Event::Token { token: id, text: piece, logprob, .. } => {
                    if let Some(t) = pending.take() {
                        index += 1;
                        yield Ok(sse_json(&StreamResponse { index, token: t, generated_text: None, details: None }));
                    }
                    text.push_str(&piece);
                    pending = Some(token(&state, id, logprob));
                }
                Event::Finished { reason, completion_tokens, .. } => {
                    let Some(t) = pending.take() else { return };
                    index += 1;
                    let details = TgiDetails {
                        finish_reason: tgi_finish(reason),
                        generated_tokens: completion_tokens,
                        seed: Some(started.seed),
                        tokens: Vec::new(),
                    };
                    let last = StreamResponse { index, token: t, generated_text: Some(text.clone()), details: Some(details) };
                    yield Ok(sse_json(&last));
                    return;
                }
                Event::Error { failure, message, .. } => {
                    yield Ok(sse_error(started.failure(failure, message)));
                    return;
                }
            }
        }
    }
}
