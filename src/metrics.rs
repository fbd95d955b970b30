//! The Prometheus/OpenMetrics exposition of a running daemon, built from a
//! [`DaemonView`] at each scrape (services come and go with reloads), and
//! the facts about the certificates each service loaded.
//!
//! Every series carries the label `service` where it is about one service.
//! Bytes are counted in two directions: `up` is from the side that connected
//! to the service towards where it connects, `down` is the way back.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::SystemTime;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::certs::online::Asked;
use crate::config::Service;
use crate::connections::PeerCertificate;
use crate::daemon::DaemonView;
use crate::service::Rejection;
use crate::x509;

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The whole exposition, `# EOF` included.
pub fn render(view: &DaemonView) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ViewCollector { view: view.clone() }));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

/// What a certificate file of a service holds, one entry per certificate
/// (a chain or a CA bundle gives several).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    /// `cert` (this host's certificate and its chain) or `ca`.
    pub kind: &'static str,
    pub file: PathBuf,
    /// The subject's common name, or the whole subject when it has none.
    pub subject: String,
    /// The serial number as `certs show` prints it: tells apart two
    /// certificates of one file with the same subject (a CA being rotated).
    pub serial: String,
    /// notAfter, in seconds since the Unix epoch.
    pub not_after: i64,
}

impl Certificate {
    /// Seconds from `now` until notAfter; negative once expired.
    pub fn expires_in(&self, now: SystemTime) -> i64 {
        self.not_after.saturating_sub(unix_seconds(now))
    }
}

/// The certificates a service loaded: its own certificate file and its CA
/// file. They are read from the contents kept when the configuration was
/// loaded, so they describe what is in force, not what was since written
/// to disk. Peer pins name keys, not certificates, and have no expiry.
pub fn certificates(service: &Service) -> Vec<Certificate> {
    let mut out = Vec::new();
    for (kind, path) in [("cert", &service.files.cert), ("ca", &service.files.ca)] {
        let Some(path) = path else { continue };
        let Some(bytes) = loaded(service, path) else {
            continue;
        };
        for der in CertificateDer::pem_slice_iter(bytes).flatten() {
            if let Some(c) = describe(kind, path, &der) {
                out.push(c);
            }
        }
    }
    out
}

fn loaded<'a>(service: &'a Service, path: &Path) -> Option<&'a [u8]> {
    service
        .fingerprint
        .files
        .iter()
        .find(|(p, _)| p == path)
        .map(|(_, bytes)| bytes.as_slice())
}

fn describe(kind: &'static str, file: &Path, der: &CertificateDer<'_>) -> Option<Certificate> {
    let info = x509::CertInfo::parse(der).ok()?;
    Some(Certificate {
        kind,
        file: file.to_owned(),
        subject: info.common_name.unwrap_or(info.subject),
        serial: info.serial,
        not_after: info.not_after.unix_timestamp(),
    })
}

/// Seconds since the Unix epoch (negative before it).
pub fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// The version of rustls this binary was built with. rustls does not
/// export it, so it is read from the Cargo.lock compiled in (every version
/// found, comma-separated, should the tree ever hold two).
pub fn rustls_version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        let found = lock_versions(include_str!("../Cargo.lock"), "rustls");
        if found.is_empty() {
            "unknown".to_owned()
        } else {
            found.join(",")
        }
    })
}

fn lock_versions(lock: &str, name: &str) -> Vec<String> {
    let Ok(table) = toml::from_str::<toml::Table>(lock) else {
        return Vec::new();
    };
    let Some(packages) = table.get("package").and_then(|p| p.as_array()) else {
        return Vec::new();
    };
    packages
        .iter()
        .filter(|p| p.get("name").and_then(|n| n.as_str()) == Some(name))
        .filter_map(|p| p.get("version").and_then(|v| v.as_str()).map(str::to_owned))
        .collect()
}

/// Open file descriptors of this process, from /proc (Linux).
pub fn open_fds() -> Option<u64> {
    // The directory handle being read is itself one of the entries.
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count();
    Some(n.saturating_sub(1) as u64)
}

/// The soft limit on open file descriptors, from /proc (Linux).
pub fn max_fds() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Encodes every metric from the view; registered afresh for each scrape.
struct ViewCollector {
    view: DaemonView,
}

impl fmt::Debug for ViewCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ViewCollector")
    }
}

/// One family per call: the descriptor, then one sample set per label set.
fn family<M: EncodeMetric, L: prometheus_client::encoding::EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    members: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, metric) in members {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A family of one series without labels; nothing at all when `metric` is
/// `None` (a figure the system does not provide).
fn single<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    metric: Option<M>,
) -> fmt::Result {
    match metric {
        Some(m) => m.encode(encoder.encode_descriptor(name, help, None, metric_type)?),
        None => Ok(()),
    }
}

