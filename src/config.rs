//! Turns a TOML file into a checked [`Config`]: every address parsed, every
//! certificate and key loaded, every safety rule applied, so that nothing
//! downstream re-checks anything.
//!
//! Loading never stops at the first problem: it collects every problem it can
//! find, each naming the file, the service and the key, so that `dctunnel
//! check` shows a user everything to fix at once.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::tls::{self, PeerPolicy, TlsFiles};

/// Where `run` and `check` look for the configuration by default.
pub const DEFAULT_PATH: &str = "/etc/dctunnel/dctunnel.toml";

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Same as stunnel's `TIMEOUTidle`: connection pools keep connections idle
/// for hours, and TCP keepalive already finds dead peers.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(12 * 3600);
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// A fully checked configuration: what `run` executes.
#[derive(Debug)]
pub struct Config {
    pub path: PathBuf,
    pub services: Vec<Arc<Service>>,
    /// How long open connections may go on after a stop is asked for.
    pub shutdown_timeout: Duration,
    /// Threads carrying connections; `None`: one per core.
    pub worker_threads: Option<usize>,
    /// Where the admin HTTP endpoint (metrics, connections) listens, if anywhere.
    pub admin: Option<SocketAddr>,
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
    /// Server mode: send a PROXY protocol header to the backend first.
    pub proxy_protocol: Option<crate::proxy_protocol::Version>,
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
        tls: Arc<rustls::ServerConfig>,
        peers: Arc<PeerPolicy>,
    },
    /// Accept plaintext, connect with mutual TLS to the remote side.
    Client {
        tls: Arc<rustls::ClientConfig>,
        server_name: rustls::pki_types::ServerName<'static>,
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
        }
    }
}

impl Service {
    pub fn mode(&self) -> Mode {
        match self.role {
            Role::Server { .. } => Mode::Server,
            Role::Client { .. } => Mode::Client,
        }
    }

    /// Whether a connection from `ip` passes the source allowlist.
    pub fn source_allowed(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.allow_sources.is_empty() || self.allow_sources.iter().any(|net| net.contains(&ip))
    }
}

/// Settings and file contents that decide a service's behaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub settings: String,
    pub files: Vec<(PathBuf, Vec<u8>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Server,
    Client,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Server => "server",
            Mode::Client => "client",
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

impl Target {
    fn parse(s: &str) -> Result<Target, String> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Target {
                host: Host::Ip(addr.ip()),
                port: addr.port(),
            });
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} has no port; write HOST:PORT"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{s:?}: {port:?} is not a port number"))?;
        if port == 0 {
            return Err(format!("{s:?}: port 0 is not a destination"));
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Target {
                host: Host::Ip(ip),
                port,
            });
        }
        let valid_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if host.is_empty() || host.len() > 253 || !host.split('.').all(valid_label) {
            return Err(format!("{host:?} is neither an IP address nor a DNS name"));
        }
        Ok(Target {
            host: Host::Name(host.to_ascii_lowercase()),
            port,
        })
    }
}

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub service: Option<String>,
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(service) = &self.service {
            write!(f, ": service {service:?}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found while loading a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "invalid configuration ({n} problem{})",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The keys of a `[[service]]` table, also used for `[defaults]`, which may
/// set every key but `name`, `mode`, `listen` and `connect`.
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Option<String>,
    mode: Option<Mode>,
    listen: Option<String>,
    connect: Option<OneOrMany>,
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    crl: Option<Vec<String>>,
    peer_pins: Option<Vec<String>>,
    allow_sources: Option<Vec<String>>,
    allow_peers: Option<Vec<String>>,
    server_name: Option<String>,
    allow_public_listen: Option<bool>,
    max_connections: Option<usize>,
    max_connections_per_source: Option<usize>,
    connect_timeout: Option<String>,
    handshake_timeout: Option<String>,
    idle_timeout: Option<String>,
    tls12: Option<bool>,
    tls_resumption: Option<bool>,
    proxy_protocol: Option<crate::proxy_protocol::Version>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
    allow_public_listen: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    shutdown_timeout: Option<String>,
    worker_threads: Option<usize>,
}

/// Reads and checks the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        problems: vec![Problem {
            file: path.to_owned(),
            service: None,
            field: None,
            message: format!("cannot read: {e}"),
        }],
    })?;
    parse(path, &text)
}

