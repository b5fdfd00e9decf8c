//! `POST /v1/chat/completions`, whole or streamed over SSE, and the OpenAI stream skeleton
//! ([`openai_stream`], [`ChunkFormat`]) that `/v1/completions` ([`super::completions`]) shares.
//!
//! Streams follow OpenAI's framing: for chat, a first chunk per choice carrying the role, content
//! deltas, a last chunk per choice with `finish_reason`, a usage chunk (`choices: []`) when
//! `stream_options.include_usage` is set, then `data: [DONE]`. Every error is decided before the
//! first byte; a backend failure mid-stream ends the stream with an error event in OpenAI's shape.
//! Dropping the response (client gone) drops the event receiver, which cancels the request.

use super::keys::Caller;
use super::openai::*;
use super::resume::{cut_event, StreamApi};
use super::structured::{FunctionCall, FunctionDelta, ToolCallDelta, ToolCallOut};
use super::{collect, new_id, now, ApiJson, ChoiceOutput, SharedState, Started};
use crate::error::{ApiError, Unavailable};
use crate::scheduler::{Event, Failure};
use crate::tools::stream::{AnswerStream, Piece};
use crate::tools::{answer_calls, ToolFormat, Tools};
use crate::validation::{GenerationInput, PromptInput};
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use std::convert::Infallible;
use wick_proto::{FinishReason, TokenLogprob};

/// One SSE `data:` line holding JSON.
pub(crate) fn sse_json<T: serde::Serialize>(value: &T) -> SseEvent {
    SseEvent::default().data(serde_json::to_string(value).expect("wire types serialize"))
}

/// An error event for a stream that has already started (counted like any failed request).
pub(crate) fn sse_error(error: ApiError) -> SseEvent {
    error.count();
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

pub(super) fn usage(prompt: usize, completion: usize, cached: usize) -> Usage {
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
        prompt_tokens_details: PromptTokensDetails {
            cached_tokens: cached,
        },
        completion_tokens_details: None,
    }
}

pub(super) fn chat_logprob(
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

pub(super) fn include_usage(options: &Option<StreamOptions>) -> bool {
    options.as_ref().is_some_and(|o| o.include_usage)
}

/// Usage of a finished, non-streamed generation (cached tokens as the first choice saw them).
pub(super) fn usage_of(started: &Started, choices: &[ChoiceOutput]) -> Usage {
    let completion_tokens = choices.iter().map(|c| c.completion_tokens).sum();
    let cached_tokens = choices.first().map_or(0, |c| c.cached_tokens);
    let reasoning =
        (started.split().is_some()).then(|| choices.iter().map(|c| c.reasoning_tokens).sum());
    usage(started.prompt_tokens, completion_tokens, cached_tokens).with_reasoning(reasoning)
}

/// What both OpenAI endpoints do before formatting: check the model, validate and queue.
pub(super) async fn begin(
    state: &SharedState,
    caller: &Caller,
    model: Option<String>,
    inputs: Result<(PromptInput, GenerationInput), ApiError>,
    api: StreamApi,
) -> Result<(Started, StreamId), ApiError> {
    state.check_model(model.as_deref())?;
    let (prompt, input) = inputs?;
    let started = state.start(caller, prompt, input).await?;
    let sid = StreamId {
        state: state.clone(),
        id: new_id(api.id_prefix()),
        created: now(),
        logprobs: started.logprobs,
        api,
    };
    Ok((started, sid))
}

#[utoipa::path(post, path = "/v1/chat/completions", request_body = ChatCompletionRequest,
    responses((status = 200, description = "The completion, or an SSE stream of `chat.completion.chunk` objects when `stream` is true", body = ChatCompletion),
              (status = 400, description = "Invalid parameter", body = crate::error::ErrorBody),
              (status = 404, description = "Unknown model", body = crate::error::ErrorBody)))]
