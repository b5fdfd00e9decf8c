//! Reasoning separated from the answer: models that think between two markers (`<think>` and
//! `</think>` by default) before they answer. [`Markers`] says which (read from the chat
//! template, or `--reasoning-markers`); [`Split`] cuts an answer into its reasoning and its
//! content as it streams ([`Gathered`] collects the pieces of a whole answer), so that the reasoning goes to `reasoning_content` and
//! never into `content` or a tool call.
//!
//! The reasoning is the text between the open marker (written by the model at the start of its
//! answer, or already by the template at the end of the prompt) and the first close marker;
//! whitespace right after the close marker is dropped. An answer that does not start with the
//! open marker has no reasoning. A marker split across tokens is held back until it is whole.
//! Each `push` is one generated token's text, so [`Split::tokens`] counts the reasoning tokens
//! (those pushed before the reasoning closed, the markers' own included).

/// The pair of markers around a model's reasoning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Markers {
    pub open: String,
    pub close: String,
}

impl Markers {
    /// `<think>` ... `</think>` when the chat template mentions `<think>`.
    pub fn detect(template: Option<&str>) -> Option<Markers> {
        template.filter(|t| t.contains("<think>")).map(|_| Markers {
            open: "<think>".into(),
            close: "</think>".into(),
        })
    }

    /// `--reasoning-markers`: `none`, or `OPEN,CLOSE`.
    pub fn parse(flag: &str) -> Result<Option<Markers>, String> {
        if flag == "none" {
            return Ok(None);
        }
        match flag.split_once(',') {
            Some((open, close)) if !open.is_empty() && !close.is_empty() => Ok(Some(Markers {
                open: open.into(),
                close: close.into(),
            })),
            _ => Err(format!(
                "expected `none` or two markers as `OPEN,CLOSE`, got `{flag}`"
            )),
        }
    }
}

/// A piece of a split answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Reasoning(String),
    Content(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Nothing but whitespace seen yet.
    Start,
    Reasoning,
    /// Just after the close marker: whitespace is dropped.
    Closed,
    Content,
}

/// Cuts an answer into reasoning and content as its text arrives.
#[derive(Debug, Clone)]
pub struct Split {
    markers: Markers,
    state: State,
    buf: String,
    /// Whether the answer has reasoning (the open marker was seen, or the prompt opened it).
    reasoned: bool,
    /// Pushes that began before the reasoning closed (zero for an answer without reasoning).
    tokens: usize,
}

impl Split {
    /// `opened`: the prompt already ends with the open marker, so the answer starts inside.
    pub fn new(markers: &Markers, opened: bool) -> Self {
        Split {
            markers: markers.clone(),
            state: if opened {
                State::Reasoning
            } else {
                State::Start
            },
            buf: String::new(),
            reasoned: opened,
            tokens: 0,
        }
    }

    /// The answer's reasoning tokens so far (one per `push` that began inside the reasoning or
    /// before the answer's start was settled).
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Whether the answer has reasoning (possibly empty).
    pub fn reasoned(&self) -> bool {
        self.reasoned
    }

    pub fn push(&mut self, text: &str) -> Vec<Part> {
        if matches!(self.state, State::Start | State::Reasoning) {
            self.tokens += 1;
        }
        self.buf.push_str(text);
        let mut out = Vec::new();
        loop {
            match self.state {
                State::Start => {
                    let lead = self.buf.trim_start();
                    if lead.starts_with(&self.markers.open) {
                        let consumed = self.buf.len() - lead.len() + self.markers.open.len();
                        self.buf.drain(..consumed);
                        self.state = State::Reasoning;
                        self.reasoned = true;
                    } else if self.markers.open.starts_with(lead) {
                        return out;
                    } else {
                        // No reasoning after all: what was counted was content.
                        self.state = State::Content;
                        self.tokens = 0;
                    }
                }
                State::Reasoning => match self.buf.find(&self.markers.close) {
                    Some(at) => {
                        if at > 0 {
                            out.push(Part::Reasoning(self.buf[..at].to_string()));
                        }
                        self.buf.drain(..at + self.markers.close.len());
                        self.state = State::Closed;
                    }
                    None => {
                        let keep = held(&self.buf, &self.markers.close);
                        let upto = self.buf.len() - keep;
                        if upto > 0 {
                            out.push(Part::Reasoning(self.buf[..upto].to_string()));
                            self.buf.drain(..upto);
                        }
                        return out;
                    }
                },
                State::Closed => {
                    let lead = self.buf.trim_start();
                    if lead.is_empty() {
                        self.buf.clear();
                        return out;
                    }
                    let drop = self.buf.len() - lead.len();
                    self.buf.drain(..drop);
                    self.state = State::Content;
                }
                State::Content => {
                    if !self.buf.is_empty() {
                        out.push(Part::Content(std::mem::take(&mut self.buf)));
                    }
                    return out;
                }
            }
        }
    }

