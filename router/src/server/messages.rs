//! `POST /v1/messages` (Anthropic's Messages API), whole or streamed, and
//! `POST /v1/messages/count_tokens`. The same path as chat completions (model check, admission,
//! validation on a blocking thread, the scheduler, cancellation by drop); answers and errors in
//! Anthropic's shapes ([`super::anthropic`]).
//!
//! A stream is Anthropic's event sequence: `message_start`, then per content block
//! `content_block_start`, its deltas (`thinking_delta` and an empty `signature_delta` for a
//! reasoning model's `thinking` block, `text_delta`, or `input_json_delta` for a `tool_use`
//! block's input) and `content_block_stop`, then `message_delta` (stop reason, output tokens)
//! and `message_stop`; a failure after the start ends it with an `error` event.

use super::anthropic::*;
use super::keys::Caller;
use super::{collect, new_id, ApiJson, ChoiceOutput, SharedState, Started};
use crate::error::{ApiError, Unavailable};
use crate::scheduler::Event;
use crate::tools::stream::{AnswerStream, Piece};
use crate::tools::{answer_calls, ToolFormat, Tools};
use crate::validation::PromptInput;
use axum::extract::State;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde_json::{json, Value};
use std::convert::Infallible;
use wick_proto::FinishReason;

/// One named SSE event with its JSON.
fn event(name: &str, data: Value) -> SseEvent {
    SseEvent::default().event(name).data(data.to_string())
}

fn usage(started: &Started, output: usize, cached: usize) -> AnthropicUsage {
    AnthropicUsage {
        input_tokens: started.prompt_tokens,
        output_tokens: output,
        cache_read_input_tokens: cached,
        cache_creation_input_tokens: 0,
    }
}

/// A finished answer's blocks: its reasoning as a `thinking` block, then tool uses when the
/// request has tools and the answer is nothing but calls, else its text.
fn blocks(
    c: ChoiceOutput,
    tools: Option<&Tools>,
    format: ToolFormat,
) -> (Vec<BlockOut>, FinishReason) {
    let finish = c.finish.unwrap_or(FinishReason::Stop);
    let thinking = c.reasoning.map(|thinking| BlockOut::Thinking {
        thinking,
        signature: String::new(),
    });
    let mut out: Vec<BlockOut> = thinking.into_iter().collect();
    let text = c.text;
    let finish = match answer_calls(&text, Some(finish), tools, format) {
        Some(calls) => {
            out.extend(calls.into_iter().map(|c| BlockOut::ToolUse {
                id: new_id("toolu"),
                name: c.name,
                input: serde_json::from_str(&c.arguments).unwrap_or_else(|_| json!({})),
            }));
            FinishReason::ToolCalls
        }
        None if text.is_empty() => finish,
        None => {
            out.push(BlockOut::Text { text });
            finish
        }
    };
    (out, finish)
}

#[utoipa::path(post, path = "/v1/messages", request_body = MessagesRequest,
    responses((status = 200, description = "The message, or an SSE stream of Anthropic's events when `stream` is true", body = MessageOut),
              (status = 400, description = "Invalid parameter", body = AnthropicErrorBody),
              (status = 404, description = "Unknown model", body = AnthropicErrorBody)))]
pub async fn messages(
    State(state): State<SharedState>,
    caller: Caller,
    body: Result<ApiJson<MessagesRequest>, ApiError>,
) -> Result<Response, AnthropicError> {
    let ApiJson(req) = body?;
    state.check_model(req.model.as_deref())?;
    if req.max_tokens.is_none() {
        return Err(ApiError::invalid("max_tokens", "`max_tokens` is required").into());
    }
    let stream = req.stream;
    let (prompt, input) = req.into_inputs()?;
    let tools = match &prompt {
        PromptInput::Chat { tools, .. } => tools.clone(),
        _ => None,
    };
    let format = state.validator.tool_format();
    let mut started = state.start(&caller, prompt, input).await?;
    let id = new_id("msg");
    if stream {
        started.first().await?;
        let events = message_stream(state.clone(), started, id, tools, format);
        return Ok(super::chat::sse_response(events));
    }
    let c = collect(&mut started).await?.remove(0);
    let (stop_sequence, tokens, cached) = (
        c.stop_sequence.clone(),
        c.completion_tokens,
        c.cached_tokens,
    );
    let (content, finish) = blocks(c, tools.as_ref(), format);
    let message = MessageOut {
        id,
        r#type: "message",
        role: "assistant",
        model: state.served_name.clone(),
        content,
        stop_reason: Some(stop_reason(finish)),
        stop_sequence,
        usage: usage(&started, tokens, cached),
    };
    Ok(axum::Json(message).into_response())
}

#[utoipa::path(post, path = "/v1/messages/count_tokens", request_body = MessagesRequest,
    responses((status = 200, description = "The prompt's tokens, tools included", body = TokenCount),
              (status = 400, description = "Invalid parameter", body = AnthropicErrorBody)))]
pub async fn count_tokens(
    State(state): State<SharedState>,
    body: Result<ApiJson<MessagesRequest>, ApiError>,
) -> Result<axum::Json<TokenCount>, AnthropicError> {
    let ApiJson(req) = body?;
    state.check_model(req.model.as_deref())?;
    let (prompt, _) = req.into_inputs()?;
    let tokens = state.tokenize(prompt).await?;
    Ok(axum::Json(TokenCount {
        input_tokens: tokens.len(),
    }))
}

