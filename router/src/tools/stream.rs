//! Reading an answer while it streams: text, or calls in the request's [`ToolFormat`], each
//! given as its index and name once, then its arguments in fragments ([`CallStream`]);
//! [`AnswerStream`] is what the APIs hold per answer, tools or not, with a reasoning model's
//! reasoning split off first ([`Piece::Reasoning`]).
//!
//! The answer is known to be calls from its first non-blank character (the grammar keeps text
//! from starting the way a call does; a forced choice is calls from the start). A call's
//! arguments stream as soon as its name is known; what could still be the end of the call (the
//! closing `}` of the call object and the format's closing text) is held back until it is
//! settled. Cost: each piece is looked at once, plus the held-back tail.

use super::{ToolFormat, Tools, Wrapping};
use crate::reasoning::{Part, Split};
use wick_proto::FinishReason;

/// Text that became final in a streamed answer, split by what it is.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// A reasoning model's reasoning (before its answer).
    Reasoning(String),
    Text(String),
    /// Call `index` (0, 1, ... in the answer) begins: its name, sent once before its arguments.
    CallStart {
        index: usize,
        name: String,
    },
    /// More of call `index`'s arguments text.
    Arguments {
        index: usize,
        text: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// Nothing but whitespace seen yet.
    Undecided,
    Text,
    /// Before call `index`'s name is complete (the buffer starts at the call).
    Head {
        index: usize,
    },
    /// In call `index`'s arguments, `sent` bytes of them gone out (the buffer starts at them).
    Arguments {
        index: usize,
        sent: usize,
    },
}

const NAME_PREFIX: &str = "{\"name\": \"";
const ARGS_PREFIX: &str = "\", \"arguments\": ";

/// Splits a streamed answer into text, or calls' names and argument fragments.
#[derive(Debug)]
pub struct CallStream {
    forced: bool,
    wrapping: Wrapping,
    buf: String,
    mode: Mode,
}

impl CallStream {
    pub fn new(tools: &Tools, format: ToolFormat) -> Self {
        CallStream {
            forced: tools.forced(),
            wrapping: format.wrapping(),
            buf: String::new(),
            mode: Mode::Undecided,
        }
    }

    /// Whether the answer turned out to be calls.
    pub fn is_call(&self) -> bool {
        matches!(self.mode, Mode::Head { .. } | Mode::Arguments { .. })
    }

    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.buf.push_str(text);
        if self.mode == Mode::Undecided {
            let lead = self.buf.trim_start();
            if lead.is_empty() {
                return Vec::new();
            }
            let call_start = self.wrapping.open.chars().next().unwrap_or('{');
            self.mode = if self.forced || lead.starts_with(call_start) {
                let offset = self.buf.len() - lead.len();
                self.buf.drain(..offset);
                Mode::Head { index: 0 }
            } else {
                Mode::Text
            };
        }
        let mut out = Vec::new();
        loop {
            match self.mode {
                Mode::Undecided => return out,
                Mode::Text => {
                    out.push(Piece::Text(std::mem::take(&mut self.buf)));
                    return out;
                }
                Mode::Head { index } => match self.head(index) {
                    Some(piece) => out.push(piece),
                    None => return out,
                },
                Mode::Arguments { index, sent } => {
                    let (piece, done) = self.arguments(index, sent);
                    out.extend(piece);
                    if !done {
                        return out;
                    }
                }
            }
        }
    }

    /// Call `index`'s name, once the buffer holds it whole (then the arguments begin).
    fn head(&mut self, index: usize) -> Option<Piece> {
        let lead = self.buf.trim_start();
        let rest = lead
            .strip_prefix(self.wrapping.open)?
            .strip_prefix(NAME_PREFIX)?;
        let end = rest.find(ARGS_PREFIX)?;
        let name = rest[..end].to_string();
        let consumed = self.buf.len() - rest.len() + end + ARGS_PREFIX.len();
        self.buf.drain(..consumed);
        self.mode = Mode::Arguments { index, sent: 0 };
        Some(Piece::CallStart { index, name })
    }

    /// The arguments that became final, and whether call `index` ended (the buffer then holds
    /// what follows it).
    fn arguments(&mut self, index: usize, sent: usize) -> (Option<Piece>, bool) {
        let w = self.wrapping;
        let fragment = |from: usize, to: usize, buf: &str| {
            (to > from).then(|| Piece::Arguments {
                index,
                text: buf[from..to].to_string(),
            })
        };
        // The call object's `}` and the closing text end the call; no JSON string holds a
        // raw newline, so with a closing text the first such match is the end.
        if !w.close.is_empty() {
            let end_marker = format!("}}{}", w.close);
            if let Some(at) = self.buf.find(&end_marker) {
                let piece = fragment(sent, at, &self.buf);
                self.buf.drain(..at + end_marker.len());
                self.mode = Mode::Head { index: index + 1 };
                return (piece, true);
            }
        }
        // Hold back whatever could still be the end: the last byte (the call object's `}`),
        // or a tail that begins the end marker.
        let mut held = 1;
        let end_marker = format!("}}{}", w.close);
        for k in 1..=end_marker.len().min(self.buf.len()) {
            if self.buf.ends_with(&end_marker[..k]) {
                held = held.max(k);
            }
        }
        let mut upto = self.buf.len().saturating_sub(held).max(sent);
        while !self.buf.is_char_boundary(upto) {
            upto -= 1;
        }
        let piece = fragment(sent, upto, &self.buf);
        self.mode = Mode::Arguments {
            index,
            sent: upto.max(sent),
        };
        (piece, false)
    }

    /// The rest at the end of the answer; `complete` when the grammar finished (a call's
    /// held-back `}` then closes its object and is dropped).
    pub fn finish(&mut self, complete: bool) -> Vec<Piece> {
        match self.mode {
            Mode::Undecided | Mode::Text if !self.buf.is_empty() => {
                vec![Piece::Text(std::mem::take(&mut self.buf))]
            }
            Mode::Arguments { index, sent } => {
                let mut end = self.buf.len();
                if complete && self.buf.ends_with('}') {
                    end -= 1;
                }
                if end > sent {
                    vec![Piece::Arguments {
                        index,
                        text: self.buf[sent..end].to_string(),
                    }]
                } else {
                    Vec::new()
                }
            }
            _ => Vec::new(),
        }
    }
}

