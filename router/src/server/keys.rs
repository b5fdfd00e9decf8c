//! API keys: the keys the server accepts (`--api-key`, and `--api-key-file` with each key's
//! name and limits), the check that generation routes require one, and [`Caller`], who sent a
//! request (its id and its key's [`Account`]), which handlers pass to `AppState::start`.
//!
//! Key file: one key per line, optionally followed by settings; `#` starts a comment.
//!
//! ```text
//! sk-alice-...   name=alice rpm=60 tpm=20000 streams=4
//! sk-batch-...   name=batch tpm=200000
//! sk-plain-...
//! ```
//!
//! `name` labels the key in metrics and logs (letters, digits, `-`, `_` and `.`; default `key-`
//! and the first 8 hex digits of the key's SHA-256, so the key itself never appears); `rpm`,
//! `tpm` and `streams` are its requests per minute, tokens per minute (prompt and generated) and
//! concurrent streams ([`crate::quota`]). Keys are compared in full and in constant time per key.

use super::lifecycle::RequestId;
use crate::cli::CliError;
use crate::error::ApiError;
use crate::quota::{Account, Limits};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Accepted API keys and their accounts; empty means no authentication.
#[derive(Debug, Default)]
pub struct ApiKeys(Vec<(String, Arc<Account>)>);

impl ApiKeys {
    /// `--api-key` (unlimited) and the keys of `--api-key-file`.
    pub fn load(key: Option<&str>, file: Option<&Path>) -> Result<ApiKeys, CliError> {
        let now = Instant::now();
        let mut keys: Vec<(String, Arc<Account>)> = Vec::new();
        if let Some(k) = key {
            keys.push((k.to_string(), account(k, None, Limits::default(), now)));
        }
        if let Some(path) = file {
            let bad = |line: usize, message: String| CliError::KeyFile {
                path: path.to_path_buf(),
                line,
                message,
            };
            let text = std::fs::read_to_string(path)?;
            for (i, line) in text.lines().enumerate() {
                let Some(entry) = parse_line(line).map_err(|m| bad(i + 1, m))? else {
                    continue;
                };
                let acc = account(entry.key, entry.name, entry.limits, now);
                if keys.iter().any(|(_, a)| a.label() == acc.label()) {
                    return Err(bad(
                        i + 1,
                        format!("the name `{}` is used twice", acc.label()),
                    ));
                }
                keys.push((entry.key.to_string(), acc));
            }
            if keys.is_empty() {
                return Err(CliError::NoKeyInFile {
                    path: path.to_path_buf(),
                });
            }
        }
        Ok(ApiKeys(keys))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The account of the key given, comparing every key in full so that timing reveals no
    /// matching prefix.
    fn find(&self, given: &str) -> Option<&Arc<Account>> {
        self.0.iter().fold(None, |found, (k, a)| {
            let hit = constant_eq(k.as_bytes(), given.as_bytes());
            found.or(hit.then_some(a))
        })
    }
}

fn account(key: &str, name: Option<&str>, limits: Limits, now: Instant) -> Arc<Account> {
    let label = name.map_or_else(|| default_label(key), str::to_string);
    Arc::new(Account::new(label, limits, now))
}

/// `key-` and the first 8 hex digits of the key's SHA-256.
fn default_label(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("key-{hex}")
}

/// One key of a key file.
#[derive(Debug, PartialEq)]
struct Entry<'a> {
    key: &'a str,
    name: Option<&'a str>,
    limits: Limits,
}

/// A key file's line: `None` for blank and comment lines, else the key and its settings, or
/// what is wrong with them.
fn parse_line(line: &str) -> Result<Option<Entry<'_>>, String> {
    let mut words = line.split('#').next().unwrap_or("").split_whitespace();
    let Some(key) = words.next() else {
        return Ok(None);
    };
    let mut entry = Entry {
        key,
        name: None,
        limits: Limits::default(),
    };
    for word in words {
        let Some((setting, value)) = word.split_once('=') else {
            return Err(format!(
                "`{word}` is not a setting: expected name=, rpm=, tpm= or streams="
            ));
        };
        let count = || match value.parse::<u64>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(format!(
                "`{setting}` must be a whole number of at least 1, got `{value}`"
            )),
        };
        match setting {
            "name" if valid_name(value) => entry.name = Some(value),
            "name" => {
                return Err(format!(
                    "`name` must be 1 to 64 letters, digits, `-`, `_` or `.`, got `{value}`"
                ))
            }
            "rpm" => entry.limits.requests_per_minute = Some(count()?),
            "tpm" => entry.limits.tokens_per_minute = Some(count()?),
            "streams" => {
                let n = count()?;
                entry.limits.concurrent_streams = Some(
                    u32::try_from(n)
                        .map_err(|_| format!("`streams` must be at most {}, got {n}", u32::MAX))?,
                );
            }
            other => {
                return Err(format!(
                    "unknown setting `{other}`: expected name, rpm, tpm or streams"
                ))
            }
        }
    }
    Ok(Some(entry))
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Who sent a request: its id, the account of its API key (none when the server has no keys),
/// and its trace span ([`crate::telemetry::request_span`], under the caller's `traceparent`).
#[derive(Debug, Clone)]
pub struct Caller {
    pub request_id: RequestId,
    pub account: Option<Arc<Account>>,
    pub span: tracing::Span,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        let ext = &parts.extensions;
        // The outer router always sets one; a router used alone (tests) gets a fresh one.
        let request_id =
            (ext.get::<RequestId>().cloned()).unwrap_or_else(|| RequestId(super::new_id("req")));
        let span = crate::telemetry::request_span(
            parts.method.as_str(),
            parts.uri.path(),
            &request_id.0,
            &parts.headers,
        );
        Ok(Caller {
            request_id,
            account: ext.get::<Arc<Account>>().cloned(),
            span,
        })
    }
}

