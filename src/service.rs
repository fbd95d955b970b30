//! One service at run time: its accept loop, and the life of each of its
//! connections from accept to close, read top to bottom.
//!
//! A connection goes through [`Phase`]s, each within its own deadline:
//! server mode is handshake, connect to the backend, PROXY header, forward;
//! client mode is connect to the remote, handshake with it, forward. It
//! ends either with both sides finished or with one [`ConnError`], which
//! names the phase and the cause and is logged once, in [`log_end`].

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::config::{Host, Role, Service};
use crate::connections::ConnGuard;
use crate::dead_peer;
use crate::proxy::{self, End};
use crate::proxy_protocol;
use crate::tls;

// The live record of connections has its own module; these paths are the
// ones the rest of the crate and the tests have always used.
pub use crate::connections::{ConnInfo, Rejection, ServiceState};

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
            // An IPv4 client on a dual-stack (`[::]`) listener arrives as
            // ::ffff:a.b.c.d; it is a.b.c.d, in logs, in /connections and
            // against allow_sources.
            Ok((tcp, s)) => (tcp, SocketAddr::new(s.ip().to_canonical(), s.port())),
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
            if state.refuse(&service.name, source.ip(), Rejection::SourceNotAllowed) {
                info!(service = %service.name, %source, "connection refused: source not in allow_sources");
            }
            continue;
        }
        let Some(guard) = state.admit(&service, source) else {
            if state.refuse(&service.name, source.ip(), Rejection::LimitReached) {
                info!(service = %service.name, %source, active = state.active(),
                    max_connections = service.max_connections,
                    max_connections_per_source = service.max_connections_per_source,
                    "connection refused: connection limit reached");
            }
            continue;
        };
        state.accepted.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!(
            "conn",
            service = %service.name,
            %source,
            peer = tracing::field::Empty,
        );
        // The handshake runs in the connection's own task, never here: a
        // slow client must not hold up the next accept.
        tracker.spawn(connection(tcp, service, guard, close_all.clone()).instrument(span));
    }
}

/// One connection's task: its life, cut short if the daemon's shutdown
/// deadline comes first, then one log line saying how it ended.
async fn connection(
    tcp: TcpStream,
    service: Arc<Service>,
    guard: ConnGuard,
    close_all: CancellationToken,
) {
    let end = tokio::select! {
        end = handle(tcp, &service, &guard) => end,
        () = close_all.cancelled() => Err(ConnError::new(Phase::Shutdown, Cause::ShutdownDeadline)),
    };
    log_end(&service, &guard, end);
}

/// A connection from accept to the end of forwarding.
async fn handle(tcp: TcpStream, service: &Service, guard: &ConnGuard) -> Result<(), ConnError> {
    set_socket_options(&tcp, service, guard);
    match &service.role {
        Role::Server { tls, peers } => {
            // Taken now: the handshake consumes the socket.
            let local = tcp.local_addr();
            let acceptor = TlsAcceptor::from(tls.clone());
            let accept = async move {
                if !guard.state.ip_sni_seen.load(Ordering::Relaxed) {
                    note_ip_sni(&tcp, service, guard).await;
                }
                acceptor.accept(tcp).await
            };
            let (tls, ids) = handshake(Phase::Handshake, service, guard, Box::pin(accept)).await?;
            // The verifier already checked this; a resumed session skips
            // the verifier, so check again against the current list.
            if !peers.allows(&ids) {
                return Err(ConnError::new(Phase::Handshake, Cause::PeerNotAllowed));
            }
            let mut backend = connect(service, guard).await?;
            if let Some(version) = service.proxy_protocol {
                let local = local.map_err(|e| ConnError::new(Phase::ProxyHeader, e.into()))?;
                let tls_version = match tls.get_ref().1.protocol_version() {
                    Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                    _ => "TLSv1.3",
                };
                let peer = guard.info.peer.get().map(String::as_str).unwrap_or("");
                let header =
                    proxy_protocol::header(version, guard.info.source, local, peer, tls_version);
                deadline(Phase::ProxyHeader, service.connect_timeout, || {
                    backend.write_all(&header)
                })
                .await?;
            }
            forward(tls, backend, service, guard).await
        }
        Role::Ca {
            tls,
            peers,
            authority,
        } => {
            let accept = TlsAcceptor::from(tls.clone()).accept(tcp);
            let (tls, ids) = handshake(Phase::Handshake, service, guard, Box::pin(accept)).await?;
            let cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec());
            let (source, peers, authority) = (guard.info.source, peers.clone(), authority.clone());
            crate::ca_service::serve(tls, &service.name, source, peers, authority, cert, ids)
                .await
                .map_err(|e| ConnError::new(Phase::Forward, io::Error::other(e).into()))
        }
        Role::Client { tls, server_name } => {
            let remote = connect(service, guard).await?;
            let connect = TlsConnector::from(tls.clone()).connect(server_name.clone(), remote);
            let (tls, _) =
                handshake(Phase::RemoteHandshake, service, guard, Box::pin(connect)).await?;
            forward(tcp, tls, service, guard).await
        }
    }
}