/// A failure after the stream started, as Anthropic's `error` event (counted, as every API's
/// stream errors are).
fn error_event(error: ApiError) -> SseEvent {
    error.count();
    event("error", json!(AnthropicError(error).body()))
}

/// What kind of content block is open.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Thinking,
    Text,
    ToolUse,
}

/// The content blocks of a stream as they open and close.
struct Blocks {
    /// The open block: its index and kind.
    open: Option<(usize, Kind)>,
    next: usize,
}

impl Blocks {
    /// Events for `piece`: a block closed and another opened when its kind changes, and its
    /// delta.
    fn piece(&mut self, piece: Piece, out: &mut Vec<SseEvent>) {
        match piece {
            Piece::Reasoning(text) | Piece::Text(text) if text.is_empty() => {}
            Piece::Reasoning(thinking) => {
                let block = json!({"type": "thinking", "thinking": "", "signature": ""});
                let index = self.ensure(Kind::Thinking, block, out);
                out.push(event(
                    "content_block_delta",
                    json!({"type": "content_block_delta",
                    "index": index, "delta": {"type": "thinking_delta", "thinking": thinking}}),
                ));
            }
            Piece::Text(text) => {
                let block = json!({"type": "text", "text": ""});
                let index = self.ensure(Kind::Text, block, out);
                out.push(event(
                    "content_block_delta",
                    json!({"type": "content_block_delta",
                    "index": index, "delta": {"type": "text_delta", "text": text}}),
                ));
            }
            Piece::CallStart { name, .. } => {
                let index = self.start(out);
                out.push(event(
                    "content_block_start",
                    json!({"type": "content_block_start",
                    "index": index, "content_block": {"type": "tool_use", "id": new_id("toolu"),
                    "name": name, "input": {}}}),
                ));
                self.open = Some((index, Kind::ToolUse));
            }
            Piece::Arguments { text, .. } => {
                let index = self.open.map_or(0, |(i, _)| i);
                out.push(event(
                    "content_block_delta",
                    json!({"type": "content_block_delta",
                    "index": index, "delta": {"type": "input_json_delta", "partial_json": text}}),
                ));
            }
        }
    }

    /// The open block's index when it is of `kind`, else a new one (`block` as its start).
    fn ensure(&mut self, kind: Kind, block: Value, out: &mut Vec<SseEvent>) -> usize {
        match self.open {
            Some((index, open)) if open == kind => index,
            _ => {
                let index = self.start(out);
                out.push(event(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": index, "content_block": block}),
                ));
                self.open = Some((index, kind));
                index
            }
        }
    }

    /// Closes the open block, if any, and returns the next block's index.
    fn start(&mut self, out: &mut Vec<SseEvent>) -> usize {
        self.close(out);
        self.next += 1;
        self.next - 1
    }

    fn close(&mut self, out: &mut Vec<SseEvent>) {
        if let Some((index, kind)) = self.open.take() {
            if kind == Kind::Thinking {
                // Wick does not sign its reasoning; the SDKs expect the delta all the same.
                out.push(event(
                    "content_block_delta",
                    json!({"type": "content_block_delta",
                    "index": index, "delta": {"type": "signature_delta", "signature": ""}}),
                ));
            }
            out.push(event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }
}

fn message_stream(
    state: SharedState,
    mut started: Started,
    id: String,
    tools: Option<Tools>,
    format: ToolFormat,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    async_stream::stream! {
        let opening = MessageOut {
            id,
            r#type: "message",
            role: "assistant",
            model: state.served_name.clone(),
            content: Vec::new(),
            stop_reason: None,
            stop_sequence: None,
            usage: usage(&started, 0, 0),
        };
        yield Ok(event("message_start", json!({"type": "message_start", "message": opening})));
        let mut answer = AnswerStream::new(tools.as_ref(), format, started.split());
        let mut blocks = Blocks { open: None, next: 0 };
        loop {
            let mut out = Vec::new();
            match started.next().await {
                Some(Event::Token { text, .. }) => {
                    answer.push(text).into_iter().for_each(|p| blocks.piece(p, &mut out));
                }
                Some(Event::Finished { reason, completion_tokens, stop_sequence, .. }) => {
                    let (rest, reason) = answer.finish(reason);
                    rest.into_iter().for_each(|p| blocks.piece(p, &mut out));
                    blocks.close(&mut out);
                    out.push(event("message_delta", json!({"type": "message_delta",
                        "delta": {"stop_reason": stop_reason(reason), "stop_sequence": stop_sequence},
                        "usage": {"output_tokens": completion_tokens}})));
                    out.push(event("message_stop", json!({"type": "message_stop"})));
                    for e in out {
                        yield Ok(e);
                    }
                    return;
                }
                Some(Event::Error { failure, message, .. }) => {
                    yield Ok(error_event(started.failure(failure, message)));
                    return;
                }
                None => {
                    yield Ok(error_event(ApiError::Unavailable(Unavailable::SchedulerGone)));
                    return;
                }
            }
            for e in out {
                yield Ok(e);
            }
        }
    }
}
