//! Chat templates: the model's Jinja template rendered with minijinja, with the Python string
//! methods real templates call (`strip`, `startswith`, `split`, ... through minijinja-contrib's
//! pycompat), `raise_exception`, and the `bos_token` / `eos_token` variables.
//!
//! The template is compiled once at start-up; rendering is cheap and runs on the caller's thread.

use minijinja::{context, Environment, Error as JinjaError, ErrorKind};
use serde::Serialize;

/// One message of a conversation, as the template sees it (OpenAI's fields; tool calls with
/// their `arguments` as an object, as Hugging Face templates expect).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// An earlier assistant turn's reasoning, for templates that show it (most drop it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            tool_calls: None,
            tool_call_id: None,
            reasoning_content: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("the model has no chat template; pass one with --chat-template")]
    Missing,
    #[error("chat template does not compile: {0}")]
    Compile(String),
    #[error("chat template failed: {0}")]
    Render(String),
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Whether the template reads a `tools` variable (else tools go in a system message).
    knows_tools: bool,
    bos_token: String,
    eos_token: String,
}

const NAME: &str = "chat";

fn raise_exception(message: String) -> Result<String, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, message))
}

impl ChatTemplate {
    pub fn new(
        source: Option<&str>,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self, TemplateError> {
        let source = source.ok_or(TemplateError::Missing)?;
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        // Templates written for Jinja2 rely on its whitespace handling.
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| TemplateError::Compile(e.to_string()))?;
        env.set_syntax(syntax);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| TemplateError::Compile(e.to_string()))?;
        Ok(ChatTemplate {
            knows_tools: source.contains("tools"),
            env,
            bos_token: bos_token.unwrap_or_default(),
            eos_token: eos_token.unwrap_or_default(),
        })
    }

    /// Whether the template renders tools itself.
    pub fn knows_tools(&self) -> bool {
        self.knows_tools
    }

    /// Renders a conversation; with `add_generation_prompt` the text ends where the assistant's
    /// answer begins.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        self.render_with_tools(messages, None, add_generation_prompt)
    }

    /// [`ChatTemplate::render`] with the request's tools (OpenAI's shape) in the `tools`
    /// variable.
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        self.render_with(messages, tools, None, add_generation_prompt)
    }

    /// [`ChatTemplate::render_with_tools`] with extra variables (`chat_template_kwargs`, a JSON
    /// object; the template's own variables win over them).
    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        tools: Option<&[serde_json::Value]>,
        vars: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| TemplateError::Compile(e.to_string()))?;
        let extra = minijinja::Value::from(minijinja::value::Serde(
            vars.cloned().unwrap_or(serde_json::Value::Null),
        ));
        tmpl.render(context! {
            messages => minijinja::Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            tools => tools.map(|t| minijinja::Value::from(minijinja::value::Serde(t))),
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
            ..extra
        })
        .map_err(|e| TemplateError::Render(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_generation_prompt() {
        let t = ChatTemplate::new(Some(CHATML), None, None).unwrap();
        let out = t.render(&[ChatMessage::new("user", "Hi")], true).unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_string_methods_and_raise_exception_work() {
        let src = "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}{{ bos_token }}{{ messages[0].content.strip().upper() }}";
        let t = ChatTemplate::new(Some(src), Some("<s>".into()), None).unwrap();
        assert_eq!(
            t.render(&[ChatMessage::new("user", "  hey ")], false)
                .unwrap(),
            "<s>HEY"
        );
        let err = t
            .render(&[ChatMessage::new("system", "x")], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("first must be user"), "{err}");
    }

    #[test]
    fn templates_that_read_tools_get_them() {
        let src =
            "{% if tools %}{% for t in tools %}[{{ t.function.name }}]{% endfor %}{% endif %}\
                   {% for m in messages %}{{ m.role }}:{{ m.content }}\
                   {% for c in m.tool_calls or [] %}{{ c.function.name }}{% endfor %}{% endfor %}";
        let t = ChatTemplate::new(Some(src), None, None).unwrap();
        assert!(t.knows_tools());
        assert!(!ChatTemplate::new(Some(CHATML), None, None)
            .unwrap()
            .knows_tools());
        let tools = [serde_json::json!({"type": "function", "function": {"name": "add"}})];
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls = Some(vec![serde_json::json!({"function": {"name": "add"}})]);
        let out = t
            .render_with_tools(&[ChatMessage::new("user", "hi"), call], Some(&tools), false)
            .unwrap();
        assert_eq!(out, "[add]user:hiassistant:add");
    }

    #[test]
    fn missing_and_broken_templates_are_errors() {
        assert!(matches!(
            ChatTemplate::new(None, None, None),
            Err(TemplateError::Missing)
        ));
        assert!(matches!(
            ChatTemplate::new(Some("{% for %}"), None, None),
            Err(TemplateError::Compile(_))
        ));
    }
}
