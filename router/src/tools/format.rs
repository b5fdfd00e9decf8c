//! The call formats models are trained to write ([`ToolFormat`]), what wraps each call's JSON
//! body in them ([`Wrapping`]), and where a JSON object ends in a text ([`ObjectEnd`]), which
//! is how both the whole and the streamed readers find the end of a call's arguments without
//! relying on what follows them.
//!
//! | format  | an answer of calls                                                   |
//! |---------|----------------------------------------------------------------------|
//! | json    | `{"name": ..., "arguments": {...}}` (one call; Wick's own)           |
//! | hermes  | `<tool_call>\n{...}\n</tool_call>`, one or more, newline-separated  |
//! | llama3  | `{"name": ..., "parameters": {...}}` (one call; Llama 3.x JSON)      |
//! | mistral | `[TOOL_CALLS] [{...}, {...}]` (one or more; Mistral v3 tokenizers)  |

/// How a model writes its calls (`--tool-call-format`; by default read from the chat template).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ToolFormat {
    /// Wick's own: the answer is one bare call object.
    Json,
    /// Qwen 2.5 and Hermes: each call as `<tool_call>\n{...}\n</tool_call>`, calls separated by a
    /// newline.
    Hermes,
    /// Llama 3.x: one bare call object whose arguments are under `parameters`.
    Llama3,
    /// Mistral (v3 tokenizers): `[TOOL_CALLS] ` and a JSON array of call objects.
    Mistral,
}

impl ToolFormat {
    /// The format a chat template teaches its model: Hermes tags when the template writes
    /// `<tool_call>`, Mistral's when it writes `[TOOL_CALLS]`, Llama 3's when it has the
    /// `ipython` role, else Wick's JSON.
    pub fn detect(template: Option<&str>) -> Self {
        match template {
            Some(t) if t.contains("<tool_call>") => ToolFormat::Hermes,
            Some(t) if t.contains("[TOOL_CALLS]") => ToolFormat::Mistral,
            Some(t) if t.contains("ipython") => ToolFormat::Llama3,
            _ => ToolFormat::Json,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ToolFormat::Json => "json",
            ToolFormat::Hermes => "hermes",
            ToolFormat::Llama3 => "llama3",
            ToolFormat::Mistral => "mistral",
        }
    }

    /// The text around the calls of an answer in this format.
    pub(crate) fn wrapping(self) -> Wrapping {
        let bare = Wrapping {
            start: "",
            open: "",
            close: "",
            between: "",
            end: "",
            arguments: "arguments",
        };
        match self {
            ToolFormat::Json => bare,
            ToolFormat::Hermes => Wrapping {
                open: "<tool_call>\n",
                close: "\n</tool_call>",
                between: "\n",
                ..bare
            },
            ToolFormat::Llama3 => Wrapping {
                arguments: "parameters",
                ..bare
            },
            ToolFormat::Mistral => Wrapping {
                start: "[TOOL_CALLS] [",
                between: ", ",
                end: "]",
                ..bare
            },
        }
    }

    /// Call bodies (JSON text) as the model writes them in this format; bodies of a format of
    /// one call per answer are written one per line.
    pub fn write(self, bodies: &[String]) -> String {
        let w = self.wrapping();
        let wrapped: Vec<String> = bodies
            .iter()
            .map(|b| format!("{}{b}{}", w.open, w.close))
            .collect();
        match self.allows_several() {
            true => format!("{}{}{}", w.start, wrapped.join(w.between), w.end),
            false => wrapped.join("\n"),
        }
    }

    /// Whether an answer may hold several calls.
    pub(crate) fn allows_several(self) -> bool {
        matches!(self, ToolFormat::Hermes | ToolFormat::Mistral)
    }
}

/// The text around the calls of a [`ToolFormat`]: `start`, then each call's body between
/// `open` and `close`, `between` two calls, then `end`; and the key of a call's arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Wrapping {
    pub start: &'static str,
    pub open: &'static str,
    pub close: &'static str,
    pub between: &'static str,
    pub end: &'static str,
    pub arguments: &'static str,
}

impl Wrapping {
    /// The character an answer of calls starts with (text under `auto` may not).
    pub fn first_char(&self) -> char {
        self.start
            .chars()
            .chain(self.open.chars())
            .next()
            .unwrap_or('{')
    }
}

/// Finds where a JSON object ends as its text arrives: a scan of string, escape and nesting
/// state, fed any number of bytes at a time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct ObjectEnd {
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// Whether the object has begun (its `{` was seen).
    begun: bool,
}

impl ObjectEnd {
    /// Scans `bytes`; the offset just past the object's closing `}` if it is among them.
    pub fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        for (i, &b) in bytes.iter().enumerate() {
            if self.in_string {
                match (self.escaped, b) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => {
                    self.depth += 1;
                    self.begun = true;
                }
                b'}' | b']' if self.depth > 0 => {
                    self.depth -= 1;
                    if self.depth == 0 && self.begun {
                        return Some(i + 1);
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// The length of the JSON object (or array) `text` starts with, if it is whole.
    pub fn length(text: &str) -> Option<usize> {
        ObjectEnd::default().feed(text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_ends_at_its_own_brace_whatever_its_strings_hold() {
        let body = r#"{"a": "}{\"]", "b": [{"c": 1}], "d": "\\"}"#;
        assert_eq!(
            ObjectEnd::length(&format!("{body}, {{\"e\": 2}}]")),
            Some(body.len())
        );
        assert_eq!(ObjectEnd::length(&body[..body.len() - 1]), None);
        // Fed a byte at a time, the end is found in the byte that closes it.
        let mut scan = ObjectEnd::default();
        let ends: Vec<_> = body.bytes().map(|b| scan.feed(&[b])).collect();
        assert_eq!(ends.iter().filter(|e| e.is_some()).count(), 1);
        assert_eq!(ends.last(), Some(&Some(1)));
    }

    #[test]
    fn calls_are_written_in_the_formats_shape() {
        let bodies = ["{\"a\": 1}".to_string(), "{\"b\": 2}".to_string()];
        assert_eq!(
            ToolFormat::Mistral.write(&bodies),
            "[TOOL_CALLS] [{\"a\": 1}, {\"b\": 2}]"
        );
        assert_eq!(
            ToolFormat::Hermes.write(&bodies[..1]),
            "<tool_call>\n{\"a\": 1}\n</tool_call>"
        );
        assert_eq!(ToolFormat::Json.write(&bodies), "{\"a\": 1}\n{\"b\": 2}");
    }

    #[test]
    fn the_format_is_read_from_the_template() {
        let detect = |t: &str| ToolFormat::detect(Some(t));
        assert_eq!(detect("... <tool_call>\n{...}"), ToolFormat::Hermes);
        assert_eq!(detect("{{ '[TOOL_CALLS] ' + calls }}"), ToolFormat::Mistral);
        assert_eq!(
            detect("<|start_header_id|>ipython<|end_header_id|>"),
            ToolFormat::Llama3
        );
        assert_eq!(detect("{{ tools }}"), ToolFormat::Json);
        assert_eq!(ToolFormat::detect(None), ToolFormat::Json);
    }
}
