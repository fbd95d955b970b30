//! One service at run time: its accept loop, the live record of its open
//! connections (for limits and for operators), and what happens to each
//! connection from accept to close.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::histogram::Histogram;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::timeout;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::config::{canonical_ip, Host, Role, Service, Target};
use crate::proxy::{self, End, Meter};
use crate::proxy_protocol;
use crate::tls;

/// Why a connection was turned away before any byte was forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    SourceNotAllowed,
    LimitReached,
    HandshakeTimeout,
    HandshakeFailed,
    PeerNotAllowed,
    BackendConnectFailed,
}

impl Rejection {
    pub const ALL: [Rejection; 6] = [
        Rejection::SourceNotAllowed,
        Rejection::LimitReached,
        Rejection::HandshakeTimeout,
        Rejection::HandshakeFailed,
        Rejection::PeerNotAllowed,
        Rejection::BackendConnectFailed,
    ];

    /// The label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::SourceNotAllowed => "source_not_allowed",
            Rejection::LimitReached => "limit_reached",
            Rejection::HandshakeTimeout => "handshake_timeout",
            Rejection::HandshakeFailed => "handshake_failed",
            Rejection::PeerNotAllowed => "peer_not_allowed",
            Rejection::BackendConnectFailed => "connect_failed",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the daemon knows about one open connection.
#[derive(Debug)]
pub struct ConnInfo {
    pub id: u64,
    pub source: SocketAddr,
    pub started: SystemTime,
    pub meter: Meter,
    /// The verified identity of the TLS peer, once the handshake is done.
    pub peer: OnceLock<String>,
    /// The address the connection was forwarded to.
    pub remote: OnceLock<SocketAddr>,
}

/// Counters and open connections of one service; outlives reloads that
/// keep the service.
#[derive(Debug)]
pub struct ServiceState {
    inner: Mutex<Open>,
    next_id: AtomicU64,
    pub accepted: AtomicU64,
    /// TLS handshakes that resumed an earlier session (no certificate
    /// exchange, cheaper).
    pub resumed: AtomicU64,
    rejected: [AtomicU64; 6],
    /// Bytes of connections already closed (open ones are in their meters).
    closed_up: AtomicU64,
    closed_down: AtomicU64,
    /// Seconds from accept to the end of the TLS handshake.
    pub handshake_seconds: Histogram,
    /// Seconds to connect to the backend or remote (resolution included).
    pub connect_seconds: Histogram,
    /// Lifetime of forwarded connections, in seconds.
    pub duration_seconds: Histogram,
}

impl Default for ServiceState {
    fn default() -> Self {
        let fast = [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let long = [
            0.01,
            0.1,
            1.0,
            10.0,
            60.0,
            300.0,
            1800.0,
            3600.0,
            6.0 * 3600.0,
            24.0 * 3600.0,
        ];
        ServiceState {
            inner: Mutex::default(),
            next_id: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
            rejected: Default::default(),
            closed_up: AtomicU64::new(0),
            closed_down: AtomicU64::new(0),
            handshake_seconds: Histogram::new(fast),
            connect_seconds: Histogram::new(fast),
            duration_seconds: Histogram::new(long),
        }
    }
}

#[derive(Debug, Default)]
struct Open {
    conns: HashMap<u64, Arc<ConnInfo>>,
    per_source: HashMap<IpAddr, usize>,
}

impl ServiceState {
    pub fn rejected(&self, r: Rejection) -> u64 {
        self.rejected[r as usize].load(Ordering::Relaxed)
    }

