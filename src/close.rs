//! How a connection ended: the [`Phase`] it was in, the [`Cause`], the one
//! [`ConnError`] that carries both, and [`log_end`], which writes the one
//! line an operator reads about it, graded by what it asks of them.
//! [`deadline`] turns a phase's timeout into such an error.

use std::fmt;
use std::future::Future;
use std::io;
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::config::{Role, Service};
use crate::connections::ConnGuard;
use crate::service::Rejection;
use crate::start::StartError;
use crate::tls;

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
            origin = $info.origin.get().map(tracing::field::display),
            $($rest)+
        )
    };
}
pub(crate) use conn_warn;

/// Logs how a connection ended, with its close reason, and counts
/// refusals. Graded as an operator needs it: ordinary ends at debug,
/// refusals and unusual ends at info, an unreachable backend (something to
/// fix) at warn. Repeated refusals are summarised (see [`crate::refusals`]).
pub(crate) fn log_end(service: &Service, guard: &ConnGuard, end: Result<(), ConnError>) {
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
        Cause::BadStart(StartError::Truncated(0)) => {
            // A warm connection the client end replaced or closed unused.
            debug!(
                ?duration,
                "connection closed by the client end before its start message"
            )
        }
        Cause::BadStart(_) => {
            conn_warn!(service, guard.info, ?duration, "connection closed: {e}")
        }
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
pub(crate) enum Phase {
    /// Server mode: the TLS handshake with the client (`handshake_timeout`).
    Handshake,
    /// Resolving and connecting to the backend (server mode) or the remote
    /// (client mode), one target after the other (`connect_timeout` for
    /// each resolution and each address).
    Connect,
    /// Client mode: the TLS handshake with the remote (`handshake_timeout`).
    RemoteHandshake,
    /// Server mode, between two dctunnel ends: waiting for the start
    /// message (`warm_timeout`, see [`wait_for_start`]).
    Start,
    /// Client mode, between two dctunnel ends: sending the start message
    /// (`connect_timeout`).
    SendStart,
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
pub(crate) enum Cause {
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
    /// The client end sent something that is not a start message.
    #[error(transparent)]
    BadStart(StartError),
    /// Closed while it waited for its start message: a reload no longer
    /// allows it, or the service stopped; why.
    #[error("{0}")]
    Closed(&'static str),
    /// The start message came, and `max_connections` or
    /// `max_connections_per_source` had no room for the connection.
    #[error("connection limit reached")]
    LimitReached,
    /// A peer stopped acknowledging (`ETIMEDOUT` while forwarding): the
    /// `dead_peer_timeout` in force, `None` if it is off.
    #[error("{}", dead_peer_text(*.0))]
    DeadPeer(Option<Duration>),
}

impl Cause {
    /// The cause of an I/O error on a leg with dead-peer detection:
    /// `ETIMEDOUT` there is the user timeout or keepalive giving up on a
    /// peer that vanished (`dead_peer_timeout`, or `None` if it is off).
    pub(crate) fn across(e: io::Error, dead_peer_timeout: Option<Duration>) -> Cause {
        if e.kind() == io::ErrorKind::TimedOut {
            Cause::DeadPeer(dead_peer_timeout)
        } else {
            Cause::Io(e)
        }
    }
}

fn dead_peer_text(limit: Option<Duration>) -> String {
    match limit {
        Some(limit) => {
            format!("peer unreachable: no acknowledgement within {limit:?} (dead_peer_timeout)")
        }
        None => "peer unreachable: no acknowledgement before the kernel gave up \
                 (dead_peer_timeout is off)"
            .to_owned(),
    }
}

/// Why a connection ended early: the phase and the cause. Its Display is
/// the close reason in the log.
#[derive(Debug, thiserror::Error)]
pub(crate) struct ConnError {
    pub(crate) phase: Phase,
    #[source]
    pub(crate) cause: Cause,
}

impl ConnError {
    pub(crate) fn new(phase: Phase, cause: Cause) -> ConnError {
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
            (Phase::Start, Cause::LimitReached) => Some(Rejection::LimitReached),
            (Phase::Start | Phase::SendStart | Phase::Forward | Phase::Shutdown, _) => None,
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
            (Phase::Start, Cause::TimedOut(limit)) => {
                write!(f, "no start message from the client end within {limit:?}")
            }
            (Phase::Start, Cause::BadStart(e)) => write!(f, "bad start message: {e}"),
            (Phase::Start, Cause::Closed(why)) => write!(f, "warm connection closed: {why}"),
            (Phase::Start, Cause::LimitReached) => f.write_str(
                "start message received, but max_connections or max_connections_per_source \
                 has no room for the connection",
            ),
            (Phase::Start, _) => write!(f, "waiting for the start message: {cause}"),
            (Phase::SendStart, _) => write!(f, "cannot send the start message: {cause}"),
            (Phase::ProxyHeader, _) => write!(f, "cannot send the PROXY header: {cause}"),
            (Phase::Forward, Cause::TimedOut(idle)) => write!(f, "idle for {idle:?}"),
            (_, Cause::DeadPeer(_)) => write!(f, "{cause}"),
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
pub(crate) async fn deadline<T, E, F>(
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
pub(crate) fn handshake_rejection(e: &io::Error) -> Rejection {
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
pub(crate) fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// The fatal TLS alert the peer ended the connection with, if it did.
pub(crate) fn alert(e: &io::Error) -> Option<rustls::AlertDescription> {
    match rustls_error(e) {
        Some(rustls::Error::AlertReceived(a)) => Some(*a),
        _ => None,
    }
}

/// A close without a word: end of stream without close_notify or alert,
/// or a reset (a socket closed with bytes unread resets).
pub(crate) fn is_silent_close(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
    )
}

/// Resets, broken pipes and TCP closes without close_notify are how
/// connections usually end; they are not worth an operator's attention.
pub(crate) fn is_ordinary(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionAborted
    )
}
