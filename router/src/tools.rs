//! Tool calling for chat completions: the checked tool list and `tool_choice`, the grammar that
//! constrains the model's answer, the default tool prompt for chat templates that know no tools,
//! and the reading of the answer back into a call, whole or while it streams.
//!
//! A call is always written as one JSON object, `{"name": "<tool>", "arguments": {...}}`, in the
//! fixed layout of the backend's grammar compiler ([`crate::backend::Grammars`]): with `tool_choice` `required` or a named function
//! the output is constrained to exactly that (arguments valid against the tool's parameter
//! schema); with `auto` it is either such a call or text that does not start with `{`.

use crate::backend::GrammarSpec;
use crate::template::ChatMessage;
use serde::Serialize;
use serde_json::{json, Value};
use std::io::{self, Write};

/// JSON text in the layout of constrained output: `", "` between items, `": "` after keys, no
/// other whitespace.
pub fn to_layout(v: &Value) -> String {
    struct Spaced;
    impl serde_json::ser::Formatter for Spaced {
        fn begin_array_value<W: ?Sized + Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> io::Result<()> {
            if first {
                Ok(())
            } else {
                w.write_all(b", ")
            }
        }
        fn begin_object_key<W: ?Sized + Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> io::Result<()> {
            self.begin_array_value(w, first)
        }
        fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
            w.write_all(b": ")
        }
    }
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, Spaced);
    v.serialize(&mut ser).expect("a JSON value serializes");
    String::from_utf8(out).expect("JSON text is UTF-8")
}

/// One function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    pub name: String,
    pub description: Option<String>,
    /// JSON schema of the arguments object.
    pub parameters: Value,
}

impl Function {
    /// The tool as chat templates and the default prompt show it (OpenAI's shape).
    pub fn as_json(&self) -> Value {
        let mut f = json!({"name": self.name});
        if let Some(d) = &self.description {
            f["description"] = json!(d);
        }
        f["parameters"] = self.parameters.clone();
        json!({"type": "function", "function": f})
    }
}

/// How the model may use the tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Text or a call, as the model decides.
    Auto,
    /// A call of one of the tools.
    Required,
    /// A call of this tool.
    Named(String),
}

/// The tools of a request that may call them (`tool_choice` other than `none`).
#[derive(Debug, Clone, PartialEq)]
pub struct Tools {
    pub functions: Vec<Function>,
    pub choice: Choice,
}

/// The JSON schema of a call of `f`.
fn call_schema(f: &Function) -> Value {
    json!({
        "type": "object",
        "properties": {"name": {"const": f.name}, "arguments": f.parameters},
        "required": ["name", "arguments"],
        "additionalProperties": false,
    })
}

impl Tools {
    /// The grammar of the answer.
    pub fn grammar(&self) -> GrammarSpec {
        let callable: Vec<&Function> = match &self.choice {
            Choice::Named(name) => self.functions.iter().filter(|f| &f.name == name).collect(),
            Choice::Auto | Choice::Required => self.functions.iter().collect(),
        };
        let mut alternatives: Vec<Value> = callable.into_iter().map(call_schema).collect();
        let call = if alternatives.len() == 1 {
            alternatives.remove(0)
        } else {
            json!({"anyOf": alternatives})
        };
        match self.choice {
            Choice::Auto => {
                let mut call = call;
                call["x-guidance"] = json!({"whitespace_flexible": false, "item_separator": ", ",
                                            "key_separator": ": "});
                GrammarSpec::Lark(format!(
                    "start: TEXT | call\nTEXT: /[^{{](.|\\n)*/\ncall: %json {call}\n"
                ))
            }
            Choice::Required | Choice::Named(_) => GrammarSpec::JsonSchema {
                schema: call,
                strict: true,
            },
        }
    }

    /// Whether output must be a call (not text).
    pub fn forced(&self) -> bool {
        !matches!(self.choice, Choice::Auto)
    }

    /// The instructions given in a system message to models whose chat template has no tools.
    pub fn prompt(&self) -> String {
        let mut p = String::from(
            "You can call functions. To call one, answer with only a JSON object of the form \
             {\"name\": <function name>, \"arguments\": <arguments object>}, nothing else.",
        );
        match &self.choice {
            Choice::Auto => p.push_str(" If no function fits, answer in plain text."),
            Choice::Required => p.push_str(" You must call one of the functions."),
            Choice::Named(name) => p.push_str(&format!(" You must call `{name}`.")),
        }
        p.push_str("\n\nFunctions:");
        for f in &self.functions {
            p.push('\n');
            p.push_str(&f.as_json()["function"].to_string());
        }
        p
    }

    /// A conversation for a template that knows no tools: the tool prompt in the system message,
    /// earlier calls written as the model would write them, tool results as user messages.
    pub fn inline(&self, messages: &[ChatMessage]) -> Vec<ChatMessage> {
        let mut out = Vec::with_capacity(messages.len() + 1);
        let prompt = self.prompt();
        match messages.first() {
            Some(m) if m.role == "system" => out.push(ChatMessage::new(
                "system",
                format!("{}\n\n{prompt}", m.content),
            )),
            _ => out.push(ChatMessage::new("system", prompt)),
        }
        let skip = usize::from(messages.first().is_some_and(|m| m.role == "system"));
        for m in &messages[skip..] {
            out.push(inline_message(m));
        }
        out
    }
}

