//! `POST /v1/chat/completions` and `POST /v1/completions`, whole or streamed over SSE.
//!
//! Streams follow OpenAI's framing: for chat, a first chunk per choice carrying the role, content
//! deltas, a last chunk per choice with `finish_reason`, a usage chunk (`choices: []`) when
//! `stream_options.include_usage` is set, then `data: [DONE]`. Every error is decided before the
//! first byte; a backend failure mid-stream ends the stream with an error event in OpenAI's shape.
//! Dropping the response (client gone) drops the event receiver, which cancels the request.

use super::lifecycle::RequestId;
use super::openai::*;
use super::{collect, new_id, now, ApiJson, ChoiceOutput, SharedState, Started};
use crate::error::ApiError;
use crate::scheduler::Event;
use crate::validation::{GenerationInput, PromptInput};
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures::Stream;
use std::convert::Infallible;
use wick_proto::{FinishReason, TokenLogprob};

/// One SSE `data:` line holding JSON.
pub(crate) fn sse_json<T: serde::Serialize>(value: &T) -> SseEvent {
    SseEvent::default().data(serde_json::to_string(value).expect("wire types serialize"))
}

/// An error event for a stream that has already started (counted like any failed request).
pub(crate) fn sse_error(error: ApiError) -> SseEvent {
    crate::metrics::METRICS
        .request_failure
        .with_label_values(&[error.reason()])
        .inc();
    sse_json(&error.body())
}

pub(crate) fn sse_response<S>(stream: S) -> Response
where
    S: Stream<Item = Result<SseEvent, Infallible>> + Send + 'static,
{
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response();
    // Ask reverse proxies not to buffer the stream.
    response
        .headers_mut()
        .insert("x-accel-buffering", "no".parse().expect("valid header"));
    response
}

fn usage(prompt: usize, completion: usize, cached: usize) -> Usage {
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
        prompt_tokens_details: PromptTokensDetails {
            cached_tokens: cached,
        },
    }
}

fn chat_logprob(
    state: &SharedState,
    token: u32,
    logprob: f32,
    top: &[TokenLogprob],
) -> TokenLogprobOut {
    let text = state.token_text(token);
    TokenLogprobOut {
        bytes: text.as_bytes().to_vec(),
        token: text,
        logprob,
        top_logprobs: top
            .iter()
            .map(|t| {
                let text = state.token_text(t.token);
                TopLogprob {
                    bytes: text.as_bytes().to_vec(),
                    token: text,
                    logprob: t.logprob,
                }
            })
            .collect(),
    }
}

fn completion_logprobs(
    state: &SharedState,
    tokens: &[(u32, f32, Vec<TokenLogprob>)],
) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    let mut offset = 0;
    for (token, logprob, top) in tokens {
        let text = state.token_text(*token);
        out.text_offset.push(offset);
        offset += text.len();
        out.tokens.push(text);
        out.token_logprobs.push(*logprob);
        out.top_logprobs.push(
            top.iter()
                .map(|t| (state.token_text(t.token), t.logprob))
                .collect(),
        );
    }
    out
}

fn include_usage(options: &Option<StreamOptions>) -> bool {
    options.as_ref().is_some_and(|o| o.include_usage)
}

/// Usage of a finished, non-streamed generation (cached tokens as the first choice saw them).
fn usage_of(started: &Started, choices: &[ChoiceOutput]) -> Usage {
    let completion_tokens = choices.iter().map(|c| c.completion_tokens).sum();
    let cached_tokens = choices.first().map_or(0, |c| c.cached_tokens);
    usage(started.prompt_tokens, completion_tokens, cached_tokens)
}

/// What both OpenAI endpoints do before formatting: check the model, validate and queue.
async fn begin(
    state: &SharedState,
    rid: &RequestId,
    model: Option<String>,
    inputs: Result<(PromptInput, GenerationInput), ApiError>,
    id_prefix: &str,
) -> Result<(Started, StreamId), ApiError> {
    state.check_model(model.as_deref())?;
    let (prompt, input) = inputs?;
    let started = state.start(rid, prompt, input).await?;
    let sid = StreamId {
        state: state.clone(),
        id: new_id(id_prefix),
        created: now(),
        logprobs: started.logprobs,
    };
    Ok((started, sid))
}

