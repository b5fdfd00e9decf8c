//! `POST /v1/responses` (OpenAI's Responses API, stateless), whole or streamed, on the same path
//! as chat completions (model check, admission, validation, the scheduler, cancellation by
//! drop); wire types in [`super::openai_responses`], errors in OpenAI's shape.
//!
//! The answer is output items: a reasoning model's `reasoning` item first (one `reasoning_text`
//! part), then one `message` item with an `output_text` part, or one `function_call` item per
//! call (in the model's call format, read as for chat completions).
//! A stream is the typed events `response.created`, `response.in_progress`, then per item
//! `response.output_item.added`, its deltas (`response.content_part.added`,
//! `response.output_text.delta` (or `response.reasoning_text.delta`) ... `.done`,
//! `response.content_part.done`; or
//! `response.function_call_arguments.delta` ... `.done`) and `response.output_item.done`, and
//! last `response.completed` (or `response.incomplete` at the token limit) with the whole
//! response; every event carries its `sequence_number`.

use super::chat::sse_response;
use super::keys::Caller;
use super::openai_responses::*;
use super::{collect, new_id, now, ApiJson, SharedState, Started};
use crate::error::{ApiError, Unavailable};
use crate::scheduler::Event;
use crate::tools::stream::{AnswerStream, Piece};
use crate::tools::{answer_calls, ToolFormat, Tools};
use crate::validation::PromptInput;
use axum::extract::State;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde::Serialize;
use serde_json::{json, Value};
use std::convert::Infallible;
use utoipa::ToSchema;
use wick_proto::FinishReason;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ResponsesUsage {
    pub input_tokens: usize,
    #[schema(value_type = Object)]
    pub input_tokens_details: Value,
    pub output_tokens: usize,
    #[schema(value_type = Object)]
    pub output_tokens_details: Value,
    pub total_tokens: usize,
}

/// A response object.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"id": "resp-6b0f4c85000014", "object": "response", "created_at": 1796164741, "status": "completed", "model": "SmolLM2-135M-Instruct", "output": [{"type": "message", "id": "msg-6b0f4c85000015", "status": "completed", "role": "assistant", "content": [{"type": "output_text", "text": "12 + 30 = 42.", "annotations": []}]}]}))]
pub struct ResponseObject {
    pub id: String,
    /// Always `response`.
    pub object: &'static str,
    pub created_at: u64,
    /// `in_progress`, `completed` or `incomplete`.
    pub status: &'static str,
    pub model: String,
    #[schema(value_type = Vec<Object>)]
    pub output: Vec<Value>,
    #[schema(value_type = Option<Object>)]
    pub incomplete_details: Option<Value>,
    pub usage: Option<ResponsesUsage>,
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
    pub instructions: Option<String>,
    pub max_output_tokens: Option<u64>,
    pub parallel_tool_calls: bool,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub tool_choice: ResponsesToolChoice,
    pub tools: Vec<ResponsesTool>,
    pub text: TextConfig,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub store: bool,
}

/// What a response echoes of its request, kept before the request is consumed.
fn skeleton(state: &SharedState, req: &ResponsesRequest) -> ResponseObject {
    ResponseObject {
        id: new_id("resp"),
        object: "response",
        created_at: now(),
        status: "in_progress",
        model: state.served_name.clone(),
        output: Vec::new(),
        incomplete_details: None,
        usage: None,
        error: None,
        instructions: req.instructions.clone(),
        max_output_tokens: req.max_output_tokens,
        parallel_tool_calls: req.parallel_tool_calls.unwrap_or(true),
        temperature: req.temperature,
        top_p: req.top_p,
        tool_choice: req
            .tool_choice
            .clone()
            .unwrap_or(ResponsesToolChoice::Mode("auto".into())),
        tools: req.tools.clone().unwrap_or_default(),
        text: req.text.clone().unwrap_or(TextConfig {
            format: Some(TextFormat::Text),
        }),
        metadata: req.metadata.clone().unwrap_or_else(|| json!({})),
        store: false,
    }
}

/// An output item of one text part: the answer's message or its reasoning.
#[derive(Debug, Clone, Copy, PartialEq)]
enum TextItem {
    Message,
    Reasoning,
}

impl TextItem {
    fn new_id(self) -> String {
        new_id(match self {
            TextItem::Message => "msg",
            TextItem::Reasoning => "rs",
        })
    }

    fn part(self, text: &str) -> Value {
        match self {
            TextItem::Message => json!({"type": "output_text", "text": text, "annotations": []}),
            TextItem::Reasoning => json!({"type": "reasoning_text", "text": text}),
        }
    }

    /// The item, its content empty while it is in progress.
    fn item(self, id: &str, text: Option<&str>, status: &str) -> Value {
        let content: Vec<Value> = text.map(|t| self.part(t)).into_iter().collect();
        match self {
            TextItem::Message => json!({"type": "message", "id": id, "status": status,
                                        "role": "assistant", "content": content}),
            TextItem::Reasoning => json!({"type": "reasoning", "id": id, "status": status,
                                          "summary": [], "content": content}),
        }
    }

