//! OpenAI's Responses API wire types (`POST /v1/responses`, stateless) and their checks into the
//! same validation inputs as chat completions.
//!
//! `input` is a string or items: messages (`user`, `assistant`, `system`, `developer`; text
//! content or `input_text` / `output_text` parts), `function_call` items (the assistant's
//! earlier calls, merged into one assistant turn with `tool_calls`) and `function_call_output`
//! items (`tool` messages), `reasoning` items (an earlier turn's reasoning, given to the next
//! assistant turn as its `reasoning_content`). `instructions` is the system message.
//! `reasoning.effort` `none` turns a reasoning model's thinking off (the template's
//! `enable_thinking`); any other effort turns it on. Tools are function tools;
//! `text.format` is `text`, `json_object` or `json_schema`. Nothing is stored: `store: true` and
//! `previous_response_id` are refused.

use super::structured::NamedToolChoice;
use super::structured::{check_tools, format_grammar, FunctionIn, NamedFunction};
use super::structured::{ToolChoiceIn, ToolIn};
use crate::backend::GrammarSpec;
use crate::error::ApiError;
use crate::template::ChatMessage;
use crate::validation::{GenerationInput, PromptInput};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[schema(example = json!({"model": "SmolLM2-135M-Instruct", "input": "What is 12 plus 30?", "max_output_tokens": 32, "temperature": 0}))]
pub struct ResponsesRequest {
    pub model: Option<String>,
    pub input: ResponsesInput,
    pub instructions: Option<String>,
    pub tools: Option<Vec<ResponsesTool>>,
    pub tool_choice: Option<ResponsesToolChoice>,
    pub parallel_tool_calls: Option<bool>,
    pub text: Option<TextConfig>,
    /// For a reasoning model: whether it thinks first.
    pub reasoning: Option<ReasoningConfig>,
    pub max_output_tokens: Option<u64>,
    /// 0 to 2; 0 is greedy. Default 1.
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    #[serde(default)]
    pub stream: bool,
    /// Must be false or absent: nothing is stored.
    pub store: Option<bool>,
    /// Refused: the server keeps no responses.
    pub previous_response_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    pub user: Option<String>,
    /// Wick extension (as vLLM): scheduling priority, lower first (default 0).
    pub priority: Option<i64>,
}

/// `reasoning`: `effort` (`none`, `minimal`, `low`, `medium`, `high`); `summary` is accepted
/// and ignored (the reasoning comes back whole, as `reasoning_text`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ReasoningConfig {
    pub effort: Option<String>,
    pub summary: Option<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ResponsesInput {
    Text(String),
    Items(Vec<InputItem>),
}

/// An input item; a message may leave out its `type`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum InputItem {
    Typed(TypedItem),
    Message(MessageItem),
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TypedItem {
    Message(MessageItem),
    FunctionCall {
        call_id: String,
        name: String,
        /// The arguments object as JSON text.
        arguments: String,
    },
    FunctionCallOutput {
        call_id: String,
        output: String,
    },
    /// An earlier answer's reasoning.
    Reasoning {
        #[serde(default)]
        content: Vec<ReasoningPart>,
    },
}

/// A reasoning item's text (`reasoning_text`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ReasoningPart {
    pub text: String,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct MessageItem {
    pub role: String,
    pub content: ItemContent,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ItemContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    InputText { text: String },
    OutputText { text: String },
}