/// Runs a TLS handshake (either side) within `handshake_timeout`, records
/// it (time, resumption, the peer's identity) and returns the stream with
/// the names the peer's certificate proves.
///
/// The handshake comes boxed: its state (over a kilobyte) is then on the
/// heap only while it runs, instead of in every connection's task.
async fn handshake<S>(
    phase: Phase,
    service: &Service,
    guard: &ConnGuard,
    handshake: Pin<Box<impl Future<Output = io::Result<S>>>>,
) -> Result<(Box<TlsStream<TcpStream>>, Vec<String>), ConnError>
where
    TlsStream<TcpStream>: From<S>,
{
    let started = tokio::time::Instant::now();
    let stream = deadline(phase, service.handshake_timeout, || handshake).await?;
    // Boxed at once: the stream (1.2 kB of rustls state) then lives once
    // on the heap instead of being copied into the state of every future
    // it is moved through, which made each connection's task 6.7 kB.
    let stream = Box::new(TlsStream::from(stream));
    let state = &guard.state;
    state
        .handshake_seconds
        .observe(started.elapsed().as_secs_f64());
    let conn = stream.get_ref().1;
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
    // Set once per connection, so it cannot be set already.
    let _ = guard.info.peer.set(ids.join(","));
    // The peer's expiry, for the metrics: on a resumed handshake too, so
    // that a peer whose sessions keep resuming still shows.
    if let Some(info) = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| crate::x509::CertInfo::parse(c).ok())
    {
        state.peer_expiry.record(
            &ids.join(","),
            &info.serial,
            info.not_after.unix_timestamp(),
            std::time::SystemTime::now(),
        );
    }
    Ok((stream, ids))
}

/// Logs, once per service and at debug, a client that sends an IP address
/// as its TLS server name (SNI). stunnel does (it sends its `connect`
/// host); RFC 6066 allows only names there, so rustls ignores it, as if
/// no name had been sent: harmless, and not worth a line per connection.
///
/// Reads the ClientHello without consuming it, before the handshake does;
/// once a service has logged it, its connections skip this.
async fn note_ip_sni(tcp: &TcpStream, service: &Service, guard: &ConnGuard) {
    // On the heap and only for this look: the connection's task keeps
    // no buffer. A ClientHello with its server name first fits easily.
    let mut hello = vec![0; 2048];
    let Ok(n) = tcp.peek(&mut hello).await else {
        return; // The handshake meets the same error and reports it.
    };
    if let Some(ip) = tls::ip_sni(&hello[..n]) {
        if !guard.state.ip_sni_seen.swap(true, Ordering::Relaxed) {
            debug!(service = %service.name, sni = %ip,
                "a client sends an IP address as TLS server name (SNI), as stunnel does; \
                 ignored (told once per service)");
        }
    }
}

/// Connects to the service's backend (server mode) or remote (client
/// mode), timing it and noting the address.
async fn connect(service: &Service, guard: &ConnGuard) -> Result<TcpStream, ConnError> {
    let started = tokio::time::Instant::now();
    let stream = connect_any(service, guard).await?;
    guard
        .state
        .connect_seconds
        .observe(started.elapsed().as_secs_f64());
    if let Ok(addr) = stream.peer_addr() {
        // Set once per connection, so it cannot be set already.
        let _ = guard.info.remote.set(addr);
    }
    // Client mode: the remote, across the link. Server mode: the backend,
    // whose host can vanish as a link does (see `set_leg_options`).
    set_leg_options(&stream, service, guard, true);
    Ok(stream)
}

