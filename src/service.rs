//! One service at run time: its accept loop, and the life of each of its
//! connections from accept to close, read top to bottom.
//!
//! A connection goes through [`Phase`]s, each within its own deadline:
//! server mode is handshake, start message (when the client end is a
//! dctunnel, see [`crate::start`]), connect to the backend, PROXY header,
//! forward; client mode is a warm connection from the pool ([`crate::warm`])
//! or connect to the remote and handshake with it, then start message and
//! forward. It ends either with both sides finished or with one
//! [`ConnError`] (see [`crate::close`]), which names the phase and the cause and is logged once,
//! in [`log_end`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::{LazyConfigAcceptor, TlsAcceptor, TlsConnector, TlsStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

pub(crate) use crate::close::ConnError;
use crate::close::{alert, conn_warn, deadline, log_end, Cause, Phase};
use crate::config::{Host, Role, Service};
use crate::connections::ConnGuard;
use crate::dead_peer;
use crate::proxy::{self, End};
use crate::proxy_protocol;
use crate::start::{self, Start};
use crate::tls;
use crate::warm;

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
        mut settings,
        state,
        stop_accepting,
        close_all,
        tracker,
    } = serve;
    // Dropped with this loop: a service that stops accepting keeps no
    // warm connections.
    let mut pool = warm::Pool::start(&settings.borrow_and_update(), &state, &tracker);
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop_accepting.cancelled() => return,
            Ok(()) = settings.changed() => {
                // A reload changed the service (settings or files): the
                // warm connections made with the old ones go, and new ones
                // are made with the new ones.
                pool = warm::Pool::start(&settings.borrow_and_update(), &state, &tracker);
                continue;
            }
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
            origin = tracing::field::Empty,
        );
        let context = Context {
            stopping: stop_accepting.clone(),
            settings: settings.clone(),
            pool: pool.as_ref().map(warm::Pool::handle),
        };
        // The handshake runs in the connection's own task, never here: a
        // slow client must not hold up the next accept.
        tracker.spawn(connection(tcp, service, guard, close_all.clone(), context).instrument(span));
    }
}

/// What a connection may need besides its settings of the moment.
struct Context {
    /// Cancelled when the service stops accepting: a connection still
    /// waiting for its start message carries nothing, and goes then.
    stopping: CancellationToken,
    /// Server mode: a connection waiting for its start message is judged
    /// again by the settings a reload brings.
    settings: watch::Receiver<Arc<Service>>,
    /// Client mode: the warm connections, if the service keeps some.
    pool: Option<warm::Handle>,
}

/// One connection's task: its life, cut short if the daemon's shutdown
/// deadline comes first, then one log line saying how it ended.
async fn connection(
    tcp: TcpStream,
    service: Arc<Service>,
    guard: ConnGuard,
    close_all: CancellationToken,
    context: Context,
) {
    let end = tokio::select! {
        end = handle(tcp, service.clone(), &guard, context) => end,
        () = close_all.cancelled() => Err(ConnError::new(Phase::Shutdown, Cause::ShutdownDeadline)),
    };
    log_end(&service, &guard, end);
}