/// A function tool (the only kind served).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}))]
pub struct ResponsesTool {
    pub r#type: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// `none`, `auto`, `required`, or `{"type": "function", "name": ...}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ResponsesToolChoice {
    Mode(String),
    Named { r#type: String, name: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TextConfig {
    pub format: Option<TextFormat>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TextFormat {
    Text,
    JsonObject,
    JsonSchema {
        name: String,
        #[schema(value_type = Object)]
        schema: Value,
        #[serde(skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        strict: Option<bool>,
    },
}

impl TextFormat {
    fn grammar(&self) -> Option<GrammarSpec> {
        match self {
            TextFormat::Text => None,
            TextFormat::JsonObject => Some(GrammarSpec::JsonSchema {
                schema: json!({"type": "object"}),
                strict: false,
            }),
            TextFormat::JsonSchema { schema, strict, .. } => Some(GrammarSpec::JsonSchema {
                schema: schema.clone(),
                strict: strict.unwrap_or(false),
            }),
        }
    }
}

fn content_text(content: ItemContent) -> String {
    match content {
        ItemContent::Text(t) => t,
        ItemContent::Parts(parts) => parts
            .into_iter()
            .map(|p| match p {
                ContentPart::InputText { text } | ContentPart::OutputText { text } => text,
            })
            .collect(),
    }
}

/// The conversation of `input` items (after the system message, if any).
fn conversation(items: Vec<InputItem>, out: &mut Vec<ChatMessage>) -> Result<(), ApiError> {
    // A reasoning item's text, for the assistant turn that follows it.
    let mut reasoning = None::<String>;
    for (i, item) in items.into_iter().enumerate() {
        let item = match item {
            InputItem::Typed(t) => t,
            InputItem::Message(m) => TypedItem::Message(m),
        };
        match item {
            TypedItem::Message(m) => {
                let role = match m.role.as_str() {
                    "developer" | "system" => "system",
                    "user" => "user",
                    "assistant" => "assistant",
                    other => {
                        return Err(ApiError::invalid(
                            format!("input[{i}].role"),
                            format!("`input[{i}].role` must be user, assistant, system or developer, got `{other}`"),
                        ))
                    }
                };
                let mut m = ChatMessage::new(role, content_text(m.content));
                if role == "assistant" {
                    m.reasoning_content = reasoning.take();
                }
                out.push(m);
            }
            TypedItem::Reasoning { content } => {
                let text = content.into_iter().map(|p| p.text);
                reasoning.get_or_insert_with(String::new).extend(text);
            }
            TypedItem::FunctionCall {
                call_id,
                name,
                arguments,
            } => {
                let args = serde_json::from_str::<Value>(&arguments).map_err(|e| {
                    ApiError::invalid(
                        format!("input[{i}].arguments"),
                        format!("`input[{i}].arguments` is not JSON: {e}"),
                    )
                })?;
                let call = json!({"id": call_id, "type": "function",
                                  "function": {"name": name, "arguments": args}});
                // Consecutive calls are one assistant turn.
                match out.last_mut() {
                    Some(m) if m.role == "assistant" && m.tool_calls.is_some() => {
                        m.tool_calls.get_or_insert_with(Vec::new).push(call);
                    }
                    _ => {
                        let mut m = ChatMessage::new("assistant", "");
                        m.tool_calls = Some(vec![call]);
                        m.reasoning_content = reasoning.take();
                        out.push(m);
                    }
                }
            }
            TypedItem::FunctionCallOutput { call_id, output } => {
                let mut m = ChatMessage::new("tool", output);
                m.tool_call_id = Some(call_id);
                out.push(m);
            }
        }
    }
    Ok(())
}

impl ResponsesRequest {
    /// The conversation and generation parameters, or the first invalid field.
    pub fn into_inputs(self) -> Result<(PromptInput, GenerationInput), ApiError> {
        if self.store == Some(true) {
            return Err(ApiError::invalid(
                "store",
                "this server stores no responses: send `store: false`",
            ));
        }
        if self.previous_response_id.is_some() {
            return Err(ApiError::invalid(
                "previous_response_id",
                "this server stores no responses: send the whole conversation in `input`",
            ));
        }
        let mut messages = Vec::new();
        if let Some(system) = self.instructions {
            messages.push(ChatMessage::new("system", system));
        }
        match self.input {
            ResponsesInput::Text(t) => messages.push(ChatMessage::new("user", t)),
            ResponsesInput::Items(items) => conversation(items, &mut messages)?,
        }
        if messages.iter().all(|m| m.role == "system") {
            return Err(ApiError::invalid("input", "`input` holds no message"));
        }
        let tools = self.tools.map(|tools| {
            tools
                .into_iter()
                .map(|t| ToolIn {
                    r#type: t.r#type,
                    function: FunctionIn {
                        name: t.name,
                        description: t.description,
                        parameters: t.parameters,
                        strict: t.strict,
                    },
                })
                .collect()
        });
        let choice = self.tool_choice.map(|c| match c {
            ResponsesToolChoice::Mode(m) => ToolChoiceIn::Mode(m),
            ResponsesToolChoice::Named { r#type, name } => ToolChoiceIn::Named(NamedToolChoice {
                r#type,
                function: NamedFunction { name },
            }),
        });
        let tools = check_tools(tools, choice, self.parallel_tool_calls)?;
        let format = self.text.and_then(|t| t.format).and_then(|f| f.grammar());
        let grammar = format_grammar("text.format", &tools, format)?;
        let input = GenerationInput {
            temperature: self.temperature,
            top_p: self.top_p,
            max_tokens: self.max_output_tokens,
            grammar,
            priority: self.priority,
            ..GenerationInput::default()
        };
        let vars = match self.reasoning.and_then(|r| r.effort) {
            None => None,
            Some(e) => match e.as_str() {
                "none" => Some(json!({"enable_thinking": false})),
                "minimal" | "low" | "medium" | "high" => Some(json!({"enable_thinking": true})),
                _ => {
                    return Err(ApiError::invalid(
                        "reasoning.effort",
                        format!(
                        "`reasoning.effort` must be none, minimal, low, medium or high, got `{e}`"
                    ),
                    ))
                }
            },
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Value) -> Result<(PromptInput, GenerationInput), ApiError> {
        serde_json::from_value::<ResponsesRequest>(body)
            .unwrap()
            .into_inputs()
    }

    #[test]
    fn a_reasoning_item_is_the_next_assistant_turns_reasoning() {
        let (prompt, _) = request(json!({"input": [
            {"role": "user", "content": "Weather in Paris?"},
            {"type": "reasoning", "id": "rs_1", "summary": [],
             "content": [{"type": "reasoning_text", "text": "call the tool"}]},
            {"type": "function_call", "call_id": "c1", "name": "get_weather",
             "arguments": "{\"city\": \"Paris\"}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"}]}))
        .unwrap();
        let PromptInput::Chat { messages, .. } = prompt else {
            unreachable!("a conversation")
        };
        let roles: Vec<_> = messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["user", "assistant", "tool"]);
        assert_eq!(
            messages[1].reasoning_content.as_deref(),
            Some("call the tool")
        );
    }

    #[test]
    fn reasoning_effort_turns_thinking_on_or_off() {
        let vars = |effort: &str| {
            let body = json!({"input": "Hi", "reasoning": {"effort": effort}});
            request(body).map(|(p, _)| match p {
                PromptInput::Chat { vars, .. } => vars,
                _ => unreachable!("a conversation"),
            })
        };
        assert_eq!(
            vars("none").unwrap(),
            Some(json!({"enable_thinking": false}))
        );
        assert_eq!(
            vars("high").unwrap(),
            Some(json!({"enable_thinking": true}))
        );
        let e = vars("extreme").unwrap_err();
        assert_eq!(e.body().error.param.as_deref(), Some("reasoning.effort"));
    }
}