/// One message with its tool fields written into the text.
pub fn inline_message(m: &ChatMessage) -> ChatMessage {
    match m.role.as_str() {
        "assistant" if m.tool_calls.is_some() => {
            let mut text = m.content.clone();
            for call in m.tool_calls.iter().flatten() {
                let f = &call["function"];
                let args = f["arguments"]
                    .as_str()
                    .and_then(|s| serde_json::from_str::<Value>(s).ok())
                    .unwrap_or_else(|| f["arguments"].clone());
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&to_layout(&json!({"name": f["name"], "arguments": args})));
            }
            ChatMessage::new("assistant", text)
        }
        "tool" => {
            let id = m.tool_call_id.as_deref().unwrap_or("?");
            ChatMessage::new("user", format!("Result of call {id}:\n{}", m.content))
        }
        _ => ChatMessage::new(m.role.clone(), m.content.clone()),
    }
}

/// A call read back from the model's output.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub name: String,
    /// The arguments object as JSON text.
    pub arguments: String,
}

/// The call `text` holds, if it is one complete call of a tool in `tools` (arguments in the
/// layout of [`to_layout`], as they stream).
pub fn parse_call(text: &str, tools: &Tools) -> Option<Call> {
    let v: Value = serde_json::from_str(text.trim()).ok()?;
    let name = v.get("name")?.as_str()?;
    let args = v.get("arguments")?;
    if !args.is_object() || !tools.functions.iter().any(|f| f.name == name) {
        return None;
    }
    Some(Call {
        name: name.to_string(),
        arguments: to_layout(args),
    })
}

