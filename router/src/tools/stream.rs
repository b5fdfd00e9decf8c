//! Reading an answer while it streams: text, or calls in the request's [`ToolFormat`], each
//! given as its index and name once, then its arguments in fragments ([`CallStream`]);
//! [`AnswerStream`] is what the APIs hold per answer, tools or not, with a reasoning model's
//! reasoning split off first ([`Piece::Reasoning`]).
//!
//! The answer is known to be calls from its first non-blank character (the grammar keeps text
//! from starting the way a call does; a forced choice is calls from the start). A call's
//! arguments stream as soon as its name is known, every byte as it arrives: a scan of the JSON
//! ([`ObjectEnd`]) says where the arguments object ends, so nothing is held back and no
//! closing text is guessed at. Cost: each byte is scanned once; a call's name and the text
//! between calls are looked at until they are whole.

use super::format::{ObjectEnd, Wrapping};
use super::{ToolFormat, Tools};
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
    /// Before call `index`'s name is complete (the buffer starts before the call's wrapping).
    Head {
        index: usize,
    },
    /// In call `index`'s arguments (the buffer starts at them): `sent` bytes gone out, `scan`
    /// over the first `scanned`.
    Arguments {
        index: usize,
        sent: usize,
        scanned: usize,
        scan: ObjectEnd,
    },
    /// After call `index`'s arguments, before its call object's `}` and closing text are whole.
    Tail {
        index: usize,
    },
}

/// Splits a streamed answer into text, or calls' names and argument fragments.
#[derive(Debug)]
pub struct CallStream {
    forced: bool,
    wrapping: Wrapping,
    /// What comes between a call's name and its arguments (`", "arguments": "`).
    args_prefix: String,
    buf: String,
    mode: Mode,
}

const NAME_PREFIX: &str = "{\"name\": \"";

impl CallStream {
    pub fn new(tools: &Tools, format: ToolFormat) -> Self {
        let wrapping = format.wrapping();
        CallStream {
            forced: tools.forced(),
            wrapping,
            args_prefix: format!("\", \"{}\": ", wrapping.arguments),
            buf: String::new(),
            mode: Mode::Undecided,
        }
    }

    /// Whether the answer turned out to be calls.
    pub fn is_call(&self) -> bool {
        !matches!(self.mode, Mode::Undecided | Mode::Text)
    }

    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.buf.push_str(text);
        if self.mode == Mode::Undecided {
            let lead = self.buf.trim_start();
            if lead.is_empty() {
                return Vec::new();
            }
            self.mode = if self.forced || lead.starts_with(self.wrapping.first_char()) {
                Mode::Head { index: 0 }
            } else {
                Mode::Text
            };
        }
        let mut out = Vec::new();
        loop {
            let more = match self.mode {
                Mode::Undecided => false,
                Mode::Text => {
                    out.push(Piece::Text(std::mem::take(&mut self.buf)));
                    false
                }
                Mode::Head { index } => self.head(index).map(|p| out.push(p)).is_some(),
                Mode::Arguments { .. } => {
                    let (piece, done) = self.arguments();
                    out.extend(piece);
                    done
                }
                Mode::Tail { index } => self.tail(index),
            };
            if !more {
                return out;
            }
        }
    }

    /// Call `index`'s name, once the buffer holds it whole (then the arguments begin).
    fn head(&mut self, index: usize) -> Option<Piece> {
        let w = self.wrapping;
        let lead = self.buf.trim_start();
        let lead = match index {
            0 => lead.strip_prefix(w.start)?,
            _ => lead.strip_prefix(w.between.trim())?.trim_start(),
        };
        let rest = lead.strip_prefix(w.open)?.strip_prefix(NAME_PREFIX)?;
        let end = rest.find(&self.args_prefix)?;
        let name = rest[..end].to_string();
        let consumed = self.buf.len() - rest.len() + end + self.args_prefix.len();
        self.buf.drain(..consumed);
        self.mode = Mode::Arguments {
            index,
            sent: 0,
            scanned: 0,
            scan: ObjectEnd::default(),
        };
        Some(Piece::CallStart { index, name })
    }

    /// The arguments that arrived, and whether they ended (the buffer then holds what follows
    /// them). Nothing is held back: the scan knows where the arguments object ends.
    fn arguments(&mut self) -> (Option<Piece>, bool) {
        let Mode::Arguments {
            index,
            sent,
            scanned,
            mut scan,
        } = self.mode
        else {
            return (None, false);
        };
        let fragment = |to: usize, buf: &str| {
            (to > sent).then(|| Piece::Arguments {
                index,
                text: buf[sent..to].to_string(),
            })
        };
        match scan.feed(&self.buf.as_bytes()[scanned..]) {
            Some(len) => {
                let end = scanned + len;
                let piece = fragment(end, &self.buf);
                self.buf.drain(..end);
                self.mode = Mode::Tail { index };
                (piece, true)
            }
            None => {
                let end = self.buf.len();
                self.mode = Mode::Arguments {
                    index,
                    sent: end,
                    scanned: end,
                    scan,
                };
                (fragment(end, &self.buf), false)
            }
        }
    }

    /// Whether call `index`'s object and closing text are whole (then the next call may begin).
    fn tail(&mut self, index: usize) -> bool {
        let lead = self.buf.trim_start();
        let Some(rest) = lead
            .strip_prefix('}')
            .and_then(|r| r.strip_prefix(self.wrapping.close))
        else {
            return false;
        };
        let consumed = self.buf.len() - rest.len();
        self.buf.drain(..consumed);
        self.mode = Mode::Head { index: index + 1 };
        true
    }

    /// The rest at the end of the answer: text (a call's arguments have all gone out).
    pub fn finish(&mut self) -> Vec<Piece> {
        match self.mode {
            Mode::Undecided | Mode::Text if !self.buf.is_empty() => {
                vec![Piece::Text(std::mem::take(&mut self.buf))]
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
        rest.extend(calls.finish());
        match complete && calls.is_call() {
            true => (rest, FinishReason::ToolCalls),
            false => (rest, reason),
        }
    }
}
