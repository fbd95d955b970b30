//! The live record of each service's open connections: admission against
//! the connection limits, counters and timings, and what operators see of
//! the connections that are open now.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use prometheus_client::metrics::histogram::Histogram;

use crate::config::Service;
use crate::proxy::Meter;
use crate::refusals::Refusals;

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
    /// A client sent an IP address as TLS server name: told once, at debug.
    pub ip_sni_seen: AtomicBool,
    rejected: [AtomicU64; Rejection::ALL.len()],
    /// What of the refusals gets logged: the counts above stay exact.
    refusals: Arc<Refusals>,
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
            ip_sni_seen: AtomicBool::new(false),
            rejected: Default::default(),
            refusals: Arc::default(),
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
    /// Open connections per source address, for `max_connections_per_source`.
    per_source: HashMap<IpAddr, usize>,
}

impl ServiceState {
    pub fn rejected(&self, r: Rejection) -> u64 {
        self.rejected[r as usize].load(Ordering::Relaxed)
    }

    /// Counts a refusal of `service` from `source`, and says whether to
    /// log it in full or leave it to a summary line (see [`Refusals`]).
    #[must_use = "the refusal is logged only if this says so"]
    pub(crate) fn refuse(&self, service: &str, source: IpAddr, r: Rejection) -> bool {
        self.rejected[r as usize].fetch_add(1, Ordering::Relaxed);
        self.refusals.note(service, source, r)
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

    /// Takes a place for a new connection, or `None` when a limit of the
    /// service is reached.
    pub(crate) fn admit(
        self: &Arc<Self>,
        service: &Service,
        source: SocketAddr,
    ) -> Option<ConnGuard> {
        // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d;
        // it is the same source as a.b.c.d.
        let ip = source.ip().to_canonical();
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
pub(crate) struct ConnGuard {
    pub(crate) state: Arc<ServiceState>,
    pub(crate) info: Arc<ConnInfo>,
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
        let ip = self.info.source.ip().to_canonical();
        if let Some(n) = open.per_source.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                open.per_source.remove(&ip);
            }
        }
    }
}