/// Checks configuration `text` as if read from `path` (relative file names
/// are resolved against the folder of `path`).
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let mut cx = Context {
        file: path.to_owned(),
        base: path
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from(".")),
        problems: Vec::new(),
    };
    let config = cx.parse(text);
    match config {
        Some(config) if cx.problems.is_empty() => Ok(config),
        _ => Err(ConfigError {
            problems: cx.problems,
        }),
    }
}

struct Context {
    file: PathBuf,
    base: PathBuf,
    problems: Vec<Problem>,
}

impl Context {
    fn problem(&mut self, service: Option<&str>, field: Option<&str>, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.clone(),
            service: service.map(str::to_owned),
            field: field.map(str::to_owned),
            message: message.into(),
        });
    }

    /// Reports a table that does not deserialize, naming the key when
    /// serde says which one.
    fn serde_problem(&mut self, service: &str, e: &toml::de::Error) {
        let msg = e.message().trim().to_owned();
        let field = msg
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split_once('`'))
            .map(|(name, _)| name.to_owned());
        match field {
            Some(f) => {
                let expected = msg
                    .split_once(", expected ")
                    .map(|x| x.1.trim_start_matches("one of "))
                    .unwrap_or("");
                self.problem(
                    Some(service),
                    Some(&f),
                    format!("unknown key; known keys: {expected}"),
                )
            }
            None => self.problem(Some(service), None, msg),
        }
    }

    fn parse(&mut self, text: &str) -> Option<Config> {
        let mut table: toml::Table = match toml::from_str(text) {
            Ok(t) => t,
            Err(e) => {
                let msg = e.to_string().trim_end().replace('\n', "\n    ");
                self.problem(None, None, format!("not valid TOML: {msg}"));
                return None;
            }
        };
        let defaults = match table.remove("defaults") {
            None => RawService::default(),
            Some(v) => match RawService::deserialize(v) {
                Ok(d) => d,
                Err(e) => {
                    self.serde_problem("[defaults]", &e);
                    RawService::default()
                }
            },
        };
        for (field, set) in [
            ("name", defaults.name.is_some()),
            ("mode", defaults.mode.is_some()),
            ("listen", defaults.listen.is_some()),
            ("connect", defaults.connect.is_some()),
        ] {
            if set {
                self.problem(
                    None,
                    Some(&format!("[defaults].{field}")),
                    "is per service and cannot have a default",
                );
            }
        }
        let daemon = match table.remove("daemon") {
            None => RawDaemon::default(),
            Some(v) => RawDaemon::deserialize(v).unwrap_or_else(|e| {
                self.problem(Some("[daemon]"), None, e.to_string());
                RawDaemon::default()
            }),
        };
        let shutdown_timeout = match daemon.shutdown_timeout {
            None => DEFAULT_SHUTDOWN_TIMEOUT,
            Some(s) => parse_duration(&s).unwrap_or_else(|e| {
                self.problem(None, Some("[daemon].shutdown_timeout"), e);
                DEFAULT_SHUTDOWN_TIMEOUT
            }),
        };
        let admin = match table.remove("admin") {
            None => None,
            Some(v) => match RawAdmin::deserialize(v) {
                Ok(a) => self.admin(a),
                Err(e) => {
                    self.problem(Some("[admin]"), None, e.to_string());
                    None
                }
            },
        };
        if daemon.worker_threads == Some(0) {
            self.problem(
                None,
                Some("[daemon].worker_threads"),
                "must be at least 1 (leave it out for one per core)",
            );
        }
        let raw_services = match table.remove("service") {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => items,
            Some(_) => {
                self.problem(
                    None,
                    Some("service"),
                    "must be an array of tables, written [[service]]",
                );
                Vec::new()
            }
        };
        for key in table.keys() {
            self.problem(
                None,
                Some(key),
                "unknown top-level key (expected [defaults], [daemon], [admin] or [[service]])",
            );
        }
        if raw_services.is_empty() {
            self.problem(None, None, "no [[service]] defined");
        }

        let mut services = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut listens: HashMap<SocketAddr, String> = HashMap::new();
        for (index, value) in raw_services.into_iter().enumerate() {
            // Name the service in errors even when the rest does not parse.
            let label = value
                .get("name")
                .and_then(|n| n.as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| format!("#{}", index + 1));
            let raw = match RawService::deserialize(value) {
                Ok(r) => r,
                Err(e) => {
                    self.serde_problem(&label, &e);
                    continue;
                }
            };
            if let Some(name) = &raw.name {
                if let Some(first) = names.insert(name.clone(), index) {
                    self.problem(
                        Some(name),
                        Some("name"),
                        format!(
                            "service #{} has the same name as service #{}; names must be unique",
                            index + 1,
                            first + 1
                        ),
                    );
                }
            }
            if let Some(service) = self.service(&label, merge(raw, &defaults)) {
                // Port 0 (any free port, for tests) never collides.
                let dup = match service.listen.port() {
                    0 => None,
                    _ => listens.insert(service.listen, service.name.clone()),
                };
                if let Some(other) = dup {
                    self.problem(
                        Some(&service.name),
                        Some("listen"),
                        format!(
                            "{} is already the listen address of service {other:?}",
                            service.listen
                        ),
                    );
                }
                services.push(Arc::new(service));
            }
        }
        if let Some(admin) = admin {
            if let Some(other) = listens.get(&admin) {
                self.problem(
                    None,
                    Some("[admin].listen"),
                    format!("{admin} is already the listen address of service {other:?}"),
                );
            }
        }
        Some(Config {
            path: self.file.clone(),
            services,
            shutdown_timeout,
            worker_threads: daemon.worker_threads,
            admin,
        })
    }

    fn admin(&mut self, raw: RawAdmin) -> Option<SocketAddr> {
        let field = Some("[admin].listen");
        let Some(listen) = raw.listen else {
            self.problem(
                None,
                field,
                "is required in [admin], e.g. \"127.0.0.1:9815\"",
            );
            return None;
        };
        let Ok(addr) = listen.parse::<SocketAddr>() else {
            self.problem(None, field, format!("{listen:?} is not IP:PORT"));
            return None;
        };
        if is_public_or_wildcard(addr.ip()) && raw.allow_public_listen != Some(true) {
            self.problem(
                None,
                field,
                format!(
                    "{} is a wildcard or public address and the admin endpoint shows every \
                     connection; listen on loopback or a private address, or set \
                     [admin].allow_public_listen = true",
                    addr.ip()
                ),
            );
            return None;
        }
        Some(addr)
    }

    fn service(&mut self, label: &str, raw: RawService) -> Option<Service> {
        let before = self.problems.len();
        let settings = format!("{raw:?}");
        let s = Some(label);
        let name = raw.name.clone().unwrap_or_else(|| {
            self.problem(s, Some("name"), "is required");
            label.to_owned()
        });
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            self.problem(
                s,
                Some("name"),
                "must be non-empty and use only letters, digits, '-', '_' and '.'",
            );
        }
        let mode = raw.mode.or_else(|| {
            self.problem(s, Some("mode"), "is required: \"server\" or \"client\"");
            None
        });
        let listen = match &raw.listen {
            None => {
                self.problem(s, Some("listen"), "is required, e.g. \"127.0.0.1:6379\"");
                None
            }
            Some(l) => match l.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    self.problem(
                        s,
                        Some("listen"),
                        format!(
                            "{l:?} is not IP:PORT (IPv6 as \"[::1]:16000\"; names are not accepted here)"
                        ),
                    );
                    None
                }
            },
        };
        let connect: Vec<Target> = match &raw.connect {
            None => {
                self.problem(s, Some("connect"), "is required, e.g. \"10.1.0.102:27017\"");
                Vec::new()
            }
            Some(c) => {
                let list: Vec<&String> = match c {
                    OneOrMany::One(one) => vec![one],
                    OneOrMany::Many(many) => many.iter().collect(),
                };
                if list.is_empty() {
                    self.problem(s, Some("connect"), "must name at least one HOST:PORT");
                }
                list.into_iter()
                    .filter_map(|t| {
                        Target::parse(t)
                            .map_err(|e| self.problem(s, Some("connect"), e))
                            .ok()
                    })
                    .collect()
            }
        };
        let allow_sources: Vec<IpNet> = raw
            .allow_sources
            .iter()
            .flatten()
            .filter_map(|src| match parse_source(src) {
                Ok(net) => Some(net),
                Err(e) => {
                    self.problem(s, Some("allow_sources"), e);
                    None
                }
            })
            .collect();
        if raw.allow_sources.as_ref().is_some_and(|v| v.is_empty()) {
            self.problem(
                s,
                Some("allow_sources"),
                "is empty, which would refuse every connection; remove the key to allow all sources",
            );
        }
        let mut duration = |field: &str, value: &Option<String>, default: Duration| match value {
            None => default,
            Some(v) => parse_duration(v).unwrap_or_else(|e| {
                self.problem(s, Some(field), e);
                default
            }),
        };
        let connect_timeout = duration(
            "connect_timeout",
            &raw.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
        );
        let handshake_timeout = duration(
            "handshake_timeout",
            &raw.handshake_timeout,
            DEFAULT_HANDSHAKE_TIMEOUT,
        );
        let idle = duration("idle_timeout", &raw.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        let idle_timeout = (!idle.is_zero()).then_some(idle);
        for (field, value) in [
            ("connect_timeout", connect_timeout),
            ("handshake_timeout", handshake_timeout),
        ] {
            if value.is_zero() {
                self.problem(s, Some(field), "must be longer than zero");
            }
        }
        for (field, value) in [
            ("max_connections", raw.max_connections),
            ("max_connections_per_source", raw.max_connections_per_source),
        ] {
            if value == Some(0) {
                self.problem(s, Some(field), "is 0, which would refuse every connection");
            }
        }

        // Safety rules on where a listener may be.
        if let (Some(Mode::Client), Some(listen)) = (mode, listen) {
            if is_public_or_wildcard(listen.ip()) {
                let allowed = raw.allow_public_listen == Some(true);
                if !allowed {
                    self.problem(
                        s,
                        Some("listen"),
                        format!(
                            "client mode accepts plaintext, and {} is a {} address: anyone who reaches it gets \
                             into the tunnel. Listen on a loopback or private address, or set \
                             allow_public_listen = true together with allow_sources",
                            listen.ip(),
                            if listen.ip().is_unspecified() { "wildcard" } else { "public" }
                        ),
                    );
                } else if allow_sources.is_empty() {
                    self.problem(
                        s,
                        Some("allow_sources"),
                        "is required when allow_public_listen = true: list the networks that may connect",
                    );
                }
            }
        }
        if mode == Some(Mode::Client) && raw.allow_peers.is_some() {
            self.problem(
                s,
                Some("allow_peers"),
                "applies to server mode only; a client-mode service checks the server with server_name (or peer_pins)",
            );
        }
        if mode == Some(Mode::Client) && raw.proxy_protocol.is_some() {
            self.problem(
                s,
                Some("proxy_protocol"),
                "applies to server mode only (the header tells the backend who the TLS peer is)",
            );
        }
        if mode == Some(Mode::Server) && raw.server_name.is_some() {
            self.problem(
                s,
                Some("server_name"),
                "applies to client mode only; a server-mode service checks clients with allow_peers",
            );
        }

        // TLS material.
        let files = TlsFiles {
            ca: raw.ca.as_deref().and_then(|p| self.path(s, "ca", p)),
            cert: raw.cert.as_deref().and_then(|p| self.path(s, "cert", p)),
            key: raw.key.as_deref().and_then(|p| self.path(s, "key", p)),
            crl: raw
                .crl
                .iter()
                .flatten()
                .filter_map(|p| self.path(s, "crl", p))
                .collect(),
            peer_pins: raw.peer_pins.clone().unwrap_or_default(),
            tls12: raw.tls12.unwrap_or(false),
            resumption: raw.tls_resumption.unwrap_or(true),
        };
        if raw.cert.is_none() {
            self.problem(
                s,
                Some("cert"),
                "is required (this host's certificate, PEM)",
            );
        }
        if raw.key.is_none() {
            self.problem(s, Some("key"), "is required (this host's private key, PEM)");
        }
        if raw.ca.is_none() && files.peer_pins.is_empty() {
            self.problem(
                s,
                Some("ca"),
                "is required to verify the peer (or give peer_pins to trust keys instead)",
            );
        }
        let role = match mode {
            Some(Mode::Server) => {
                let peers = match &raw.allow_peers {
                    None if files.peer_pins.is_empty() => {
                        self.problem(
                            s,
                            Some("allow_peers"),
                            "is required in server mode: list the certificate names that may connect, \
                             or write [\"*\"] to accept any certificate the CA signed",
                        );
                        None
                    }
                    None => Some(PeerPolicy::Any),
                    Some(list) => match PeerPolicy::parse(list) {
                        Ok(p) => Some(p),
                        Err(e) => {
                            self.problem(s, Some("allow_peers"), e);
                            None
                        }
                    },
                };
                peers.and_then(|peers| {
                    let peers = Arc::new(peers);
                    tls::server_config(&files, peers.clone())
                        .map_err(|e| self.problem(s, Some(e.field), e.to_string()))
                        .ok()
                        .map(|tls| Role::Server { tls, peers })
                })
            }
            Some(Mode::Client) => {
                let server_name = match (&raw.server_name, connect.first()) {
                    (Some(name), _) => Some(name.clone()),
                    (None, Some(t)) => Some(match &t.host {
                        Host::Ip(ip) => ip.to_string(),
                        Host::Name(n) => n.clone(),
                    }),
                    (None, None) => None,
                };
                let server_name = server_name.and_then(|n| {
                    rustls::pki_types::ServerName::try_from(n.clone())
                        .map_err(|_| {
                            self.problem(
                                s,
                                Some("server_name"),
                                format!("{n:?} is not a valid DNS name or IP address"),
                            )
                        })
                        .ok()
                });
                let tls = tls::client_config(&files)
                    .map_err(|e| self.problem(s, Some(e.field), e.to_string()))
                    .ok();
                match (tls, server_name) {
                    (Some(tls), Some(server_name)) => Some(Role::Client { tls, server_name }),
                    _ => None,
                }
            }
            None => None,
        };

        if self.problems.len() > before {
            return None;
        }
        let (role, listen) = (role?, listen?);
        let fingerprint = Fingerprint {
            settings,
            files: files
                .all_paths()
                .into_iter()
                .map(|p| {
                    let bytes = std::fs::read(&p).unwrap_or_default();
                    (p, bytes)
                })
                .collect(),
        };
        Some(Service {
            name,
            listen,
            allow_sources,
            max_connections: raw.max_connections,
            max_connections_per_source: raw.max_connections_per_source,
            connect,
            connect_timeout,
            handshake_timeout,
            idle_timeout,
            proxy_protocol: raw.proxy_protocol,
            role,
            files,
            fingerprint,
        })
    }

    /// Resolves a file name from the configuration: `${VAR}` is replaced by
    /// the environment variable (for systemd's `${CREDENTIALS_DIRECTORY}`),
    /// and a relative path is taken from the configuration file's folder.
    fn path(&mut self, service: Option<&str>, field: &str, value: &str) -> Option<PathBuf> {
        match expand_env(value) {
            Ok(v) => {
                let p = PathBuf::from(v);
                Some(if p.is_absolute() {
                    p
                } else {
                    self.base.join(p)
                })
            }
            Err(e) => {
                self.problem(service, Some(field), e);
                None
            }
        }
    }
}

