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
use crate::targets::Targets;

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
    /// When the certificates peers showed expire.
    pub peer_expiry: PeerExpiry,
    /// Which connect addresses failed lately and are skipped.
    pub targets: Arc<Targets>,
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
            peer_expiry: PeerExpiry::default(),
            targets: Arc::default(),
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

/// Peer identities a service remembers the certificates of. A client host
/// is one identity; far more than any deployment has, few enough that the
/// metrics stay small if a CA signs certificates for many names.
pub const PEERS_KEPT: usize = 1024;
/// Certificates remembered per identity: a renewal overlaps the old and
/// the new one; several hosts may share an identity.
const CERTS_PER_PEER: usize = 4;
/// A certificate not shown for this long, while the identity has shown
/// another since, no longer counts: once a host is renewed, the old
/// certificate's expiry stops showing a day after its last handshake.
const FORGET_AFTER: std::time::Duration = std::time::Duration::from_secs(86_400);

/// The certificates each peer identity showed in its handshakes, so that
/// a client host's certificate about to expire shows on the server's
/// metrics weeks ahead (the server's own files do not hold it).
#[derive(Debug, Default)]
pub struct PeerExpiry {
    peers: Mutex<HashMap<String, Vec<SeenCert>>>,
}

#[derive(Debug, Clone)]
struct SeenCert {
    serial: String,
    /// Unix time.
    not_after: i64,
    last_seen: SystemTime,
}

/// The certificate of a peer identity that expires first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The identities of the certificate, comma-separated.
    pub peer: String,
    pub serial: String,
    /// Unix time.
    pub not_after: i64,
}

impl PeerExpiry {
    /// Notes that `peer` showed the certificate `serial`, valid until
    /// `not_after` (Unix time), at `now`.
    pub fn record(&self, peer: &str, serial: &str, not_after: i64, now: SystemTime) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if !peers.contains_key(peer) && peers.len() >= PEERS_KEPT {
            // The identity seen least recently makes room.
            let oldest = peers
                .iter()
                .min_by_key(|(_, certs)| certs.iter().map(|c| c.last_seen).max())
                .map(|(name, _)| name.clone());
            if let Some(oldest) = oldest {
                peers.remove(&oldest);
            }
        }
        let certs = peers.entry(peer.to_owned()).or_default();
        match certs.iter_mut().find(|c| c.serial == serial) {
            Some(c) => {
                c.last_seen = now;
                c.not_after = not_after;
            }
            None => certs.push(SeenCert {
                serial: serial.to_owned(),
                not_after,
                last_seen: now,
            }),
        }
        // The certificate just shown stays; others go once stale.
        certs.retain(|c| {
            c.serial == serial
                || now
                    .duration_since(c.last_seen)
                    .map_or(true, |d| d < FORGET_AFTER)
        });
        while certs.len() > CERTS_PER_PEER {
            let Some(i) = certs
                .iter()
                .enumerate()
                .min_by_key(|(_, c)| c.last_seen)
                .map(|(i, _)| i)
            else {
                break;
            };
            certs.remove(i);
        }
    }

    /// Per identity, the remembered certificate that expires first, sorted
    /// by identity.
    pub fn earliest(&self) -> Vec<PeerCertificate> {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<PeerCertificate> = peers
            .iter()
            .filter_map(|(peer, certs)| {
                certs
                    .iter()
                    .min_by_key(|c| c.not_after)
                    .map(|c| PeerCertificate {
                        peer: peer.clone(),
                        serial: c.serial.clone(),
                        not_after: c.not_after,
                    })
            })
            .collect();
        out.sort_by(|a, b| a.peer.cmp(&b.peer));
        out
    }
}

#[cfg(test)]
mod peer_expiry_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_earliest_recent_certificate_counts_and_the_map_is_bounded() {
        let e = PeerExpiry::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        e.record("off1", "01", 500, t0);
        e.record("off1", "02", 900, t0 + Duration::from_secs(60));
        // Both shown within a day: the earlier expiry is the one to act on.
        assert_eq!(e.earliest()[0].not_after, 500);
        // A day after the old certificate's last handshake, it is forgotten.
        e.record(
            "off1",
            "02",
            900,
            t0 + FORGET_AFTER + Duration::from_secs(1),
        );
        assert_eq!(
            e.earliest(),
            vec![PeerCertificate {
                peer: "off1".into(),
                serial: "02".into(),
                not_after: 900
            }]
        );
        // The only certificate of an identity stays however old.
        e.record("off2", "03", 700, t0);
        e.record("off2", "03", 700, t0 + 10 * FORGET_AFTER);
        assert_eq!(e.earliest().len(), 2);

        for i in 0..PEERS_KEPT + 10 {
            e.record(
                &format!("host{i:05}"),
                "04",
                800,
                t0 + 20 * FORGET_AFTER + Duration::from_secs(i as u64),
            );
        }
        let kept = e.earliest();
        assert_eq!(kept.len(), PEERS_KEPT);
        // The identities seen least recently went first.
        assert!(!kept
            .iter()
            .any(|p| p.peer == "off1" || p.peer == "host00000"));
        assert!(kept
            .iter()
            .any(|p| p.peer == format!("host{:05}", PEERS_KEPT + 9)));
    }
}
