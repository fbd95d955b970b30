//! The configuration file as serde reads it: every key optional and
//! unchecked, unknown keys refused. `load` turns these into typed settings.

use serde::Deserialize;

use super::Mode;

/// The keys of a `[[service]]` table, also used for `[defaults]`, which may
/// set every key but `name`, `mode`, `listen` and `connect`.
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub name: Option<String>,
    pub mode: Option<Mode>,
    pub listen: Option<String>,
    pub connect: Option<OneOrMany>,
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub crl: Option<Vec<String>>,
    pub peer_pins: Option<Vec<String>>,
    pub allow_sources: Option<Vec<String>>,
    pub allow_peers: Option<Vec<String>>,
    pub server_name: Option<String>,
    pub allow_public_listen: Option<bool>,
    pub max_connections: Option<usize>,
    pub max_connections_per_source: Option<usize>,
    pub connect_timeout: Option<String>,
    pub handshake_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub dead_peer_timeout: Option<String>,
    pub tls12: Option<bool>,
    pub tls_resumption: Option<bool>,
    pub proxy_protocol: Option<crate::proxy_protocol::Version>,
    pub warm_connections: Option<usize>,
    pub max_warm_connections: Option<usize>,
    pub warm_timeout: Option<String>,
    /// `mode = "ca"`: the CA folder it signs with.
    pub ca_dir: Option<String>,
    /// `mode = "ca"`: the lifetime of the certificates it issues.
    pub lifetime: Option<String>,
}

impl RawService {
    /// The service with every key it leaves out taken from `[defaults]`.
    pub fn with_defaults(self, defaults: &RawService) -> RawService {
        let d = defaults.clone();
        RawService {
            name: self.name,
            mode: self.mode,
            listen: self.listen,
            connect: self.connect,
            ca: self.ca.or(d.ca),
            cert: self.cert.or(d.cert),
            key: self.key.or(d.key),
            crl: self.crl.or(d.crl),
            peer_pins: self.peer_pins.or(d.peer_pins),
            allow_sources: self.allow_sources.or(d.allow_sources),
            allow_peers: self.allow_peers.or(d.allow_peers),
            server_name: self.server_name.or(d.server_name),
            allow_public_listen: self.allow_public_listen.or(d.allow_public_listen),
            max_connections: self.max_connections.or(d.max_connections),
            max_connections_per_source: self
                .max_connections_per_source
                .or(d.max_connections_per_source),
            connect_timeout: self.connect_timeout.or(d.connect_timeout),
            handshake_timeout: self.handshake_timeout.or(d.handshake_timeout),
            idle_timeout: self.idle_timeout.or(d.idle_timeout),
            dead_peer_timeout: self.dead_peer_timeout.or(d.dead_peer_timeout),
            tls12: self.tls12.or(d.tls12),
            tls_resumption: self.tls_resumption.or(d.tls_resumption),
            proxy_protocol: self.proxy_protocol.or(d.proxy_protocol),
            warm_connections: self.warm_connections.or(d.warm_connections),
            max_warm_connections: self.max_warm_connections.or(d.max_warm_connections),
            warm_timeout: self.warm_timeout.or(d.warm_timeout),
            // Per service: a CA folder is never a default.
            ca_dir: self.ca_dir,
            lifetime: self.lifetime,
        }
    }
}

/// `connect = "HOST:PORT"` or `connect = ["HOST:PORT", ...]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// The `[admin]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub listen: Option<String>,
    pub allow_public_listen: Option<bool>,
}

/// The `[daemon]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDaemon {
    pub shutdown_timeout: Option<String>,
    pub worker_threads: Option<usize>,
    pub watch_files: Option<String>,
}

/// The `[renewal]` table: renewing this host's certificate from the
/// online CA service.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRenewal {
    pub ca_service: Option<String>,
    pub server_name: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub ca: Option<String>,
}