impl Collector for ViewCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let e = &mut encoder;
        let services = self.view.services();
        let reloads = self.view.reloads();
        let now = SystemTime::now();

        family(
            e,
            "dctunnel_build_info",
            "Version of dctunnel and of the TLS library it was built with.",
            MetricType::Gauge,
            [(
                vec![
                    ("version", env!("CARGO_PKG_VERSION")),
                    ("rustls_version", rustls_version()),
                ],
                ConstGauge::new(1i64),
            )],
        )?;

        // Process-wide.
        single(
            e,
            "dctunnel_config_reloads",
            "Configuration reload attempts (SIGHUP, dctunnel reload, a changed file) since start.",
            MetricType::Counter,
            Some(ConstCounter::new(reloads.attempts)),
        )?;
        single(
            e,
            "dctunnel_config_reload_failures",
            "Reload attempts that were refused (the running configuration was kept).",
            MetricType::Counter,
            Some(ConstCounter::new(reloads.failures)),
        )?;
        single(
            e,
            "dctunnel_file_reloads",
            "Reload attempts started because a certificate, key, CA or CRL file changed on disk \
             (counted in dctunnel_config_reloads too).",
            MetricType::Counter,
            Some(ConstCounter::new(reloads.file_triggered)),
        )?;
        single(
            e,
            "dctunnel_file_reload_failures",
            "Reloads started by a file change that were refused (a half-written or invalid file: \
             the material in use was kept).",
            MetricType::Counter,
            Some(ConstCounter::new(reloads.file_triggered_failures)),
        )?;
        single(
            e,
            "dctunnel_config_last_reload_successful",
            "1 if the configuration in force is the latest one asked for, 0 if the last reload failed.",
            MetricType::Gauge,
            Some(ConstGauge::new(i64::from(!reloads.last_failed))),
        )?;
        single(
            e,
            "dctunnel_config_last_reload_success_timestamp_seconds",
            "When the configuration in force was loaded (start or last successful reload), Unix time.",
            MetricType::Gauge,
            reloads
                .last_success
                .map(|t| ConstGauge::new(unix_seconds(t))),
        )?;
        if let Some(renewal) = self.view.renewal() {
            single(
                e,
                "dctunnel_certificate_renewals",
                "Certificates renewed from the CA service ([renewal]) since start: a new key and \
                 certificate written.",
                MetricType::Counter,
                Some(ConstCounter::new(renewal.renewals)),
            )?;
            single(
                e,
                "dctunnel_certificate_renewal_failures",
                "Renewal attempts that got no certificate (CA service unreachable or refusing); \
                 the services kept their certificate.",
                MetricType::Counter,
                Some(ConstCounter::new(renewal.failures)),
            )?;
            single(
                e,
                "dctunnel_certificate_renewal_next_timestamp_seconds",
                "When the next renewal attempt is planned, Unix time; absent when none is \
                 (the certificate expired: enrol the host again).",
                MetricType::Gauge,
                renewal
                    .next_attempt
                    .map(|t| ConstGauge::new(unix_seconds(t))),
            )?;
            single(
                e,
                "dctunnel_certificate_renewal_last_success_timestamp_seconds",
                "When the certificate was last renewed, Unix time; absent before the first renewal.",
                MetricType::Gauge,
                renewal
                    .last_success
                    .map(|t| ConstGauge::new(unix_seconds(t))),
            )?;
        }
        single(
            e,
            "process_open_fds",
            "Open file descriptors.",
            MetricType::Gauge,
            open_fds().map(|n| ConstGauge::new(n as i64)),
        )?;
        single(
            e,
            "process_max_fds",
            "Limit on open file descriptors (soft RLIMIT_NOFILE).",
            MetricType::Gauge,
            max_fds().map(|n| ConstGauge::new(n as i64)),
        )?;

        // Per service.
        let descriptions: Vec<(String, String, String)> = services
            .iter()
            .map(|(_, s)| {
                let connect: Vec<String> =
                    s.settings.connect.iter().map(ToString::to_string).collect();
                (
                    s.settings.mode().to_string(),
                    s.local_addr.to_string(),
                    connect.join(","),
                )
            })
            .collect();
        family(
            e,
            "dctunnel_service_info",
            "One series per listening service: its mode, listening address and connect targets.",
            MetricType::Gauge,
            services
                .iter()
                .zip(&descriptions)
                .map(|((name, _), (mode, listen, connect))| {
                    (
                        vec![
                            ("service", name.as_str()),
                            ("mode", mode.as_str()),
                            ("listen", listen.as_str()),
                            ("connect", connect.as_str()),
                        ],
                        ConstGauge::new(1i64),
                    )
                }),
        )?;
        family(
            e,
            "dctunnel_connections_accepted",
            "Connections admitted (source allowed, under the limits).",
            MetricType::Counter,
            services.iter().map(|(name, s)| {
                (
                    vec![("service", name.as_str())],
                    ConstCounter::new(s.state.accepted.load(Ordering::Relaxed)),
                )
            }),
        )?;
        family(
            e,
            "dctunnel_connections_active",
            "Connections in use now (handshaking, connecting or forwarding); warm ones are \
             in dctunnel_connections_warm.",
            MetricType::Gauge,
            services.iter().map(|(name, s)| {
                (
                    vec![("service", name.as_str())],
                    ConstGauge::new(s.state.active() as i64),
                )
            }),
        )?;
        family(
            e,
            "dctunnel_connections_warm",
            "Warm connections open now, not in use: waiting for their start message (server \
             mode), ready in the pool (client mode). Not counted in dctunnel_connections_active.",
            MetricType::Gauge,
            services.iter().map(|(name, s)| {
                (
                    vec![("service", name.as_str())],
                    ConstGauge::new(s.state.warm() as i64),
                )
            }),
        )?;
        family(
            e,
            "dctunnel_warm_connections_used",
            "Warm connections put in use: taken by a local connection (client mode), started \
             by a start message that says it came from a pool (server mode).",
            MetricType::Counter,
            services.iter().map(|(name, s)| {
                (
                    vec![("service", name.as_str())],
                    ConstCounter::new(s.state.warm_used.load(Ordering::Relaxed)),
                )
            }),
        )?;
        family(
            e,
            "dctunnel_service_warm_limit",
            "The most warm connections: max_warm_connections (server mode), warm_connections \
             (client mode); absent when 0.",
            MetricType::Gauge,
            services.iter().filter_map(|(name, s)| {
                let limit = s
                    .settings
                    .warm_connections
                    .max(s.settings.max_warm_connections);
                (limit > 0).then(|| {
                    (
                        vec![("service", name.as_str())],
                        ConstGauge::new(limit as i64),
                    )
                })
            }),
        )?;
        family(
            e,
            "dctunnel_service_max_connections",
            "The service's max_connections; absent when it has no limit.",
            MetricType::Gauge,
            services.iter().filter_map(|(name, s)| {
                s.settings.max_connections.map(|max| {
                    (
                        vec![("service", name.as_str())],
                        ConstGauge::new(max as i64),
                    )
                })
            }),
        )?;
        family(
            e,
            "dctunnel_connections_rejected",
            "Connections turned away before any byte was forwarded, by reason.",
            MetricType::Counter,
            services.iter().flat_map(|(name, s)| {
                Rejection::ALL.into_iter().map(move |r| {
                    (
                        vec![("service", name.as_str()), ("reason", r.as_str())],
                        ConstCounter::new(s.state.rejected(r)),
                    )
                })
            }),
        )?;
        let bytes: Vec<(u64, u64)> = services.iter().map(|(_, s)| s.state.bytes()).collect();
        family(
            e,
            "dctunnel_bytes",
            "Bytes forwarded, open connections included. up: from the connecting side to the \
             connect target; down: back.",
            MetricType::Counter,
            services
                .iter()
                .zip(&bytes)
                .flat_map(|((name, _), (up, down))| {
                    [("up", *up), ("down", *down)].map(|(direction, n)| {
                        (
                            vec![("service", name.as_str()), ("direction", direction)],
                            ConstCounter::new(n),
                        )
                    })
                }),
        )?;
        let targets: Vec<(&str, Vec<(String, crate::targets::TargetStatus)>)> = services
            .iter()
            .map(|(name, s)| {
                let mut known: Vec<_> = s
                    .state
                    .targets
                    .snapshot()
                    .into_iter()
                    .map(|t| (t.address.to_string(), t))
                    .collect();
                known.sort_by(|a, b| a.0.cmp(&b.0));
                (name.as_str(), known)
            })
            .collect();
        family(
            e,
            "dctunnel_target_up",
            "Whether a connect address (an IP target, or one address of a name) is in use: 0 while \
             it is marked down after a failed connect and skipped, until a probe or a connection \
             gets through. Only addresses tried in the last 5 minutes.",
            MetricType::Gauge,
            targets.iter().flat_map(|(name, known)| {
                known.iter().map(move |(address, t)| {
                    (
                        vec![("service", *name), ("target", address.as_str())],
                        ConstGauge::new(i64::from(t.up)),
                    )
                })
            }),
        )?;
        family(
            e,
            "dctunnel_target_skips",
            "New connections that passed over a connect address marked down and went to another.",
            MetricType::Counter,
            targets.iter().flat_map(|(name, known)| {
                known.iter().map(move |(address, t)| {
                    (
                        vec![("service", *name), ("target", address.as_str())],
                        ConstCounter::new(t.skips),
                    )
                })
            }),
        )?;
        // The online CA (`mode = "ca"` services).
        let authorities: Vec<(&str, &crate::certs::online::Authority)> = services
            .iter()
            .filter_map(|(name, s)| match &s.settings.role {
                crate::config::Role::Ca { authority, .. } => Some((name.as_str(), &**authority)),
                _ => None,
            })
            .collect();
        family(
            e,
            "dctunnel_ca_certificates_issued",
            "Certificates the online CA issued, by how=renewal|enrolment, since the service \
             started or a reload last changed it.",
            MetricType::Counter,
            authorities.iter().flat_map(|(name, a)| {
                Asked::ALL.into_iter().map(move |how| {
                    (
                        vec![("service", *name), ("how", how.as_str())],
                        ConstCounter::new(a.answers().issued(how)),
                    )
                })
            }),
        )?;
        let refused: Vec<(&str, Asked, String, u64)> = authorities
            .iter()
            .flat_map(|(name, a)| {
                a.answers()
                    .refused()
                    .into_iter()
                    .map(move |(how, status, n)| (*name, how, status.to_string(), n))
            })
            .collect();
        family(
            e,
            "dctunnel_ca_requests_refused",
            "Renewal and enrolment requests the online CA refused, by how and HTTP status \
             (403 on a renewal: revoked, names not held, not in allow_peers, or already renewed \
             for another key).",
            MetricType::Counter,
            refused.iter().map(|(name, how, status, n)| {
                (
                    vec![
                        ("service", *name),
                        ("how", how.as_str()),
                        ("status", status.as_str()),
                    ],
                    ConstCounter::new(*n),
                )
            }),
        )?;
        family(
            e,
            "dctunnel_tls_handshake_duration_seconds",
            "Time to complete the TLS handshake (successful handshakes).",
            MetricType::Histogram,
            services.iter().map(|(name, s)| {
                (
                    vec![("service", name.as_str())],
                    s.state.handshake_seconds.clone(),
                )
            }),
        )?;
        family(
            e,
            "dctunnel_backend_connect_duration_seconds",
            "Time to connect to the backend (server mode) or the remote end (client mode), \
             name resolution included (successful connections).",
            MetricType::Histogram,
            services.iter().map(|(name, s)| {
                (
                    vec![("service", name.as_str())],
                    s.state.connect_seconds.clone(),
                )
            }),
        )?;
        family(
            e,
            "dctunnel_connection_duration_seconds",
            "Lifetime of forwarded connections, observed when they close.",
            MetricType::Histogram,
            services.iter().map(|(name, s)| {
                (
                    vec![("service", name.as_str())],
                    s.state.duration_seconds.clone(),
                )
            }),
        )?;

        // Certificates.
        let certs: Vec<(&str, Certificate, String)> = services
            .iter()
            .flat_map(|(name, s)| {
                certificates(&s.settings).into_iter().map(move |c| {
                    let file = c.file.display().to_string();
                    (name.as_str(), c, file)
                })
            })
            .collect();
        family(
            e,
            "dctunnel_certificate_expiry_seconds",
            "Seconds until the certificate's notAfter (negative once expired), for each \
             certificate a service loaded: kind=cert (own certificate and chain) or kind=ca.",
            MetricType::Gauge,
            certs.iter().map(|(service, c, file)| {
                (
                    vec![
                        ("service", *service),
                        ("kind", c.kind),
                        ("file", file.as_str()),
                        ("subject", c.subject.as_str()),
                        ("serial", c.serial.as_str()),
                    ],
                    ConstGauge::new(c.expires_in(now)),
                )
            }),
        )?;
        let now_unix = unix_seconds(now);
        let peers: Vec<(&str, PeerCertificate)> = services
            .iter()
            .flat_map(|(name, s)| {
                s.state
                    .peer_expiry
                    .earliest()
                    .into_iter()
                    .map(move |p| (name.as_str(), p))
            })
            .collect();
        family(
            e,
            "dctunnel_peer_certificate_expiry_seconds",
            "Seconds until the notAfter of the certificate each peer identity showed in its \
             handshakes (negative once expired); the earliest of those seen within a day.",
            MetricType::Gauge,
            peers.iter().map(|(service, p)| {
                (
                    vec![("service", *service), ("peer", p.peer.as_str())],
                    ConstGauge::new(p.not_after.saturating_sub(now_unix)),
                )
            }),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustls_version_comes_from_the_lock_file() {
        let v = rustls_version();
        assert!(v.starts_with("0.23."), "{v}");
    }

    #[test]
    fn fds_are_counted() {
        let open = open_fds().unwrap();
        let max = max_fds().unwrap();
        assert!(open >= 3 && open <= max, "{open} of {max}");
    }

    #[test]
    fn empty_daemon_renders() {
        let text = render(&DaemonView::default()).unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