/// Connects to the first target that answers. A DNS name is resolved now
/// (not at start), and each of its addresses is tried in turn, each within
/// `connect_timeout`. An address that failed lately is passed over while
/// another answers, and tried last otherwise ([`crate::targets`]).
async fn connect_any(service: &Service, guard: &ConnGuard) -> Result<TcpStream, ConnError> {
    let each_timeout = service.connect_timeout;
    let health = &guard.state.targets;
    let mut failures = Vec::new();
    let mut passed_over = Vec::new();
    for target in &service.connect {
        let addrs: Vec<SocketAddr> = match &target.host {
            Host::Ip(ip) => vec![SocketAddr::new(*ip, target.port)],
            Host::Name(name) => {
                let lookup = || tokio::net::lookup_host((name.as_str(), target.port));
                match deadline(Phase::Connect, each_timeout, lookup).await {
                    Ok(a) => a.collect(),
                    Err(e) => {
                        failures.push(match e.cause {
                            Cause::TimedOut(_) => format!("{target}: name resolution timed out"),
                            cause => format!("{target}: cannot resolve: {cause}"),
                        });
                        continue;
                    }
                }
            }
        };
        for addr in addrs {
            if health.is_down(addr) {
                passed_over.push(addr);
                continue;
            }
            if let Some(s) = try_address(addr, service, guard, &mut failures).await {
                if !passed_over.is_empty() {
                    health.skipped(&passed_over);
                    debug!(target = %addr, skipped = ?passed_over,
                        "connected past connect targets marked down");
                }
                return Ok(s);
            }
        }
    }
    // Nothing else answered: the addresses marked down are still worth a
    // try; with all of them down, this tries every one, as before.
    if !passed_over.is_empty() {
        debug!(targets = ?passed_over, "no other connect target answered; trying those marked down");
    }
    for addr in passed_over {
        if let Some(s) = try_address(addr, service, guard, &mut failures).await {
            return Ok(s);
        }
    }
    Err(ConnError::new(Phase::Connect, Cause::Unreachable(failures)))
}

/// Copies bytes both ways until both sides finish, one fails, or nothing
/// moved for `idle_timeout`.
async fn forward<A, B>(
    client: A,
    other: B,
    service: &Service,
    guard: &ConnGuard,
) -> Result<(), ConnError>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let meter = &guard.info.meter;
    debug!(
        remote = guard.info.remote.get().map(tracing::field::display),
        "connection open"
    );
    let end = proxy::pipe(client, other, meter, service.idle_timeout).await;
    guard
        .state
        .duration_seconds
        .observe(meter.elapsed().as_secs_f64());
    match end {
        End::Finished => Ok(()),
        End::Idle(idle) => Err(ConnError::new(Phase::Forward, Cause::TimedOut(idle))),
        // ETIMEDOUT: the user timeout or keepalive gave up on a peer.
        End::Error(e) if e.kind() == io::ErrorKind::TimedOut => Err(ConnError::new(
            Phase::Forward,
            Cause::DeadPeer(service.dead_peer_timeout),
        )),
        End::Error(e) => Err(ConnError::new(Phase::Forward, e.into())),
    }
}

/// A warning about one connection. Its context goes on the event itself,
/// not only in the connection's span: that span is at info, so at
/// `DCTUNNEL_LOG=warning` it is filtered out with its fields, and the line
/// must still say which service, source and peer it is about.
macro_rules! conn_warn {
    ($service:expr, $info:expr, $($rest:tt)+) => {
        warn!(
            service = %$service.name,
            source = %$info.source,
            peer = $info.peer.get().map(String::as_str),
            $($rest)+
        )
    };
}