    /// The text's events: `.delta` and `.done`.
    fn events(self) -> (&'static str, &'static str) {
        match self {
            TextItem::Message => ("response.output_text.delta", "response.output_text.done"),
            TextItem::Reasoning => (
                "response.reasoning_text.delta",
                "response.reasoning_text.done",
            ),
        }
    }
}

fn call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({"type": "function_call", "id": id, "call_id": call_id, "name": name,
           "arguments": arguments, "status": status})
}

/// The response's end: status, usage and (at the token limit) why it is incomplete.
fn finish(
    r: &mut ResponseObject,
    reason: FinishReason,
    started: &Started,
    out: usize,
    cached: usize,
    reasoning: usize,
) {
    let incomplete = reason == FinishReason::Length;
    r.status = if incomplete {
        "incomplete"
    } else {
        "completed"
    };
    r.incomplete_details = incomplete.then(|| json!({"reason": "max_output_tokens"}));
    r.usage = Some(ResponsesUsage {
        input_tokens: started.prompt_tokens,
        input_tokens_details: json!({"cached_tokens": cached}),
        output_tokens: out,
        output_tokens_details: json!({"reasoning_tokens": reasoning}),
        total_tokens: started.prompt_tokens + out,
    });
}

#[utoipa::path(post, path = "/v1/responses", request_body = ResponsesRequest,
    responses((status = 200, description = "The response, or an SSE stream of typed response events when `stream` is true", body = ResponseObject),
              (status = 400, description = "Invalid parameter", body = crate::error::ErrorBody),
              (status = 404, description = "Unknown model", body = crate::error::ErrorBody)))]
pub async fn responses(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(req): ApiJson<ResponsesRequest>,
) -> Result<Response, ApiError> {
    state.check_model(req.model.as_deref())?;
    let mut response = skeleton(&state, &req);
    let stream = req.stream;
    let (prompt, input) = req.into_inputs()?;
    let tools = match &prompt {
        PromptInput::Chat { tools, .. } => tools.clone(),
        _ => None,
    };
    let format = state.validator.tool_format();
    let mut started = state.start(&caller, prompt, input).await?;
    if stream {
        started.first().await?;
        return Ok(sse_response(response_stream(
            started, response, tools, format,
        )));
    }
    let c = collect(&mut started).await?.remove(0);
    let reason = c.finish.unwrap_or(FinishReason::Stop);
    let reasoning = c.reasoning.as_deref().map(|text| {
        let kind = TextItem::Reasoning;
        kind.item(&kind.new_id(), Some(text), "completed")
    });
    response.output = reasoning.into_iter().collect();
    match answer_calls(&c.text, Some(reason), tools.as_ref(), format) {
        Some(calls) => response.output.extend(calls.iter().map(|call| {
            let (id, call_id) = (new_id("fc"), new_id("call"));
            call_item(&id, &call_id, &call.name, &call.arguments, "completed")
        })),
        None => {
            let kind = TextItem::Message;
            let message = kind.item(&kind.new_id(), Some(&c.text), "completed");
            response.output.push(message)
        }
    }
    let (out, cached) = (c.completion_tokens, c.cached_tokens);
    finish(
        &mut response,
        reason,
        &started,
        out,
        cached,
        c.reasoning_tokens,
    );
    Ok(axum::Json(response).into_response())
}

/// The output item being streamed.
enum Open {
    Text {
        kind: TextItem,
        id: String,
        text: String,
    },
    Call {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
    },
}

/// Numbers the events of one stream and tracks its open item.
struct Events {
    seq: u64,
    open: Option<Open>,
    done: Vec<Value>,
    /// Whether a message or call item was opened (reasoning alone is no answer).
    answered: bool,
}

impl Events {
    fn event(&mut self, name: &str, mut data: Value) -> SseEvent {
        data["type"] = json!(name);
        data["sequence_number"] = json!(self.seq);
        self.seq += 1;
        SseEvent::default().event(name).data(data.to_string())
    }

    fn index(&self) -> usize {
        self.done.len()
    }

    fn piece(&mut self, piece: Piece, out: &mut Vec<SseEvent>) {
        match piece {
            Piece::Reasoning(text) | Piece::Text(text) if text.is_empty() => {}
            Piece::Reasoning(text) => self.text(TextItem::Reasoning, text, out),
            Piece::Text(text) => self.text(TextItem::Message, text, out),
            Piece::CallStart { name, .. } => {
                self.close(out);
                self.answered = true;
                let (id, call_id) = (new_id("fc"), new_id("call"));
                let i = self.index();
                let item = call_item(&id, &call_id, &name, "", "in_progress");
                out.push(self.event(
                    "response.output_item.added",
                    json!({"output_index": i, "item": item}),
                ));
                self.open = Some(Open::Call {
                    id,
                    call_id,
                    name,
                    arguments: String::new(),
                });
            }
            Piece::Arguments { text, .. } => {
                let i = self.index();
                if let Some(Open::Call { id, arguments, .. }) = &mut self.open {
                    arguments.push_str(&text);
                    let id = id.clone();
                    out.push(self.event(
                        "response.function_call_arguments.delta",
                        json!({"item_id": id, "output_index": i, "delta": text}),
                    ));
                }
            }
        }
    }

