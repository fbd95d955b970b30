//! The admin HTTP endpoint: metrics for Prometheus, the open connections
//! and a status summary as JSON, liveness and readiness probes.
//!
//! | path | answer |
//! |---|---|
//! | `GET /metrics` | OpenMetrics text ([`crate::metrics`]) |
//! | `GET /connections[?service=NAME]` | JSON list of [`Connection`] |
//! | `GET /status` | JSON [`Status`], what `dctunnel status` shows |
//! | `GET /healthz` | 200 while the process answers |
//! | `GET /readyz` | 200 while services listen, 503 otherwise (starting, stopping) |
//!
//! HTTP/1.1 is handled by hyper; this module only routes. Every wait has a
//! deadline: reading a request's headers (idle keep-alive included), and
//! the whole life of a connection.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::daemon::DaemonView;
use crate::metrics;
use crate::service::Rejection;

/// Limits of the admin server.
#[derive(Debug, Clone)]
pub struct Options {
    /// From the moment a request is awaited to the end of its headers.
    pub header_read_timeout: Duration,
    /// After this, a connection finishes its request in progress and closes.
    pub connection_lifetime: Duration,
    /// Time given to a request in progress to finish when the connection
    /// reaches its lifetime or the server stops.
    pub grace: Duration,
    /// Connections open at once; a new one past it closes the oldest.
    pub max_connections: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            header_read_timeout: Duration::from_secs(5),
            connection_lifetime: Duration::from_secs(60),
            grace: Duration::from_secs(5),
            max_connections: 32,
        }
    }
}

/// Serves the admin endpoint on `listener` until `stop`, with default
/// [`Options`]; returns once every connection is closed.
pub async fn serve(listener: TcpListener, view: DaemonView, stop: CancellationToken) {
    serve_with(listener, view, stop, Options::default()).await;
}

/// [`serve`] with explicit limits.
pub async fn serve_with(
    listener: TcpListener,
    view: DaemonView,
    stop: CancellationToken,
    options: Options,
) {
    // The open connections, oldest first. Past the limit, a new client
    // closes the oldest one instead of waiting: idle or slow clients (40
    // idle sockets delayed /healthz by 5 s) can never keep a probe or a
    // scrape out. A request takes microseconds, so the oldest is idle.
    let open: Arc<Mutex<VecDeque<(u64, CancellationToken)>>> = Arc::default();
    let tracker = TaskTracker::new();
    let mut next_id = 0u64;
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let (tcp, client) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "admin: accept failed; pausing 100ms");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        next_id += 1;
        let id = next_id;
        let close = stop.child_token();
        {
            let mut open = lock(&open);
            while open.len() >= options.max_connections.max(1) {
                if let Some((_, oldest)) = open.pop_front() {
                    debug!(%client, "admin: connection limit reached; closing the oldest connection");
                    oldest.cancel();
                }
            }
            open.push_back((id, close.clone()));
        }
        let view = view.clone();
        let options = options.clone();
        let open = open.clone();
        tracker.spawn(async move {
            connection(tcp, view, close, &options).await;
            debug!(%client, "admin: connection closed");
            lock(&open).retain(|(i, _)| *i != id);
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every holder leaves the queue consistent, so a poisoned lock is fine.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn connection(
    tcp: tokio::net::TcpStream,
    view: DaemonView,
    stop: CancellationToken,
    options: &Options,
) {
    let service = hyper::service::service_fn(move |req| {
        let view = view.clone();
        async move { Ok::<_, Infallible>(respond(&req, &view)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .serve_connection(TokioIo::new(tcp), service);
    let mut conn = std::pin::pin!(conn);
    let ended = tokio::select! {
        r = conn.as_mut() => Some(r),
        () = stop.cancelled() => None,
        () = tokio::time::sleep(options.connection_lifetime) => None,
    };
    let result = match ended {
        Some(r) => r,
        None => {
            // Closes at once if idle, else after the response in progress.
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(options.grace, conn).await {
                Ok(r) => r,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "admin: connection ended with an error");
    }
}

type Reply = Response<Full<Bytes>>;

fn respond(req: &Request<Incoming>, view: &DaemonView) -> Reply {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let query = req.uri().query();
    match req.uri().path() {
        "/metrics" => match metrics::render(view) {
            Ok(body) => with_type(StatusCode::OK, metrics::CONTENT_TYPE, body.into()),
            Err(_) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode metrics\n",
            ),
        },
        "/connections" => match service_filter(query, view) {
            Ok(filter) => json(StatusCode::OK, &connections(view, filter.as_deref())),
            Err((code, message)) => json(code, &ErrorBody { error: message }),
        },
        "/status" => json(StatusCode::OK, &status(view)),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            let services = view.services();
            if view.draining() {
                let open: usize = services.iter().map(|(_, s)| s.state.active()).sum();
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: stopping, draining {open} open connection(s)\n"),
                )
            } else if services.is_empty() {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: no service listening\n",
                )
            } else {
                let mut body = String::from("ready\n");
                for (name, s) in &services {
                    body.push_str(&format!("{name} listening on {}\n", s.local_addr));
                }
                text(StatusCode::OK, body)
            }
        }
        "/" => text(
            StatusCode::OK,
            "dctunnel admin endpoint: /metrics /connections[?service=NAME] /status /healthz /readyz\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The `service` parameter of `/connections`, checked against the services
/// that exist. Service names are letters, digits, `-`, `_` and `.`, so
/// they never need percent-encoding.
fn service_filter(
    query: Option<&str>,
    view: &DaemonView,
) -> Result<Option<String>, (StatusCode, String)> {
    let mut service = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("service", name)) => service = Some(name.to_owned()),
            _ => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter {pair:?}; the only one is service=NAME"),
                ))
            }
        }
    }
    if let Some(name) = &service {
        if !view.services().iter().any(|(n, _)| n == name) {
            return Err((StatusCode::NOT_FOUND, format!("no service named {name:?}")));
        }
    }
    Ok(service)
}