/// A connection from accept to the end of forwarding.
async fn handle(
    tcp: TcpStream,
    service: Arc<Service>,
    guard: &ConnGuard,
    context: Context,
) -> Result<(), ConnError> {
    set_socket_options(&tcp, &service, guard);
    match &service.role {
        Role::Server {
            tls,
            negotiating,
            peers,
        } => {
            // Taken now: the handshake consumes the socket.
            let local = tcp.local_addr();
            let accept = accept(tcp, &service, guard, tls, negotiating);
            let (mut tls, ids) =
                handshake(Phase::Handshake, &service, guard, Box::pin(accept)).await?;
            // The verifier already checked this; a resumed session skips
            // the verifier, so check again against the current list.
            if !peers.allows(&ids) {
                return Err(ConnError::new(Phase::Handshake, Cause::PeerNotAllowed));
            }
            let service = if agreed(&tls) {
                wait_for_start(&mut tls, service.clone(), guard, context, &ids).await?
            } else {
                service.clone()
            };
            let mut backend = connect(&service, guard).await?;
            if let Some(version) = service.proxy_protocol {
                let local = local.map_err(|e| ConnError::new(Phase::ProxyHeader, e.into()))?;
                let tls_version = match tls.get_ref().1.protocol_version() {
                    Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                    _ => "TLSv1.3",
                };
                let peer = guard.info.peer.get().map(String::as_str).unwrap_or("");
                // The application behind the client end, when it said so.
                let source = guard
                    .info
                    .origin
                    .get()
                    .copied()
                    .unwrap_or(guard.info.source);
                let header = proxy_protocol::header(version, source, local, peer, tls_version);
                deadline(Phase::ProxyHeader, service.connect_timeout, || {
                    backend.write_all(&header)
                })
                .await?;
            }
            forward(tls, backend, &service, guard).await
        }
        Role::Ca {
            tls,
            peers,
            authority,
        } => {
            let accept = TlsAcceptor::from(tls.clone()).accept(tcp);
            let (tls, ids) = handshake(Phase::Handshake, &service, guard, Box::pin(accept)).await?;
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
        Role::Client { .. } => {
            let warm = match &context.pool {
                Some(pool) => pool.take().await,
                None => None,
            };
            let was_warm = warm.is_some();
            let mut remote = match warm {
                Some(warm) => warm.adopt(guard),
                None => open_remote(&service, guard).await?,
            };
            if agreed(&remote) {
                if let Some(pool) = &context.pool {
                    pool.remote_agrees();
                }
                send_start(&mut remote, &service, guard, was_warm).await?;
            } else {
                note_no_alpn(&service, &guard.state);
            }
            match forward(tcp, &mut remote, &service, guard).await {
                Err(e) if guard.info.meter.down() == 0 => {
                    Err(refusal_instead(&mut remote, e, service.connect_timeout).await)
                }
                end => end,
            }
        }
    }
}

/// Server mode: the TLS handshake, its configuration chosen by the
/// ClientHello: our ALPN name for a client that offers it, and for any
/// other client no ALPN, as always.
async fn accept(
    tcp: TcpStream,
    service: &Service,
    guard: &ConnGuard,
    tls: &Arc<rustls::ServerConfig>,
    negotiating: &Arc<rustls::ServerConfig>,
) -> io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
    if !guard.state.ip_sni_seen.load(Ordering::Relaxed) {
        note_ip_sni(&tcp, service, guard).await;
    }
    let hello = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
    let offered = hello
        .client_hello()
        .alpn()
        .is_some_and(|mut names| names.any(|name| name == start::ALPN));
    let config = if offered { negotiating } else { tls };
    hello.into_stream(config.clone()).await
}

/// Client mode: the start message, sent at once, even before the
/// application speaks: the server end connects to its backend only now,
/// and a server-first protocol (an SMTP banner) needs it.
async fn send_start(
    remote: &mut TlsStream<TcpStream>,
    service: &Service,
    guard: &ConnGuard,
    warm: bool,
) -> Result<(), ConnError> {
    let message = Start {
        origin: Some(guard.info.source),
        warm,
    }
    .encode();
    let sent = deadline(Phase::SendStart, service.connect_timeout, || async {
        remote.write_all(&message).await?;
        remote.flush().await
    })
    .await;
    match sent {
        Ok(()) => Ok(()),
        Err(e) => Err(refusal_instead(remote, e, service.connect_timeout).await),
    }
}

/// Client mode: a write to the remote failed before any byte came back.
/// A remote that refused this host after the TLS 1.3 handshake (its
/// allow_peers, its CA) sent an alert and closed, and the write met the
/// close: the alert, already received, says why, and the connection is
/// then counted as the refusal it is.
async fn refusal_instead(
    remote: &mut TlsStream<TcpStream>,
    e: ConnError,
    limit: Duration,
) -> ConnError {
    let write_failed = matches!(&e.cause, Cause::Io(io)
        if matches!(io.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset));
    if !write_failed {
        return e;
    }
    let mut byte = [0u8; 1];
    match tokio::time::timeout(limit, remote.read(&mut byte)).await {
        Ok(Err(read)) if alert(&read).is_some() => ConnError::new(e.phase, read.into()),
        _ => e,
    }
}

/// Client mode: connects to the remote and handshakes with it.
pub(crate) async fn open_remote(
    service: &Service,
    guard: &ConnGuard,
) -> Result<Box<TlsStream<TcpStream>>, ConnError> {
    let Role::Client { tls, server_name } = &service.role else {
        return Err(ConnError::new(
            Phase::Connect,
            Cause::Io(io::Error::other("not a client-mode service")),
        ));
    };
    let remote = connect(service, guard).await?;
    let connect = TlsConnector::from(tls.clone()).connect(server_name.clone(), remote);
    let (tls, _) = handshake(Phase::RemoteHandshake, service, guard, Box::pin(connect)).await?;
    Ok(tls)
}

/// Whether the handshake agreed on dctunnel's ALPN name: the other end is
/// a dctunnel that reads (server) or sends (client) the start message.
pub(crate) fn agreed(tls: &TlsStream<TcpStream>) -> bool {
    tls.get_ref().1.alpn_protocol() == Some(start::ALPN)
}

