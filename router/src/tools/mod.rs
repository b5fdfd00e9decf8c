//! Tool calling for chat completions: the checked tool list, `tool_choice` and
//! `parallel_tool_calls`, the model's own call format ([`ToolFormat`]), the grammar that
//! constrains the answer to it, the default tool prompt for chat templates that know no tools,
//! and the reading of the answer back into calls, whole ([`parse_calls`]) or while it streams
//! ([`stream::CallStream`]).
//!
//! A call's body is one JSON object, `{"name": "<tool>", "arguments": {...}}`, in the fixed
//! layout of the backend's grammar compiler ([`crate::backend::Grammars`]: `", "` and `": "`),
//! with its arguments valid against the tool's parameter schema. [`ToolFormat`] says what wraps
//! it and what the arguments' key is ([`format`]): nothing and one call per answer (Wick's own,
//! for templates that know no tools; Llama 3's, with `parameters`), Qwen 2.5 / Hermes
//! `<tool_call>` tags, one or more calls in a row, or Mistral's `[TOOL_CALLS]` array. With
//! `tool_choice` `required` or a named function the output is calls only; with `auto` it is
//! calls or text that does not start the way a call does (`{`, `<` or `[`).
//! `parallel_tool_calls: false` allows one call.

pub mod format;
pub mod stream;

use format::ObjectEnd;
pub use format::ToolFormat;

use crate::backend::{close_objects, GrammarSpec};
use crate::template::ChatMessage;
use serde::Serialize;
use serde_json::{json, Value};
use std::io::{self, Write};
use wick_proto::FinishReason;

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
    /// More than one call per answer (`parallel_tool_calls`, on unless false), where the format
    /// allows it.
    pub parallel: bool,
}

/// The JSON schema of a call of `f`, its arguments under `key`.
fn call_schema(f: &Function, key: &str) -> Value {
    json!({
        "type": "object",
        "properties": {"name": {"const": f.name}, key: f.parameters},
        "required": ["name", key],
        "additionalProperties": false,
    })
}

impl Tools {
    /// The grammar of the answer in `format`.
    pub fn grammar(&self, format: ToolFormat) -> GrammarSpec {
        let callable: Vec<&Function> = match &self.choice {
            Choice::Named(name) => self.functions.iter().filter(|f| &f.name == name).collect(),
            Choice::Auto | Choice::Required => self.functions.iter().collect(),
        };
        let w = format.wrapping();
        let schema = |f: &Function| call_schema(f, w.arguments);
        let mut alternatives: Vec<Value> = callable.into_iter().map(schema).collect();
        let mut call = if alternatives.len() == 1 {
            alternatives.remove(0)
        } else {
            json!({"anyOf": alternatives})
        };
        if format == ToolFormat::Json && self.forced() {
            return GrammarSpec::JsonSchema {
                schema: call,
                strict: true,
            };
        }
        // A forced call is strict, as the JSON format's schema is: objects closed.
        if self.forced() {
            close_objects(&mut call);
        }
        call["x-guidance"] = json!({"whitespace_flexible": false, "item_separator": ", ",
                                    "key_separator": ": "});
        // A literal of the wrapping, with a space on the side of the rule it joins (none when
        // the text is empty).
        let lit = |s: &str, before: bool| match (s.is_empty(), before) {
            (true, _) => String::new(),
            (false, true) => serde_json::to_string(s).expect("a string serializes") + " ",
            (false, false) => " ".to_string() + &serde_json::to_string(s).expect("a string"),
        };
        let mut src = match self.choice {
            // Text may not begin the way a call does.
            Choice::Auto => {
                let first = match w.first_char() {
                    c @ ('[' | ']' | '\\' | '^' | '-') => format!("\\{c}"),
                    c => c.to_string(),
                };
                format!("start: TEXT | calls\nTEXT: /[^{first}](.|\\n)*/\n")
            }
            Choice::Required | Choice::Named(_) => String::from("start: calls\n"),
        };
        let more = match self.parallel && format.allows_several() {
            true => format!(" ({}call)*", lit(w.between, true)),
            false => String::new(),
        };
        let (start, end) = (lit(w.start, true), lit(w.end, false));
        src.push_str(&format!("calls: {start}call{more}{end}\n"));
        let (open, close) = (lit(w.open, true), lit(w.close, false));
        src.push_str(&format!("call: {open}body{close}\nbody: %json {call}\n"));
        GrammarSpec::Lark(src)
    }

    /// Whether output must be a call (not text).
    pub fn forced(&self) -> bool {
        !matches!(self.choice, Choice::Auto)
    }

