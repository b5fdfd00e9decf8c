//! Request validation: chat template, tokenization and parameter checks, producing a
//! [`ValidRequest`], the only thing the scheduler accepts. Every 4xx is decided here, before
//! anything is queued or a stream starts.
//!
//! Runs on a blocking thread (tokenization is CPU work). Messages name the field, the limit and the
//! value received. A cut stream's request comes back through [`Validator::resume`] ([`resume`]).

use crate::backend::{Constraint, GrammarError, GrammarSpec, Grammars};
use crate::chat_tokens::ContentGuard;
use crate::error::ApiError;
use crate::reasoning::Markers;
use crate::request::{StopCriteria, Vocab};
use crate::template::{ChatMessage, ChatTemplate};
use crate::tools::{inline_message, ToolFormat, Tools};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokenizers::Tokenizer;
use wick_proto::{ModelInfo, SamplingParams};

/// Caps on what one request may ask for.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest prompt, in tokens.
    pub max_input_tokens: usize,
    /// Longest prompt plus generation, in tokens.
    pub max_total_tokens: usize,
    pub max_n: usize,
    pub max_stop: usize,
    pub max_top_logprobs: usize,
    /// Most log-probability entries (`n` x `max_tokens` x (1 + `top_logprobs`)) one request
    /// may ask for: they are held until the reply is sent.
    pub max_logprob_entries: usize,
}

/// What to run: raw text, token ids, or a conversation for the chat template (with the tools
/// the model may call).
#[derive(Debug, Clone)]
pub enum PromptInput {
    /// Plain text; `field` names it in errors (`prompt`, TGI's `inputs`).
    Text {
        field: &'static str,
        text: String,
    },
    Tokens(Vec<u32>),
    Chat {
        messages: Vec<ChatMessage>,
        tools: Option<Tools>,
        /// Extra variables for the chat template (`chat_template_kwargs`, e.g. `enable_thinking`).
        vars: Option<serde_json::Value>,
    },
}

impl PromptInput {
    pub fn text(field: &'static str, text: impl Into<String>) -> Self {
        PromptInput::Text {
            field,
            text: text.into(),
        }
    }

    /// The request field the prompt came in, named by errors about it.
    pub fn param(&self) -> &'static str {
        match self {
            PromptInput::Text { field, .. } => field,
            PromptInput::Tokens(_) => "prompt",
            PromptInput::Chat { .. } => "messages",
        }
    }

    /// A conversation without tools.
    pub fn chat(messages: Vec<ChatMessage>) -> Self {
        PromptInput::Chat {
            messages,
            tools: None,
            vars: None,
        }
    }
}

/// Sampling and stopping parameters as they arrive (any API), before checks.
#[derive(Debug, Clone, Default)]
pub struct GenerationInput {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub max_tokens: Option<u64>,
    pub n: Option<u64>,
    /// `Some(k)`: report the chosen token's log-probability and the top `k` alternatives.
    pub logprobs: Option<u64>,
    pub logit_bias: Vec<(String, f32)>,
    pub ignore_eos: bool,
    /// What the output must match, with the parameter that asked for it (named in errors).
    pub grammar: Option<(&'static str, GrammarSpec)>,
    /// Scheduling priority: lower is more urgent (as vLLM's); 0 when absent.
    pub priority: Option<i64>,
}

/// A request that passed every check. Only [`Validator::validate`] builds one.
#[derive(Debug, Clone)]
pub struct ValidRequest {
    prompt: Vec<u32>,
    params: SamplingParams,
    criteria: StopCriteria,
    n: usize,
    logprobs: bool,
    constraint: Option<Constraint>,
    /// For a reasoning model's conversation: whether the prompt already opened the reasoning.
    reasoning: Option<bool>,
    /// Lower is admitted first and preempted last.
    priority: i32,
}

impl ValidRequest {
    /// The compiled grammar the output must match, if any.
    pub fn constraint(&self) -> Option<&Constraint> {
        self.constraint.as_ref()
    }
    pub fn prompt(&self) -> &[u32] {
        &self.prompt
    }
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }
    pub fn criteria(&self) -> &StopCriteria {
        &self.criteria
    }
    pub fn n(&self) -> usize {
        self.n
    }
    pub fn logprobs(&self) -> bool {
        self.logprobs
    }
    pub fn priority(&self) -> i32 {
        self.priority
    }
    /// `Some(opened)` when the answer may start with reasoning (see [`Reasoning`]).
    pub fn reasoning(&self) -> Option<bool> {
        self.reasoning
    }
}