fn merge(service: RawService, defaults: &RawService) -> RawService {
    let d = defaults.clone();
    RawService {
        name: service.name,
        mode: service.mode,
        listen: service.listen,
        connect: service.connect,
        ca: service.ca.or(d.ca),
        cert: service.cert.or(d.cert),
        key: service.key.or(d.key),
        crl: service.crl.or(d.crl),
        peer_pins: service.peer_pins.or(d.peer_pins),
        allow_sources: service.allow_sources.or(d.allow_sources),
        allow_peers: service.allow_peers.or(d.allow_peers),
        server_name: service.server_name.or(d.server_name),
        allow_public_listen: service.allow_public_listen.or(d.allow_public_listen),
        max_connections: service.max_connections.or(d.max_connections),
        max_connections_per_source: service
            .max_connections_per_source
            .or(d.max_connections_per_source),
        connect_timeout: service.connect_timeout.or(d.connect_timeout),
        handshake_timeout: service.handshake_timeout.or(d.handshake_timeout),
        idle_timeout: service.idle_timeout.or(d.idle_timeout),
        tls12: service.tls12.or(d.tls12),
        tls_resumption: service.tls_resumption.or(d.tls_resumption),
        proxy_protocol: service.proxy_protocol.or(d.proxy_protocol),
    }
}

