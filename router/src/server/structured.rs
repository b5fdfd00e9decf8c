//! OpenAI wire types of structured output and tool calling (`tools`, `tool_choice`,
//! `response_format`, tool calls in messages and answers), and their checks into
//! [`crate::tools::Tools`] and grammars.

use crate::backend::GrammarSpec;
use crate::error::ApiError;
use crate::tools::{self, Choice, Tools};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ToolCallIn {
    pub id: String,
    /// Always `function`.
    pub r#type: String,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments object as JSON text.
    pub arguments: String,
}

/// A tool the model may call.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}))]
pub struct ToolIn {
    /// Always `function`.
    pub r#type: String,
    pub function: FunctionIn,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionIn {
    /// 1 to 64 letters, digits, `_` or `-`.
    pub name: String,
    pub description: Option<String>,
    /// JSON schema of the arguments object; no arguments when absent.
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Value>,
    /// Arguments always follow `parameters` exactly (objects admit no unlisted properties).
    pub strict: Option<bool>,
}

/// `tool_choice`: `none`, `auto`, `required`, or a named function.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ToolChoiceIn {
    Mode(String),
    Named(NamedToolChoice),
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct NamedToolChoice {
    /// Always `function`.
    pub r#type: String,
    pub function: NamedFunction,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct NamedFunction {
    pub name: String,
}

/// `response_format`: what the answer must be. `regex` and `lark` are Wick extensions.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    /// Free text (the default).
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON valid against a schema.
    JsonSchema { json_schema: JsonSchemaFormat },
    /// Text matching a regular expression (Rust `regex` syntax).
    Regex { regex: String },
    /// Text in a grammar written in llguidance's Lark dialect.
    Lark { lark: String },
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonSchemaFormat {
    pub name: String,
    pub description: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub schema: Option<Value>,
    /// Objects admit no properties beyond those listed unless they say otherwise, and
    /// unsupported schema keywords are errors (otherwise they are ignored).
    pub strict: Option<bool>,
}

impl ResponseFormat {
    /// The grammar this format asks for; `None` for text.
    pub fn grammar(&self) -> Option<GrammarSpec> {
        match self {
            ResponseFormat::Text => None,
            ResponseFormat::JsonObject => Some(GrammarSpec::JsonSchema {
                schema: serde_json::json!({"type": "object"}),
                strict: false,
            }),
            ResponseFormat::JsonSchema { json_schema } => Some(GrammarSpec::JsonSchema {
                schema: json_schema
                    .schema
                    .clone()
                    .unwrap_or_else(|| serde_json::json!({"type": "object"})),
                strict: json_schema.strict.unwrap_or(false),
            }),
            ResponseFormat::Regex { regex } => Some(GrammarSpec::Regex(regex.clone())),
            ResponseFormat::Lark { lark } => Some(GrammarSpec::Lark(lark.clone())),
        }
    }
}

/// OpenAI's rule for function names.
fn valid_function_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The grammar of a request's output format (`param` names the field), refused beside tools: a
/// request with tools gets the calls' grammar instead, which validation writes in the model's
/// call format.
pub(crate) fn format_grammar(
    param: &'static str,
    tools: &Option<Tools>,
    format: Option<GrammarSpec>,
) -> Result<Option<(&'static str, GrammarSpec)>, ApiError> {
    match (tools, format) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            param,
            format!("`{param}` cannot be combined with `tools` unless `tool_choice` is `none`"),
        )),
        (None, Some(g)) => Ok(Some((param, g))),
        (_, None) => Ok(None),
    }
}

/// The checked tools and `tool_choice`; `None` when no tool may be called.
pub(crate) fn check_tools(
    tools: Option<Vec<ToolIn>>,
    choice: Option<ToolChoiceIn>,
    parallel: Option<bool>,
) -> Result<Option<Tools>, ApiError> {
    let tools = tools.unwrap_or_default();
    let mut functions: Vec<tools::Function> = Vec::with_capacity(tools.len());
    for (i, t) in tools.into_iter().enumerate() {
        if t.r#type != "function" {
            return Err(ApiError::invalid(
                format!("tools[{i}].type"),
                format!("`tools[{i}].type` must be `function`, got `{}`", t.r#type),
            ));
        }
        let f = t.function;
        if !valid_function_name(&f.name) {
            return Err(ApiError::invalid(
                format!("tools[{i}].function.name"),
                format!("`tools[{i}].function.name` must be 1 to 64 letters, digits, `_` or `-`, got `{}`", f.name),
            ));
        }
        if functions.iter().any(|g| g.name == f.name) {
            return Err(ApiError::invalid(
                format!("tools[{i}].function.name"),
                format!("two tools are named `{}`", f.name),
            ));
        }
        let parameters = match f.parameters {
            None => serde_json::json!({"type": "object", "properties": {}}),
            Some(p @ Value::Object(_)) => p,
            Some(_) => {
                return Err(ApiError::invalid(
                    format!("tools[{i}].function.parameters"),
                    format!("`tools[{i}].function.parameters` must be a JSON schema object"),
                ))
            }
        };
        functions.push(tools::Function {
            name: f.name,
            description: f.description,
            parameters,
        });
    }
    let choice = match choice {
        None if functions.is_empty() => return Ok(None),
        None => Choice::Auto,
        Some(ToolChoiceIn::Mode(m)) => match m.as_str() {
            "none" => return Ok(None),
            "auto" => Choice::Auto,
            "required" => Choice::Required,
            _ => {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!("`tool_choice` must be `none`, `auto`, `required` or a named function, got `{m}`"),
                ))
            }
        },
        Some(ToolChoiceIn::Named(n)) => {
            if !functions.iter().any(|f| f.name == n.function.name) {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!("`tool_choice` names `{}`, which is not in `tools`", n.function.name),
                ));
            }
            Choice::Named(n.function.name)
        }
    };
    if functions.is_empty() {
        return Err(ApiError::invalid(
            "tool_choice",
            "`tool_choice` other than `none` requires `tools`",
        ));
    }
    Ok(Some(Tools {
        functions,
        choice,
        parallel: parallel.unwrap_or(true),
    }))
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ToolCallOut {
    pub id: String,
    pub r#type: &'static str,
    pub function: FunctionCall,
}

/// A piece of a streamed tool call: the first carries its id and name, the rest arguments text.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ToolCallDelta {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r#type: Option<&'static str>,
    pub function: FunctionDelta,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FunctionDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}
