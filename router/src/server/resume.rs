//! Streams that survive a drain: when `--shutdown-timeout` runs out, a stream that can be resumed
//! ends with an error event carrying a resume token, and `POST /v1/resume` with that token, on
//! any replica with the same key and `system_fingerprint`, continues the stream where it stopped.
//! Output is a function of (prompt, parameters, seed, position), so the continuation is exactly
//! what the first server would have sent.
//!
//! The token ([`ResumeState`]) holds the prompt's ids, the ids already generated, the resolved
//! sampling parameters (the seed included), the stop criteria and the stream's identity (API,
//! id, created), as JSON, signed with HMAC-SHA256 under `--resume-key`, the secret the replicas
//! share: `base64url(json) "." base64url(mac)`. A client can read it but not change it.
//!
//! Resumable: OpenAI chat completions and completions streams of one choice without a grammar
//! (tools, `response_format`); other streams end with the shutting-down error as before.
//!
//! Resuming: the validator checks the token's request like any other ([`Validator::resume`]),
//! the prompt re-enters as the prompt plus the generated ids with the original prompt length
//! (so penalties still count the generated ones as output), the scheduler replays the generated
//! ids through the sequence's output text (stop strings and partial characters held back before
//! the cut are released as they would have been), and the stream's chunk format replays them too
//! (a reasoning split, text offsets); the resumed stream then sends only what follows, with the
//! same id, no opening chunk, and usage counting the whole answer.
//!
//! [`Validator::resume`]: crate::validation::Validator::resume

use super::chat::{openai_stream, sse_json, sse_response, ChatChunks, ChunkFormat, StreamId};
use super::completions::CompletionChunks;
use super::keys::{constant_eq, Caller};
use super::{ApiJson, SharedState};
use crate::error::ApiError;
use crate::request::OutputText;
use crate::tools::stream::AnswerStream;
use crate::validation::ResumeBase;
use axum::extract::State;
use axum::response::sse::Event as SseEvent;
use axum::response::Response;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

/// Version of the token's format.
const VERSION: u32 = 1;
/// The shortest `--resume-key` accepted (bytes).
pub const MIN_KEY_BYTES: usize = 16;

/// The replicas' shared secret for signing resume tokens.
pub struct ResumeKey(Vec<u8>);

impl std::fmt::Debug for ResumeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResumeKey(..)")
    }
}

impl ResumeKey {
    pub fn new(secret: &[u8]) -> Option<ResumeKey> {
        (secret.len() >= MIN_KEY_BYTES).then(|| ResumeKey(secret.to_vec()))
    }

    /// HMAC-SHA256 (RFC 2104) of `message`.
    fn mac(&self, message: &[u8]) -> [u8; 32] {
        const BLOCK: usize = 64;
        let mut key = [0u8; BLOCK];
        if self.0.len() > BLOCK {
            key[..32].copy_from_slice(&Sha256::digest(&self.0));
        } else {
            key[..self.0.len()].copy_from_slice(&self.0);
        }
        let pad = |byte: u8| key.map(|k| k ^ byte);
        let inner = Sha256::new()
            .chain_update(pad(0x36))
            .chain_update(message)
            .finalize();
        Sha256::new()
            .chain_update(pad(0x5c))
            .chain_update(inner)
            .finalize()
            .into()
    }

    fn seal(&self, state: &ResumeState) -> String {
        let json = serde_json::to_vec(state).expect("the state serializes");
        format!("{}.{}", B64.encode(&json), B64.encode(self.mac(&json)))
    }

    fn open(&self, token: &str) -> Result<ResumeState, ApiError> {
        let bad = |why: &str| ApiError::invalid("resume_token", format!("`resume_token` {why}"));
        let (body, mac) = token.split_once('.').ok_or_else(|| bad("is malformed"))?;
        let json = B64.decode(body).map_err(|_| bad("is malformed"))?;
        let mac = B64.decode(mac).map_err(|_| bad("is malformed"))?;
        if !constant_eq(&mac, &self.mac(&json)) {
            return Err(bad(
                "does not carry a valid signature (altered, or signed with another --resume-key)",
            ));
        }
        let state: ResumeState = serde_json::from_slice(&json).map_err(|_| bad("is malformed"))?;
        if state.v != VERSION {
            return Err(bad("is of another token version"));
        }
        Ok(state)
    }
}

/// Which stream format a token resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamApi {
    ChatCompletions,
    Completions,
}

impl StreamApi {
    /// The prefix of its response ids.
    pub fn id_prefix(self) -> &'static str {
        match self {
            StreamApi::ChatCompletions => "chatcmpl",
            StreamApi::Completions => "cmpl",
        }
    }
}

/// A resume token's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ResumeState {
    v: u32,
    fingerprint: String,
    api: StreamApi,
    id: String,
    created: u64,
    include_usage: bool,
    request: ResumeBase,
}

/// The event that ends a stream cut by the drain: OpenAI's error shape (so a client that knows
/// nothing of resuming sees the shutting-down error as before) with the token beside the message.
pub(super) fn cut_event(
    sid: &StreamId,
    include_usage: bool,
    base: &ResumeBase,
    sent: &[u32],
    key: &ResumeKey,
) -> SseEvent {
    let mut request = base.clone();
    request.sent.extend_from_slice(sent);
    let token = key.seal(&ResumeState {
        v: VERSION,
        fingerprint: sid.state.fingerprint.clone(),
        api: sid.api,
        id: sid.id.clone(),
        created: sid.created,
        include_usage,
        request,
    });
    let error = ApiError::Unavailable(crate::error::Unavailable::ShuttingDown);
    error.count();
    let mut body = serde_json::to_value(error.body()).expect("error bodies serialize");
    body["error"]["message"] =
        "the server is shutting down; continue this stream with POST /v1/resume".into();
    body["error"]["code"] = "stream_cut".into();
    body["error"]["resume_token"] = token.into();
    sse_json(&body)
}