/// Logs how a connection ended, with its close reason, and counts
/// refusals. Graded as an operator needs it: ordinary ends at debug,
/// refusals and unusual ends at info, an unreachable backend (something to
/// fix) at warn. Repeated refusals are summarised (see [`crate::refusals`]).
fn log_end(service: &Service, guard: &ConnGuard, end: Result<(), ConnError>) {
    let m = &guard.info.meter;
    let (up, down, duration) = (m.up(), m.down(), m.elapsed());
    let e = match end {
        Ok(()) => {
            debug!(
                up,
                down,
                ?duration,
                "connection closed: both sides finished"
            );
            return;
        }
        Err(e) => e,
    };
    let source = guard.info.source.ip();
    if let Some(why) = e.rejection() {
        if !guard.state.refuse(&service.name, source, why) {
            return;
        }
        match why {
            Rejection::BackendConnectFailed => {
                conn_warn!(service, guard.info, reason = %why, "connection closed: {e}")
            }
            _ => info!(reason = %why, "connection refused: {e}"),
        }
        return;
    }
    let client = matches!(service.role, Role::Client { .. });
    match &e.cause {
        Cause::Io(err) if client && down == 0 && is_silent_close(err) => {
            // The remote (a server-mode end) accepted the handshake, then
            // closed without a byte: what it does when its backend cannot
            // be reached, or when a resumed session's identity is no
            // longer allowed. Its log says which; this side must at least
            // show it at info, not as an ordinary close.
            info!(up, ?duration, error = %err,
                "connection closed by the remote before it sent any byte: its backend may be \
                 down, or it refused this connection after the handshake; see the remote's log")
        }
        Cause::Io(err) if is_ordinary(err) => {
            debug!(up, down, ?duration, error = %err, "connection closed by a peer")
        }
        Cause::Io(err) if down == 0 && alert(err).is_some() => {
            // In TLS 1.3 a client finishes its handshake before the server
            // has judged its certificate: a refusal arrives as an alert on
            // the first read. Count it as the refusal it is.
            if guard
                .state
                .refuse(&service.name, source, Rejection::HandshakeFailed)
            {
                match alert(err).and_then(tls::refusal_hint).filter(|_| client) {
                    Some(hint) => info!(up, ?duration, error = %err,
                        reason = %Rejection::HandshakeFailed,
                        "connection refused by the remote: probably {hint}; see the remote's log"),
                    None => info!(up, ?duration, error = %err,
                        reason = %Rejection::HandshakeFailed, "connection refused by the remote"),
                }
            }
        }
        Cause::Io(err) => info!(up, down, ?duration, error = %err, "connection closed on error"),
        // A link or host gone: something to look at, not an ordinary end.
        Cause::DeadPeer(_) => conn_warn!(
            service,
            guard.info,
            up,
            down,
            ?duration,
            remote = guard.info.remote.get().map(tracing::field::display),
            reason = "dead_peer",
            "connection closed: {e}"
        ),
        // Idle, or closed at the shutdown deadline.
        _ => info!(up, down, ?duration, "connection closed: {e}"),
    }
}

/// The steps of a connection, in order. Each has a deadline; an error
/// names the step it happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Server mode: the TLS handshake with the client (`handshake_timeout`).
    Handshake,
    /// Resolving and connecting to the backend (server mode) or the remote
    /// (client mode), one target after the other (`connect_timeout` for
    /// each resolution and each address).
    Connect,
    /// Client mode: the TLS handshake with the remote (`handshake_timeout`).
    RemoteHandshake,
    /// Server mode with `proxy_protocol`: sending the PROXY header to the
    /// backend (`connect_timeout`).
    ProxyHeader,
    /// Copying bytes both ways (`idle_timeout` without a byte either way).
    Forward,
    /// The daemon is stopping and its shutdown deadline passed: whatever
    /// step a connection is in, it is closed.
    Shutdown,
}

