//! The checked configuration `run` executes, and [`load`], which turns a
//! TOML file into it: every address parsed, every certificate and key
//! loaded, every safety rule applied, so that nothing downstream re-checks
//! anything.
//!
//! Loading never stops at the first problem: it collects every problem it can
//! find, each naming the file, the service or table, and the key, so that
//! `dctunnel check` shows a user everything to fix at once.
//!
//! - `raw`: the file as serde reads it, before any check.
//! - `load`: the steps from the raw file to a [`Config`].
//! - `problem`: what a step reports when it finds something wrong.
//! - `values`: the strings of the file (durations, networks, targets) parsed.
//! - `summary`: what `check` and the start-up log say about a service.
//! - [`files`]: reading the files it names: regular files, size-bounded,
//!   PEM strictly, never quoting their contents.

mod load;
mod problem;
mod quote;
mod raw;
mod summary;
mod values;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::tls::{PeerPolicy, TlsFiles};

pub use load::{load, parse};
pub use problem::{ConfigError, Location, Problem};
pub use quote::quote;
pub use summary::{describe, PeerCheck, Peers, Sources, Summary, Targets, Warm};
pub use values::{is_public_or_wildcard, parse_duration};

/// Where `run` and `check` look for the configuration by default.
pub const DEFAULT_PATH: &str = "/etc/dctunnel/dctunnel.toml";

/// A fully checked configuration: what `run` executes.
#[derive(Debug)]
pub struct Config {
    pub services: Vec<Arc<Service>>,
    /// How long open connections may go on after a stop is asked for.
    pub shutdown_timeout: Duration,
    /// Threads carrying connections; `None`: one per core.
    pub worker_threads: Option<usize>,
    /// How often the files the services use are checked for changes (a
    /// changed file reloads the configuration); `None`: never.
    pub watch_files: Option<Duration>,
    /// Where the admin HTTP endpoint (metrics, connections) listens, if anywhere.
    pub admin: Option<SocketAddr>,
    /// `[renewal]`: this host's certificate renewed from the online CA.
    pub renewal: Option<Arc<Renewal>>,
}

/// `[renewal]`: which certificate the daemon renews, and from where. Two
/// equal values renew the same way (a reload that changes it restarts the
/// renewal); the files' contents are read at each attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewal {
    /// The CA service, `HOST:PORT`.
    pub ca_service: Target,
    /// The name its certificate must prove.
    pub server_name: rustls::pki_types::ServerName<'static>,
    /// The certificate renewed, and shown to the CA service.
    pub cert: PathBuf,
    /// Its key; the new key replaces it.
    pub key: PathBuf,
    /// The CA certificate that verifies the CA service.
    pub ca: PathBuf,
}

/// One named service: a listener and where its connections go.
#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub listen: SocketAddr,
    /// Empty means every source may connect.
    pub allow_sources: Vec<IpNet>,
    pub max_connections: Option<usize>,
    pub max_connections_per_source: Option<usize>,
    pub connect: Vec<Target>,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    /// `None` disables the idle timeout.
    pub idle_timeout: Option<Duration>,
    /// How long a peer across the link may leave sent data or keepalive
    /// probes unacknowledged before its connection is closed
    /// (`TCP_USER_TIMEOUT` and keepalive, see `service`); `None`: off, the
    /// kernel's retransmission limits and a slow keepalive apply.
    pub dead_peer_timeout: Option<Duration>,
    /// Server mode: send a PROXY protocol header to the backend first.
    pub proxy_protocol: Option<crate::proxy_protocol::Version>,
    /// Client mode: how many connections to the remote to keep ready
    /// (0: none). See [`crate::warm`].
    pub warm_connections: usize,
    /// Server mode: how many connections may wait for their start message
    /// at once, outside `max_connections` (see [`crate::connections`]).
    pub max_warm_connections: usize,
    /// Server mode: how long a connection may wait for its start message.
    /// Client mode: warm connections are replaced at 3/4 of it, before
    /// a server with the same setting would close them.
    pub warm_timeout: Duration,
    pub role: Role,
    /// The files the TLS settings were loaded from.
    pub files: TlsFiles,
    /// Every setting of the service as written (after defaults), and the
    /// contents of every file it loaded: two services with equal
    /// fingerprints behave identically. Used by reload to tell what changed.
    pub fingerprint: Fingerprint,
}

/// What a service does with the connections it accepts.
#[derive(Clone)]
pub enum Role {
    /// Accept mutual TLS, forward plaintext to the backend.
    Server {
        /// For clients that do not offer our ALPN name (stunnel, older
        /// dctunnel, anything else): no ALPN, as always.
        tls: Arc<rustls::ServerConfig>,
        /// The same, agreeing on [`crate::start::ALPN`], for clients that
        /// offer it.
        negotiating: Arc<rustls::ServerConfig>,
        peers: Arc<PeerPolicy>,
    },
    /// Accept plaintext, connect with mutual TLS to the remote side.
    Client {
        tls: Arc<rustls::ClientConfig>,
        server_name: rustls::pki_types::ServerName<'static>,
    },
    /// The online CA: TLS (client certificate optional, for enrolment),
    /// then renewal and enrolment requests (see `crate::ca_service`).
    Ca {
        tls: Arc<rustls::ServerConfig>,
        peers: Arc<PeerPolicy>,
        authority: Arc<crate::certs::online::Authority>,
    },
}