#[utoipa::path(post, path = "/v1/chat/completions", request_body = ChatCompletionRequest,
    responses((status = 200, description = "The completion, or an SSE stream of `chat.completion.chunk` objects when `stream` is true", body = ChatCompletion),
              (status = 400, description = "Invalid parameter", body = crate::error::ErrorBody),
              (status = 404, description = "Unknown model", body = crate::error::ErrorBody)))]
pub async fn chat_completions(
    State(state): State<SharedState>,
    Extension(rid): Extension<RequestId>,
    ApiJson(req): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let (stream, include_usage) = (req.stream, include_usage(&req.stream_options));
    let model = req.model.clone();
    let (mut started, sid) = begin(&state, &rid, model, req.into_inputs(), "chatcmpl").await?;
    if stream {
        started.first().await?;
        let format = ChatChunks(sid);
        return Ok(sse_response(openai_stream(started, include_usage, format)));
    }
    let choices = collect(&mut started).await?;
    let response = ChatCompletion {
        id: sid.id,
        object: "chat.completion",
        created: sid.created,
        model: state.served_name.clone(),
        usage: usage_of(&started, &choices),
        choices: choices
            .into_iter()
            .enumerate()
            .map(|(index, c)| ChatChoice {
                index,
                logprobs: started.logprobs.then(|| ChatLogprobs {
                    content: c
                        .tokens
                        .iter()
                        .map(|(t, lp, top)| chat_logprob(&state, *t, *lp, top))
                        .collect(),
                }),
                message: ChatMessageOut {
                    role: "assistant",
                    content: c.text,
                },
                finish_reason: c.finish.map(|f| f.as_openai().to_string()),
            })
            .collect(),
    };
    Ok(axum::Json(response).into_response())
}

#[utoipa::path(post, path = "/v1/completions", request_body = CompletionRequest,
    responses((status = 200, description = "The completion, or an SSE stream of `text_completion` chunks when `stream` is true", body = Completion),
              (status = 400, description = "Invalid parameter", body = crate::error::ErrorBody),
              (status = 404, description = "Unknown model", body = crate::error::ErrorBody)))]
pub async fn completions(
    State(state): State<SharedState>,
    Extension(rid): Extension<RequestId>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let (stream, include_usage) = (req.stream, include_usage(&req.stream_options));
    let model = req.model.clone();
    let (mut started, sid) = begin(&state, &rid, model, req.into_inputs(), "cmpl").await?;
    if stream {
        started.first().await?;
        let format = CompletionChunks(sid);
        return Ok(sse_response(openai_stream(started, include_usage, format)));
    }
    let choices = collect(&mut started).await?;
    let response = Completion {
        id: sid.id,
        object: "text_completion",
        created: sid.created,
        model: state.served_name.clone(),
        usage: Some(usage_of(&started, &choices)),
        choices: choices
            .into_iter()
            .enumerate()
            .map(|(index, c)| CompletionChoice {
                index,
                logprobs: started
                    .logprobs
                    .then(|| completion_logprobs(&state, &c.tokens)),
                text: c.text,
                finish_reason: c.finish.map(|f| f.as_openai().to_string()),
            })
            .collect(),
    };
    Ok(axum::Json(response).into_response())
}

/// How one OpenAI stream turns events into chunks; [`openai_stream`] is the shared skeleton.
trait ChunkFormat: Send + Sync + 'static {
    /// Chunks sent before any token (chat: the role of each choice).
    fn opening(&self, n: usize) -> Vec<SseEvent>;
    /// A token's chunk, or none (nothing to say: no text and no log-probabilities asked).
    fn token(
        &self,
        choice: usize,
        token: u32,
        text: String,
        logprob: f32,
        top: &[TokenLogprob],
    ) -> Option<SseEvent>;
    fn finish(&self, choice: usize, reason: FinishReason) -> SseEvent;
    fn usage(&self, usage: Usage) -> SseEvent;
}