/// What went wrong in a phase.
#[derive(Debug, thiserror::Error)]
enum Cause {
    /// The phase's deadline passed.
    #[error("timed out")]
    TimedOut(Duration),
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The peer's verified identity is not in `allow_peers` (checked after
    /// a resumed handshake, which skips the verifier).
    #[error("peer identity not in allow_peers")]
    PeerNotAllowed,
    /// No target answered: what happened with each name and address tried.
    #[error("cannot connect to {}", .0.join("; "))]
    Unreachable(Vec<String>),
    #[error("shutdown deadline reached")]
    ShutdownDeadline,
    /// A peer stopped acknowledging (`ETIMEDOUT` while forwarding): the
    /// `dead_peer_timeout` in force, `None` if it is off.
    #[error("peer unreachable")]
    DeadPeer(Option<Duration>),
}

/// Why a connection ended early: the phase and the cause. Its Display is
/// the close reason in the log.
#[derive(Debug, thiserror::Error)]
struct ConnError {
    phase: Phase,
    #[source]
    cause: Cause,
}

impl ConnError {
    fn new(phase: Phase, cause: Cause) -> ConnError {
        ConnError { phase, cause }
    }

    /// The refusal this counts as, if the connection never got to forward.
    fn rejection(&self) -> Option<Rejection> {
        match (self.phase, &self.cause) {
            (_, Cause::PeerNotAllowed) => Some(Rejection::PeerNotAllowed),
            (Phase::Handshake | Phase::RemoteHandshake, Cause::TimedOut(_)) => {
                Some(Rejection::HandshakeTimeout)
            }
            (Phase::Handshake | Phase::RemoteHandshake, Cause::Io(e)) => {
                Some(handshake_rejection(e))
            }
            (Phase::Handshake | Phase::RemoteHandshake, _) => Some(Rejection::HandshakeFailed),
            (Phase::Connect | Phase::ProxyHeader, _) => Some(Rejection::BackendConnectFailed),
            (Phase::Forward | Phase::Shutdown, _) => None,
        }
    }
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cause = &self.cause;
        match (self.phase, cause) {
            (Phase::Handshake, Cause::TimedOut(_)) => {
                f.write_str("no TLS handshake within handshake_timeout")
            }
            (Phase::RemoteHandshake, Cause::TimedOut(_)) => {
                f.write_str("no TLS handshake with the remote within handshake_timeout")
            }
            (_, Cause::PeerNotAllowed) => write!(f, "{cause}"),
            (Phase::Handshake, _) if self.rejection() == Some(Rejection::PeerNotAllowed) => f
                .write_str(
                    "peer identity not in allow_peers (see peer= for the names it presented)",
                ),
            (Phase::Handshake, Cause::Io(e)) => match rustls_error(e).and_then(tls::pin_mismatch) {
                Some(pin) => write!(f, "TLS handshake failed: {pin}"),
                None => write!(f, "TLS handshake failed: {cause}"),
            },
            (Phase::Handshake, _) => write!(f, "TLS handshake failed: {cause}"),
            (Phase::RemoteHandshake, Cause::Io(e)) => {
                f.write_str("TLS handshake with the remote failed: ")?;
                if let Some(pin) = rustls_error(e).and_then(tls::pin_mismatch) {
                    return write!(f, "{pin}");
                }
                write!(f, "{cause}")?;
                if let Some(hint) = alert(e).and_then(tls::refusal_hint) {
                    write!(f, "; probably {hint}; see the remote's log")
                } else if is_silent_close(e) {
                    // The remote closed before the handshake ended, without
                    // an alert: what a dctunnel server does to a source
                    // that allow_sources or a limit turns away.
                    f.write_str(
                        "; the remote closed the connection before the handshake: it probably \
                         refused this host's source address (allow_sources) or is at a \
                         connection limit; see the remote's log",
                    )
                } else {
                    Ok(())
                }
            }
            (Phase::RemoteHandshake, _) => {
                write!(f, "TLS handshake with the remote failed: {cause}")
            }
            (Phase::ProxyHeader, _) => write!(f, "cannot send the PROXY header: {cause}"),
            (Phase::Forward, Cause::TimedOut(idle)) => write!(f, "idle for {idle:?}"),
            (_, Cause::DeadPeer(Some(limit))) => write!(
                f,
                "peer unreachable: no acknowledgement within {limit:?} (dead_peer_timeout)"
            ),
            (_, Cause::DeadPeer(None)) => f.write_str(
                "peer unreachable: no acknowledgement before the kernel gave up \
                 (dead_peer_timeout is off)",
            ),
            (Phase::Forward, _) => write!(f, "forwarding failed: {cause}"),
            (Phase::Connect | Phase::Shutdown, _) => write!(f, "{cause}"),
        }
    }
}

