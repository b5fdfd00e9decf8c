//! `POST /v1/completions`, whole or streamed over SSE: one prompt or a list of them (each with
//! `n` choices, indexed across the prompts: prompt `p`'s choice `j` is `p * n + j`), with `echo`
//! (the prompt's text before each choice's) and completions' log-probabilities.
//!
//! Each prompt is validated and queued as its own generation (admission counts every choice);
//! their events are merged into one stream ([`Started::merge`]). A prompt that fails validation
//! fails the request, and the prompts already queued are cancelled by drop.

use super::chat::{include_usage, openai_stream, sse_json, sse_response, usage_of};
use super::chat::{ChunkFormat, StreamId};
use super::keys::Caller;
use super::openai::*;
use super::resume::StreamApi;
use super::{collect, new_id, now, ApiJson, SharedState, Started};
use crate::error::ApiError;
use crate::validation::PromptInput;
use axum::extract::State;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use wick_proto::{FinishReason, TokenLogprob};

/// Completions' log-probabilities of `tokens`; `offset` is the text offset of the first one
/// (the bytes of the choice's earlier tokens), advanced past them.
fn completion_logprobs(
    state: &SharedState,
    tokens: &[(u32, f32, Vec<TokenLogprob>)],
    offset: &mut usize,
) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    for (token, logprob, top) in tokens {
        let text = state.token_text(*token);
        out.text_offset.push(*offset);
        *offset += text.len();
        out.tokens.push(text);
        out.token_logprobs.push(*logprob);
        out.top_logprobs.push(
            top.iter()
                .map(|t| (state.token_text(t.token), t.logprob))
                .collect(),
        );
    }
    out
}

#[utoipa::path(post, path = "/v1/completions", request_body = CompletionRequest,
    responses((status = 200, description = "The completion, or an SSE stream of `text_completion` chunks when `stream` is true", body = Completion),
              (status = 400, description = "Invalid parameter", body = crate::error::ErrorBody),
              (status = 404, description = "Unknown model", body = crate::error::ErrorBody)))]
pub async fn completions(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let (stream, include_usage) = (req.stream, include_usage(&req.stream_options));
    state.check_model(req.model.as_deref())?;
    let (prompts, input, echo) = req.into_inputs()?;
    let limit = state.admission.max_concurrent;
    if prompts.len() > limit {
        return Err(ApiError::invalid(
            "prompt",
            format!(
                "{} prompts are more than the server's {limit} concurrent sequences",
                prompts.len()
            ),
        ));
    }
    let echoes: Vec<String> = match echo {
        true => prompts.iter().map(|p| prompt_text(&state, p)).collect(),
        false => Vec::new(),
    };
    let mut each = Vec::with_capacity(prompts.len());
    for prompt in prompts {
        each.push(state.start(&caller, prompt, input.clone()).await?);
    }
    let per_prompt = each[0].n;
    let mut started = Started::merge(each);
    // Choice `c` echoes prompt `c / n`.
    let echo_of = |choice: usize| echoes.get(choice / per_prompt).cloned().unwrap_or_default();
    let api = StreamApi::Completions;
    let sid = StreamId {
        state: state.clone(),
        id: new_id(api.id_prefix()),
        created: now(),
        logprobs: started.logprobs,
        api,
    };
    if stream {
        started.first().await?;
        let mut format = CompletionChunks::new(sid, started.n);
        format.echo = (0..started.n).map(echo_of).collect();
        return Ok(sse_response(openai_stream(started, include_usage, format)));
    }
    let choices = collect(&mut started).await?;
    let response = Completion {
        id: sid.id,
        object: "text_completion",
        created: sid.created,
        model: state.served_name.clone(),
        system_fingerprint: state.fingerprint.clone(),
        usage: Some(usage_of(&started, &choices)),
        choices: choices
            .into_iter()
            .enumerate()
            .map(|(index, c)| CompletionChoice {
                index,
                logprobs: started
                    .logprobs
                    .then(|| completion_logprobs(&state, &c.tokens, &mut 0)),
                text: echo_of(index) + &c.text,
                finish_reason: c.finish.map(|f| f.as_openai().to_string()),
            })
            .collect(),
    };
    Ok(axum::Json(response).into_response())
}

/// The text of a prompt, as `echo` gives it back.
fn prompt_text(state: &SharedState, prompt: &PromptInput) -> String {
    match prompt {
        PromptInput::Text { text, .. } => text.clone(),
        PromptInput::Tokens(ids) => state
            .validator
            .tokenizer()
            .decode(ids, false)
            .unwrap_or_default(),
        PromptInput::Chat { .. } => String::new(),
    }
}

/// Completion chunks; `offsets[choice]` is the `text_offset` of that choice's next token, so
/// that streamed offsets count from the start of the choice's text, as whole answers do.
pub(super) struct CompletionChunks {
    sid: StreamId,
    offsets: Vec<usize>,
    /// Per choice, its prompt's text when `echo` is on (empty otherwise).
    echo: Vec<String>,
}

impl CompletionChunks {
    /// For `n` choices, echoing nothing.
    pub(super) fn new(sid: StreamId, n: usize) -> CompletionChunks {
        CompletionChunks {
            sid,
            offsets: vec![0; n],
            echo: vec![String::new(); n],
        }
    }

    fn chunk(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> SseEvent {
        let s = &self.sid;
        sse_json(&Completion {
            id: s.id.clone(),
            object: "text_completion",
            created: s.created,
            model: s.state.served_name.clone(),
            system_fingerprint: s.state.fingerprint.clone(),
            choices,
            usage,
        })
    }
}

impl ChunkFormat for CompletionChunks {
    fn sid(&self) -> &StreamId {
        &self.sid
    }

    fn opening(&self, _: usize) -> Vec<SseEvent> {
        let echoed = self.echo.iter().enumerate().filter(|(_, t)| !t.is_empty());
        echoed
            .map(|(index, text)| {
                let c = CompletionChoice {
                    index,
                    text: text.clone(),
                    logprobs: None,
                    finish_reason: None,
                };
                self.chunk(vec![c], None)
            })
            .collect()
    }

    fn token(
        &mut self,
        choice: usize,
        token: u32,
        text: String,
        logprob: f32,
        top: &[TokenLogprob],
    ) -> Option<SseEvent> {
        if text.is_empty() && !self.sid.logprobs {
            return None;
        }
        let logprobs = self.sid.logprobs.then(|| {
            let offset = &mut self.offsets[choice];
            completion_logprobs(&self.sid.state, &[(token, logprob, top.to_vec())], offset)
        });
        let c = CompletionChoice {
            index: choice,
            text,
            logprobs,
            finish_reason: None,
        };
        Some(self.chunk(vec![c], None))
    }

    fn finish(&mut self, choice: usize, reason: FinishReason) -> Vec<SseEvent> {
        let finish_reason = Some(reason.as_openai().to_string());
        let c = CompletionChoice {
            index: choice,
            text: String::new(),
            logprobs: None,
            finish_reason,
        };
        vec![self.chunk(vec![c], None)]
    }

    fn usage(&self, usage: Usage) -> SseEvent {
        self.chunk(Vec::new(), Some(usage))
    }
}
