//! OpenAI wire types for chat completions, completions and models, with their utoipa schemas,
//! and their conversion into validation inputs. Fields we do not implement are declared so that
//! they can be refused by name (400) instead of being ignored.

use super::structured::{
    check_tools, format_grammar, ResponseFormat, ToolCallDelta, ToolCallIn, ToolCallOut,
    ToolChoiceIn, ToolIn,
};
use crate::error::ApiError;
use crate::template::ChatMessage;
use crate::validation::{GenerationInput, PromptInput};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// `stop`: one string or several.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StopInput {
    One(String),
    Many(Vec<String>),
}

impl StopInput {
    fn into_vec(self) -> Vec<String> {
        match self {
            StopInput::One(s) => vec![s],
            StopInput::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct StreamOptions {
    /// Send a last chunk with the token usage of the whole request.
    #[serde(default)]
    pub include_usage: bool,
}

/// A message's content: a string, or an array of text parts.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ContentPart {
    /// Only `text` parts are supported.
    pub r#type: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"role": "user", "content": "What is 12 plus 30?"}))]
pub struct ChatMessageIn {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    pub content: Option<MessageContent>,
    #[serde(default)]
    pub name: Option<String>,
    /// Calls an assistant message made.
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCallIn>>,
    /// The call a `tool` message answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
    /// An earlier assistant turn's reasoning, as a reasoning model's answer gave it.
    #[serde(default)]
    pub reasoning_content: Option<String>,
}

/// Rejects a field we do not implement when it is present.
fn refuse(name: &str, value: &Option<Value>) -> Result<(), ApiError> {
    match value {
        None | Some(Value::Null) => Ok(()),
        Some(_) => Err(ApiError::Unsupported { param: name.into() }),
    }
}

/// Declares a request type with the shared sampling fields written out (not `#[serde(flatten)]`,
/// which would lose the field names in serde's error messages) and `deny_unknown_fields`, so an
/// unknown parameter is refused by name.
macro_rules! with_sampling_fields {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* pub $field:ident : $ty:ty,)* }) => {
        $(#[$meta])*
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// 0 to 2; 0 is greedy. Default 1.
            #[schema(example = 0.7)]
            pub temperature: Option<f32>,
            pub top_p: Option<f32>,
            /// Wick extension (as vLLM): keep the k most likely tokens; -1 or 0 is off.
            pub top_k: Option<i64>,
            /// Wick extension (as vLLM): drop tokens less likely than min_p times the best.
            pub min_p: Option<f32>,
            /// Wick extension (as vLLM): multiplicative penalty on seen tokens.
            pub repetition_penalty: Option<f32>,
            pub frequency_penalty: Option<f32>,
            pub presence_penalty: Option<f32>,
            pub seed: Option<u64>,
            pub stop: Option<StopInput>,
            pub max_tokens: Option<u64>,
            pub n: Option<u64>,
            pub logit_bias: Option<BTreeMap<String, f32>>,
            /// Wick extension (as vLLM): keep generating after end-of-sequence tokens.
            pub ignore_eos: Option<bool>,
            /// Wick extension (as vLLM): scheduling priority, lower first (default 0): the
            /// waiting queue admits the lowest value first, and under KV cache pressure the
            /// highest value is preempted first.
            pub priority: Option<i64>,
            $($(#[$fmeta])* pub $field: $ty,)*
        }

        impl $name {
            /// The sampling fields as validation input, with `max_tokens` and `logprobs` as the
            /// endpoint understands them.
            fn generation_input(&self, max_tokens: Option<u64>, logprobs: Option<u64>) -> GenerationInput {
                GenerationInput {
                    temperature: self.temperature,
                    top_p: self.top_p,
                    top_k: self.top_k,
                    min_p: self.min_p,
                    repetition_penalty: self.repetition_penalty,
                    frequency_penalty: self.frequency_penalty,
                    presence_penalty: self.presence_penalty,
                    seed: self.seed,
                    stop: self.stop.clone().map(StopInput::into_vec).unwrap_or_default(),
                    max_tokens,
                    n: self.n,
                    logprobs,
                    logit_bias: self.logit_bias.clone().unwrap_or_default().into_iter().collect(),
                    ignore_eos: self.ignore_eos.unwrap_or(false),
                    grammar: None,
                    priority: self.priority,
                }
            }
        }
    };
}

with_sampling_fields! {
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[schema(example = json!({"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "What is 12 plus 30?"}], "max_tokens": 32, "temperature": 0}))]
pub struct ChatCompletionRequest {
    pub model: Option<String>,
    pub messages: Vec<ChatMessageIn>,
    /// Alias of `max_tokens` (OpenAI's newer name).
    pub max_completion_tokens: Option<u64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub user: Option<String>,
    pub tools: Option<Vec<ToolIn>>,
    pub tool_choice: Option<ToolChoiceIn>,
    /// `false`: at most one call per answer (Wick's JSON call format always makes one).
    pub parallel_tool_calls: Option<bool>,
    pub response_format: Option<ResponseFormat>,
    #[schema(value_type = Option<Object>)]
    pub functions: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub function_call: Option<Value>,
    /// Extra variables for the chat template, e.g. `{"enable_thinking": false}` (as vLLM).
    #[schema(value_type = Option<Object>)]
    pub chat_template_kwargs: Option<Value>,
}
}

impl ChatCompletionRequest {
    /// The conversation and generation parameters (and the tools the answer may call), or the
    /// first unsupported or invalid field.
    pub fn into_inputs(self) -> Result<(PromptInput, GenerationInput), ApiError> {
        refuse("functions", &self.functions)?;
        refuse("function_call", &self.function_call)?;
        let logprobs = match (self.logprobs.unwrap_or(false), self.top_logprobs) {
            (true, top) => Some(top.unwrap_or(0)),
            (false, None) => None,
            (false, Some(_)) => {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    "`top_logprobs` requires `logprobs: true`",
                ))
            }
        };
        let max_tokens = self.max_completion_tokens.or(self.max_tokens);
        let mut input = self.generation_input(max_tokens, logprobs);
        let tools = check_tools(self.tools, self.tool_choice, self.parallel_tool_calls)?;
        let format = self
            .response_format
            .as_ref()
            .and_then(ResponseFormat::grammar);
        input.grammar = format_grammar("response_format", &tools, format)?;
        if self.messages.is_empty() {
            return Err(ApiError::invalid(
                "messages",
                "`messages` must not be empty",
            ));
        }
        let mut messages = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.into_iter().enumerate() {
            messages.push(chat_message(i, m)?);
        }
        let vars = self.chat_template_kwargs;
        if vars.as_ref().is_some_and(|v| !v.is_object()) {
            return Err(ApiError::invalid(
                "chat_template_kwargs",
                "`chat_template_kwargs` must be an object",
            ));
        }
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

/// One checked message of a conversation.
fn chat_message(i: usize, m: ChatMessageIn) -> Result<ChatMessage, ApiError> {
    if !matches!(m.role.as_str(), "system" | "user" | "assistant" | "tool") {
        return Err(ApiError::invalid(
            format!("messages[{i}].role"),
            format!(
                "`messages[{i}].role` must be system, user, assistant or tool, got `{}`",
                m.role
            ),
        ));
    }
    let content = match m.content {
        None => String::new(),
        Some(MessageContent::Text(t)) => t,
        Some(MessageContent::Parts(parts)) => {
            let mut text = String::new();
            for (j, p) in parts.into_iter().enumerate() {
                match (p.r#type.as_str(), p.text) {
                    ("text", Some(t)) => text.push_str(&t),
                    (kind, _) => {
                        return Err(ApiError::invalid(
                            format!("messages[{i}].content[{j}]"),
                            format!(
                                "content parts of type `{kind}` are not supported (only `text`)"
                            ),
                        ))
                    }
                }
            }
            text
        }
    };
    let mut message = ChatMessage::new(m.role, content);
    if let Some(reasoning) = m.reasoning_content {
        if message.role != "assistant" {
            return Err(ApiError::invalid(
                format!("messages[{i}].reasoning_content"),
                "only assistant messages carry `reasoning_content`",
            ));
        }
        message.reasoning_content = Some(reasoning);
    }
    if let Some(calls) = m.tool_calls {
        if message.role != "assistant" {
            return Err(ApiError::invalid(
                format!("messages[{i}].tool_calls"),
                "only assistant messages carry `tool_calls`",
            ));
        }
        // Templates expect the arguments as an object.
        let calls = calls.into_iter().map(|c| {
            let args = serde_json::from_str::<Value>(&c.function.arguments)
                .unwrap_or(Value::String(c.function.arguments));
            serde_json::json!({"id": c.id, "type": c.r#type,
                               "function": {"name": c.function.name, "arguments": args}})
        });
        message.tool_calls = Some(calls.collect());
    }
    if message.role == "tool" {
        let id = m.tool_call_id.ok_or_else(|| {
            ApiError::invalid(
                format!("messages[{i}].tool_call_id"),
                format!("`messages[{i}].tool_call_id` is required for tool messages"),
            )
        })?;
        message.tool_call_id = Some(id);
    }
    Ok(message)
}

/// `prompt` of a completion: text or token ids, one prompt or a list of them.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum CompletionPrompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

with_sampling_fields! {
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[schema(example = json!({"model": "SmolLM2-135M-Instruct", "prompt": "Once upon a time", "max_tokens": 16}))]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: CompletionPrompt,
    /// Number of alternatives to report with each token (0 to report only the chosen one).
    pub logprobs: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub user: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub echo: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub suffix: Option<Value>,
    pub best_of: Option<u64>,
    /// Wick extension (as vLLM): what the completion must match.
    pub response_format: Option<ResponseFormat>,
}
}

impl CompletionRequest {
    /// The prompts (one or a list), the generation parameters, and whether to echo the prompt.
    pub fn into_inputs(self) -> Result<(Vec<PromptInput>, GenerationInput, bool), ApiError> {
        let echo = match &self.echo {
            None | Some(Value::Bool(false)) => false,
            Some(Value::Bool(true)) if self.logprobs.is_some() => {
                return Err(ApiError::invalid(
                    "echo",
                    "`echo` with `logprobs` is not supported: the prompt's log-probabilities are not computed",
                ))
            }
            Some(Value::Bool(true)) => true,
            Some(_) => return Err(ApiError::invalid("echo", "`echo` must be a boolean")),
        };
        refuse("suffix", &self.suffix)?;
        if self.best_of.is_some_and(|b| b != 1) {
            return Err(ApiError::Unsupported {
                param: "best_of".into(),
            });
        }
        let mut input = self.generation_input(self.max_tokens, self.logprobs);
        input.grammar = self
            .response_format
            .as_ref()
            .and_then(ResponseFormat::grammar)
            .map(|g| ("response_format", g));
        let prompts: Vec<PromptInput> = match self.prompt {
            CompletionPrompt::Text(t) => vec![PromptInput::text("prompt", t)],
            CompletionPrompt::Texts(v) => v
                .into_iter()
                .map(|t| PromptInput::text("prompt", t))
                .collect(),
            CompletionPrompt::Tokens(ids) => vec![PromptInput::Tokens(ids)],
            CompletionPrompt::TokenLists(v) => v.into_iter().map(PromptInput::Tokens).collect(),
        };
        if prompts.is_empty() {
            return Err(ApiError::invalid(
                "prompt",
                "`prompt` must not be an empty list",
            ));
        }
        Ok((prompts, input, echo))
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
    /// For a reasoning model's conversation: how many completion tokens were reasoning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CompletionTokensDetails {
    pub reasoning_tokens: usize,
}

impl Usage {
    /// With a reasoning model's count of reasoning tokens, when it is one (`None`: not).
    pub fn with_reasoning(self, reasoning_tokens: Option<usize>) -> Usage {
        Usage {
            completion_tokens_details: reasoning_tokens
                .map(|reasoning_tokens| CompletionTokensDetails { reasoning_tokens }),
            ..self
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PromptTokensDetails {
    /// Prompt tokens whose KV came from the prefix cache instead of being computed.
    pub cached_tokens: usize,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatMessageOut {
    pub role: &'static str,
    /// The answer's text; `null` when it is a tool call.
    pub content: Option<String>,
    /// A reasoning model's reasoning, apart from the answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallOut>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TokenLogprobOut {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct ChatLogprobs {
    pub content: Vec<TokenLogprobOut>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatChoice {
    pub index: usize,
    pub message: ChatMessageOut,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1764201600, "model": "SmolLM2-135M-Instruct", "choices": [{"index": 0, "message": {"role": "assistant", "content": "12 + 30 = 42."}, "logprobs": null, "finish_reason": "stop"}], "usage": {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52}}))]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    /// Wick's version, forward path and model checksum: what must match for the same tokens.
    pub system_fingerprint: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatChunkChoice {
    pub index: usize,
    pub delta: ChatDelta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    /// Wick's version, forward path and model checksum: what must match for the same tokens.
    pub system_fingerprint: String,
    pub choices: Vec<ChatChunkChoice>,
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    pub top_logprobs: Vec<BTreeMap<String, f32>>,
    pub text_offset: Vec<usize>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"id": "cmpl-1", "object": "text_completion", "created": 1764201600, "model": "SmolLM2-135M-Instruct", "choices": [{"index": 0, "text": " there was a", "logprobs": null, "finish_reason": "length"}], "usage": {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}}))]
pub struct Completion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    /// Wick's version, forward path and model checksum: what must match for the same tokens.
    pub system_fingerprint: String,
    pub choices: Vec<CompletionChoice>,
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    /// Longest prompt plus generation this server accepts.
    pub max_model_len: usize,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"object": "list", "data": [{"id": "SmolLM2-135M-Instruct", "object": "model", "created": 1764201600, "owned_by": "wick", "max_model_len": 8192}]}))]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}
