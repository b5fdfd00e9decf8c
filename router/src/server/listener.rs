//! The accept loop and the life of each HTTP/1.1 connection: what `axum::serve` does, plus the
//! limits a server exposed to the network needs.
//!
//! - At most `max_connections` open at once: past it a connection is answered a fixed 503 with
//!   `Retry-After` and closed at once (no task, no parsing), so the process never reaches its
//!   file-descriptor limit.
//! - Request headers must arrive within `header_timeout` (hyper's header read timer, which also
//!   runs while a kept-alive connection waits for its next request).
//! - A connection with no request in flight for `keep_alive` is closed. A request is in flight
//!   from its headers until its response body (an SSE stream included) is done.
//! - Shutdown: [`Listener::serve`] stops accepting when told to, asks every connection to close
//!   after its current response, and returns once all are closed.
//!
//! Request bodies have their own deadline, in [`super::lifecycle::read_body`].

use crate::metrics::METRICS;
use axum::body::Body;
use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;

/// Connection limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub keep_alive: Duration,
}

/// The answer to a connection over the limit, written without reading the request.
const OVER_LIMIT: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
retry-after: 1\r\nconnection: close\r\ncontent-length: 112\r\n\r\n\
{\"error\":{\"message\":\"too many open connections; retry later\",\"type\":\"server_error\",\"param\":null,\"code\":null}}";

pub struct Listener {
    listener: TcpListener,
    limits: ConnLimits,
}

impl Listener {
    pub fn new(listener: TcpListener, limits: ConnLimits) -> Self {
        Listener { listener, limits }
    }

    /// Serves `router` until `stop` resolves, then waits for every connection to close.
    pub async fn serve(
        self,
        router: Router,
        stop: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<()> {
        let max = self.limits.max_connections;
        let slots = Arc::new(Semaphore::new(max));
        // Flipped once, on shutdown; every connection task watches it. Closed when this
        // function returns, after the connections have ended.
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut stop = std::pin::pin!(stop);
        loop {
            let stream = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of descriptors or memory: back off rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                },
                _ = &mut stop => break,
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                METRICS.connections_refused.inc();
                // Best effort: a full socket buffer just means a bare close.
                let _unsent = stream.try_write(OVER_LIMIT);
                continue;
            };
            let (router, limits, shutdown) = (router.clone(), self.limits, shutdown_rx.clone());
            tokio::spawn(async move {
                METRICS.connections_open.inc();
                connection(stream, router, limits, shutdown).await;
                METRICS.connections_open.dec();
                drop(slot);
            });
        }
        drop(self.listener);
        // Nobody listening means every connection has already ended.
        let _nobody = shutdown_tx.send(true);
        let _all_closed = slots.acquire_many(max as u32).await;
        Ok(())
    }
}

/// Requests of one connection in flight, and since when it has had none.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Activity {
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        self.idle_since.lock().ok().map(|t| t.elapsed())
    }
}

/// Held from a request's headers until its response body is done.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Ok(mut t) = self.0.idle_since.lock() {
            *t = Instant::now();
        }
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request in flight until it is finished or dropped.
struct Tracked {
    inner: Body,
    _busy: Busy,
}

impl http_body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

async fn connection(
    stream: TcpStream,
    router: Router,
    limits: ConnLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity {
        in_flight: AtomicUsize::new(0),
        idle_since: Mutex::new(Instant::now()),
    });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let busy = Busy::new(activity.clone());
            let router = router.clone();
            async move {
                let response = router.oneshot(req.map(Body::new)).await?;
                Ok::<_, std::convert::Infallible>(
                    response.map(|inner| Body::new(Tracked { inner, _busy: busy })),
                )
            }
        })
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let conn = http.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let mut closing = false;
    let tick = (limits.keep_alive / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        tokio::select! {
            // Errors here are the client's (a reset, a timeout): nothing to report.
            _ = conn.as_mut() => break,
            changed = shutdown.changed(), if !closing => {
                closing = true;
                if changed.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
            }
            _ = tokio::time::sleep(tick), if !closing => {
                if activity.idle_for().is_some_and(|idle| idle >= limits.keep_alive) {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