/// Runs `work` for at most `limit`; a timeout becomes an error naming the
/// phase, as does the work's own error.
///
/// `work` makes its future only once it runs: a future passed by value
/// would stay in this one's state twice (as the argument, then inside the
/// timer), and these states are part of every connection's task.
async fn deadline<T, E, F>(
    phase: Phase,
    limit: Duration,
    work: impl FnOnce() -> F,
) -> Result<T, ConnError>
where
    F: Future<Output = Result<T, E>>,
    Cause: From<E>,
{
    match tokio::time::timeout(limit, work()).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ConnError::new(phase, e.into())),
        Err(_) => Err(ConnError::new(phase, Cause::TimedOut(limit))),
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

/// The rustls error inside an I/O error of a TLS stream, if any.
fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// The fatal TLS alert the peer ended the connection with, if it did.
fn alert(e: &io::Error) -> Option<rustls::AlertDescription> {
    match rustls_error(e) {
        Some(rustls::Error::AlertReceived(a)) => Some(*a),
        _ => None,
    }
}

/// A close without a word: end of stream without close_notify or alert,
/// or a reset (a socket closed with bytes unread resets).
fn is_silent_close(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
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

/// Options of the socket a connection was accepted on. In server mode it
/// comes from across the link (the TLS leg): dead-peer detection applies;
/// in client mode it is a local application's (see [`set_leg_options`]).
fn set_socket_options(tcp: &TcpStream, service: &Service, guard: &ConnGuard) {
    let across = matches!(service.role, Role::Server { .. });
    set_leg_options(tcp, service, guard, across);
}

/// Interactive protocols (Redis, MongoDB) want every small write sent at
/// once; keepalive finds peers that vanished from idle pools. A leg
/// `across` the link (the TLS leg either way, and a server-mode service's
/// backend, whose host may vanish just the same) gets dead-peer detection
/// ([`crate::dead_peer`]): closed within `dead_peer_timeout` once its peer
/// stops acknowledging. The connection works without these options, so a
/// failure is logged, not fatal.
fn set_leg_options(tcp: &TcpStream, service: &Service, guard: &ConnGuard, across: bool) {
    let failed = |option: &str, e: io::Error| {
        conn_warn!(service, guard.info,
            address = tcp.peer_addr().ok().map(tracing::field::display), error = %e,
            "cannot set {option} on a connection");
    };
    if let Err(e) = tcp.set_nodelay(true) {
        failed("TCP_NODELAY", e);
    }
    let settings = if across {
        dead_peer::Settings::for_timeout(service.dead_peer_timeout)
    } else {
        dead_peer::Settings::local()
    };
    if let Err((option, e)) = settings.apply(socket2::SockRef::from(tcp)) {
        failed(option, e);
    }
}

/// One connect attempt within `connect_timeout`, noted in the service's
/// record of its targets; a failure is added to `failures`, and logged
/// when it marks the address down.
async fn try_address(
    addr: SocketAddr,
    service: &Service,
    guard: &ConnGuard,
    failures: &mut Vec<String>,
) -> Option<TcpStream> {
    let limit = service.connect_timeout;
    let health = &guard.state.targets;
    match deadline(Phase::Connect, limit, || TcpStream::connect(addr)).await {
        Ok(s) => {
            health.succeeded(&service.name, addr);
            Some(s)
        }
        Err(e) => {
            let failure = match e.cause {
                Cause::TimedOut(limit) => format!("no answer within {limit:?}"),
                cause => cause.to_string(),
            };
            if let Some(unlogged) = health.failed(&service.name, addr, limit) {
                conn_warn!(service, guard.info, target = %addr, error = %failure,
                    down_before_not_logged = unlogged,
                    "connect target marked down: new connections try the other targets first \
                     while a background probe retries it");
            }
            failures.push(format!("{addr}: {failure}"));
            None
        }
    }
}
