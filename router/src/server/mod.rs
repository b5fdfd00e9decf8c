//! The HTTP edge: axum routes, shared state, the JSON rejection wrapper, and the path every
//! generation request takes (model check -> validation on a blocking thread -> scheduler).
//!
//! # Layout
//! - [`openai`]: OpenAI wire types; [`chat`]: chat completions and the shared OpenAI stream
//!   skeleton; [`completions`]: completions (one prompt or a list, `echo`), streamed or not.
//! - [`structured`]: the wire types of tools and `response_format`, and their checks.
//! - [`tgi`]: TGI's `/generate` and `/generate_stream`.
//! - [`anthropic`] and [`messages`]: Anthropic's `/v1/messages` and `/v1/messages/count_tokens`.
//! - [`openai_responses`] and [`responses`]: OpenAI's `/v1/responses` (stateless).
//! - [`resume`]: resume tokens of streams cut by a drain, and `POST /v1/resume`.
//! - [`misc`]: models, info, health, tokenize, detokenize.
//! - [`docs`]: the OpenAPI document.
//! - [`lifecycle`]: readiness phases, the late-bound API router, request ids, metrics.
//! - [`playground`]: the web chat page at `/ui/`, embedded in the binary.
//! - [`keys`]: API keys, the key check and [`keys::Caller`] (each key's account and limits are
//!   [`crate::quota`]'s).
//! - [`listener`]: the connection listener and its limits.

pub mod anthropic;
pub mod chat;
pub mod completions;
pub mod docs;
pub mod keys;
pub mod lifecycle;
pub mod listener;
pub mod messages;
pub mod misc;
pub mod openai;
pub mod openai_responses;
pub mod playground;
pub mod responses;
pub mod resume;
pub mod structured;
pub mod tgi;

use crate::backend::Backend;
use crate::error::{ApiError, Unavailable};
use crate::quota::Grant;
use crate::reasoning::{Gathered, Split};
use crate::scheduler::{Event, Failure, Scheduler, SchedulerGone, Submission};
use crate::telemetry::{self, Stage};
use crate::validation::{GenerationInput, PromptInput, ResumeBase, ValidRequest, Validator};
use axum::extract::{FromRequest, Request};
use axum::routing::{get, post};
use axum::Router;
use keys::Caller;
use lifecycle::Phase;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use wick_proto::{FinishReason, ModelInfo, TokenLogprob};

/// What every handler shares.
pub struct AppState {
    pub validator: Arc<Validator>,
    pub scheduler: Scheduler,
    pub backend: Backend,
    pub info: ModelInfo,
    /// The name clients use for the model.
    pub served_name: String,
    /// What must match for the same tokens ([`crate::fingerprint`]), in OpenAI responses.
    pub fingerprint: String,
    pub created: u64,
    pub phase: Arc<Phase>,
    pub admission: Admission,
    /// Signs and checks resume tokens (`--resume-key`); `None`: streams are not resumable.
    pub resume_key: Option<Arc<resume::ResumeKey>>,
}

/// Admission control: generation requests take a concurrency permit before validation (held by
/// the response) and a queue place until the scheduler admits them; none left means 429.
pub struct Admission {
    pub concurrency: Arc<Semaphore>,
    pub max_concurrent: usize,
    pub queue: Arc<Semaphore>,
    pub max_queued: usize,
    /// A request still waiting after this long is answered 503 and removed.
    pub max_queue_time: Option<Duration>,
}

impl Admission {
    pub fn new(max_concurrent: usize, max_queued: usize, max_queue_time: Option<Duration>) -> Self {
        Admission {
            concurrency: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            queue: Arc::new(Semaphore::new(max_queued)),
            max_queued,
            max_queue_time,
        }
    }

    /// Sequences in flight (a request holds one concurrency permit per choice).
    pub fn in_flight(&self) -> usize {
        self.max_concurrent - self.concurrency.available_permits()
    }

