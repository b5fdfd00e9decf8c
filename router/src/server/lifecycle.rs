//! The server around the API routes: readiness phases (loading, ready, draining), the API router
//! bound late (once the model has loaded), request ids, request bodies read within
//! their size and time limits, `/ready` and `/metrics`.
//!
//! The listener is bound before the model loads, so that `/ready` can answer 503 while loading;
//! until then every other route answers 503 too, but for the playground's page
//! ([`super::playground`]), which shows the server as loading.

use super::playground::PageConfig;
use crate::error::{ApiError, Unavailable};
use crate::metrics::METRICS;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tower::ServiceExt;

const LOADING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;

/// Where the server is in its life. Written by `serve`, read by handlers.
#[derive(Debug)]
pub struct Phase(AtomicU8);

impl Default for Phase {
    fn default() -> Self {
        Phase(AtomicU8::new(LOADING))
    }
}

impl Phase {
    pub fn set_ready(&self) {
        self.0.store(READY, Ordering::SeqCst);
    }
    pub fn set_draining(&self) {
        self.0.store(DRAINING, Ordering::SeqCst);
    }
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst) == READY
    }
    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::SeqCst) == DRAINING
    }
}

/// The id of one request: the client's `x-request-id` when it sent a sane one, else generated.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

const REQUEST_ID: &str = "x-request-id";

fn sane_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    let ok = !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| s.to_string())
}

/// Honours or generates `x-request-id`, hands it to the handler and echoes it on the response.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(sane_id)
        .unwrap_or_else(|| super::new_id("req"));
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    response
}

/// Bounds on reading a request body.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_bytes: usize,
    /// The whole body must arrive within this long of the handler asking for it.
    pub timeout: Duration,
}

/// Reads the whole request body before routing, within its limits: a declared `Content-Length`
/// over the limit is a 413 before a byte of the body is read; a body that grows past it is a 413
/// when it does; a body still arriving after `timeout` (stalled, trickled, or endless chunked)
/// is a 408, and the connection is closed.
pub async fn read_body(State(limits): State<BodyLimits>, req: Request, next: Next) -> Response {
    let too_large = || ApiError::PayloadTooLarge {
        limit: limits.max_bytes,
    };
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_bytes as u64) {
        return close(too_large().into_response());
    }
    let (parts, body) = req.into_parts();
    let read = axum::body::to_bytes(body, limits.max_bytes);
    let bytes = match tokio::time::timeout(limits.timeout, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) if is_length_limit(&e) => return close(too_large().into_response()),
        Ok(Err(e)) => {
            return close(
                ApiError::InvalidBody {
                    param: None,
                    message: format!("the body could not be read: {e}"),
                }
                .into_response(),
            )
        }
        Err(_) => {
            return close(
                ApiError::BodyTimeout {
                    limit_s: limits.timeout.as_secs_f64(),
                }
                .into_response(),
            )
        }
    };
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// Asks the client to close the connection: the rest of its body will not be read.
fn close(mut response: Response) -> Response {
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        HeaderValue::from_static("close"),
    );
    response
}

/// `--max-body-bytes` unless configured.
pub const DEFAULT_MAX_BODY_BYTES: usize = 2_000_000;

static BODY_LIMIT: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_BODY_BYTES);

/// The request body limit in bytes (for error messages).
pub fn body_limit() -> usize {
    BODY_LIMIT.load(Ordering::Relaxed)
}

/// The API router, set once the model has loaded; 503 until then.
#[derive(Clone, Default)]
pub struct LateRouter(pub Arc<OnceLock<Router>>);

impl tower::Service<Request> for LateRouter {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match self.0.get() {
            Some(router) => Box::pin(router.clone().oneshot(req)),
            None => Box::pin(async { Ok(ApiError::Loading.into_response()) }),
        }
    }
}

async fn ready(State(phase): State<Arc<Phase>>) -> Result<StatusCode, ApiError> {
    if phase.is_ready() {
        Ok(StatusCode::OK)
    } else if phase.is_draining() {
        Err(ApiError::Unavailable(Unavailable::ShuttingDown))
    } else {
        Err(ApiError::Loading)
    }
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        METRICS.render(),
    )
}

/// The whole server: `/ready`, `/metrics` and the playground (`ui`; `None`: `--no-ui`) always
/// answer; everything else goes to the API router once it is set.
pub fn outer(
    phase: Arc<Phase>,
    late: LateRouter,
    body: BodyLimits,
    ui: Option<PageConfig>,
) -> Router {
    BODY_LIMIT.store(body.max_bytes, Ordering::Relaxed);
    let mut router = Router::new()
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(phase);
    if let Some(config) = ui {
        router = router.merge(super::playground::routes(config));
    }
    router
        .fallback_service(late)
        .layer(axum::extract::DefaultBodyLimit::max(body.max_bytes))
        .layer(axum::middleware::from_fn_with_state(body, read_body))
        .layer(axum::middleware::from_fn(request_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_must_be_short_visible_ascii() {
        assert_eq!(
            sane_id(&HeaderValue::from_static("abc-123")),
            Some("abc-123".into())
        );
        assert_eq!(sane_id(&HeaderValue::from_static("a b")), None);
        assert_eq!(
            sane_id(&HeaderValue::from_str(&"x".repeat(200)).unwrap()),
            None
        );
    }
}