/// Client mode: says once per service that the remote does not speak
/// dctunnel's own protocol, so that connections are ordinary ones.
pub(crate) fn note_no_alpn(service: &Service, state: &crate::connections::ServiceState) {
    if !state.no_alpn_told.swap(true, Ordering::Relaxed) {
        info!(service = %service.name,
            "the remote did not agree on ALPN dctunnel/1 (stunnel, or a dctunnel before 0.2?): \
             connections are ordinary ones, each with its own handshake, without warm connections \
             and without the origin address (told once per service)");
    }
}

/// Server mode, after a handshake that agreed on dctunnel's ALPN name: the
/// connection is warm until the client end's start message says it is in
/// use; only then is the backend connected. Returns the settings to go on
/// with: a reload while it waits may bring new ones, and the connection
/// is judged again by them.
///
/// A warm connection counts under `max_warm_connections` and may wait
/// `warm_timeout`. When that limit is full, the connection stays counted
/// in use (under `max_connections`, as while it handshook) and may wait
/// only `handshake_timeout`: a client end about to use it sends its start
/// message at once, and an idle one cannot hold a place of a real client
/// longer than a slow handshake can.
async fn wait_for_start(
    tls: &mut TlsStream<TcpStream>,
    mut service: Arc<Service>,
    guard: &ConnGuard,
    context: Context,
    ids: &[String],
) -> Result<Arc<Service>, ConnError> {
    let Context {
        mut settings,
        stopping,
        ..
    } = context;
    let limit = if guard.wait_warm(service.max_warm_connections) {
        service.warm_timeout
    } else {
        service.handshake_timeout
    };
    // One read for the whole wait: it is not cancelled by a reload, so no
    // byte of a message arriving then is lost.
    let read = tokio::time::timeout(limit, Start::read(tls));
    tokio::pin!(read);
    let mut watching = true;
    let start = loop {
        tokio::select! {
            r = &mut read => break r,
            () = stopping.cancelled() => {
                return Err(ConnError::new(Phase::Start, Cause::Closed("the service stopped accepting")));
            }
            changed = settings.changed(), if watching => {
                if changed.is_err() {
                    // The service was removed: its connections are closed
                    // at the shutdown deadline, as ever.
                    watching = false;
                    continue;
                }
                let new = settings.borrow_and_update().clone();
                if let Some(why) = no_longer_allowed(&service, &new, guard.info.source, ids) {
                    return Err(ConnError::new(Phase::Start, Cause::Closed(why)));
                }
                service = new;
            }
        }
    };
    let start = match start {
        Err(_) => return Err(ConnError::new(Phase::Start, Cause::TimedOut(limit))),
        Ok(Err(start::ReadError::Io(e))) => {
            // A warm connection waits here longest: a link that dies
            // meanwhile is found by dead-peer detection, and said so.
            let cause = Cause::across(e, service.dead_peer_timeout);
            return Err(ConnError::new(Phase::Start, cause));
        }
        Ok(Err(start::ReadError::Start(e))) => {
            return Err(ConnError::new(Phase::Start, Cause::BadStart(e)))
        }
        Ok(Ok(start)) => start,
    };
    if let Some(origin) = start.origin {
        // Set once per connection, so it cannot be set already.
        let _ = guard.info.origin.set(origin);
        tracing::Span::current().record("origin", tracing::field::display(origin));
    }
    if !guard.start_use(&service) {
        return Err(ConnError::new(Phase::Start, Cause::LimitReached));
    }
    if start.warm {
        guard.state.warm_used.fetch_add(1, Ordering::Relaxed);
    }
    Ok(service)
}

/// Why a connection waiting for its start message may no longer go on
/// under the settings a reload brought, if so. Names and sources are
/// judged again; new TLS files (a CRL, a CA) can only be judged by a new
/// handshake, so they close it too.
fn no_longer_allowed(
    old: &Service,
    new: &Service,
    source: SocketAddr,
    ids: &[String],
) -> Option<&'static str> {
    let Role::Server { peers, .. } = &new.role else {
        return Some("a reload put the service in client mode");
    };
    if !new.source_allowed(source.ip()) {
        Some("after a reload, its source is no longer in allow_sources")
    } else if !peers.allows(ids) {
        Some("after a reload, its peer identity is no longer in allow_peers")
    } else if old.fingerprint.files != new.fingerprint.files {
        Some(
            "a reload changed the certificate, key, CA or CRL files; a new handshake is judged \
             by them",
        )
    } else {
        None
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
        End::Error(e) => Err(ConnError::new(
            Phase::Forward,
            Cause::across(e, service.dead_peer_timeout),
        )),
    }
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