/// One streamed answer as every API reads it: a reasoning model's reasoning split off first,
/// then through a [`CallStream`] when the request has tools, else all text.
#[derive(Debug)]
pub struct AnswerStream {
    split: Option<Split>,
    calls: Option<CallStream>,
}

impl AnswerStream {
    pub fn new(tools: Option<&Tools>, format: ToolFormat, split: Option<Split>) -> Self {
        AnswerStream {
            split,
            calls: tools.map(|t| CallStream::new(t, format)),
        }
    }

    /// One token's text.
    pub fn push(&mut self, text: String) -> Vec<Piece> {
        match &mut self.split {
            Some(split) => {
                let parts = split.push(&text);
                self.parts(parts)
            }
            None => self.content(text),
        }
    }

    fn parts(&mut self, parts: Vec<Part>) -> Vec<Piece> {
        let mut out = Vec::new();
        for p in parts {
            match p {
                Part::Reasoning(r) => out.push(Piece::Reasoning(r)),
                Part::Content(c) => out.extend(self.content(c)),
            }
        }
        out
    }

    fn content(&mut self, text: String) -> Vec<Piece> {
        match &mut self.calls {
            Some(calls) => calls.push(&text),
            None => vec![Piece::Text(text)],
        }
    }

    /// Whether the answer is a reasoning model's (its reasoning split off).
    pub fn reasons(&self) -> bool {
        self.split.is_some()
    }

    /// The reasoning tokens so far.
    pub fn reasoning_tokens(&self) -> usize {
        self.split.as_ref().map_or(0, Split::tokens)
    }

    /// The rest at the end of the answer, and how it ended: `ToolCalls` when it ended on its
    /// own (`Stop`) as calls, else `reason`.
    pub fn finish(&mut self, reason: FinishReason) -> (Vec<Piece>, FinishReason) {
        let held = self.split.as_mut().map(Split::finish).unwrap_or_default();
        let mut rest = self.parts(held);
        let Some(calls) = &mut self.calls else {
            return (rest, reason);
        };
        let complete = reason == FinishReason::Stop;
        rest.extend(calls.finish(complete));
        match complete && calls.is_call() {
            true => (rest, FinishReason::ToolCalls),
            false => (rest, reason),
        }
    }
}