fn expand_env(value: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("{value:?}: unclosed \"${{\""))?;
        let var = &after[..end];
        let val = std::env::var(var)
            .map_err(|_| format!("{value:?}: environment variable {var} is not set"))?;
        out.push_str(&val);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses `"10s"`, `"5m"`, `"1h"`, `"500ms"`, `"1d"`, or sums like `"1m30s"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!("{s:?} is not a duration; write a number and a unit: \"500ms\", \"10s\", \"5m\", \"1h\", \"1d\"")
    };
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86400)),
            _ => return Err(bad()),
        };
        total = total.saturating_add(unit);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

fn parse_source(s: &str) -> Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        if net != net.trunc() {
            return Err(format!(
                "{s:?} has host bits set; did you mean {}?",
                net.trunc()
            ));
        }
        return Ok(net);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(format!(
        "{s:?} is not an address or a CIDR network such as \"10.1.0.0/16\" or \"2a06:c484:5::/48\""
    ))
}

/// An IPv4 client reaching an IPv6 wildcard socket shows up as
/// `::ffff:a.b.c.d`; allowlists are written with the IPv4 form.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// True for wildcard addresses and for addresses reachable from the public
/// internet: anything but loopback, private (RFC 1918, shared CGNAT space,
/// IPv6 unique local) and link-local.
pub fn is_public_or_wildcard(ip: IpAddr) -> bool {
    if ip.is_unspecified() {
        return true;
    }
    match canonical_ip(ip) {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            let cgnat = a == 100 && (64..128).contains(&b);
            !(v4.is_loopback() || v4.is_private() || v4.is_link_local() || cgnat)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            let unique_local = first & 0xfe00 == 0xfc00;
            let link_local = first & 0xffc0 == 0xfe80;
            !(v6.is_loopback() || unique_local || link_local)
        }
    }
}

/// A short summary of a service for `check` and the start-up log.
pub fn describe(service: &Service) -> BTreeMap<&'static str, String> {
    let mut m = BTreeMap::new();
    m.insert("mode", service.mode().to_string());
    m.insert(
        "connect",
        service
            .connect
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    );
    m.insert(
        "sources",
        if service.allow_sources.is_empty() {
            "any source".to_owned()
        } else {
            service
                .allow_sources
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        },
    );
    let peers = match &service.role {
        Role::Server { peers, .. } => peers.to_string(),
        Role::Client { server_name, .. } => {
            format!("server must prove {}", server_name.to_str())
        }
    };
    let pins = service.files.peer_pins.len();
    let pinned = format!(
        "a pinned key ({pins} pin{})",
        if pins == 1 { "" } else { "s" }
    );
    m.insert(
        "peers",
        // Without a CA only the pin is checked: no chain, and in client
        // mode no server name either.
        match (pins, service.files.ca.is_some(), &service.role) {
            (0, _, _) => peers,
            (_, false, Role::Client { .. }) => format!("server must hold {pinned}"),
            (_, false, Role::Server { peers: p, .. }) if **p == PeerPolicy::Any => pinned,
            _ => format!("{peers}, with {pinned}"),
        },
    );
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "10", "s", "10 s", "-1s", "1.5s", "10x"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn targets() {
        let t = Target::parse("proxy2.openfoodfacts.org:27017").unwrap();
        assert_eq!(t.host, Host::Name("proxy2.openfoodfacts.org".into()));
        assert_eq!(t.port, 27017);
        let t = Target::parse("[2a06:c484:5::1]:16000").unwrap();
        assert_eq!(t.host, Host::Ip("2a06:c484:5::1".parse().unwrap()));
        assert_eq!(t.to_string(), "[2a06:c484:5::1]:16000");
        assert!(Target::parse("no-port").is_err());
        assert!(Target::parse("host:99999").is_err());
        assert!(Target::parse("bad_name!:80").is_err());
    }

    #[test]
    fn public_addresses() {
        for public in [
            "0.0.0.0",
            "::",
            "213.36.253.206",
            "2a06:c484:5::1",
            "8.8.8.8",
        ] {
            assert!(is_public_or_wildcard(public.parse().unwrap()), "{public}");
        }
        for private in [
            "127.0.0.1",
            "10.1.0.113",
            "192.168.1.1",
            "172.16.0.1",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(
                !is_public_or_wildcard(private.parse().unwrap()),
                "{private}"
            );
        }
    }

    #[test]
    fn sources() {
        assert!(parse_source("10.1.0.0/16").is_ok());
        assert!(parse_source("10.1.0.1/16").is_err());
        assert_eq!(
            parse_source("127.0.0.1").unwrap(),
            "127.0.0.1/32".parse::<IpNet>().unwrap()
        );
        assert!(parse_source("2a06:c484:5::/48").is_ok());
        assert!(parse_source("nonsense").is_err());
    }

    #[test]
    fn env_expansion() {
        std::env::set_var("DCTUNNEL_TEST_DIR", "/run/creds");
        assert_eq!(
            expand_env("${DCTUNNEL_TEST_DIR}/off2.key").unwrap(),
            "/run/creds/off2.key"
        );
        assert!(expand_env("${DCTUNNEL_SURELY_UNSET_VAR}/k").is_err());
        assert!(expand_env("${unclosed").is_err());
    }
}
