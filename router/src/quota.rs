//! What one API key may use, and what it has used: its [`Account`] (a label for logs and
//! metrics, never the key itself; its [`Limits`]) and the per-key quotas, requests per minute,
//! tokens per minute and concurrent streams, answered 429 with `Retry-After` and the limit named
//! ([`ApiError::QuotaExceeded`]).
//!
//! The minute limits are token buckets ([`Bucket`], plain and synchronous): full at start-up and
//! refilled continuously at the limit's rate, so a key may burst up to one minute's allowance
//! and then runs at its rate. A request takes one unit of the requests bucket when it starts. Tokens
//! cannot be known before they are generated, so the tokens bucket is charged as the scheduler
//! works (the prompt at admission, each generated token as it is sampled) and may be overdrawn by
//! the requests already running; a key in debt is refused until the refill has paid the debt.
//! The concurrent-streams limit is a semaphore whose permit the response holds ([`Grant`]), so a
//! stream's place is freed when its response ends, however it ends.
//!
//! State: an account's buckets sit behind one mutex, held for a few arithmetic operations and
//! never across an await (the bucket is shared by the request handlers that start requests and by
//! the scheduler task that charges tokens; a task of its own would add a channel round trip per
//! generated token for no gain). Metric handles are looked up once, when the account is made, so
//! every key's series exist from start-up.

use crate::error::{ApiError, RETRY_AFTER_SECS};
use crate::metrics::METRICS;
use prometheus::{IntCounter, IntGauge};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A key's limits; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub concurrent_streams: Option<u32>,
}

/// Which limit refused a request (the `limit` label of `wick_api_key_rate_limited_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    RequestsPerMinute,
    TokensPerMinute,
    ConcurrentStreams,
}

impl Quota {
    pub const ALL: [Quota; 3] = [
        Quota::RequestsPerMinute,
        Quota::TokensPerMinute,
        Quota::ConcurrentStreams,
    ];

    /// How the limit reads in an error message (after the number).
    pub fn what(self) -> &'static str {
        match self {
            Quota::RequestsPerMinute => "requests per minute",
            Quota::TokensPerMinute => "tokens per minute",
            Quota::ConcurrentStreams => "concurrent streams",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Quota::RequestsPerMinute => "requests_per_minute",
            Quota::TokensPerMinute => "tokens_per_minute",
            Quota::ConcurrentStreams => "concurrent_streams",
        }
    }
}

/// A token bucket holding up to `per_minute` units, refilled at `per_minute / 60` units a
/// second. Time is passed in, so the policy is tested without clocks.
#[derive(Debug, Clone)]
pub struct Bucket {
    per_minute: f64,
    level: f64,
    at: Instant,
}