pub async fn chat_completions(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(req): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let (stream, include_usage) = (req.stream, include_usage(&req.stream_options));
    let model = req.model.clone();
    let inputs = req.into_inputs();
    let tools = match &inputs {
        Ok((PromptInput::Chat { tools, .. }, _)) => tools.clone(),
        _ => None,
    };
    let (mut started, sid) =
        begin(&state, &caller, model, inputs, StreamApi::ChatCompletions).await?;
    let calls = state.validator.tool_format();
    if stream {
        started.first().await?;
        let answers = (0..started.n)
            .map(|_| AnswerStream::new(tools.as_ref(), calls, started.split()))
            .collect();
        let format = ChatChunks::new(sid, answers);
        return Ok(sse_response(openai_stream(started, include_usage, format)));
    }
    let choices = collect(&mut started).await?;
    let response = ChatCompletion {
        id: sid.id,
        object: "chat.completion",
        created: sid.created,
        model: state.served_name.clone(),
        system_fingerprint: state.fingerprint.clone(),
        usage: usage_of(&started, &choices),
        choices: choices
            .into_iter()
            .enumerate()
            .map(|(index, c)| {
                let logprobs = started.logprobs.then(|| ChatLogprobs {
                    content: c
                        .tokens
                        .iter()
                        .map(|(t, lp, top)| chat_logprob(&state, *t, *lp, top))
                        .collect(),
                });
                let (mut message, finish) = chat_answer(c.text, c.finish, tools.as_ref(), calls);
                message.reasoning_content = c.reasoning;
                ChatChoice {
                    index,
                    logprobs,
                    message,
                    finish_reason: finish.map(|f| f.as_openai().to_string()),
                }
            })
            .collect(),
    };
    Ok(axum::Json(response).into_response())
}

/// A finished answer as a message: tool calls when the request has tools and the answer is
/// nothing but complete calls of them (in the model's `format`), else text.
fn chat_answer(
    text: String,
    finish: Option<FinishReason>,
    tools: Option<&Tools>,
    format: ToolFormat,
) -> (ChatMessageOut, Option<FinishReason>) {
    match answer_calls(&text, finish, tools, format) {
        Some(calls) => (
            ChatMessageOut {
                role: "assistant",
                content: None,
                reasoning_content: None,
                tool_calls: calls
                    .into_iter()
                    .map(|call| ToolCallOut {
                        id: new_id("call"),
                        r#type: "function",
                        function: FunctionCall {
                            name: call.name,
                            arguments: call.arguments,
                        },
                    })
                    .collect(),
            },
            Some(FinishReason::ToolCalls),
        ),
        None => (
            ChatMessageOut {
                role: "assistant",
                content: Some(text),
                reasoning_content: None,
                tool_calls: Vec::new(),
            },
            finish,
        ),
    }
}

/// How one OpenAI stream turns events into chunks; [`openai_stream`] is the shared skeleton.
pub(super) trait ChunkFormat: Send + Sync + 'static {
    fn sid(&self) -> &StreamId;
    /// Chunks sent before any token (chat: the role of each choice).
    fn opening(&self, n: usize) -> Vec<SseEvent>;
    /// A token's chunk, or none (nothing to say: no text and no log-probabilities asked).
    fn token(
        &mut self,
        choice: usize,
        token: u32,
        text: String,
        logprob: f32,
        top: &[TokenLogprob],
    ) -> Option<SseEvent>;
    /// The chunks that end a choice (the last carries `finish_reason`).
    fn finish(&mut self, choice: usize, reason: FinishReason) -> Vec<SseEvent>;
    fn usage(&self, usage: Usage) -> SseEvent;
}

