//! The HTTP endpoint (`--http-listen`): `/metrics` (Prometheus text), `/status` (JSON),
//! `/healthz` and `/readyz` (for systemd and Kubernetes probes). Read-only: slots are
//! administered over the replication protocol, as with PostgreSQL.
//!
//! Each request reads one [`Snapshot`] on a blocking thread (the store's directory and
//! `/proc`), so a scrape never waits on, or holds up, the WAL path. `/metrics` and `/status`
//! require `Authorization: Bearer TOKEN` when a token file is set, and without one answer
//! loopback clients only; the probes never need either.
//! Connections are few and short: at most [`MAX_CONNECTIONS`] at once, each with a header
//! timeout.

mod metrics_text;
mod process;
mod snapshot;
mod status_json;

use std::convert::Infallible;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use subtle::ConstantTimeEq;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::metrics::exposition::Format;
use crate::service::retention::RetentionPolicy;
use crate::service::status::{RelayMonitor, RelayStatus};
use snapshot::Snapshot;

/// Connections served at once; more wait to be accepted.
pub(crate) const MAX_CONNECTIONS: usize = 32;

/// The content type of the endpoint's plain-text answers.
const PLAIN: &str = "text/plain; charset=utf-8";

/// The answer when the state could not be read.
const UNREADABLE: &str = "could not read the state\n";

/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the HTTP endpoint cannot start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The token file cannot be read, or holds no token.
    #[error("could not read the HTTP token file \"{path}\": {why}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

/// What the endpoint serves, shared by its connections.
#[derive(Debug)]
pub(crate) struct HttpState {
    /// The relay's state.
    pub monitor: RelayMonitor,
    /// The store's directory of segments.
    pub wal_dir: PathBuf,
    /// The retention settings in force, for the slots' `wal_status`.
    pub retention: watch::Receiver<RetentionPolicy>,
    /// The settings a reload may change.
    pub settings: Arc<HttpSettings>,
}

/// The endpoint's settings that a reload may change.
#[derive(Debug, Default)]
pub(crate) struct HttpSettings {
    /// The bearer token `/metrics` and `/status` require, if any.
    pub token: RwLock<Option<String>>,
    /// How recently the upstream must have been heard from for `/readyz`; zero: once
    /// since start.
    pub ready_window: RwLock<Duration>,
}