fn text(code: StatusCode, body: impl Into<String>) -> Reply {
    with_type(code, "text/plain; charset=utf-8", body.into().into())
}

fn json<T: Serialize>(code: StatusCode, value: &T) -> Reply {
    match serde_json::to_vec_pretty(value) {
        Ok(mut body) => {
            body.push(b'\n');
            with_type(code, "application/json", body.into())
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode JSON: {e}\n"),
        ),
    }
}

fn with_type(code: StatusCode, content_type: &'static str, body: Bytes) -> Reply {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[derive(Debug, Serialize, Deserialize)]
struct ErrorBody {
    error: String,
}

/// One open connection, as `/connections` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Connection {
    pub service: String,
    /// Numbers the connections of one service, in order of arrival.
    pub id: u64,
    /// Who connected to the service.
    pub source: SocketAddr,
    /// The TLS peer's identities (certificate DNS names, comma-separated),
    /// once its handshake is done: the client host in server mode, the
    /// remote server in client mode.
    pub peer: Option<String>,
    /// Where the connection was forwarded: the backend (server mode) or
    /// the remote end of the tunnel (client mode), once connected.
    pub remote: Option<SocketAddr>,
    /// Server mode: the application's address behind the client end, as
    /// that (authenticated) end claims it in its start message.
    #[serde(default)]
    pub origin: Option<SocketAddr>,
    /// Warm: not in use yet (server mode: waiting for its start message;
    /// client mode: ready in the pool, `source` is then the listener).
    #[serde(default)]
    pub warm: bool,
    /// RFC 3339, UTC.
    pub started: String,
    pub duration_seconds: f64,
    /// From the source towards the remote, so far.
    pub bytes_up: u64,
    /// From the remote back to the source, so far.
    pub bytes_down: u64,
}

/// The open connections, by service then arrival; only those of `service`
/// if given.
pub fn connections(view: &DaemonView, service: Option<&str>) -> Vec<Connection> {
    let mut out = Vec::new();
    for (name, s) in view.services() {
        if service.is_some_and(|wanted| wanted != name) {
            continue;
        }
        for c in s.state.connections() {
            out.push(Connection {
                service: name.clone(),
                id: c.id,
                source: c.source,
                peer: c.peer.get().cloned(),
                remote: c.remote.get().copied(),
                origin: c.origin.get().copied(),
                warm: c.is_warm(),
                started: rfc3339(c.started),
                duration_seconds: c.meter.elapsed().as_secs_f64(),
                bytes_up: c.meter.up(),
                bytes_down: c.meter.down(),
            });
        }
    }
    out
}