impl Bucket {
    pub fn full(per_minute: u64, now: Instant) -> Bucket {
        Bucket {
            per_minute: per_minute as f64,
            level: per_minute as f64,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        if now > self.at {
            let gained = (now - self.at).as_secs_f64() * self.per_minute / 60.0;
            self.level = (self.level + gained).min(self.per_minute);
            self.at = now;
        }
    }

    /// How long until the bucket holds `level` units.
    fn wait_for(&self, level: f64) -> Duration {
        Duration::from_secs_f64(((level - self.level) * 60.0 / self.per_minute).max(0.0))
    }

    /// Takes one unit if the bucket holds one; otherwise how long until it will.
    pub fn take_one(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.level >= 1.0 {
            self.level -= 1.0;
            Ok(())
        } else {
            Err(self.wait_for(1.0))
        }
    }

    /// Whether the bucket is out of debt (holds more than nothing); otherwise how long until
    /// it will be.
    pub fn check_credit(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.level > 0.0 {
            Ok(())
        } else {
            // Past the debt, plus the smallest refill that makes the level positive.
            Err(self.wait_for(0.0) + Duration::from_millis(1))
        }
    }

    /// Takes `n` units, overdrawing the bucket if need be.
    pub fn charge(&mut self, n: u64, now: Instant) {
        self.refill(now);
        self.level -= n as f64;
    }
}

/// An account's minute buckets.
#[derive(Debug)]
struct Buckets {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
}

/// One key's metric series.
struct KeyMetrics {
    requests: IntCounter,
    prompt_tokens: IntCounter,
    generation_tokens: IntCounter,
    streams: IntGauge,
    limited: [IntCounter; 3],
}

impl KeyMetrics {
    fn new(label: &str) -> KeyMetrics {
        let m = &*METRICS;
        KeyMetrics {
            requests: m.key_requests.with_label_values(&[label]),
            prompt_tokens: m.key_prompt_tokens.with_label_values(&[label]),
            generation_tokens: m.key_generation_tokens.with_label_values(&[label]),
            streams: m.key_streams.with_label_values(&[label]),
            limited: Quota::ALL.map(|q| m.key_rate_limited.with_label_values(&[label, q.label()])),
        }
    }
}

/// What one API key may use and has used.
pub struct Account {
    label: String,
    limits: Limits,
    buckets: Mutex<Buckets>,
    /// `Some` when the key's streams are limited; its permits are held by [`Grant`]s.
    streams: Option<Arc<Semaphore>>,
    metrics: KeyMetrics,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("label", &self.label)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Account {
    pub fn new(label: String, limits: Limits, now: Instant) -> Account {
        Account {
            buckets: Mutex::new(Buckets {
                requests: limits.requests_per_minute.map(|n| Bucket::full(n, now)),
                tokens: limits.tokens_per_minute.map(|n| Bucket::full(n, now)),
            }),
            streams: (limits.concurrent_streams).map(|n| Arc::new(Semaphore::new(n as usize))),
            metrics: KeyMetrics::new(&label),
            label,
            limits,
        }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Lets a request start, or says which limit refuses it and when to retry. A refusal takes
    /// nothing: the stream place and the request unit are taken only together.
    pub fn admit(self: &Arc<Self>, now: Instant) -> Result<Grant, ApiError> {
        let stream = match &self.streams {
            None => None,
            Some(s) => Some(s.clone().try_acquire_owned().map_err(|_| {
                self.refuse(
                    Quota::ConcurrentStreams,
                    Duration::from_secs(RETRY_AFTER_SECS),
                )
            })?),
        };
        {
            let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(tokens) = &mut b.tokens {
                tokens
                    .check_credit(now)
                    .map_err(|wait| self.refuse(Quota::TokensPerMinute, wait))?;
            }
            if let Some(requests) = &mut b.requests {
                requests
                    .take_one(now)
                    .map_err(|wait| self.refuse(Quota::RequestsPerMinute, wait))?;
            }
        }
        self.metrics.requests.inc();
        self.metrics.streams.inc();
        Ok(Grant {
            account: self.clone(),
            _stream: stream,
        })
    }

    fn refuse(&self, quota: Quota, wait: Duration) -> ApiError {
        self.metrics.limited[quota as usize].inc();
        let limit = match quota {
            Quota::RequestsPerMinute => self.limits.requests_per_minute,
            Quota::TokensPerMinute => self.limits.tokens_per_minute,
            Quota::ConcurrentStreams => self.limits.concurrent_streams.map(u64::from),
        };
        ApiError::QuotaExceeded {
            key: self.label.clone(),
            quota,
            limit: limit.unwrap_or(0),
            // Whole seconds, rounded up, at least one: what `Retry-After` can say.
            retry_after_s: wait.as_secs_f64().ceil().max(1.0) as u64,
        }
    }

    /// Charges a request's prompt tokens (once per request, whatever its `n`).
    pub fn charge_prompt(&self, tokens: usize, now: Instant) {
        self.metrics.prompt_tokens.inc_by(tokens as u64);
        self.charge(tokens, now);
    }

    /// Charges one generated token.
    pub fn charge_generated(&self, now: Instant) {
        self.metrics.generation_tokens.inc();
        self.charge(1, now);
    }

    fn charge(&self, tokens: usize, now: Instant) {
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bucket) = &mut b.tokens {
            bucket.charge(tokens as u64, now);
        }
    }
}

/// A request's admission under its key's quotas: holds its stream place until dropped (when the
/// response ends).
#[derive(Debug)]
pub struct Grant {
    account: Arc<Account>,
    _stream: Option<OwnedSemaphorePermit>,
}

impl Grant {
    pub fn account(&self) -> &Arc<Account> {
        &self.account
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.account.metrics.streams.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn a_request_bucket_allows_a_minute_at_once_then_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::full(3, t0);
        for _ in 0..3 {
            assert_eq!(b.take_one(t0), Ok(()));
        }
        // Empty: one unit comes back every 20 s.
        assert_eq!(b.take_one(t0), Err(secs(20.0)));
        assert_eq!(b.take_one(t0 + secs(5.0)), Err(secs(15.0)));
        assert_eq!(b.take_one(t0 + secs(20.0)), Ok(()));
        // The refill stops at one minute's allowance.
        let later = t0 + secs(3600.0);
        for _ in 0..3 {
            assert_eq!(b.take_one(later), Ok(()));
        }
        assert!(b.take_one(later).is_err());
    }