impl fmt::Debug for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Server { peers, .. } => f.debug_struct("Server").field("peers", peers).finish(),
            Role::Client { server_name, .. } => f
                .debug_struct("Client")
                .field("server_name", server_name)
                .finish(),
            Role::Ca {
                peers, authority, ..
            } => f
                .debug_struct("Ca")
                .field("peers", peers)
                .field("ca_dir", &authority.dir())
                .finish(),
        }
    }
}

impl Service {
    pub fn mode(&self) -> Mode {
        match self.role {
            Role::Server { .. } => Mode::Server,
            Role::Client { .. } => Mode::Client,
            Role::Ca { .. } => Mode::Ca,
        }
    }

    /// Whether a connection from `ip` passes the source allowlist.
    pub fn source_allowed(&self, ip: IpAddr) -> bool {
        // An IPv4 client reaching an IPv6 wildcard socket shows up as
        // `::ffff:a.b.c.d`; allowlists are written with the IPv4 form.
        let ip = ip.to_canonical();
        self.allow_sources.is_empty() || self.allow_sources.iter().any(|net| net.contains(&ip))
    }
}

/// Settings and file contents that decide a service's behaviour.
#[derive(Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// The service's keys as written, defaults merged in.
    settings: raw::RawService,
    /// Every file the service loaded and its contents when loaded, so that
    /// a rotated certificate or a new CRL counts as a change.
    pub files: Vec<(PathBuf, Vec<u8>)>,
}

impl Fingerprint {
    /// `files`: what the TLS settings were built from, as read then (not
    /// read again: a file renewed in between would otherwise count as
    /// loaded, and the next reload would not see the change).
    fn of(settings: raw::RawService, files: crate::tls::Contents) -> Fingerprint {
        Fingerprint { settings, files }
    }
}

/// The contents include the private key: Debug names the files only.
impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fingerprint")
            .field("settings", &self.settings)
            .field(
                "files",
                &self
                    .files
                    .iter()
                    .map(|(path, bytes)| (path, bytes.len()))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Server,
    Client,
    /// The online CA: renews and enrols hosts' certificates over mutual TLS.
    Ca,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so that `check` can align the column with `{:<6}`.
        f.pad(match self {
            Mode::Server => "server",
            Mode::Client => "client",
            Mode::Ca => "ca",
        })
    }
}

/// A place to connect to: an IP address, or a DNS name resolved at each new
/// connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: Host,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(ip) => write!(f, "{ip}:{}", self.port),
            Host::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[daemon] watch_files` has a bound that `check` enforces, and "0s"
    /// (off) is accepted.
    #[test]
    fn watch_files_is_bounded() {
        let problems = |text: &str| -> Vec<String> {
            match parse(std::path::Path::new("/etc/dctunnel/t.toml"), text) {
                Ok(_) => Vec::new(),
                Err(e) => e.problems.iter().map(ToString::to_string).collect(),
            }
        };
        let long = problems("[daemon]\nwatch_files = \"2h\"\n");
        assert!(
            long.iter()
                .any(|p| p.contains("watch_files") && p.contains("longer than 1h")),
            "{long:?}"
        );
        for ok in ["0s", "100ms", "1h"] {
            let found = problems(&format!("[daemon]\nwatch_files = \"{ok}\"\n"));
            assert!(
                !found.iter().any(|p| p.contains("watch_files")),
                "{found:?}"
            );
        }
    }

    /// `dead_peer_timeout`: from 1s to 1h, or "0s" (off); a bad value is
    /// named with its service and field.
    #[test]
    fn dead_peer_timeout_is_bounded() {
        let problems = |value: &str| -> Vec<String> {
            let text = format!("[defaults]\ndead_peer_timeout = \"{value}\"\n");
            match parse(std::path::Path::new("/etc/dctunnel/t.toml"), &text) {
                Ok(_) => Vec::new(),
                Err(e) => e.problems.iter().map(ToString::to_string).collect(),
            }
        };
        for (bad, says) in [
            ("500ms", "shorter than 1s"),
            ("2h", "longer than 1h"),
            ("soon", "not a duration"),
        ] {
            let found = problems(bad);
            assert!(
                found
                    .iter()
                    .any(|p| p.contains("[defaults].dead_peer_timeout") && p.contains(says)),
                "{bad}: {found:?}"
            );
        }
        for ok in ["0s", "1s", "3s", "30s", "1h"] {
            let found = problems(ok);
            assert!(
                !found.iter().any(|p| p.contains("dead_peer_timeout")),
                "{ok}: {found:?}"
            );
        }
    }

    /// Reload tells kept from updated by the fingerprint: the settings as
    /// written, and the contents of the files, so that a certificate
    /// renewed in place (same path, same settings) is still a change.
    #[test]
    fn fingerprints_compare_settings_and_file_contents() {
        let cert = PathBuf::from("/etc/dctunnel/off2.pem");
        let read = |contents: &str| vec![(cert.clone(), contents.as_bytes().to_vec())];
        let raw = raw::RawService {
            name: Some("redis".into()),
            cert: Some("off2.pem".into()),
            ..raw::RawService::default()
        };
        let before = Fingerprint::of(raw.clone(), read("first"));
        assert_eq!(before, Fingerprint::of(raw.clone(), read("first")));

        let other = raw::RawService {
            max_connections: Some(10),
            ..raw.clone()
        };
        assert_ne!(before, Fingerprint::of(other, read("first")));

        let after = Fingerprint::of(raw, read("renewed"));
        assert_ne!(before, after);
        // Debug names the files, never their contents (the key is one).
        // "renewed" as a Vec<u8> would print as [114, 101, 110, ...].
        assert!(!format!("{after:?}").contains("114, 101, 110"));
    }
}