/// The daemon at a glance: what `/status` returns and `dctunnel status`
/// prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    /// Stopping: services no longer accept; `active` counts are draining.
    #[serde(default)]
    pub draining: bool,
    pub reloads: ReloadStatus,
    pub services: Vec<ServiceStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadStatus {
    pub attempts: u64,
    pub failures: u64,
    pub last_failed: bool,
    /// When the configuration in force was loaded, RFC 3339.
    pub last_success: Option<String>,
    pub last_error: Option<String>,
    /// Attempts started by a changed file, and those refused.
    #[serde(default)]
    pub file_triggered: u64,
    #[serde(default)]
    pub file_triggered_failures: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    /// `server` or `client`.
    pub mode: String,
    pub listen: SocketAddr,
    pub connect: Vec<String>,
    /// Connections in use (warm ones not counted).
    pub active: usize,
    /// Warm connections: waiting for a start message (server mode), ready
    /// in the pool (client mode).
    #[serde(default)]
    pub warm: usize,
    /// Server mode: `max_warm_connections`; client mode: `warm_connections`.
    #[serde(default)]
    pub warm_limit: usize,
    /// Warm connections that were put in use.
    #[serde(default)]
    pub warm_used: u64,
    pub max_connections: Option<usize>,
    pub max_connections_per_source: Option<usize>,
    pub accepted: u64,
    /// Every reason, zeros included.
    pub rejected: BTreeMap<String, u64>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub certificates: Vec<CertificateStatus>,
    /// Per peer identity, the certificate seen in handshakes that expires
    /// first.
    #[serde(default)]
    pub peer_certificates: Vec<PeerCertificateStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerCertificateStatus {
    pub peer: String,
    pub serial: String,
    /// RFC 3339.
    pub not_after: String,
    /// Negative once expired.
    pub expires_in_seconds: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertificateStatus {
    /// `cert` or `ca`.
    pub kind: String,
    pub file: PathBuf,
    pub subject: String,
    pub serial: String,
    /// RFC 3339.
    pub not_after: String,
    /// Negative once expired.
    pub expires_in_seconds: i64,
}

/// The current [`Status`] of the daemon behind `view`.
pub fn status(view: &DaemonView) -> Status {
    let now = SystemTime::now();
    let r = view.reloads();
    let services = view
        .services()
        .into_iter()
        .map(|(name, s)| {
            let (bytes_up, bytes_down) = s.state.bytes();
            ServiceStatus {
                mode: s.settings.mode().to_string(),
                listen: s.local_addr,
                connect: s.settings.connect.iter().map(ToString::to_string).collect(),
                active: s.state.active(),
                warm: s.state.warm(),
                warm_limit: s
                    .settings
                    .warm_connections
                    .max(s.settings.max_warm_connections),
                warm_used: s.state.warm_used.load(Ordering::Relaxed),
                max_connections: s.settings.max_connections,
                max_connections_per_source: s.settings.max_connections_per_source,
                accepted: s.state.accepted.load(Ordering::Relaxed),
                rejected: Rejection::ALL
                    .iter()
                    .map(|r| (r.as_str().to_owned(), s.state.rejected(*r)))
                    .collect(),
                bytes_up,
                bytes_down,
                certificates: metrics::certificates(&s.settings)
                    .into_iter()
                    .map(|c| CertificateStatus {
                        kind: c.kind.to_owned(),
                        expires_in_seconds: c.expires_in(now),
                        not_after: rfc3339_unix(c.not_after),
                        file: c.file,
                        subject: c.subject,
                        serial: c.serial,
                    })
                    .collect(),
                peer_certificates: s
                    .state
                    .peer_expiry
                    .earliest()
                    .into_iter()
                    .map(|p| PeerCertificateStatus {
                        expires_in_seconds: p.not_after.saturating_sub(metrics::unix_seconds(now)),
                        not_after: rfc3339_unix(p.not_after),
                        peer: p.peer,
                        serial: p.serial,
                    })
                    .collect(),
                name,
            }
        })
        .collect();
    Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        draining: view.draining(),
        reloads: ReloadStatus {
            attempts: r.attempts,
            failures: r.failures,
            last_failed: r.last_failed,
            last_success: r.last_success.map(rfc3339),
            last_error: r.last_error,
            file_triggered: r.file_triggered,
            file_triggered_failures: r.file_triggered_failures,
        },
        services,
    }
}

/// A time as RFC 3339 in UTC, whole seconds (the one formatter of
/// [`crate::x509`]).
pub fn rfc3339(t: SystemTime) -> String {
    rfc3339_unix(metrics::unix_seconds(t))
}

/// Unix seconds as RFC 3339 in UTC; empty if out of range.
fn rfc3339_unix(seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .map(crate::x509::rfc3339)
        .unwrap_or_default()
}