    #[test]
    fn a_token_bucket_may_be_overdrawn_and_refuses_until_the_debt_is_paid() {
        let t0 = Instant::now();
        let mut b = Bucket::full(60, t0);
        assert_eq!(b.check_credit(t0), Ok(()));
        // A request used 90 tokens: 30 in debt, one token a second.
        b.charge(90, t0);
        let wait = b.check_credit(t0).unwrap_err();
        assert!(wait > secs(30.0) && wait < secs(30.01), "{wait:?}");
        assert!(b.check_credit(t0 + secs(29.0)).is_err());
        assert_eq!(b.check_credit(t0 + secs(31.0)), Ok(()));
    }

    fn limited(limits: Limits) -> Arc<Account> {
        Arc::new(Account::new("test".into(), limits, Instant::now()))
    }

    #[test]
    fn a_refusal_names_the_limit_and_when_to_retry() {
        let a = limited(Limits {
            requests_per_minute: Some(2),
            ..Limits::default()
        });
        let now = Instant::now();
        let _g1 = a.admit(now).unwrap();
        let _g2 = a.admit(now).unwrap();
        match a.admit(now).unwrap_err() {
            ApiError::QuotaExceeded {
                key,
                quota,
                limit,
                retry_after_s,
            } => {
                assert_eq!(key, "test");
                assert_eq!(quota, Quota::RequestsPerMinute);
                assert_eq!(limit, 2);
                assert_eq!(retry_after_s, 30);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_stream_place_is_freed_when_its_grant_drops() {
        let a = limited(Limits {
            concurrent_streams: Some(1),
            ..Limits::default()
        });
        let now = Instant::now();
        let first = a.admit(now).unwrap();
        let e = a.admit(now).unwrap_err();
        assert!(e.to_string().contains("1 concurrent streams"), "{e}");
        drop(first);
        assert!(a.admit(now).is_ok());
    }

    #[test]
    fn a_key_in_token_debt_is_refused_without_using_a_request() {
        let a = limited(Limits {
            requests_per_minute: Some(1),
            tokens_per_minute: Some(10),
            ..Limits::default()
        });
        let now = Instant::now();
        a.charge_prompt(25, now);
        let e = a.admit(now).unwrap_err();
        assert!(
            matches!(
                e,
                ApiError::QuotaExceeded {
                    quota: Quota::TokensPerMinute,
                    limit: 10,
                    ..
                }
            ),
            "{e:?}"
        );
        // Once the 15-token debt is paid (90 s at 10 a minute), the one request is still there.
        assert!(a.admit(now + secs(91.0)).is_ok());
    }

    #[test]
    fn an_unlimited_key_is_never_refused() {
        let a = limited(Limits::default());
        let now = Instant::now();
        a.charge_prompt(1_000_000, now);
        let grants: Vec<_> = (0..100).map(|_| a.admit(now).unwrap()).collect();
        assert_eq!(grants.len(), 100);
    }
}