    /// More text of a `kind` item, opened first unless it is the open one.
    fn text(&mut self, kind: TextItem, text: String, out: &mut Vec<SseEvent>) {
        if !matches!(self.open, Some(Open::Text { kind: k, .. }) if k == kind) {
            self.open_text(kind, out);
        }
        let i = self.index();
        if let Some(Open::Text { id, text: all, .. }) = &mut self.open {
            all.push_str(&text);
            let id = id.clone();
            out.push(self.event(
                kind.events().0,
                json!({"item_id": id, "output_index": i, "content_index": 0, "delta": text}),
            ));
        }
    }

    /// Opens a message or reasoning item with its one text part.
    fn open_text(&mut self, kind: TextItem, out: &mut Vec<SseEvent>) {
        self.close(out);
        let id = kind.new_id();
        let i = self.index();
        self.answered |= kind == TextItem::Message;
        let item = kind.item(&id, None, "in_progress");
        out.push(self.event(
            "response.output_item.added",
            json!({"output_index": i, "item": item}),
        ));
        out.push(self.event(
            "response.content_part.added",
            json!({"item_id": id, "output_index": i, "content_index": 0, "part": kind.part("")}),
        ));
        self.open = Some(Open::Text {
            kind,
            id,
            text: String::new(),
        });
    }

    /// A failure after the stream started, as the Responses API's `error` event.
    fn error(&mut self, error: ApiError) -> SseEvent {
        error.count();
        let body = error.body().error;
        self.event(
            "error",
            json!({"code": body.code, "message": body.message, "param": body.param}),
        )
    }

    /// Ends the open item with its `.done` events.
    fn close(&mut self, out: &mut Vec<SseEvent>) {
        let i = self.index();
        let item = match self.open.take() {
            None => return,
            Some(Open::Text { kind, id, text }) => {
                out.push(self.event(
                    kind.events().1,
                    json!({"item_id": id,
                    "output_index": i, "content_index": 0, "text": text}),
                ));
                out.push(self.event(
                    "response.content_part.done",
                    json!({"item_id": id,
                    "output_index": i, "content_index": 0, "part": kind.part(&text)}),
                ));
                kind.item(&id, Some(&text), "completed")
            }
            Some(Open::Call {
                id,
                call_id,
                name,
                arguments,
            }) => {
                out.push(self.event(
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": i, "arguments": arguments}),
                ));
                call_item(&id, &call_id, &name, &arguments, "completed")
            }
        };
        out.push(self.event(
            "response.output_item.done",
            json!({"output_index": i, "item": item}),
        ));
        self.done.push(item);
    }
}

fn response_stream(
    mut started: Started,
    mut response: ResponseObject,
    tools: Option<Tools>,
    format: ToolFormat,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    async_stream::stream! {
        let mut events = Events { seq: 0, open: None, done: Vec::new(), answered: false };
        let whole = serde_json::to_value(&response).unwrap_or_default();
        yield Ok(events.event("response.created", json!({"response": whole})));
        yield Ok(events.event("response.in_progress", json!({"response": whole})));
        let mut answer = AnswerStream::new(tools.as_ref(), format, started.split());
        loop {
            let mut out = Vec::new();
            match started.next().await {
                Some(Event::Token { text, .. }) => {
                    answer.push(text).into_iter().for_each(|p| events.piece(p, &mut out));
                }
                Some(Event::Finished { reason, completion_tokens, cached_tokens, .. }) => {
                    // The status reads the sequence's own reason (a length cut is incomplete).
                    let (rest, _) = answer.finish(reason);
                    rest.into_iter().for_each(|p| events.piece(p, &mut out));
                    if !events.answered {
                        // An empty answer is still one (empty) message.
                        events.open_text(TextItem::Message, &mut out);
                    }
                    events.close(&mut out);
                    response.output = std::mem::take(&mut events.done);
                    let reasoning = answer.reasoning_tokens();
                    finish(&mut response, reason, &started, completion_tokens, cached_tokens, reasoning);
                    let name = if response.status == "incomplete" {
                        "response.incomplete"
                    } else {
                        "response.completed"
                    };
                    let whole = serde_json::to_value(&response).unwrap_or_default();
                    out.push(events.event(name, json!({"response": whole})));
                    for e in out {
                        yield Ok(e);
                    }
                    return;
                }
                Some(Event::Error { failure, message, .. }) => {
                    let error = started.failure(failure, message);
                    yield Ok(events.error(error));
                    return;
                }
                None => {
                    let error = ApiError::Unavailable(Unavailable::SchedulerGone);
                    yield Ok(events.error(error));
                    return;
                }
            }
            for e in out {
                yield Ok(e);
            }
        }
    }
}