/// Everything validation needs, shared by the handlers.
pub struct Validator {
    vocab: Vocab,
    template: Option<ChatTemplate>,
    info: ModelInfo,
    limits: Limits,
    /// The grammar compiler, or why this model cannot have one.
    grammars: Result<Arc<Grammars>, String>,
    /// Keeps message content from becoming control tokens; `None` when content is trusted.
    content_guard: Option<ContentGuard>,
    /// How the model writes tool calls (the grammar of requests with tools).
    tool_format: ToolFormat,
    /// Where a reasoning model's reasoning is.
    reasoning: Option<Reasoning>,
}

/// A reasoning model's markers: its answers may start with reasoning, and grammars apply after
/// it.
#[derive(Debug, Clone)]
pub struct Reasoning {
    pub markers: Markers,
}

fn range<T: PartialOrd + std::fmt::Display + Copy>(
    name: &str,
    value: Option<T>,
    lo: T,
    hi: T,
    lo_inclusive: bool,
) -> Result<Option<T>, ApiError> {
    let Some(v) = value else { return Ok(None) };
    let ok_lo = if lo_inclusive { v >= lo } else { v > lo };
    if !ok_lo || v > hi {
        let open = if lo_inclusive { "[" } else { "(" };
        return Err(ApiError::invalid(
            name,
            format!("`{name}` must be in {open}{lo}, {hi}], got {v}"),
        ));
    }
    Ok(Some(v))
}

/// A seed for requests that do not give one.
fn fresh_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
}

impl Validator {
    pub fn new(
        vocab: Vocab,
        template: Option<ChatTemplate>,
        info: ModelInfo,
        limits: Limits,
        grammars: Result<Arc<Grammars>, String>,
        trust_content: bool,
    ) -> Self {
        Validator {
            content_guard: (!trust_content).then(|| ContentGuard::new(&vocab.tokenizer)),
            vocab,
            template,
            info,
            limits,
            grammars,
            tool_format: ToolFormat::Json,
            reasoning: None,
        }
    }

    /// Conversations are answered by a reasoning model: grammars apply after its reasoning.
    pub fn with_reasoning(mut self, reasoning: Option<Reasoning>) -> Self {
        self.reasoning = reasoning;
        self
    }

    pub fn reasoning(&self) -> Option<&Reasoning> {
        self.reasoning.as_ref()
    }

    /// Requests with tools get grammars (and answers are read) in `format`.
    pub fn with_tool_format(mut self, format: ToolFormat) -> Self {
        self.tool_format = format;
        self
    }

    pub fn tool_format(&self) -> ToolFormat {
        self.tool_format
    }

    /// Compiles a request's grammar; a grammar that does not compile is a 400 naming `param`
    /// with the compiler's message.
    fn compile(&self, param: &'static str, spec: &GrammarSpec) -> Result<Constraint, ApiError> {
        let grammars = self.grammars.as_ref().map_err(|why| {
            ApiError::invalid(
                param,
                format!("structured output is not available for this model: {why}"),
            )
        })?;
        grammars.compile(spec).map_err(|e| match e {
            GrammarError::Busy { limit } => ApiError::Overloaded {
                what: "grammar compile slots",
                limit,
            },
            e => ApiError::invalid(param, format!("`{param}` does not compile: {e}")),
        })
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.vocab.tokenizer
    }

    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Renders and tokenizes a prompt.
    pub fn tokenize(&self, prompt: &PromptInput) -> Result<Vec<u32>, ApiError> {
        Ok(self.encode(prompt)?.0)
    }