/// Token chunks, one finish chunk per choice, the usage chunk when asked, then `[DONE]`; a
/// failure ends the stream with an error event, which carries a resume token when the drain
/// cut a resumable stream ([`super::resume`]). A resumed stream sends no opening chunks.
pub(super) fn openai_stream<F: ChunkFormat>(
    mut started: Started,
    include_usage: bool,
    mut format: F,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    async_stream::stream! {
        if !started.resumed {
            for event in format.opening(started.n) {
                yield Ok(event);
            }
        }
        let (mut done, mut completion_tokens, mut cached_tokens) = (0, 0, 0);
        // The ids this server generated, for a resume token.
        let mut sent = Vec::new();
        while done < started.n {
            let Some(event) = started.next().await else {
                yield Ok(sse_error(ApiError::Unavailable(Unavailable::SchedulerGone)));
                return;
            };
            match event {
                Event::Token { choice, token, text, logprob, top_logprobs } => {
                    if started.resume.is_some() {
                        sent.push(token);
                    }
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
                    for chunk in format.finish(choice, reason) {
                        yield Ok(chunk);
                    }
                }
                Event::Error { failure, message, .. } => {
                    let key = &format.sid().state.resume_key;
                    match (failure, &started.resume, key) {
                        (Failure::ShuttingDown, Some(base), Some(key)) => {
                            yield Ok(cut_event(format.sid(), include_usage, base, &sent, key));
                        }
                        _ => yield Ok(sse_error(started.failure(failure, message))),
                    }
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
pub(super) struct StreamId {
    pub(super) state: SharedState,
    pub(super) id: String,
    pub(super) created: u64,
    pub(super) logprobs: bool,
    pub(super) api: StreamApi,
}

/// Chat chunks; each choice's text goes through its [`AnswerStream`], so that a reasoning
/// model's reasoning streams as `reasoning_content` and with tools a call as OpenAI's
/// `tool_calls` deltas.
pub(super) struct ChatChunks {
    sid: StreamId,
    /// Per choice.
    answers: Vec<AnswerStream>,
}

impl ChatChunks {
    pub(super) fn new(sid: StreamId, answers: Vec<AnswerStream>) -> ChatChunks {
        ChatChunks { sid, answers }
    }

    fn chunk(&self, choices: Vec<ChatChunkChoice>, usage: Option<Usage>) -> SseEvent {
        let s = &self.sid;
        sse_json(&ChatCompletionChunk {
            id: s.id.clone(),
            object: "chat.completion.chunk",
            created: s.created,
            model: s.state.served_name.clone(),
            system_fingerprint: s.state.fingerprint.clone(),
            choices,
            usage,
        })
    }

    /// The delta of some streamed pieces (`None` when they say nothing).
    fn delta(pieces: Vec<Piece>) -> Option<ChatDelta> {
        let mut delta = ChatDelta::default();
        for p in pieces {
            match p {
                Piece::Reasoning(r) => (delta.reasoning_content)
                    .get_or_insert_with(String::new)
                    .push_str(&r),
                Piece::Text(t) => delta.content.get_or_insert_with(String::new).push_str(&t),
                Piece::CallStart { index, name } => delta
                    .tool_calls
                    .get_or_insert_with(Vec::new)
                    .push(ToolCallDelta {
                        index,
                        id: Some(new_id("call")),
                        r#type: Some("function"),
                        function: FunctionDelta {
                            name: Some(name),
                            arguments: Some(String::new()),
                        },
                    }),
                Piece::Arguments { index, text } => {
                    let calls = delta.tool_calls.get_or_insert_with(Vec::new);
                    let same_call = calls.last_mut().filter(|c| c.index == index);
                    match same_call.and_then(|c| c.function.arguments.as_mut()) {
                        // More arguments of the call this delta already speaks of.
                        Some(args) => args.push_str(&text),
                        None => calls.push(ToolCallDelta {
                            index,
                            id: None,
                            r#type: None,
                            function: FunctionDelta {
                                name: None,
                                arguments: Some(text),
                            },
                        }),
                    }
                }
            }
        }
        let said = delta.content.is_some()
            || delta.tool_calls.is_some()
            || delta.reasoning_content.is_some();
        said.then_some(delta)
    }
}

impl ChunkFormat for ChatChunks {
    fn sid(&self) -> &StreamId {
        &self.sid
    }

    fn opening(&self, n: usize) -> Vec<SseEvent> {
        (0..n)
            .map(|index| {
                let delta = ChatDelta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                    ..ChatDelta::default()
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
        &mut self,
        choice: usize,
        token: u32,
        text: String,
        logprob: f32,
        top: &[TokenLogprob],
    ) -> Option<SseEvent> {
        let delta = Self::delta(self.answers[choice].push(text));
        if delta.is_none() && !self.sid.logprobs {
            return None;
        }
        let logprobs = self.sid.logprobs.then(|| ChatLogprobs {
            content: vec![chat_logprob(&self.sid.state, token, logprob, top)],
        });
        let choice = ChatChunkChoice {
            index: choice,
            delta: delta.unwrap_or_default(),
            logprobs,
            finish_reason: None,
        };
        Some(self.chunk(vec![choice], None))
    }

    fn finish(&mut self, choice: usize, reason: FinishReason) -> Vec<SseEvent> {
        let mut out = Vec::new();
        let (rest, reason) = self.answers[choice].finish(reason);
        if let Some(delta) = Self::delta(rest) {
            let rest = ChatChunkChoice {
                index: choice,
                delta,
                logprobs: None,
                finish_reason: None,
            };
            out.push(self.chunk(vec![rest], None));
        }
        let choice = ChatChunkChoice {
            index: choice,
            delta: ChatDelta::default(),
            logprobs: None,
            finish_reason: Some(reason.as_openai().to_string()),
        };
        out.push(self.chunk(vec![choice], None));
        out
    }

    fn usage(&self, usage: Usage) -> SseEvent {
        let reasons = self.answers.iter().any(AnswerStream::reasons);
        let reasoning = reasons.then(|| self.answers.iter().map(|a| a.reasoning_tokens()).sum());
        self.chunk(Vec::new(), Some(usage.with_reasoning(reasoning)))
    }
}
