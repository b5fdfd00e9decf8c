//! Anthropic's Messages API wire types (`POST /v1/messages`, `/v1/messages/count_tokens`), their
//! checks into the same validation inputs as chat completions, and Anthropic's error shape
//! `{"type": "error", "error": {"type", "message"}}` ([`AnthropicError`], the one mapping from
//! [`ApiError`] for these routes).
//!
//! A conversation maps onto the chat template's messages: `system` first, text blocks joined,
//! `tool_use` blocks as the assistant's `tool_calls` (input as the arguments object),
//! `tool_result` blocks as `tool` messages after the user turn's text. Tools become OpenAI-shaped
//! functions (`input_schema` as `parameters`) and go through the same checks; `tool_choice`
//! `auto`, `any`, `tool` and `none` are `auto`, `required`, named and no tools;
//! `disable_parallel_tool_use` allows one call.
//!
//! Reasoning: `thinking` (`enabled` or `disabled`; `adaptive` leaves it to the template) is the
//! chat template's `enable_thinking`;
//! a reasoning model's reasoning comes back as a `thinking` block before the answer's blocks
//! (its `signature` empty: Wick does not sign), and earlier turns' `thinking` blocks go back to
//! the template as the assistant's `reasoning_content` (`redacted_thinking` is dropped).
//! `budget_tokens` is checked (at least 1, below `max_tokens`), but the reasoning is bounded
//! only by `max_tokens`.

use super::structured::{check_tools, FunctionIn, NamedFunction, NamedToolChoice};
use super::structured::{ToolChoiceIn, ToolIn};
use crate::error::ApiError;
use crate::template::ChatMessage;
use crate::validation::{GenerationInput, PromptInput};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;
use wick_proto::FinishReason;

/// A Messages request (`max_tokens` is required for `/v1/messages`, unused by `count_tokens`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[schema(example = json!({"model": "SmolLM2-135M-Instruct", "max_tokens": 32, "messages": [{"role": "user", "content": "What is 12 plus 30?"}]}))]
pub struct MessagesRequest {
    pub model: Option<String>,
    pub max_tokens: Option<u64>,
    pub messages: Vec<MessageIn>,
    pub system: Option<SystemIn>,
    pub stop_sequences: Option<Vec<String>>,
    #[serde(default)]
    pub stream: bool,
    /// 0 to 2 here (Anthropic's range is 0 to 1); 0 is greedy. Default 1.
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub tools: Option<Vec<AnthropicTool>>,
    pub tool_choice: Option<AnthropicToolChoice>,
    /// Whether a reasoning model thinks first (the template's `enable_thinking`).
    pub thinking: Option<ThinkingIn>,
    /// Accepted and ignored.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Wick extension (as vLLM): scheduling priority, lower first (default 0).
    pub priority: Option<i64>,
}

/// `thinking`: `{"type": "enabled", "budget_tokens": N}`, `{"type": "disabled"}`, or
/// `{"type": "adaptive"}` (the template's default). `display` is accepted and ignored.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ThinkingIn {
    Enabled { budget_tokens: u64 },
    Disabled,
    Adaptive,
}