    /// The instructions given in a system message to models whose chat template has no tools
    /// (calls in `format`).
    pub fn prompt(&self, format: ToolFormat) -> String {
        let key = format.wrapping().arguments;
        let call = format!("{{\"name\": <function name>, \"{key}\": <arguments object>}}");
        let mut p = format!(
            "You can call functions. To call one, answer with only {}, nothing else.",
            format.write(&[call])
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
    pub fn inline(&self, messages: &[ChatMessage], format: ToolFormat) -> Vec<ChatMessage> {
        let mut out = Vec::with_capacity(messages.len() + 1);
        let prompt = self.prompt(format);
        match messages.first() {
            Some(m) if m.role == "system" => out.push(ChatMessage::new(
                "system",
                format!("{}\n\n{prompt}", m.content),
            )),
            _ => out.push(ChatMessage::new("system", prompt)),
        }
        let skip = usize::from(messages.first().is_some_and(|m| m.role == "system"));
        for m in &messages[skip..] {
            out.push(inline_message(m, format));
        }
        out
    }
}

/// One message with its tool fields written into the text (calls in `format`; its reasoning
/// kept).
pub fn inline_message(m: &ChatMessage, format: ToolFormat) -> ChatMessage {
    let mut inlined = match m.role.as_str() {
        "assistant" if m.tool_calls.is_some() => {
            let key = format.wrapping().arguments;
            let bodies: Vec<String> = (m.tool_calls.iter().flatten())
                .map(|call| {
                    let f = &call["function"];
                    let args = f["arguments"]
                        .as_str()
                        .and_then(|s| serde_json::from_str::<Value>(s).ok())
                        .unwrap_or_else(|| f["arguments"].clone());
                    to_layout(&json!({"name": f["name"], key: args}))
                })
                .collect();
            let mut text = m.content.clone();
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(&format.write(&bodies));
            ChatMessage::new("assistant", text)
        }
        "tool" => {
            let id = m.tool_call_id.as_deref().unwrap_or("?");
            ChatMessage::new("user", format!("Result of call {id}:\n{}", m.content))
        }
        _ => ChatMessage::new(m.role.clone(), m.content.clone()),
    };
    inlined.reasoning_content = m.reasoning_content.clone();
    inlined
}

/// A call read back from the model's output.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub name: String,
    /// The arguments object as JSON text.
    pub arguments: String,
}

/// The call in one JSON body, if it is a call of a tool in `tools` with an arguments object
/// under `key` (arguments given back in the layout of [`to_layout`], as they stream).
fn parse_body(body: &str, tools: &Tools, key: &str) -> Option<Call> {
    let v: Value = serde_json::from_str(body.trim()).ok()?;
    let name = v.get("name")?.as_str()?;
    let args = v.get(key)?;
    if !args.is_object() || !tools.functions.iter().any(|f| f.name == name) {
        return None;
    }
    Some(Call {
        name: name.to_string(),
        arguments: to_layout(args),
    })
}

/// The calls of a finished answer: only when the request has tools and the answer ended on its
/// own (`finish` is `Stop`: its grammar complete) as nothing but calls in `format`.
pub fn answer_calls(
    text: &str,
    finish: Option<FinishReason>,
    tools: Option<&Tools>,
    format: ToolFormat,
) -> Option<Vec<Call>> {
    tools
        .filter(|_| finish == Some(FinishReason::Stop))
        .and_then(|t| parse_calls(text, t, format))
}

/// The calls `text` holds in `format`, if it is nothing but one or more complete calls of tools
/// in `tools`; `None` for text (or anything else).
pub fn parse_calls(text: &str, tools: &Tools, format: ToolFormat) -> Option<Vec<Call>> {
    let w = format.wrapping();
    let mut rest = text.trim().strip_prefix(w.start)?;
    let mut calls = Vec::new();
    loop {
        rest = rest.trim_start().strip_prefix(w.open)?;
        let len = ObjectEnd::length(rest)?;
        calls.push(parse_body(&rest[..len], tools, w.arguments)?);
        rest = rest[len..].strip_prefix(w.close)?.trim_start();
        if rest == w.end {
            return Some(calls);
        }
        rest = rest.strip_prefix(w.between.trim())?;
        if !format.allows_several() {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::stream::{CallStream, Piece};
    use super::*;
    use crate::testing::chunks;

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
            parallel: true,
        }
    }

    #[test]
    fn grammars_follow_the_choice_and_the_format() {
        let json = ToolFormat::Json;
        let GrammarSpec::JsonSchema { schema, strict } = tools(Choice::Required).grammar(json)
        else {
            panic!("required is a schema");
        };
        assert!(strict);
        assert_eq!(schema["anyOf"].as_array().unwrap().len(), 2);
        let GrammarSpec::JsonSchema { schema, .. } =
            tools(Choice::Named("add".into())).grammar(json)
        else {
            panic!("named is a schema");
        };
        assert_eq!(schema["properties"]["name"]["const"], "add");
        let GrammarSpec::Lark(src) = tools(Choice::Auto).grammar(json) else {
            panic!("auto is a grammar");
        };
        assert!(src.starts_with("start: TEXT | calls\nTEXT: /[^{]"), "{src}");
        assert!(src.contains("calls: call\ncall: body\n"), "{src}");

        let hermes = ToolFormat::Hermes;
        let GrammarSpec::Lark(src) = tools(Choice::Required).grammar(hermes) else {
            panic!("hermes is a grammar");
        };
        assert!(
            src.starts_with("start: calls\ncalls: call (\"\\n\" call)*\n"),
            "{src}"
        );
        assert!(
            src.contains("call: \"<tool_call>\\n\" body \"\\n</tool_call>\"\n"),
            "{src}"
        );
        let mut one = tools(Choice::Auto);
        one.parallel = false;
        let GrammarSpec::Lark(src) = one.grammar(hermes) else {
            panic!("hermes is a grammar");
        };
        assert!(src.starts_with("start: TEXT | calls\nTEXT: /[^<]"), "{src}");
        assert!(src.contains("calls: call\n"), "{src}");
    }

    #[test]
    fn calls_parse_only_for_known_tools_with_object_arguments() {
        let t = tools(Choice::Auto);
        let json = ToolFormat::Json;
        let calls = parse_calls("{\"name\": \"add\", \"arguments\": {\"a\": 1}}", &t, json);
        let call = &calls.unwrap()[0];
        assert_eq!(call.name, "add");
        assert_eq!(call.arguments, "{\"a\": 1}");
        assert!(parse_calls("{\"name\": \"sub\", \"arguments\": {}}", &t, json).is_none());
        assert!(parse_calls("{\"name\": \"add\", \"arguments\": 3}", &t, json).is_none());
        assert!(parse_calls("The answer is 3.", &t, json).is_none());
    }

    #[test]
    fn hermes_answers_parse_into_every_call_in_order() {
        let t = tools(Choice::Auto);
        let two = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Rome\"}}\n</tool_call>";
        let calls = parse_calls(two, &t, ToolFormat::Hermes).unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1].name, "get_weather");
        assert_eq!(calls[1].arguments, "{\"city\": \"Rome\"}");
        let cut = &two[..two.len() - 3];
        assert!(parse_calls(cut, &t, ToolFormat::Hermes).is_none());
        assert!(parse_calls("It is sunny.", &t, ToolFormat::Hermes).is_none());
        assert!(parse_calls("", &t, ToolFormat::Hermes).is_none());
    }

    /// Streams `text` in pieces of `step` bytes (on character boundaries).
    fn stream(t: &Tools, text: &str, step: usize) -> (Vec<Piece>, bool) {
        stream_in(t, ToolFormat::Json, text, step)
    }

    fn stream_in(t: &Tools, format: ToolFormat, text: &str, step: usize) -> (Vec<Piece>, bool) {
        let mut s = CallStream::new(t, format);
        let mut out = Vec::new();
        for piece in chunks(text, step) {
            out.extend(s.push(piece));
        }
        out.extend(s.finish());
        (out, s.is_call())
    }

    /// The text, the calls' names and the calls' arguments of streamed pieces (arguments
    /// joined across calls; each call's checked to come after its start).
    fn joined(pieces: &[Piece]) -> (String, Vec<String>, String) {
        let (mut text, mut names, mut args) = (String::new(), Vec::new(), String::new());
        for p in pieces {
            match p {
                Piece::Text(t) => text.push_str(t),
                Piece::Reasoning(r) => panic!("a CallStream gives no reasoning: {r:?}"),
                Piece::CallStart { index, name } => {
                    assert_eq!(*index, names.len());
                    names.push(name.clone());
                }
                Piece::Arguments { index, text } => {
                    assert_eq!(*index + 1, names.len());
                    args.push_str(text);
                }
            }
        }
        (text, names, args)
    }

    #[test]
    fn a_streamed_call_gives_its_name_once_then_exactly_its_arguments() {
        let out = "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich {x}\"}}";
        for step in 1..8 {
            let (pieces, is_call) = stream(&tools(Choice::Required), out, step);
            assert!(is_call);
            let (text, names, args) = joined(&pieces);
            assert_eq!(text, "");
            assert_eq!(names, ["get_weather"]);
            assert_eq!(args, "{\"city\": \"Zürich {x}\"}", "step {step}");
        }
    }

    #[test]
    fn streamed_hermes_calls_come_apart_with_their_own_indices() {
        let out = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich}\\n\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": {\"b\": 1}}}\n</tool_call>";
        for step in 1..12 {
            for choice in [Choice::Auto, Choice::Required] {
                let (pieces, is_call) = stream_in(&tools(choice), ToolFormat::Hermes, out, step);
                assert!(is_call);
                let (text, names, args) = joined(&pieces);
                assert_eq!(text, "");
                assert_eq!(names, ["get_weather", "add"]);
                assert_eq!(
                    args, "{\"city\": \"Zürich}\\n\"}{\"a\": {\"b\": 1}}",
                    "step {step}"
                );
            }
        }
        let (pieces, is_call) =
            stream_in(&tools(Choice::Auto), ToolFormat::Hermes, "Sunny {x}.", 2);
        assert!(!is_call);
        assert_eq!(joined(&pieces).0, "Sunny {x}.");
    }

    #[test]
    fn auto_text_streams_as_text_and_a_cut_call_keeps_its_last_byte() {
        let (pieces, is_call) = stream(&tools(Choice::Auto), "  It is sunny.", 3);
        assert!(!is_call);
        assert_eq!(joined(&pieces).0, "  It is sunny.");
        let cut = "{\"name\": \"add\", \"arguments\": {\"a\": 1";
        let (pieces, is_call) = stream(&tools(Choice::Auto), cut, 2);
        assert!(is_call);
        assert_eq!(joined(&pieces).2, "{\"a\": 1");
    }

    #[test]
    fn llama3_and_mistral_calls_are_written_read_and_streamed_in_their_own_shape() {
        let (llama, mistral) = (ToolFormat::Llama3, ToolFormat::Mistral);
        let GrammarSpec::Lark(src) = tools(Choice::Required).grammar(llama) else {
            panic!("llama3 is a grammar");
        };
        assert!(
            src.starts_with("start: calls\ncalls: call\ncall: body\n"),
            "{src}"
        );
        assert!(src.contains("\"parameters\""), "{src}");
        let GrammarSpec::Lark(src) = tools(Choice::Auto).grammar(mistral) else {
            panic!("mistral is a grammar");
        };
        assert!(
            src.starts_with("start: TEXT | calls\nTEXT: /[^\\[]"),
            "{src}"
        );
        let calls = "calls: \"[TOOL_CALLS] [\" call (\", \" call)* \"]\"\n";
        assert!(src.contains(calls), "{src}");

        let t = tools(Choice::Auto);
        let one = r#"{"name": "add", "parameters": {"a": {"b": [1, "}"]}}}"#;
        let parsed = parse_calls(one, &t, llama).unwrap();
        assert_eq!(parsed[0].arguments, r#"{"a": {"b": [1, "}"]}}"#);
        assert!(parse_calls(&format!("{one} {one}"), &t, llama).is_none());
        let with_arguments = r#"{"name": "add", "arguments": {"a": 1}}"#;
        assert!(parse_calls(with_arguments, &t, llama).is_none());
        let two = r#"[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris}]"}}, {"name": "add", "arguments": {"a": [{"b": 1}]}}]"#;
        let parsed = parse_calls(two, &t, mistral).unwrap();
        let names: Vec<_> = parsed.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["get_weather", "add"]);
        assert!(parse_calls(&two[..two.len() - 1], &t, mistral).is_none());
        for step in 1..10 {
            let (pieces, is_call) = stream_in(&t, mistral, two, step);
            assert!(is_call);
            let (text, names, args) = joined(&pieces);
            assert_eq!(
                (text.as_str(), names),
                ("", vec!["get_weather".into(), "add".into()])
            );
            assert_eq!(
                args, r#"{"city": "Paris}]"}{"a": [{"b": 1}]}"#,
                "step {step}"
            );
            let (pieces, _) = stream_in(&t, llama, one, step);
            assert_eq!(
                joined(&pieces).2,
                r#"{"a": {"b": [1, "}"]}}"#,
                "step {step}"
            );
        }
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
        let out = t.inline(&msgs, ToolFormat::Json);
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