    /// Grows the request's one permit (taken at the door, before validation knew `n`) to one
    /// per choice: every choice is a sequence that costs as much as a request.
    fn choices_permit(
        &self,
        mut permit: OwnedSemaphorePermit,
        n: usize,
    ) -> Result<OwnedSemaphorePermit, ApiError> {
        if n > self.max_concurrent {
            return Err(ApiError::invalid(
                "n",
                format!(
                    "`n` is {n}, more than the server's {} concurrent sequences",
                    self.max_concurrent
                ),
            ));
        }
        if n > 1 {
            let more = self
                .concurrency
                .clone()
                .try_acquire_many_owned((n - 1) as u32)
                .map_err(|_| ApiError::Overloaded {
                    what: "concurrent sequence slots",
                    limit: self.max_concurrent,
                })?;
            permit.merge(more);
        }
        Ok(permit)
    }
}

pub type SharedState = Arc<AppState>;

/// Every route that needs the loaded model. Generation routes sit behind the API-key check
/// (when keys are configured); info, health and the OpenAPI document stay open.
pub fn app(state: SharedState, keys: Arc<keys::ApiKeys>) -> Router {
    let protected = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/responses", post(responses::responses))
        .route("/v1/resume", post(resume::resume))
        .route("/v1/messages", post(messages::messages))
        .route("/v1/messages/count_tokens", post(messages::count_tokens))
        .route("/v1/models", get(misc::models))
        .route("/generate", post(tgi::generate))
        .route("/generate_stream", post(tgi::generate_stream))
        .route("/tokenize", post(misc::tokenize))
        .route("/detokenize", post(misc::detokenize))
        .route_layer(axum::middleware::from_fn_with_state(
            keys,
            keys::require_api_key,
        ));
    Router::new()
        .merge(protected)
        .route("/info", get(misc::info))
        .route("/health", get(misc::health))
        .route("/openapi.json", get(docs::openapi))
        .fallback(misc::not_found)
        .method_not_allowed_fallback(misc::method_not_allowed)
        .with_state(state)
}

/// `axum::Json`, with rejections answered as OpenAI errors naming the offending field.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    axum::Json<T>: FromRequest<S, Rejection = axum::extract::rejection::JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::PayloadTooLarge {
                    limit: lifecycle::body_limit(),
                })
            }
            Err(rejection) => {
                let message = rejection.body_text();
                Err(ApiError::InvalidBody {
                    param: field_named_in(&message),
                    message,
                })
            }
        }
    }
}