/// Reads the bearer token from `path`: the file's first line, trimmed.
///
/// # Errors
/// The file cannot be read, or its first line is empty.
pub(crate) fn read_token(path: &Path) -> Result<String, HttpError> {
    let text = std::fs::read_to_string(path).map_err(|e| HttpError::TokenFile {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    let token = text.lines().next().unwrap_or_default().trim();
    if token.is_empty() {
        return Err(HttpError::TokenFile {
            path: path.to_path_buf(),
            why: "the file's first line is empty".into(),
        });
    }
    Ok(token.to_owned())
}

/// Serves HTTP on `listener` until `shutdown` fires.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<HttpState>,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok((stream, peer)) => (stream, peer.ip()),
            Err(e) => {
                debug!(error = %e, "could not accept an HTTP connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = Arc::clone(&state);
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let service = service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(answer(&state, &req, peer).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                served = conn.as_mut() => if let Err(e) = served {
                    debug!(error = %e, "HTTP connection ended");
                },
                () = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
            }
            drop(permit);
        });
    }
    tracker.close();
    tracker.wait().await;
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Who may read `/metrics` and `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Served.
    Allowed,
    /// A token is set and the request does not carry it: 401.
    NeedsToken,
    /// No token is set and the client is not on loopback: 403. Without a token the relay's
    /// state is for the machine's own users only.
    LoopbackOnly,
}

/// Whether a request for `/metrics` or `/status` from `peer`, presenting the bearer token
/// `presented`, is served when the endpoint requires `required`.
fn access(required: Option<&str>, presented: Option<&str>, peer: IpAddr) -> Access {
    match required {
        None if peer.to_canonical().is_loopback() => Access::Allowed,
        None => Access::LoopbackOnly,
        Some(token) => match presented {
            Some(given) if bool::from(given.trim().as_bytes().ct_eq(token.as_bytes())) => {
                Access::Allowed
            }
            _ => Access::NeedsToken,
        },
    }
}

/// [`access`] for `req` from `peer`, with the token in force.
fn request_access(state: &HttpState, req: &Request<Incoming>, peer: IpAddr) -> Access {
    let token = state
        .settings
        .token
        .read()
        .unwrap_or_else(PoisonError::into_inner);
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    access(token.as_deref(), presented, peer)
}

async fn answer(
    state: &Arc<HttpState>,
    req: &Request<Incoming>,
    peer: IpAddr,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "only GET\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let path = req.uri().path();
    match path {
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n"),
        "/readyz" => {
            let status = state.monitor.status();
            let window = *state
                .settings
                .ready_window
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            let upstream = &state.monitor.counters().upstream;
            let since_contact = upstream.last_contact_ms().map(|ms| {
                let now = snapshot::unix_seconds(std::time::SystemTime::now());
                Duration::from_secs_f64((now - ms as f64 / 1000.0).max(0.0))
            });
            let reached = upstream_recent(
                upstream.reached(),
                upstream.connected(),
                since_contact,
                window,
            );
            match not_ready(&status, reached, state.monitor.listens()) {
                None => text(StatusCode::OK, PLAIN, "ready\n"),
                Some(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    PLAIN,
                    format!("not ready: {why}\n"),
                ),
            }
        }
        "/metrics" | "/status" => match request_access(state, req, peer) {
            Access::Allowed => serve_state(state, req, path).await,
            Access::NeedsToken => {
                let mut r = text(
                    StatusCode::UNAUTHORIZED,
                    PLAIN,
                    "a bearer token is required\n",
                );
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                r
            }
            Access::LoopbackOnly => text(
                StatusCode::FORBIDDEN,
                PLAIN,
                "without http_token_file, /metrics and /status answer loopback clients only\n",
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: try /metrics, /status, /healthz or /readyz\n",
        ),
    }
}

/// `/metrics` or `/status`, once the request may read them.
async fn serve_state(
    state: &Arc<HttpState>,
    req: &Request<Incoming>,
    path: &str,
) -> Response<Full<Bytes>> {
    if path == "/metrics" {
        let accept = req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let format = Format::from_accept(accept.as_deref());
        return match read_snapshot(state, move |s| metrics_text::render(s, format)).await {
            Some(body) => text(StatusCode::OK, format.content_type(), body),
            None => text(StatusCode::INTERNAL_SERVER_ERROR, PLAIN, UNREADABLE),
        };
    }
    let body = read_snapshot(state, |s| {
        serde_json::to_string_pretty(&status_json::render(s)).unwrap_or_default()
    })
    .await;
    match body {
        Some(body) => text(StatusCode::OK, "application/json", body),
        None => text(StatusCode::INTERNAL_SERVER_ERROR, PLAIN, UNREADABLE),
    }
}

/// Reads a snapshot on a blocking thread and renders it there.
async fn read_snapshot(
    state: &Arc<HttpState>,
    render: impl FnOnce(&Snapshot<'_>) -> String + Send + 'static,
) -> Option<String> {
    let state = Arc::clone(state);
    tokio::task::spawn_blocking(move || {
        let limit = state.retention.borrow().max_slot_wal_keep_size;
        let snapshot = Snapshot::read(&state.monitor, &state.wal_dir, limit);
        render(&snapshot)
    })
    .await
    .map_err(|e| warn!(error = %e, "reading the relay's state failed"))
    .ok()
}

/// Whether the upstream counts as reached for `/readyz`: once since start when `window` is
/// zero; else connected now, or heard from within `window`.
pub(crate) fn upstream_recent(
    reached: bool,
    connected: bool,
    since_contact: Option<Duration>,
    window: Duration,
) -> bool {
    reached && (window.is_zero() || connected || since_contact.is_some_and(|d| d <= window))
}

/// Why the relay is not ready to serve, or `None` when it is: the store must be open, the
/// upstream reached since the relay started, and (when it listens) its listener accepting,
/// which it does once the upstream's identity is known.
pub(crate) fn not_ready(
    status: &RelayStatus,
    upstream_reached: bool,
    listens: bool,
) -> Option<String> {
    if let Some(failure) = &status.store_failure {
        return Some(format!("the store failed: {failure}"));
    }
    if !upstream_reached {
        return Some(
            "the upstream has not been reached since the relay started (or within ready_upstream_window)"
                .into(),
        );
    }
    if listens && status.upstream.is_none() {
        return Some("the listener waits for the upstream's identity".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{SystemId, UpstreamInfo, WalSegmentSize};

    #[test]
    fn ready_once_the_upstream_was_reached_and_the_store_is_open() {
        let mut status = RelayStatus::default();
        assert!(not_ready(&status, false, false).is_some_and(|w| w.contains("not been reached")));
        status.upstream = Some(UpstreamInfo::new(
            SystemId(1),
            WalSegmentSize::new(1 << 24).unwrap(),
            "15.18".into(),
        ));
        assert_eq!(not_ready(&status, true, true), None);
        status.store_failure = Some("disk full".into());
        assert!(not_ready(&status, true, true).is_some_and(|w| w.contains("disk full")));
    }

    #[test]
    fn a_window_wants_the_upstream_heard_from_recently() {
        let s = Duration::from_secs;
        assert!(!upstream_recent(false, false, None, s(0)));
        assert!(
            upstream_recent(true, false, Some(s(3600)), s(0)),
            "once is enough"
        );
        assert!(upstream_recent(true, true, Some(s(3600)), s(30)));
        assert!(upstream_recent(true, false, Some(s(10)), s(30)));
        assert!(!upstream_recent(true, false, Some(s(31)), s(30)));
    }

    #[test]
    fn without_a_token_only_loopback_clients_read_the_state() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for peer in ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(access(None, None, ip(peer)), Access::Allowed, "{peer}");
            assert_eq!(access(None, Some("x"), ip(peer)), Access::Allowed, "{peer}");
        }
        for peer in ["10.0.0.5", "::ffff:10.0.0.5", "fe80::1", "0.0.0.0"] {
            assert_eq!(access(None, None, ip(peer)), Access::LoopbackOnly, "{peer}");
        }
    }

    #[test]
    fn with_a_token_every_client_must_present_it() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for peer in ["127.0.0.1", "10.0.0.5"] {
            let peer = ip(peer);
            assert_eq!(access(Some("t0k"), Some("t0k"), peer), Access::Allowed);
            assert_eq!(access(Some("t0k"), Some(" t0k "), peer), Access::Allowed);
            for wrong in [None, Some(""), Some("t0"), Some("t0kk"), Some("T0K")] {
                assert_eq!(
                    access(Some("t0k"), wrong, peer),
                    Access::NeedsToken,
                    "{wrong:?}"
                );
            }
        }
    }

    #[test]
    fn token_file_first_line() {
        let dir = std::env::temp_dir().join(format!("walrelay-token-{}", std::process::id()));
        std::fs::write(&dir, "  s3cret \nignored\n").unwrap();
        assert_eq!(read_token(&dir).unwrap(), "s3cret");
        std::fs::write(&dir, "\n").unwrap();
        assert!(read_token(&dir).is_err());
        let _ = std::fs::remove_file(&dir);
    }
}