/// Token chunks, one finish chunk per choice, the usage chunk when asked, then `[DONE]`; a
/// failure ends the stream with an error event.
fn openai_stream<F: ChunkFormat>(
    mut started: Started,
    include_usage: bool,
    format: F,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    async_stream::stream! {
        for event in format.opening(started.n) {
            yield Ok(event);
        }
        let (mut done, mut completion_tokens, mut cached_tokens) = (0, 0, 0);
        while done < started.n {
            let Some(event) = started.next().await else {
                yield Ok(sse_error(ApiError::Unavailable));
                return;
            };
            match event {
                Event::Token { choice, token, text, logprob, top_logprobs } => {
                    if let Some(chunk) = format.token(choice, token, text, logprob, &top_logprobs) {
                        yield Ok(chunk);
                    }
                }
                Event::Finished { choice, reason, completion_tokens: n, cached_tokens: cached, .. } => {
                    done += 1;
                    completion_tokens += n;
                    if choice == 0 {
                        cached_tokens = cached;
                    }
                    yield Ok(format.finish(choice, reason));
                }
                Event::Error { failure, message, .. } => {
                    yield Ok(sse_error(started.failure(failure, message)));
                    return;
                }
            }
        }
        if include_usage {
            yield Ok(format.usage(usage(started.prompt_tokens, completion_tokens, cached_tokens)));
        }
        yield Ok(SseEvent::default().data("[DONE]"));
    }
}

/// Identity of one streamed response.
struct StreamId {
    state: SharedState,
    id: String,
    created: u64,
    logprobs: bool,
}

struct ChatChunks(StreamId);

impl ChatChunks {
    fn chunk(&self, choices: Vec<ChatChunkChoice>, usage: Option<Usage>) -> SseEvent {
        let s = &self.0;
        sse_json(&ChatCompletionChunk {
            id: s.id.clone(),
            object: "chat.completion.chunk",
            created: s.created,
            model: s.state.served_name.clone(),
            choices,
            usage,
        })
    }
}

impl ChunkFormat for ChatChunks {
    fn opening(&self, n: usize) -> Vec<SseEvent> {
        (0..n)
            .map(|index| {
                let delta = ChatDelta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                };
                let choice = ChatChunkChoice {
                    index,
                    delta,
                    logprobs: None,
                    finish_reason: None,
                };
                self.chunk(vec![choice], None)
            })
            .collect()
    }

    fn token(
        &self,
        choice: usize,
        token: u32,
        text: String,
        logprob: f32,
        top: &[TokenLogprob],
    ) -> Option<SseEvent> {
        if text.is_empty() && !self.0.logprobs {
            return None;
        }
        let logprobs = self.0.logprobs.then(|| ChatLogprobs {
            content: vec![chat_logprob(&self.0.state, token, logprob, top)],
        });
        let delta = ChatDelta {
            role: None,
            content: Some(text),
        };
        let choice = ChatChunkChoice {
            index: choice,
            delta,
            logprobs,
            finish_reason: None,
        };
        Some(self.chunk(vec![choice], None))
    }

    fn finish(&self, choice: usize, reason: FinishReason) -> SseEvent {
        let finish_reason = Some(reason.as_openai().to_string());
        let choice = ChatChunkChoice {
            index: choice,
            delta: ChatDelta::default(),
            logprobs: None,
            finish_reason,
        };
        self.chunk(vec![choice], None)
    }

    fn usage(&self, usage: Usage) -> SseEvent {
        self.chunk(Vec::new(), Some(usage))
    }
}

struct CompletionChunks(StreamId);

impl CompletionChunks {
    fn chunk(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> SseEvent {
        let s = &self.0;
        sse_json(&Completion {
            id: s.id.clone(),
            object: "text_completion",
            created: s.created,
            model: s.state.served_name.clone(),
            choices,
            usage,
        })
    }
}

impl ChunkFormat for CompletionChunks {
    fn opening(&self, _: usize) -> Vec<SseEvent> {
        Vec::new()
    }

    fn token(
        &self,
        choice: usize,
        token: u32,
        text: String,
        logprob: f32,
        top: &[TokenLogprob],
    ) -> Option<SseEvent> {
        if text.is_empty() && !self.0.logprobs {
            return None;
        }
        let logprobs = self
            .0
            .logprobs
            .then(|| completion_logprobs(&self.0.state, &[(token, logprob, top.to_vec())]));
        let c = CompletionChoice {
            index: choice,
            text,
            logprobs,
            finish_reason: None,
        };
        Some(self.chunk(vec![c], None))
    }

    fn finish(&self, choice: usize, reason: FinishReason) -> SseEvent {
        let finish_reason = Some(reason.as_openai().to_string());
        let c = CompletionChoice {
            index: choice,
            text: String::new(),
            logprobs: None,
            finish_reason,
        };
        self.chunk(vec![c], None)
    }

    fn usage(&self, usage: Usage) -> SseEvent {
        self.chunk(Vec::new(), Some(usage))
    }
}