    fn reject(&self, r: Rejection) {
        self.rejected[r as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes moved so far, (towards the backend, back to clients), open
    /// connections included.
    pub fn bytes(&self) -> (u64, u64) {
        let open = self.lock();
        let (mut up, mut down) = (
            self.closed_up.load(Ordering::Relaxed),
            self.closed_down.load(Ordering::Relaxed),
        );
        for c in open.conns.values() {
            up += c.meter.up();
            down += c.meter.down();
        }
        (up, down)
    }

    /// How many connections are open now.
    pub fn active(&self) -> usize {
        self.lock().conns.len()
    }

    /// A snapshot of the open connections.
    pub fn connections(&self) -> Vec<Arc<ConnInfo>> {
        let mut v: Vec<_> = self.lock().conns.values().cloned().collect();
        v.sort_by_key(|c| c.id);
        v
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        // A panic while holding this lock cannot leave the maps half
        // updated (each update is one insert or remove), so a poisoned
        // lock is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place for a new connection, or says which limit is reached.
    fn admit(self: &Arc<Self>, service: &Service, source: SocketAddr) -> Option<ConnGuard> {
        let ip = canonical_ip(source.ip());
        let mut open = self.lock();
        if service
            .max_connections
            .is_some_and(|max| open.conns.len() >= max)
        {
            return None;
        }
        let from_source = open.per_source.get(&ip).copied().unwrap_or(0);
        if service
            .max_connections_per_source
            .is_some_and(|max| from_source >= max)
        {
            return None;
        }
        let info = Arc::new(ConnInfo {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            source,
            started: SystemTime::now(),
            meter: Meter::new(),
            peer: OnceLock::new(),
            remote: OnceLock::new(),
        });
        open.conns.insert(info.id, info.clone());
        *open.per_source.entry(ip).or_insert(0) += 1;
        Some(ConnGuard {
            state: self.clone(),
            info,
        })
    }
}

/// A connection's place in its service; freed when dropped.
struct ConnGuard {
    state: Arc<ServiceState>,
    info: Arc<ConnInfo>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut open = self.state.lock();
        open.conns.remove(&self.info.id);
        // Under the lock, so that `bytes()` never counts a connection twice
        // or not at all.
        let m = &self.info.meter;
        self.state.closed_up.fetch_add(m.up(), Ordering::Relaxed);
        self.state
            .closed_down
            .fetch_add(m.down(), Ordering::Relaxed);
        let ip = canonical_ip(self.info.source.ip());
        if let Some(n) = open.per_source.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                open.per_source.remove(&ip);
            }
        }
    }
}

/// Everything an accept loop needs.
pub struct Serve {
    pub listener: TcpListener,
    /// The service's current settings; a reload may replace them.
    pub settings: watch::Receiver<Arc<Service>>,
    pub state: Arc<ServiceState>,
    /// Cancelled to stop accepting (stop, or the service was removed or
    /// moved); open connections go on.
    pub stop_accepting: CancellationToken,
    /// Cancelled to close every open connection at once.
    pub close_all: CancellationToken,
    pub tracker: TaskTracker,
}

/// Accepts connections until `stop_accepting`; each runs in its own task.
pub async fn accept_loop(serve: Serve) {
    let Serve {
        listener,
        settings,
        state,
        stop_accepting,
        close_all,
        tracker,
    } = serve;
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop_accepting.cancelled() => return,
            r = listener.accept() => r,
        };
        let (tcp, source) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE/ENFILE and the like: the pending connection stays
                // in the backlog, so retrying at once would spin.
                let service = settings.borrow().name.clone();
                warn!(service, error = %e, "accept failed; pausing 100ms");
                tokio::select! {
                    () = stop_accepting.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let service = settings.borrow().clone();
        if !service.source_allowed(source.ip()) {
            info!(service = %service.name, %source, "connection refused: source not in allow_sources");
            state.reject(Rejection::SourceNotAllowed);
            continue;
        }
        let Some(guard) = state.admit(&service, source) else {
            info!(service = %service.name, %source, active = state.active(),
                max_connections = service.max_connections,
                max_connections_per_source = service.max_connections_per_source,
                "connection refused: connection limit reached");
            state.reject(Rejection::LimitReached);
            continue;
        };
        state.accepted.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!(
            "conn",
            service = %service.name,
            %source,
            peer = tracing::field::Empty,
        );
        let close_all = close_all.clone();
        tracker.spawn(
            async move {
                tokio::select! {
                    () = handle(tcp, &service, &guard) => {}
                    () = close_all.cancelled() => {
                        let m = &guard.info.meter;
                        info!(up = m.up(), down = m.down(), duration = ?m.elapsed(),
                            "connection closed: shutdown deadline reached");
                    }
                }
            }
            .instrument(span),
        );
    }
}

async fn handle(tcp: TcpStream, service: &Service, guard: &ConnGuard) {
    set_socket_options(&tcp);
    let local = tcp.local_addr().ok();
    match &service.role {
        Role::Server { tls, peers } => {
            let started = tokio::time::Instant::now();
            let handshake = TlsAcceptor::from(tls.clone()).accept(tcp);
            // The handshake's state is on the heap only while it runs.
            let tls = match timeout(service.handshake_timeout, Box::pin(handshake)).await {
                Err(_) => {
                    return refuse(
                        guard,
                        Rejection::HandshakeTimeout,
                        "no TLS handshake within handshake_timeout",
                    )
                }
                Ok(Err(e)) => {
                    let why = handshake_rejection(&e);
                    let message = match why {
                        Rejection::PeerNotAllowed => {
                            "peer identity not in allow_peers (see peer= for the names it presented)"
                                .to_string()
                        }
                        _ => format!("TLS handshake failed: {e}"),
                    };
                    return refuse(guard, why, &message);
                }
                // Boxed at once: the stream (1.2 kB of rustls state) then
                // lives once on the heap instead of being copied into the
                // state of every future it is moved through, which made
                // each connection's task 6.7 kB.
                Ok(Ok(s)) => Box::new(s),
            };
            let ids = handshake_done(guard, started, tls.get_ref().1);
            let peer = ids.join(",");
            // The verifier already checked this; a resumed session skips
            // the verifier, so check again against the current list.
            if !peers.allows(&ids) {
                return refuse(
                    guard,
                    Rejection::PeerNotAllowed,
                    "peer identity not in allow_peers",
                );
            }
            let _ = guard.info.peer.set(peer);
            let Some(mut backend) = connect(service, guard).await else {
                return;
            };
            if let (Some(version), Some(local)) = (service.proxy_protocol, local) {
                let tls_version = match tls.get_ref().1.protocol_version() {
                    Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                    _ => "TLSv1.3",
                };
                let peer = guard.info.peer.get().map(String::as_str).unwrap_or("");
                let header =
                    proxy_protocol::header(version, guard.info.source, local, peer, tls_version);
                let write = tokio::io::AsyncWriteExt::write_all(&mut backend, &header);
                if let Err(e) = timeout(service.connect_timeout, write)
                    .await
                    .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")))
                {
                    return refuse(
                        guard,
                        Rejection::BackendConnectFailed,
                        &format!("cannot send the PROXY header: {e}"),
                    );
                }
            }
            forward(tls, backend, service, guard).await;
        }
        Role::Client { tls, server_name } => {
            let Some(remote) = connect(service, guard).await else {
                return;
            };
            let started = tokio::time::Instant::now();
            let handshake = TlsConnector::from(tls.clone()).connect(server_name.clone(), remote);
            // The handshake's state is on the heap only while it runs.
            let tls = match timeout(service.handshake_timeout, Box::pin(handshake)).await {
                Err(_) => {
                    return refuse(
                        guard,
                        Rejection::HandshakeTimeout,
                        "no TLS handshake with the remote within handshake_timeout",
                    )
                }
                Ok(Err(e)) => {
                    return refuse(
                        guard,
                        handshake_rejection(&e),
                        &format!("TLS handshake with the remote failed: {e}"),
                    )
                }
                // Boxed at once: the stream (1.2 kB of rustls state) then
                // lives once on the heap instead of being copied into the
                // state of every future it is moved through, which made
                // each connection's task 6.7 kB.
                Ok(Ok(s)) => Box::new(s),
            };
            let peer = handshake_done(guard, started, tls.get_ref().1).join(",");
            let _ = guard.info.peer.set(peer);
            forward(tcp, tls, service, guard).await;
        }
    }
}

/// Connects to the service's backend (server mode) or remote (client
/// mode), timing it and noting the address; `None` once refused.
async fn connect(service: &Service, guard: &ConnGuard) -> Option<TcpStream> {
    let started = tokio::time::Instant::now();
    match connect_any(&service.connect, service.connect_timeout).await {
        Ok(stream) => {
            guard
                .state
                .connect_seconds
                .observe(started.elapsed().as_secs_f64());
            if let Ok(addr) = stream.peer_addr() {
                let _ = guard.info.remote.set(addr);
            }
            Some(stream)
        }
        Err(e) => {
            refuse(guard, Rejection::BackendConnectFailed, &e);
            None
        }
    }
}

/// Records a finished handshake (its time, whether it resumed) and returns
/// the names the peer's certificate proves.
fn handshake_done(
    guard: &ConnGuard,
    started: tokio::time::Instant,
    conn: &rustls::CommonState,
) -> Vec<String> {
    let state = &guard.state;
    state
        .handshake_seconds
        .observe(started.elapsed().as_secs_f64());
    let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    if resumed {
        state.resumed.fetch_add(1, Ordering::Relaxed);
    }
    let ids = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(tls::identities)
        .unwrap_or_default();
    // The verifier already put the presented names in the span, except on
    // a resumed handshake, where it does not run.
    if resumed {
        tracing::Span::current().record("peer", ids.join(","));
    }
    ids
}

fn refuse(guard: &ConnGuard, why: Rejection, message: &str) {
    guard.state.reject(why);
    match why {
        Rejection::BackendConnectFailed => warn!(reason = %why, "connection closed: {message}"),
        _ => info!(reason = %why, "connection refused: {message}"),
    }
}

/// Tells a refused identity apart from other handshake failures.
fn handshake_rejection(e: &io::Error) -> Rejection {
    let refused = rustls::Error::InvalidCertificate(tls::IDENTITY_REFUSED);
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(inner) if *inner == refused => Rejection::PeerNotAllowed,
        _ => Rejection::HandshakeFailed,
    }
}