/// `system`: a string or text blocks.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum SystemIn {
    Text(String),
    Blocks(Vec<TextBlock>),
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct TextBlock {
    /// Always `text`.
    pub r#type: String,
    pub text: String,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct MessageIn {
    /// `user` or `assistant`.
    pub role: String,
    pub content: ContentIn,
}

/// A message's content: a string or blocks.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ContentIn {
    Text(String),
    Blocks(Vec<BlockIn>),
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BlockIn {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[schema(value_type = Object)]
        input: Value,
    },
    ToolResult {
        tool_use_id: String,
        content: Option<ToolResultContent>,
        is_error: Option<bool>,
    },
    Thinking {
        thinking: String,
        signature: Option<String>,
    },
    RedactedThinking {
        data: String,
    },
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ToolResultContent {
    Text(String),
    Blocks(Vec<TextBlock>),
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[schema(example = json!({"name": "get_weather", "description": "Current weather in a city", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}))]
pub struct AnthropicTool {
    pub name: String,
    pub description: Option<String>,
    #[schema(value_type = Object)]
    pub input_schema: Value,
    /// Only client tools (`custom`, or absent) are served.
    pub r#type: Option<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AnthropicToolChoice {
    Auto {
        disable_parallel_tool_use: Option<bool>,
    },
    Any {
        disable_parallel_tool_use: Option<bool>,
    },
    Tool {
        name: String,
        disable_parallel_tool_use: Option<bool>,
    },
    None,
}

fn blocks_text(blocks: &[TextBlock], field: &str) -> Result<String, ApiError> {
    let mut text = String::new();
    for (j, b) in blocks.iter().enumerate() {
        if b.r#type != "text" {
            return Err(ApiError::invalid(
                format!("{field}[{j}].type"),
                format!("only `text` blocks are supported here, got `{}`", b.r#type),
            ));
        }
        text.push_str(&b.text);
    }
    Ok(text)
}

/// One Anthropic message as chat-template messages: the turn itself, preceded (for a user turn)
/// by one `tool` message per `tool_result` block.
fn turn(i: usize, m: MessageIn) -> Result<Vec<ChatMessage>, ApiError> {
    if !matches!(m.role.as_str(), "user" | "assistant") {
        return Err(ApiError::invalid(
            format!("messages[{i}].role"),
            format!(
                "`messages[{i}].role` must be user or assistant, got `{}`",
                m.role
            ),
        ));
    }
    let blocks = match m.content {
        ContentIn::Text(text) => return Ok(vec![ChatMessage::new(m.role, text)]),
        ContentIn::Blocks(blocks) => blocks,
    };
    let (mut text, mut calls, mut results) = (String::new(), Vec::new(), Vec::new());
    let mut reasoning = None::<String>;
    for (j, block) in blocks.into_iter().enumerate() {
        let field = format!("messages[{i}].content[{j}]");
        match block {
            BlockIn::Text { text: t } => text.push_str(&t),
            BlockIn::Thinking { thinking, .. } if m.role == "assistant" => reasoning
                .get_or_insert_with(String::new)
                .push_str(&thinking),
            BlockIn::RedactedThinking { .. } if m.role == "assistant" => {}
            BlockIn::Thinking { .. } | BlockIn::RedactedThinking { .. } => {
                return Err(ApiError::invalid(
                    field,
                    "thinking blocks belong in assistant messages",
                ))
            }
            BlockIn::ToolUse { id, name, input } if m.role == "assistant" => {
                calls.push(json!({"id": id, "type": "function",
                                  "function": {"name": name, "arguments": input}}));
            }
            BlockIn::ToolResult {
                tool_use_id,
                content,
                is_error,
            } if m.role == "user" => {
                let mut content = match content {
                    None => String::new(),
                    Some(ToolResultContent::Text(t)) => t,
                    Some(ToolResultContent::Blocks(b)) => blocks_text(&b, &field)?,
                };
                if is_error == Some(true) {
                    content = format!("Error: {content}");
                }
                let mut result = ChatMessage::new("tool", content);
                result.tool_call_id = Some(tool_use_id);
                results.push(result);
            }
            BlockIn::ToolUse { .. } => {
                return Err(ApiError::invalid(
                    field,
                    "`tool_use` blocks belong in assistant messages",
                ))
            }
            BlockIn::ToolResult { .. } => {
                return Err(ApiError::invalid(
                    field,
                    "`tool_result` blocks belong in user messages",
                ))
            }
        }
    }
    let mut out = results;
    if m.role == "assistant" || !text.is_empty() || out.is_empty() {
        let mut message = ChatMessage::new(m.role, text);
        if !calls.is_empty() {
            message.tool_calls = Some(calls);
        }
        message.reasoning_content = reasoning;
        out.push(message);
    }
    Ok(out)
}

impl MessagesRequest {
    /// The conversation and generation parameters, or the first invalid field.
    pub fn into_inputs(self) -> Result<(PromptInput, GenerationInput), ApiError> {
        let mut messages = Vec::with_capacity(self.messages.len() + 1);
        match self.system {
            Some(SystemIn::Text(t)) => messages.push(ChatMessage::new("system", t)),
            Some(SystemIn::Blocks(b)) => {
                messages.push(ChatMessage::new("system", blocks_text(&b, "system")?))
            }
            None => {}
        }
        if self.messages.is_empty() {
            return Err(ApiError::invalid(
                "messages",
                "`messages` must not be empty",
            ));
        }
        for (i, m) in self.messages.into_iter().enumerate() {
            messages.extend(turn(i, m)?);
        }
        let tools = self.tools.map(|tools| {
            tools
                .into_iter()
                .map(|t| ToolIn {
                    r#type: match t.r#type.as_deref() {
                        None | Some("custom") => "function".into(),
                        Some(other) => other.into(),
                    },
                    function: FunctionIn {
                        name: t.name,
                        description: t.description,
                        parameters: Some(t.input_schema),
                        strict: None,
                    },
                })
                .collect()
        });
        let (choice, parallel) = match self.tool_choice {
            None => (None, None),
            Some(AnthropicToolChoice::None) => (Some(ToolChoiceIn::Mode("none".into())), None),
            Some(AnthropicToolChoice::Auto {
                disable_parallel_tool_use: d,
            }) => (Some(ToolChoiceIn::Mode("auto".into())), d),
            Some(AnthropicToolChoice::Any {
                disable_parallel_tool_use: d,
            }) => (Some(ToolChoiceIn::Mode("required".into())), d),
            Some(AnthropicToolChoice::Tool {
                name,
                disable_parallel_tool_use: d,
            }) => {
                let named = NamedToolChoice {
                    r#type: "function".into(),
                    function: NamedFunction { name },
                };
                (Some(ToolChoiceIn::Named(named)), d)
            }
        };
        let tools = check_tools(tools, choice, parallel.map(|d| !d))?;
        let vars = match self.thinking {
            None | Some(ThinkingIn::Adaptive) => None,
            Some(ThinkingIn::Disabled) => Some(json!({"enable_thinking": false})),
            Some(ThinkingIn::Enabled { budget_tokens }) => {
                let max = self.max_tokens.unwrap_or(u64::MAX);
                if budget_tokens == 0 || budget_tokens >= max {
                    return Err(ApiError::invalid(
                        "thinking.budget_tokens",
                        format!(
                            "`thinking.budget_tokens` must be at least 1 and below \
                             `max_tokens` ({max}), got {budget_tokens}"
                        ),
                    ));
                }
                Some(json!({"enable_thinking": true}))
            }
        };
        let input = GenerationInput {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            stop: self.stop_sequences.unwrap_or_default(),
            max_tokens: self.max_tokens,
            priority: self.priority,
            ..GenerationInput::default()
        };
        Ok((
            PromptInput::Chat {
                messages,
                tools,
                vars,
            },
            input,
        ))
    }
}

/// A content block of an answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BlockOut {
    /// A reasoning model's reasoning, before the answer.
    Thinking {
        thinking: String,
        signature: String,
    },
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[schema(value_type = Object)]
        input: Value,
    },
}