    /// What is still held at the end of the answer.
    pub fn finish(&mut self) -> Vec<Part> {
        let rest = std::mem::take(&mut self.buf);
        match self.state {
            _ if rest.is_empty() => Vec::new(),
            State::Reasoning => vec![Part::Reasoning(rest)],
            State::Closed => Vec::new(),
            State::Start | State::Content => vec![Part::Content(rest)],
        }
    }
}

/// A split answer gathered whole: its reasoning (`Some` once the answer reasoned, even
/// emptily) and its content.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Gathered {
    pub reasoning: Option<String>,
    pub content: String,
}

impl Gathered {
    pub fn add(&mut self, parts: Vec<Part>) {
        for p in parts {
            match p {
                Part::Reasoning(r) => self.reasoning.get_or_insert_with(String::new).push_str(&r),
                Part::Content(c) => self.content.push_str(&c),
            }
        }
    }

    /// The end of the answer: what `split` still held.
    pub fn close(&mut self, split: &mut Split) {
        self.add(split.finish());
        if split.reasoned() {
            self.reasoning.get_or_insert_with(String::new);
        }
    }
}

/// The length of the longest tail of `text` that begins `marker` (held until it is settled),
/// on a character boundary.
fn held(text: &str, marker: &str) -> usize {
    (1..marker.len().min(text.len()) + 1)
        .rev()
        .find(|&k| {
            text.is_char_boundary(text.len() - k) && marker.starts_with(&text[text.len() - k..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::chunks;

    /// A whole answer as `(reasoning, content)`.
    fn whole(markers: &Markers, opened: bool, text: &str) -> (Option<String>, String) {
        let mut split = Split::new(markers, opened);
        let mut gathered = Gathered::default();
        gathered.add(split.push(text));
        gathered.close(&mut split);
        (gathered.reasoning, gathered.content)
    }

    fn think() -> Markers {
        Markers::parse("<think>,</think>").unwrap().unwrap()
    }

    /// Streams `text` in pieces of `step` bytes (on character boundaries).
    fn streamed(opened: bool, text: &str, step: usize) -> (String, String) {
        let mut split = Split::new(&think(), opened);
        let mut gathered = Gathered::default();
        for piece in chunks(text, step) {
            gathered.add(split.push(piece));
        }
        gathered.close(&mut split);
        (gathered.reasoning.unwrap_or_default(), gathered.content)
    }

    #[test]
    fn reasoning_and_content_split_at_every_piece_size() {
        let answer = "<think>\nAdd them: 12 + 30 < 50 </thin k> é.\n</think>\n\n42 is <b>it</b>.";
        for step in 1..12 {
            let (r, c) = streamed(false, answer, step);
            assert_eq!(r, "\nAdd them: 12 + 30 < 50 </thin k> é.\n", "step {step}");
            assert_eq!(c, "42 is <b>it</b>.", "step {step}");
        }
        assert_eq!(
            whole(&think(), false, answer),
            (
                Some("\nAdd them: 12 + 30 < 50 </thin k> é.\n".into()),
                "42 is <b>it</b>.".into()
            )
        );
    }

    #[test]
    fn reasoning_tokens_are_the_pushes_before_the_close() {
        let mut split = Split::new(&think(), false);
        for t in ["<th", "ink>", "so", " 42", "</think>", "\n", "42"] {
            split.push(t);
        }
        assert_eq!(split.tokens(), 5);
        let mut opened = Split::new(&think(), true);
        for t in ["so", "</think>", "42", "!"] {
            opened.push(t);
        }
        assert_eq!(opened.tokens(), 2);
        let mut plain = Split::new(&think(), false);
        for t in ["<", "b>", "42"] {
            plain.push(t);
        }
        assert_eq!((plain.tokens(), plain.reasoned()), (0, false));
    }

    #[test]
    fn a_template_that_opens_the_reasoning_starts_inside_it() {
        for step in [1, 3, 100] {
            assert_eq!(
                streamed(true, "so 42</think>42", step),
                ("so 42".into(), "42".into())
            );
        }
    }

    #[test]
    fn an_answer_without_the_open_marker_is_all_content() {
        for step in [1, 4] {
            assert_eq!(
                streamed(false, "  <thinking> no", step),
                (String::new(), "  <thinking> no".into())
            );
        }
        assert_eq!(whole(&think(), false, "<thi"), (None, "<thi".into()));
        let no_open = whole(&think(), false, "</answer>");
        assert_eq!(no_open, (None, "</answer>".into()));
        let empty = whole(&think(), false, "<think></think>42");
        assert_eq!(empty, (Some(String::new()), "42".into()));
    }

    #[test]
    fn a_cut_answer_keeps_its_reasoning_as_reasoning() {
        assert_eq!(
            whole(&think(), false, "<think>still going </th"),
            (Some("still going </th".into()), String::new())
        );
    }

    #[test]
    fn markers_come_from_the_template_or_the_flag() {
        assert_eq!(Markers::detect(Some("...<think>\\n...")), Some(think()));
        assert_eq!(Markers::detect(Some("{{ messages }}")), None);
        assert_eq!(Markers::parse("none"), Ok(None));
        assert!(Markers::parse("<think>").is_err());
        assert!(Markers::parse(",x").is_err());
    }
}