    /// The prompt's ids, and for a conversation with a reasoning model whether the reasoning is
    /// already open at the end of the prompt.
    fn encode(&self, prompt: &PromptInput) -> Result<(Vec<u32>, Option<bool>), ApiError> {
        let (text, templated, opened) = match prompt {
            PromptInput::Tokens(ids) => {
                if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.info.vocab_size) {
                    return Err(ApiError::invalid(
                        "prompt",
                        format!(
                            "token id {bad} is outside the vocabulary of {}",
                            self.info.vocab_size
                        ),
                    ));
                }
                return Ok((ids.clone(), None));
            }
            PromptInput::Text { text, .. } => (text.clone(), false, None),
            PromptInput::Chat {
                messages,
                tools,
                vars,
            } => {
                let text = self.render(messages, tools.as_ref(), vars.as_ref())?;
                let opened = self.opens_reasoning(&text);
                if let Some(ids) =
                    self.content_as_text(messages, tools.as_ref(), vars.as_ref(), &text)?
                {
                    return Ok((ids, opened));
                }
                (text, true, opened)
            }
        };
        let ids = self
            .vocab
            .encode(&text, templated)
            .map_err(|e| ApiError::invalid(prompt.param(), format!("cannot tokenize: {e}")))?;
        Ok((ids, opened))
    }

    /// For a rendered conversation of a reasoning model, whether the template already opened
    /// the reasoning (its text ends with the open marker); `None` when the model has no markers.
    fn opens_reasoning(&self, rendered: &str) -> Option<bool> {
        let r = self.reasoning.as_ref()?;
        Some(rendered.trim_end().ends_with(&r.markers.open))
    }

    /// The conversation through the chat template (tools listed the template's way, or inlined
    /// into the messages when it knows none).
    fn render(
        &self,
        messages: &[ChatMessage],
        tools: Option<&Tools>,
        vars: Option<&serde_json::Value>,
    ) -> Result<String, ApiError> {
        let template = self
            .template
            .as_ref()
            .ok_or_else(|| ApiError::invalid("messages", "the model has no chat template"))?;
        let rendered = match tools {
            Some(tools) if template.knows_tools() => {
                let listed: Vec<_> = tools.functions.iter().map(|f| f.as_json()).collect();
                template.render_with(messages, Some(&listed), vars, true)
            }
            Some(tools) => {
                let inlined = tools.inline(messages, self.tool_format);
                template.render_with(&inlined, None, vars, true)
            }
            None if template.knows_tools() => template.render_with(messages, None, vars, true),
            None => {
                let inline = |m| inline_message(m, self.tool_format);
                let inlined: Vec<_> = messages.iter().map(inline).collect();
                template.render_with(&inlined, None, vars, true)
            }
        };
        rendered.map_err(|e| ApiError::invalid("messages", e.to_string()))
    }

    /// The prompt's ids when a message's content holds control-token text, tokenized so that
    /// it stays text ([`crate::chat_tokens`]); `None` when no content holds any (or content is
    /// trusted), and the whole rendering tokenizes as usual.
    fn content_as_text(
        &self,
        messages: &[ChatMessage],
        tools: Option<&Tools>,
        vars: Option<&serde_json::Value>,
        plain: &str,
    ) -> Result<Option<Vec<u32>>, ApiError> {
        let Some(guard) = &self.content_guard else {
            return Ok(None);
        };
        let special = messages.iter().find_map(|m| {
            let reasoning = m.reasoning_content.as_deref();
            (guard.special_in(&m.content)).or_else(|| reasoning.and_then(|r| guard.special_in(r)))
        });
        let Some(token) = special else {
            return Ok(None);
        };
        let marked: Vec<ChatMessage> = messages
            .iter()
            .map(|m| {
                // Only a text with a control token in it is marked.
                let mark = |t: &str| match guard.special_in(t) {
                    Some(_) => ContentGuard::wrap(t),
                    None => t.to_string(),
                };
                ChatMessage {
                    content: mark(&m.content),
                    reasoning_content: m.reasoning_content.as_deref().map(mark),
                    ..m.clone()
                }
            })
            .collect();
        let marked = self.render(&marked, tools, vars)?;
        guard
            .encode_marked(&self.vocab.tokenizer, plain, &marked, token)
            .map(Some)
            .map_err(|e| ApiError::invalid("messages", e.to_string()))
    }

    /// Checks a request into a [`ValidRequest`]: parameter ranges first (cheap), then the
    /// prompt is tokenized and its length checked, and only then is a grammar compiled, so that
    /// an over-long prompt never pays for a compile.
    pub fn validate(
        &self,
        prompt: &PromptInput,
        mut g: GenerationInput,
    ) -> Result<ValidRequest, ApiError> {
        if let PromptInput::Chat {
            tools: Some(tools), ..
        } = prompt
        {
            g.grammar
                .get_or_insert_with(|| ("tools", tools.grammar(self.tool_format)));
        }
        let mut params = self.sampling(&g)?;
        let n = range("n", g.n, 1, self.limits.max_n as u64, true)?.unwrap_or(1) as usize;
        let (lo, hi) = (i64::from(i32::MIN), i64::from(i32::MAX));
        let priority = range("priority", g.priority, lo, hi, true)?.unwrap_or(0) as i32;
        let top_logprobs = range(
            "top_logprobs",
            g.logprobs,
            0,
            self.limits.max_top_logprobs as u64,
            true,
        )?;
        self.check_stop(&g.stop)?;
        if let (true, Some((param, _))) = (g.ignore_eos, &g.grammar) {
            return Err(ApiError::invalid(
                "ignore_eos",
                format!("`ignore_eos` cannot be combined with `{param}`: a finished grammar ends with end-of-sequence"),
            ));
        }
        let (ids, reasoning) = self.encode(prompt)?;
        let max_tokens = self.max_tokens(prompt.param(), ids.len(), g.max_tokens)?;
        if let Some(top) = top_logprobs {
            self.check_logprob_entries(n, max_tokens, top)?;
        }
        let constraint = match g.grammar {
            Some((param, spec)) => {
                let spec = self.after_reasoning(spec, reasoning);
                Some(self.compile(param, &spec)?)
            }
            None => None,
        };
        params.top_logprobs = top_logprobs.unwrap_or(0) as usize;
        params.prompt_len = ids.len();
        Ok(ValidRequest {
            params,
            criteria: self.vocab.criteria(max_tokens, g.stop, g.ignore_eos),
            prompt: ids,
            n,
            logprobs: top_logprobs.is_some(),
            constraint,
            reasoning,
            priority,
        })
    }

    /// A grammar for a reasoning model's answer: `spec` after its reasoning, unless the answer
    /// has none (`opened` is `None`) or `spec` is a Lark grammar that writes the open marker
    /// itself (it says how the reasoning goes).
    fn after_reasoning(&self, spec: GrammarSpec, opened: Option<bool>) -> GrammarSpec {
        let (Some(r), Some(opened)) = (&self.reasoning, opened) else {
            return spec;
        };
        if matches!(&spec, GrammarSpec::Lark(src) if src.contains(&r.markers.open)) {
            return spec;
        }
        GrammarSpec::AfterReasoning {
            open: r.markers.open.clone(),
            close: r.markers.close.clone(),
            opened,
            inner: Box::new(spec),
        }
    }

    /// The sampling parameters, each checked against its range (the prompt-dependent fields,
    /// `top_logprobs` and `prompt_len`, are filled in by [`Validator::validate`]).
    fn sampling(&self, g: &GenerationInput) -> Result<SamplingParams, ApiError> {
        let top_k = match g.top_k {
            None | Some(-1) | Some(0) => 0,
            Some(k) if k > 0 => k as usize,
            Some(k) => {
                return Err(ApiError::invalid(
                    "top_k",
                    format!("`top_k` must be -1, 0 (off) or positive, got {k}"),
                ))
            }
        };
        Ok(SamplingParams {
            temperature: range("temperature", g.temperature, 0.0, 2.0, true)?.unwrap_or(1.0),
            top_k,
            top_p: range("top_p", g.top_p, 0.0, 1.0, false)?.unwrap_or(1.0),
            min_p: range("min_p", g.min_p, 0.0, 1.0, true)?.unwrap_or(0.0),
            repetition_penalty: range(
                "repetition_penalty",
                g.repetition_penalty,
                0.0,
                10.0,
                false,
            )?
            .unwrap_or(1.0),
            frequency_penalty: range("frequency_penalty", g.frequency_penalty, -2.0, 2.0, true)?
                .unwrap_or(0.0),
            presence_penalty: range("presence_penalty", g.presence_penalty, -2.0, 2.0, true)?
                .unwrap_or(0.0),
            logit_bias: self.logit_bias(&g.logit_bias)?,
            seed: g.seed.unwrap_or_else(fresh_seed),
            top_logprobs: 0,
            prompt_len: 0,
        })
    }

    /// `logit_bias` keys as token ids of this vocabulary, each bias in [-100, 100].
    fn logit_bias(&self, bias: &[(String, f32)]) -> Result<Vec<(u32, f32)>, ApiError> {
        let vocab_size = self.info.vocab_size;
        bias.iter()
            .map(|(key, bias)| {
                let token = key
                    .parse::<u32>()
                    .ok()
                    .filter(|&t| (t as usize) < vocab_size)
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "logit_bias",
                            format!("`logit_bias` keys must be token ids below {vocab_size}, got `{key}`"),
                        )
                    })?;
                range("logit_bias", Some(*bias), -100.0, 100.0, true)?;
                Ok((token, *bias))
            })
            .collect()
    }

    fn check_stop(&self, stop: &[String]) -> Result<(), ApiError> {
        let max = self.limits.max_stop;
        if stop.len() > max {
            return Err(ApiError::invalid(
                "stop",
                format!("`stop` supports up to {max} sequences, got {}", stop.len()),
            ));
        }
        if stop.iter().any(String::is_empty) {
            return Err(ApiError::invalid(
                "stop",
                "`stop` sequences must not be empty",
            ));
        }
        Ok(())
    }

    /// The prompt's length against the input limit, and the tokens left to generate: the
    /// request's `max_tokens` if it fits, else all the room the context leaves.
    fn max_tokens(
        &self,
        param: &'static str,
        prompt: usize,
        asked: Option<u64>,
    ) -> Result<usize, ApiError> {
        let l = &self.limits;
        let too_long = |message: String| ApiError::ContextLength { param, message };
        if prompt == 0 {
            return Err(ApiError::invalid(param, "the prompt is empty"));
        }
        if prompt > l.max_input_tokens {
            return Err(too_long(format!(
                "the prompt has {prompt} tokens, more than the limit of {} input tokens",
                l.max_input_tokens
            )));
        }
        let room = l.max_total_tokens.saturating_sub(prompt);
        match asked {
            Some(0) => Err(ApiError::invalid(
                "max_tokens",
                "`max_tokens` must be at least 1, got 0",
            )),
            Some(m) if m as usize > room => Err(too_long(format!(
                "this model's maximum context length is {} tokens; you requested {} tokens ({prompt} in the prompt, {m} to generate)",
                l.max_total_tokens,
                prompt + m as usize,
            ))),
            Some(m) => Ok(m as usize),
            None if room == 0 => Err(too_long(format!(
                "the prompt has {prompt} tokens and leaves no room to generate within {} tokens",
                l.max_total_tokens
            ))),
            None => Ok(room),
        }
    }

    /// Log-probability entries are held until the reply is sent: `n` x `max_tokens` x
    /// (1 + `top_logprobs`) must stay within the limit.
    fn check_logprob_entries(&self, n: usize, max_tokens: usize, top: u64) -> Result<(), ApiError> {
        let limit = self.limits.max_logprob_entries;
        let entries = (n as u64)
            .saturating_mul(max_tokens as u64)
            .saturating_mul(top + 1);
        if entries > limit as u64 {
            return Err(ApiError::invalid(
                "top_logprobs",
                format!(
                    "log-probabilities for n={n} x max_tokens={max_tokens} x (1 + top_logprobs={top}) = {entries} entries are over the limit of {limit} entries per request; lower `max_tokens`, `n` or `top_logprobs`"
                ),
            ));
        }
        Ok(())
    }
}

mod resume;
#[cfg(test)]
pub(crate) mod tests;

pub use resume::ResumeBase;