/// Rejects requests without `Authorization: Bearer <key>` (or Anthropic's `x-api-key`) for a
/// configured key, and hands the key's account to the handler.
pub async fn require_api_key(
    State(keys): State<Arc<ApiKeys>>,
    mut req: Request,
    next: Next,
) -> Response {
    if keys.is_empty() {
        return next.run(req).await;
    }
    let headers = req.headers();
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    match given.and_then(|g| keys.find(g)) {
        Some(account) => {
            req.extensions_mut().insert(account.clone());
            next.run(req).await
        }
        None if req.uri().path().starts_with("/v1/messages") => {
            super::anthropic::AnthropicError(ApiError::Unauthorized).into_response()
        }
        None => ApiError::Unauthorized.into_response(),
    }
}

/// The credentials of a `Bearer` authorization (the scheme is case-insensitive, RFC 9110).
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Whether two secrets are equal, comparing every byte whatever the first difference (so
/// timing does not reveal a matching prefix).
pub(super) fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_drop_comments_and_blank_lines() {
        let key = |line| parse_line(line).unwrap().map(|e| e.key);
        assert_eq!(key("  sk-one  "), Some("sk-one"));
        assert_eq!(key("sk-two # the batch team"), Some("sk-two"));
        assert_eq!(key("# a comment"), None);
        assert_eq!(key("   "), None);
    }

    #[test]
    fn key_file_settings_give_the_name_and_limits() {
        let e = parse_line("sk-a name=alice rpm=60 tpm=20000 streams=4 # team A")
            .unwrap()
            .unwrap();
        assert_eq!(
            e,
            Entry {
                key: "sk-a",
                name: Some("alice"),
                limits: Limits {
                    requests_per_minute: Some(60),
                    tokens_per_minute: Some(20000),
                    concurrent_streams: Some(4),
                },
            }
        );
    }

    #[test]
    fn bad_settings_are_refused_by_name() {
        for (line, says) in [
            (
                "sk-a rpm=0",
                "`rpm` must be a whole number of at least 1, got `0`",
            ),
            (
                "sk-a tpm=lots",
                "`tpm` must be a whole number of at least 1, got `lots`",
            ),
            ("sk-a quota=5", "unknown setting `quota`"),
            ("sk-a alice", "`alice` is not a setting"),
            ("sk-a name=a/b", "`name` must be 1 to 64 letters"),
            (
                "sk-a streams=5000000000",
                "`streams` must be at most 4294967295",
            ),
        ] {
            let e = parse_line(line).unwrap_err();
            assert!(e.contains(says), "{line}: {e}");
        }
    }

    #[test]
    fn keys_are_labelled_by_name_or_by_a_hash_never_by_themselves() {
        assert_eq!(default_label("sesame"), "key-d0c04f4b");
        let dir = std::env::temp_dir().join(format!("wick-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("keys");
        std::fs::write(&file, "sk-1 name=alice tpm=100\nsk-2\n").unwrap();
        let keys = ApiKeys::load(Some("sesame"), Some(&file)).unwrap();
        let label = |k| keys.find(k).map(|a| a.label().to_string());
        assert_eq!(label("sesame").as_deref(), Some("key-d0c04f4b"));
        assert_eq!(label("sk-1").as_deref(), Some("alice"));
        assert_eq!(label("sk-2"), Some(default_label("sk-2")));
        assert_eq!(label("sk-3"), None);
        assert_eq!(
            keys.find("sk-1").unwrap().limits().tokens_per_minute,
            Some(100)
        );
        std::fs::write(&file, "sk-1 name=alice\nsk-2 name=alice\n").unwrap();
        let e = ApiKeys::load(None, Some(&file)).unwrap_err().to_string();
        assert!(
            e.contains("line 2") && e.contains("`alice` is used twice"),
            "{e}"
        );
        std::fs::write(&file, "# no keys\n").unwrap();
        assert!(matches!(
            ApiKeys::load(None, Some(&file)),
            Err(CliError::NoKeyInFile { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer sk-1"), Some("sk-1"));
        assert_eq!(bearer_token("bearer sk-1"), Some("sk-1"));
        assert_eq!(bearer_token("BEARER   sk-1 "), Some("sk-1"));
        assert_eq!(bearer_token("Basic sk-1"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearersk-1"), None);
    }

    #[test]
    fn keys_compare_in_full() {
        assert!(constant_eq(b"secret", b"secret"));
        assert!(!constant_eq(b"secret", b"secreT"));
        assert!(!constant_eq(b"secret", b"secret2"));
    }
}