/// The field a JSON error message names: the path serde_path_to_error puts before the message
/// (`max_tokens: invalid value ...`), joined with the field of ``unknown field `x` `` or
/// ``missing field `x` `` (`tools[0]: missing field `type`` names `tools[0].type`).
fn field_named_in(message: &str) -> Option<String> {
    let body = match message.find("target type: ") {
        Some(at) => &message[at + "target type: ".len()..],
        None => message,
    };
    let (path, rest) = match body.find(": ") {
        Some(at) if at > 0 && !body[..at].contains(' ') && &body[..at] != "." => {
            (Some(&body[..at]), &body[at + 2..])
        }
        _ => (None, body),
    };
    let field = rest.find("field `").and_then(|at| {
        let at = at + "field `".len();
        let len = rest[at..].find('`')?;
        Some(&rest[at..at + len])
    });
    match (path, field) {
        // An unknown field is its own path; a missing one's path is its parent's.
        (Some(p), Some(f)) if p == f || p.ends_with(&format!(".{f}")) => Some(p.to_string()),
        (Some(p), Some(f)) => Some(format!("{p}.{f}")),
        (p, f) => p.or(f).map(str::to_string),
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A response id with the given prefix, unique within the process.
pub fn new_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "{prefix}-{:x}{:06x}",
        now(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A generation that has been validated and queued.
pub struct Started {
    events: mpsc::Receiver<Event>,
    /// The first event, once [`Started::first`] has waited for it.
    peeked: Option<Event>,
    pub prompt_tokens: usize,
    pub n: usize,
    pub logprobs: bool,
    pub seed: u64,
    /// For a reasoning model's conversation, a fresh splitter of its answers' reasoning.
    reasoning: Option<Split>,
    queue_limit: Option<Duration>,
    /// The concurrency slot, released when the response (or its stream) ends.
    _permit: OwnedSemaphorePermit,
    /// What a resume token of this generation carries (`None`: it cannot be resumed).
    pub(crate) resume: Option<ResumeBase>,
    /// It continues a stream cut by a drain (its opening chunks were sent before the cut).
    pub(crate) resumed: bool,
    /// The caller's stream place under its key's limits, released with the permit.
    _grant: Option<Grant>,
    /// The request's trace span, which ends when the response (or its stream) does.
    _span: tracing::Span,
}

/// Events waiting in a merged generation's channel; the forwarders wait when it is full (the
/// scheduler never does: it writes into each generation's own channel).
const MERGED_CAPACITY: usize = 64;

impl Started {
    /// A splitter of one answer's reasoning from its content, for a reasoning model's
    /// conversation (`None` otherwise: the answer is all content).
    pub fn split(&self) -> Option<Split> {
        self.reasoning.clone()
    }

    /// Several generations of one request (one per prompt) as one, their choices numbered one
    /// after the other (generation `g`'s choice `j` becomes `g * n + j`). A task per generation
    /// forwards its events; dropping the merged one ends them, which drops (cancels) theirs.
    pub fn merge(mut all: Vec<Started>) -> Started {
        if all.len() == 1 {
            return all.remove(0);
        }
        let (tx, events) = mpsc::channel(MERGED_CAPACITY);
        let merged = Started {
            events,
            peeked: None,
            prompt_tokens: all.iter().map(|s| s.prompt_tokens).sum(),
            n: all.iter().map(|s| s.n).sum(),
            logprobs: all[0].logprobs,
            seed: all[0].seed,
            reasoning: None,
            queue_limit: all[0].queue_limit,
            _permit: {
                let mut permits = all.iter_mut().map(|s| s.take_permit());
                let mut first = permits.next().expect("at least one generation");
                permits.for_each(|p| first.merge(p));
                first
            },
            // Each generation keeps its own, until its forwarder ends.
            _grant: None,
            // Several generations are never resumable.
            resume: None,
            resumed: false,
            // Each generation keeps the request's span too.
            _span: tracing::Span::none(),
        };
        let mut offset = 0;
        for mut one in all {
            let (tx, shift) = (tx.clone(), offset);
            offset += one.n;
            tokio::spawn(async move {
                while let Some(event) = one.next().await {
                    if tx.send(event.shifted(shift)).await.is_err() {
                        return;
                    }
                }
            });
        }
        merged
    }

    /// The concurrency permit, leaving an empty one (the merged generation holds them all).
    fn take_permit(&mut self) -> OwnedSemaphorePermit {
        let empty = self
            ._permit
            .split(0)
            .expect("zero permits always split off");
        std::mem::replace(&mut self._permit, empty)
    }

    pub(crate) fn failure(&self, failure: Failure, message: String) -> ApiError {
        match failure {
            Failure::QueueTimeout => ApiError::QueueTimeout {
                limit_s: self.queue_limit.map(|d| d.as_secs_f64()).unwrap_or(0.0),
            },
            Failure::ShuttingDown => ApiError::Unavailable(Unavailable::ShuttingDown),
            Failure::Backend => ApiError::Backend { message },
            Failure::Grammar => ApiError::GrammarFailed { message },
        }
    }

    /// Waits for the first event, so that a failure before any token (queue timeout, backend
    /// error, shutdown) is answered with an HTTP error instead of a broken stream.
    pub async fn first(&mut self) -> Result<(), ApiError> {
        match self.events.recv().await {
            Some(Event::Error {
                failure, message, ..
            }) => Err(self.failure(failure, message)),
            Some(event) => {
                self.peeked = Some(event);
                Ok(())
            }
            None => Err(ApiError::Unavailable(Unavailable::SchedulerGone)),
        }
    }

    /// The next event (`None` once the scheduler is gone).
    pub async fn next(&mut self) -> Option<Event> {
        match self.peeked.take() {
            Some(e) => Some(e),
            None => self.events.recv().await,
        }
    }
}

impl AppState {
    pub fn check_model(&self, model: Option<&str>) -> Result<(), ApiError> {
        match model {
            Some(m) if m != self.served_name && m != self.info.model_id => {
                Err(ApiError::ModelNotFound {
                    model: m.to_string(),
                    served: self.served_name.clone(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Admits (the caller's key quotas, then a concurrency permit), validates (on a blocking
    /// thread) and queues a generation. Each prompt of a request counts: a completions request
    /// with a list of prompts starts one generation per prompt.
    pub async fn start(
        &self,
        caller: &Caller,
        prompt: PromptInput,
        input: GenerationInput,
    ) -> Result<Started, ApiError> {
        self.start_with(caller, move |v| v.validate(&prompt, input))
            .await
    }

    /// Admits, checks and queues the rest of a stream cut by a drain ([`resume`]).
    pub async fn start_resumed(
        &self,
        caller: &Caller,
        base: ResumeBase,
    ) -> Result<Started, ApiError> {
        let mut started = self.start_with(caller, move |v| v.resume(base)).await?;
        started.resumed = true;
        Ok(started)
    }

    async fn start_with(
        &self,
        caller: &Caller,
        validate: impl FnOnce(&Validator) -> Result<ValidRequest, ApiError> + Send + 'static,
    ) -> Result<Started, ApiError> {
        let started = self.admit_and_queue(caller, validate).await;
        if let Err(e) = &started {
            telemetry::failed(&caller.span, &e.to_string());
        }
        started
    }

    async fn admit_and_queue(
        &self,
        caller: &Caller,
        validate: impl FnOnce(&Validator) -> Result<ValidRequest, ApiError> + Send + 'static,
    ) -> Result<Started, ApiError> {
        if self.phase.is_draining() {
            return Err(ApiError::Unavailable(Unavailable::ShuttingDown));
        }
        let a = &self.admission;
        let arrived = Instant::now();
        let grant = caller
            .account
            .as_ref()
            .map(|acc| acc.admit(arrived))
            .transpose()?;
        let permit =
            a.concurrency
                .clone()
                .try_acquire_owned()
                .map_err(|_| ApiError::Overloaded {
                    what: "concurrent request slots",
                    limit: a.max_concurrent,
                })?;
        let validator = self.validator.clone();
        let validation = telemetry::stage(&caller.span, Stage::Validation, 0);
        let valid: ValidRequest = tokio::task::spawn_blocking(move || validate(&validator))
            .await
            .map_err(|e| ApiError::TaskFailed {
                task: "validation",
                message: e.to_string(),
            })??;
        drop(validation);
        telemetry::count(
            &caller.span,
            "gen_ai.usage.input_tokens",
            valid.params().prompt_len,
        );
        let reasoning = (valid.reasoning())
            .zip(self.validator.reasoning())
            .map(|(opened, r)| Split::new(&r.markers, opened));
        let (prompt_tokens, n, logprobs, seed) = (
            valid.params().prompt_len,
            valid.n(),
            valid.logprobs(),
            valid.params().seed,
        );
        // With a resume key, a stream of one choice without a grammar can outlive a drain.
        let resume = (self.resume_key.is_some() && n == 1 && valid.constraint().is_none())
            .then(|| ResumeBase::of(&valid));
        let permit = a.choices_permit(permit, n)?;
        let queue_permit =
            a.queue
                .clone()
                .try_acquire_owned()
                .map_err(|_| ApiError::Overloaded {
                    what: "queue places",
                    limit: a.max_queued,
                })?;
        let submission = Submission {
            request: valid,
            request_id: caller.request_id.0.clone(),
            account: grant.as_ref().map(|g| g.account().clone()),
            span: caller.span.clone(),
            arrived,
            deadline: a.max_queue_time.map(|t| arrived + t),
            queue_permit: Some(queue_permit),
        };
        let events = self
            .scheduler
            .submit(submission)
            .await
            .map_err(|SchedulerGone| ApiError::Unavailable(Unavailable::SchedulerGone))?;
        Ok(Started {
            events,
            peeked: None,
            prompt_tokens,
            n,
            logprobs,
            seed,
            reasoning,
            queue_limit: a.max_queue_time,
            resume,
            resumed: false,
            _permit: permit,
            _grant: grant,
            _span: caller.span.clone(),
        })
    }

    /// Renders and tokenizes a prompt on a blocking thread (`/tokenize`, token counts).
    pub async fn tokenize(&self, prompt: PromptInput) -> Result<Vec<u32>, ApiError> {
        let validator = self.validator.clone();
        tokio::task::spawn_blocking(move || validator.tokenize(&prompt))
            .await
            .map_err(|e| ApiError::TaskFailed {
                task: "tokenization",
                message: e.to_string(),
            })?
    }

    /// The text of one token, for log-probability reports.
    pub fn token_text(&self, token: u32) -> String {
        self.validator
            .tokenizer()
            .decode(&[token], false)
            .unwrap_or_default()
    }
}

/// One choice of a finished, non-streamed generation.
#[derive(Debug, Default)]
pub struct ChoiceOutput {
    /// The answer's text: its content, apart from any reasoning.
    pub text: String,
    /// A reasoning model's reasoning (`Some` when the answer reasoned, even emptily).
    pub reasoning: Option<String>,
    pub reasoning_tokens: usize,
    pub tokens: Vec<(u32, f32, Vec<TokenLogprob>)>,
    pub finish: Option<FinishReason>,
    pub completion_tokens: usize,
    pub cached_tokens: usize,
    /// The stop string that ended the choice, when one did.
    pub stop_sequence: Option<String>,
}

/// Waits for every choice of a generation to finish.
pub async fn collect(started: &mut Started) -> Result<Vec<ChoiceOutput>, ApiError> {
    let mut choices: Vec<ChoiceOutput> = (0..started.n).map(|_| ChoiceOutput::default()).collect();
    // A reasoning model's answers are split as they arrive.
    let mut splits: Vec<Option<(Split, Gathered)>> = (0..started.n)
        .map(|_| started.split().map(|s| (s, Gathered::default())))
        .collect();
    let mut done = 0;
    while done < started.n {
        match started.next().await {
            Some(Event::Token {
                choice,
                token,
                text,
                logprob,
                top_logprobs,
            }) => {
                let c = &mut choices[choice];
                match &mut splits[choice] {
                    Some((split, gathered)) => gathered.add(split.push(&text)),
                    None => c.text.push_str(&text),
                }
                c.tokens.push((token, logprob, top_logprobs));
            }
            Some(Event::Finished {
                choice,
                reason,
                completion_tokens,
                cached_tokens,
                stop_sequence,
                ..
            }) => {
                if let Some((mut split, mut gathered)) = splits[choice].take() {
                    gathered.close(&mut split);
                    let c = &mut choices[choice];
                    (c.text, c.reasoning) = (gathered.content, gathered.reasoning);
                    c.reasoning_tokens = split.tokens();
                }
                choices[choice].finish = Some(reason);
                choices[choice].completion_tokens = completion_tokens;
                choices[choice].cached_tokens = cached_tokens;
                choices[choice].stop_sequence = stop_sequence;
                done += 1;
            }
            Some(Event::Error {
                failure, message, ..
            }) => return Err(started.failure(failure, message)),
            None => return Err(ApiError::Unavailable(Unavailable::SchedulerGone)),
        }
    }
    Ok(choices)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_name_their_field() {
        assert_eq!(
            field_named_in("Failed to deserialize the JSON body into the target type: missing field `messages` at line 1 column 2"),
            Some("messages".into())
        );
        assert_eq!(field_named_in("expected value at line 1"), None);
        assert_eq!(
            field_named_in("Failed to deserialize the JSON body into the target type: max_tokens: invalid value: integer `-5`, expected u64 at line 1 column 20"),
            Some("max_tokens".into())
        );
        assert_eq!(
            field_named_in("Failed to deserialize the JSON body into the target type: messages[0].role: invalid type: integer `1`, expected a string"),
            Some("messages[0].role".into())
        );
        assert_eq!(
            field_named_in("Failed to deserialize the JSON body into the target type: tools[0]: missing field `type` at line 1 column 60"),
            Some("tools[0].type".into())
        );
        assert_eq!(
            field_named_in("Failed to deserialize the JSON body into the target type: frobnicate: unknown field `frobnicate`, expected one of `a`"),
            Some("frobnicate".into())
        );
    }
}