async fn forward<A, B>(client: A, other: B, service: &Service, guard: &ConnGuard)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let meter = &guard.info.meter;
    debug!(remote = ?guard.info.remote.get(), "connection open");
    let end = proxy::pipe(client, other, meter, service.idle_timeout).await;
    let (up, down, duration) = (meter.up(), meter.down(), meter.elapsed());
    guard.state.duration_seconds.observe(duration.as_secs_f64());
    match end {
        End::Finished => debug!(
            up,
            down,
            ?duration,
            "connection closed: both sides finished"
        ),
        End::Idle(idle) => info!(up, down, ?duration, "connection closed: idle for {idle:?}"),
        End::Error(e) if is_ordinary(&e) => {
            debug!(up, down, ?duration, error = %e, "connection closed by a peer")
        }
        End::Error(e) if down == 0 && is_alert(&e) => {
            // In TLS 1.3 a client finishes its handshake before the server
            // has judged its certificate: a refusal arrives as an alert on
            // the first read. Count it as the refusal it is.
            guard.state.reject(Rejection::HandshakeFailed);
            info!(up, ?duration, error = %e, reason = %Rejection::HandshakeFailed,
                "connection refused by the remote");
        }
        End::Error(e) => info!(up, down, ?duration, error = %e, "connection closed on error"),
    }
}