#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct AnthropicUsage {
    pub input_tokens: usize,
    pub output_tokens: usize,
    /// Prompt tokens found in the prefix cache.
    pub cache_read_input_tokens: usize,
    pub cache_creation_input_tokens: usize,
}

/// The answer to a Messages request.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"id": "msg-6b0f4c85000014", "type": "message", "role": "assistant", "model": "SmolLM2-135M-Instruct", "content": [{"type": "text", "text": "12 + 30 = 42."}], "stop_reason": "end_turn", "stop_sequence": null, "usage": {"input_tokens": 40, "output_tokens": 9, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}}))]
pub struct MessageOut {
    pub id: String,
    /// Always `message`.
    pub r#type: &'static str,
    /// Always `assistant`.
    pub role: &'static str,
    pub model: String,
    pub content: Vec<BlockOut>,
    /// `end_turn`, `max_tokens`, `stop_sequence` or `tool_use`; null while streaming.
    pub stop_reason: Option<&'static str>,
    /// The stop sequence that ended the answer, when one did.
    pub stop_sequence: Option<String>,
    pub usage: AnthropicUsage,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"input_tokens": 40}))]
pub struct TokenCount {
    pub input_tokens: usize,
}

/// Anthropic's `stop_reason` for how a sequence ended.
pub fn stop_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop | FinishReason::Cancelled | FinishReason::Error => "end_turn",
        FinishReason::Length => "max_tokens",
        FinishReason::StopSequence => "stop_sequence",
        FinishReason::ToolCalls => "tool_use",
    }
}