/// Text that became final in a streamed answer, split by what it is.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(String),
    /// The call's name is known (sent once, before its arguments).
    CallStart(String),
    /// More of the call's arguments text.
    Arguments(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Mode {
    /// Nothing but whitespace seen yet.
    Undecided,
    Text,
    /// Inside a call; `sent` bytes of its arguments have gone out.
    Call {
        args_start: Option<usize>,
        sent: usize,
    },
}

/// Splits a streamed answer into text, or a call's name and argument fragments. The output's
/// last byte is held back while a call streams: it is the `}` that closes the call object.
#[derive(Debug)]
pub struct CallStream {
    forced: bool,
    buf: String,
    mode: Mode,
}

const NAME_PREFIX: &str = "{\"name\": \"";
const ARGS_PREFIX: &str = "\", \"arguments\": ";

impl CallStream {
    pub fn new(tools: &Tools) -> Self {
        CallStream {
            forced: tools.forced(),
            buf: String::new(),
            mode: Mode::Undecided,
        }
    }

    /// Whether the answer turned out to be a call.
    pub fn is_call(&self) -> bool {
        matches!(self.mode, Mode::Call { .. })
    }

    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.buf.push_str(text);
        if self.mode == Mode::Undecided {
            let lead = self.buf.trim_start();
            if lead.is_empty() {
                return Vec::new();
            }
            self.mode = if self.forced || lead.starts_with('{') {
                let offset = self.buf.len() - lead.len();
                self.buf.drain(..offset);
                Mode::Call {
                    args_start: None,
                    sent: 0,
                }
            } else {
                Mode::Text
            };
        }
        match &mut self.mode {
            Mode::Undecided => Vec::new(),
            Mode::Text => vec![Piece::Text(std::mem::take(&mut self.buf))],
            Mode::Call { args_start, sent } => {
                let mut out = Vec::new();
                if args_start.is_none() {
                    let Some(rest) = self.buf.strip_prefix(NAME_PREFIX) else {
                        return out;
                    };
                    let Some(end) = rest.find(ARGS_PREFIX) else {
                        return out;
                    };
                    out.push(Piece::CallStart(rest[..end].to_string()));
                    *args_start = Some(NAME_PREFIX.len() + end + ARGS_PREFIX.len());
                }
                let start = args_start.unwrap_or(0);
                // Hold back the last byte (and never split a character).
                let mut upto = self.buf.len().saturating_sub(1).max(start + *sent);
                while !self.buf.is_char_boundary(upto) {
                    upto -= 1;
                }
                if upto > start + *sent {
                    out.push(Piece::Arguments(self.buf[start + *sent..upto].to_string()));
                    *sent = upto - start;
                }
                out
            }
        }
    }

    /// The rest at the end of the answer; `complete` when the grammar finished (the held-back
    /// byte then closes the call and is dropped).
    pub fn finish(&mut self, complete: bool) -> Vec<Piece> {
        match &self.mode {
            Mode::Undecided | Mode::Text if !self.buf.is_empty() => {
                vec![Piece::Text(std::mem::take(&mut self.buf))]
            }
            Mode::Call {
                args_start: Some(start),
                sent,
            } => {
                let mut end = self.buf.len();
                if complete && self.buf.ends_with('}') {
                    end -= 1;
                }
                let from = start + sent;
                if end > from {
                    vec![Piece::Arguments(self.buf[from..end].to_string())]
                } else {
                    Vec::new()
                }
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(choice: Choice) -> Tools {
        Tools {
            functions: vec![
                Function {
                    name: "get_weather".into(),
                    description: Some("Weather in a city".into()),
                    parameters: json!({"type": "object", "properties": {"city": {"type": "string"}},
                                       "required": ["city"]}),
                },
                Function {
                    name: "add".into(),
                    description: None,
                    parameters: json!({"type": "object", "properties": {"a": {"type": "number"}}}),
                },
            ],
            choice,
        }
    }

    #[test]
    fn grammars_follow_the_choice() {
        let GrammarSpec::JsonSchema { schema, strict } = tools(Choice::Required).grammar() else {
            panic!("required is a schema");
        };
        assert!(strict);
        assert_eq!(schema["anyOf"].as_array().unwrap().len(), 2);
        let GrammarSpec::JsonSchema { schema, .. } = tools(Choice::Named("add".into())).grammar()
        else {
            panic!("named is a schema");
        };
        assert_eq!(schema["properties"]["name"]["const"], "add");
        let GrammarSpec::Lark(src) = tools(Choice::Auto).grammar() else {
            panic!("auto is a grammar");
        };
        assert!(src.starts_with("start: TEXT | call\n"), "{src}");
    }

    #[test]
    fn calls_parse_only_for_known_tools_with_object_arguments() {
        let t = tools(Choice::Auto);
        let call = parse_call("{\"name\": \"add\", \"arguments\": {\"a\": 1}}", &t).unwrap();
        assert_eq!(call.name, "add");
        assert_eq!(call.arguments, "{\"a\": 1}");
        assert!(parse_call("{\"name\": \"sub\", \"arguments\": {}}", &t).is_none());
        assert!(parse_call("{\"name\": \"add\", \"arguments\": 3}", &t).is_none());
        assert!(parse_call("The answer is 3.", &t).is_none());
    }

    /// Streams `text` in pieces of `step` bytes (on character boundaries).
    fn stream(t: &Tools, text: &str, step: usize, complete: bool) -> (Vec<Piece>, bool) {
        let mut s = CallStream::new(t);
        let mut out = Vec::new();
        let mut i = 0;
        while i < text.len() {
            let mut j = (i + step).min(text.len());
            while !text.is_char_boundary(j) {
                j += 1;
            }
            out.extend(s.push(&text[i..j]));
            i = j;
        }
        out.extend(s.finish(complete));
        (out, s.is_call())
    }

    fn joined(pieces: &[Piece]) -> (String, Vec<String>, String) {
        let (mut text, mut names, mut args) = (String::new(), Vec::new(), String::new());
        for p in pieces {
            match p {
                Piece::Text(t) => text.push_str(t),
                Piece::CallStart(n) => names.push(n.clone()),
                Piece::Arguments(a) => args.push_str(a),
            }
        }
        (text, names, args)
    }

    #[test]
    fn a_streamed_call_gives_its_name_once_then_exactly_its_arguments() {
        let out = "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich {x}\"}}";
        for step in 1..8 {
            let (pieces, is_call) = stream(&tools(Choice::Required), out, step, true);
            assert!(is_call);
            let (text, names, args) = joined(&pieces);
            assert_eq!(text, "");
            assert_eq!(names, ["get_weather"]);
            assert_eq!(args, "{\"city\": \"Zürich {x}\"}", "step {step}");
        }
    }

    #[test]
    fn auto_text_streams_as_text_and_a_cut_call_keeps_its_last_byte() {
        let (pieces, is_call) = stream(&tools(Choice::Auto), "  It is sunny.", 3, true);
        assert!(!is_call);
        assert_eq!(joined(&pieces).0, "  It is sunny.");
        let cut = "{\"name\": \"add\", \"arguments\": {\"a\": 1";
        let (pieces, is_call) = stream(&tools(Choice::Auto), cut, 2, false);
        assert!(is_call);
        assert_eq!(joined(&pieces).2, "{\"a\": 1");
    }

    #[test]
    fn templates_without_tools_get_the_prompt_and_inlined_calls() {
        let t = tools(Choice::Auto);
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls = Some(vec![json!({"id": "c1", "type": "function",
            "function": {"name": "add", "arguments": "{\"a\": 2}"}})]);
        let mut result = ChatMessage::new("tool", "2");
        result.tool_call_id = Some("c1".into());
        let msgs = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Add 2"),
            call,
            result,
        ];
        let out = t.inline(&msgs);
        assert_eq!(out.len(), 4);
        assert!(out[0]
            .content
            .starts_with("Be brief.\n\nYou can call functions."));
        assert!(out[0].content.contains("\"name\":\"get_weather\""));
        assert_eq!(
            out[2].content,
            "{\"name\": \"add\", \"arguments\": {\"a\": 2}}"
        );
        assert_eq!(out[3].role, "user");
        assert_eq!(out[3].content, "Result of call c1:\n2");
    }
}