/// Whether the peer ended the connection with a fatal TLS alert.
fn is_alert(e: &io::Error) -> bool {
    matches!(
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::AlertReceived(_))
    )
}

/// Resets, broken pipes and TCP closes without close_notify are how
/// connections usually end; they are not worth an operator's attention.
fn is_ordinary(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionAborted
    )
}

fn set_socket_options(tcp: &TcpStream) {
    // Interactive protocols (Redis, MongoDB) want every small write sent
    // at once; keepalive finds peers that vanished from idle pools.
    let _ = tcp.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(6);
    let _ = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive);
}

/// Connects to the first target that answers. A DNS name is resolved now
/// (not at start), and each of its addresses is tried in turn, each within
/// `each_timeout`.
async fn connect_any(targets: &[Target], each_timeout: Duration) -> Result<TcpStream, String> {
    let mut failures = Vec::new();
    for target in targets {
        let addrs: Vec<SocketAddr> = match &target.host {
            Host::Ip(ip) => vec![SocketAddr::new(*ip, target.port)],
            Host::Name(name) => {
                match timeout(
                    each_timeout,
                    tokio::net::lookup_host((name.as_str(), target.port)),
                )
                .await
                {
                    Ok(Ok(a)) => a.collect(),
                    Ok(Err(e)) => {
                        failures.push(format!("{target}: cannot resolve: {e}"));
                        continue;
                    }
                    Err(_) => {
                        failures.push(format!("{target}: name resolution timed out"));
                        continue;
                    }
                }
            }
        };
        for addr in addrs {
            match timeout(each_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    set_socket_options(&s);
                    return Ok(s);
                }
                Ok(Err(e)) => failures.push(format!("{addr}: {e}")),
                Err(_) => failures.push(format!("{addr}: no answer within {each_timeout:?}")),
            }
        }
    }
    Err(format!("cannot connect to {}", failures.join("; ")))
}