/// Anthropic's error body.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"type": "error", "error": {"type": "invalid_request_error", "message": "`max_tokens` is required"}}))]
pub struct AnthropicErrorBody {
    /// Always `error`.
    pub r#type: &'static str,
    pub error: AnthropicErrorDetail,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AnthropicErrorDetail {
    pub r#type: &'static str,
    pub message: String,
}

/// An [`ApiError`] answered in Anthropic's shape (same status, same failure metric).
#[derive(Debug)]
pub struct AnthropicError(pub ApiError);

impl From<ApiError> for AnthropicError {
    fn from(e: ApiError) -> Self {
        AnthropicError(e)
    }
}

impl AnthropicError {
    pub fn body(&self) -> AnthropicErrorBody {
        use axum::http::StatusCode;
        let kind = match self.0.status() {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::PAYLOAD_TOO_LARGE => "request_too_large",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            StatusCode::SERVICE_UNAVAILABLE => "overloaded_error",
            s if s.is_server_error() => "api_error",
            _ => "invalid_request_error",
        };
        AnthropicErrorBody {
            r#type: "error",
            error: AnthropicErrorDetail {
                r#type: kind,
                message: self.0.to_string(),
            },
        }
    }
}

impl IntoResponse for AnthropicError {
    fn into_response(self) -> Response {
        // The OpenAI-shaped response carries the status, the Retry-After header and the metric;
        // only its body changes.
        let body = self.body();
        let (parts, _) = self.0.into_response().into_parts();
        Response::from_parts(parts, axum::Json(body).into_response().into_body())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Value) -> Result<(PromptInput, GenerationInput), ApiError> {
        serde_json::from_value::<MessagesRequest>(body)
            .unwrap()
            .into_inputs()
    }

    fn param(e: ApiError) -> Option<String> {
        e.body().error.param
    }

    #[test]
    fn thinking_is_the_templates_enable_thinking_and_its_budget_is_checked() {
        let ask = |thinking: Value| {
            request(json!({"max_tokens": 64, "thinking": thinking,
                           "messages": [{"role": "user", "content": "Hi"}]}))
        };
        let vars = |r: Result<(PromptInput, GenerationInput), ApiError>| match r.unwrap().0 {
            PromptInput::Chat { vars, .. } => vars,
            _ => unreachable!("a conversation"),
        };
        let on = json!({"type": "enabled", "budget_tokens": 16});
        assert_eq!(vars(ask(on)), Some(json!({"enable_thinking": true})));
        let off = json!({"type": "disabled"});
        assert_eq!(vars(ask(off)), Some(json!({"enable_thinking": false})));
        assert_eq!(vars(ask(json!({"type": "adaptive"}))), None);
        for budget in [0, 64, 1000] {
            let e = ask(json!({"type": "enabled", "budget_tokens": budget})).unwrap_err();
            assert_eq!(param(e).as_deref(), Some("thinking.budget_tokens"));
        }
    }

    #[test]
    fn an_assistant_turns_thinking_goes_back_as_its_reasoning() {
        let (prompt, _) = request(json!({"max_tokens": 8, "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "a greeting", "signature": ""},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "text", "text": "Hello"}]},
            {"role": "user", "content": "Bye"}]}))
        .unwrap();
        let PromptInput::Chat { messages, .. } = prompt else {
            unreachable!("a conversation")
        };
        assert_eq!(messages[1].reasoning_content.as_deref(), Some("a greeting"));
        assert_eq!(messages[1].content, "Hello");
        let e = request(
            json!({"max_tokens": 8, "messages": [{"role": "user", "content": [
            {"type": "thinking", "thinking": "not mine", "signature": ""}]}]}),
        )
        .unwrap_err();
        assert_eq!(param(e).as_deref(), Some("messages[0].content[0]"));
    }
}