/// `POST /v1/resume`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"resume_token": "eyJ2IjoxLCJmaW5nZXJwcmludCI6In...In19.q2dPm3dlY2Jvb2s"}))]
#[serde(deny_unknown_fields)]
pub struct ResumeRequest {
    /// The token of a stream's last event (`error.resume_token`).
    pub resume_token: String,
}

#[utoipa::path(post, path = "/v1/resume", request_body = ResumeRequest,
    responses((status = 200, description = "The rest of the cut stream: SSE chunks of its API (chat or completions), with its id, after the last token it sent"),
              (status = 400, description = "An invalid, altered or foreign token", body = crate::error::ErrorBody),
              (status = 409, description = "The token is from a server with another system_fingerprint", body = crate::error::ErrorBody)))]
pub async fn resume(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(req): ApiJson<ResumeRequest>,
) -> Result<Response, ApiError> {
    let key = state
        .resume_key
        .clone()
        .ok_or_else(|| ApiError::Unsupported {
            param: "resume_token".into(),
        })?;
    let token = key.open(&req.resume_token)?;
    if token.fingerprint != state.fingerprint {
        return Err(ApiError::FingerprintMismatch {
            token: token.fingerprint,
            server: state.fingerprint.clone(),
        });
    }
    let base = token.request;
    let mut started = state.start_resumed(&caller, base.clone()).await?;
    started.first().await?;
    let sid = StreamId {
        state: state.clone(),
        id: token.id,
        created: token.created,
        logprobs: base.logprobs,
        api: token.api,
    };
    let stream = match token.api {
        StreamApi::ChatCompletions => {
            let answer = AnswerStream::new(None, state.validator.tool_format(), started.split());
            let format = replayed(&state, &base, ChatChunks::new(sid, vec![answer]));
            sse_response(openai_stream(started, token.include_usage, format))
        }
        StreamApi::Completions => {
            let format = replayed(&state, &base, CompletionChunks::new(sid, 1));
            sse_response(openai_stream(started, token.include_usage, format))
        }
    };
    Ok(stream)
}

/// `format` as it was after the generated ids: each one's text as the first server's output
/// text released it, pushed through the format with its chunk dropped.
fn replayed<F: ChunkFormat>(state: &SharedState, base: &ResumeBase, mut format: F) -> F {
    let criteria =
        (state.validator.vocab()).criteria(base.max_tokens, base.stop.clone(), base.ignore_eos);
    let mut output = OutputText::new(state.validator.vocab().tokenizer.clone(), criteria);
    for &token in &base.sent {
        let text = output.push(token).text;
        let _sent_before = format.token(0, token, text, 0.0, &[]);
    }
    format
}

#[cfg(test)]
mod tests {
    use super::*;
    use wick_proto::SamplingParams;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn the_mac_is_hmac_sha256() {
        // RFC 4231, test cases 2 and 6 (a key longer than the block is hashed first).
        let k = ResumeKey(b"Jefe".to_vec());
        assert_eq!(
            hex(&k.mac(b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let k = ResumeKey(vec![0xaa; 131]);
        assert_eq!(
            hex(&k.mac(b"Test Using Larger Than Block-Size Key - Hash Key First")),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    fn state() -> ResumeState {
        ResumeState {
            v: VERSION,
            fingerprint: "wick-test".into(),
            api: StreamApi::ChatCompletions,
            id: "chatcmpl-1".into(),
            created: 7,
            include_usage: true,
            request: ResumeBase {
                prompt: vec![1, 2, 3],
                sent: vec![4, 5],
                params: SamplingParams {
                    seed: 42,
                    temperature: 0.8,
                    ..SamplingParams::default()
                },
                max_tokens: 16,
                stop: vec!["\n\n".into()],
                ignore_eos: false,
                logprobs: true,
                priority: -1,
                reasoning: None,
            },
        }
    }

    #[test]
    fn a_token_opens_to_what_was_sealed() {
        let key = ResumeKey::new(b"sixteen bytes ok").unwrap();
        let opened = key.open(&key.seal(&state())).unwrap();
        assert_eq!(opened.request.prompt, [1, 2, 3]);
        assert_eq!(opened.request.sent, [4, 5]);
        assert_eq!(opened.request.params.seed, 42);
        assert_eq!(opened.id, "chatcmpl-1");
        assert!(ResumeKey::new(b"too short").is_none());
    }

    #[test]
    fn an_altered_or_foreign_token_is_refused() {
        let key = ResumeKey::new(b"sixteen bytes ok").unwrap();
        let token = key.seal(&state());
        let (body, mac) = token.split_once('.').unwrap();
        // Another prompt under the old signature.
        let mut forged = state();
        forged.request.prompt = vec![9, 9, 9];
        let forged_body = B64.encode(serde_json::to_vec(&forged).unwrap());
        for bad in [
            format!("{forged_body}.{mac}"),
            format!("{body}.{}", B64.encode([0u8; 32])),
            format!("{body}{mac}"),
            "not a token".to_string(),
        ] {
            let e = key.open(&bad).unwrap_err().to_string();
            assert!(e.starts_with("`resume_token` "), "{e}");
        }
        let other = ResumeKey::new(b"another key, 16+").unwrap();
        let e = other.open(&token).unwrap_err().to_string();
        assert!(e.contains("signed with another --resume-key"), "{e}");
    }
}
