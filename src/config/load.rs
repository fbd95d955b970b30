//! Loading: the steps from the TOML text to a [`Config`]. Each step reports
//! what is wrong and carries on with what it could make of the rest, so
//! that one pass finds every problem.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::problem::{ConfigError, Location, Problem};
use super::raw::{OneOrMany, RawAdmin, RawDaemon, RawRenewal, RawService};
use super::values::{expand_env, is_public_or_wildcard, parse_duration, parse_source};
use super::{Config, Fingerprint, Host, Mode, Renewal, Role, Service, Target};
use crate::certs::online::Authority;
use crate::files;
use crate::tls::{self, PeerPolicy, TlsFiles};

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Same as stunnel's `TIMEOUTidle`: connection pools keep connections idle
/// for hours, and TCP keepalive already finds dead peers.
/// `lifetime` of the certificates the online CA issues.
const DEFAULT_CA_LIFETIME: Duration = Duration::from_secs(30 * 86400);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(12 * 3600);
/// `warm_timeout`: a server end closes a connection that sent no start
/// message for a minute; a client end replaces its warm connections at
/// 45 s, before that.
const DEFAULT_WARM_TIMEOUT: Duration = Duration::from_secs(60);
/// `max_warm_connections`: a few client hosts with a handful of warm
/// connections each, with room to spare; each is two idle sockets.
const DEFAULT_MAX_WARM_CONNECTIONS: usize = 100;
/// A blackholed link between datacenters is noticed within this, on idle
/// and busy connections alike; far above a WAN's round trips and
/// retransmission backoff for a lossy moment, far below the 15 minutes of
/// the kernel's own retransmission limit.
const DEFAULT_DEAD_PEER_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// `[daemon].watch_files`: often enough that a renewed certificate is in
/// use within seconds, rarely enough that the stat calls cost nothing.
const DEFAULT_WATCH_FILES: Duration = Duration::from_secs(5);

/// The upper bounds of the numbers a user writes, so that `check` accepts
/// only what `run` can start and carry (the README lists them). Each is
/// far above any sensible value.
pub mod bounds {
    use std::time::Duration;

    /// `connect_timeout`, `handshake_timeout`: one hour.
    pub const TIMEOUT: (Duration, &str) = (Duration::from_secs(3600), "1h");
    /// `dead_peer_timeout`: at least one second (keepalive counts in whole
    /// seconds), at most one hour.
    pub const DEAD_PEER_TIMEOUT: (Duration, &str) = (Duration::from_secs(3600), "1h");
    /// `idle_timeout`: 30 days.
    pub const IDLE_TIMEOUT: (Duration, &str) = (Duration::from_secs(30 * 86400), "30d");
    /// `[daemon].shutdown_timeout`: one hour.
    pub const SHUTDOWN_TIMEOUT: (Duration, &str) = (Duration::from_secs(3600), "1h");
    /// `[daemon].watch_files`: one hour.
    pub const WATCH_FILES: (Duration, &str) = (Duration::from_secs(3600), "1h");
    /// `lifetime` of the online CA: one hour to 825 days.
    pub const LIFETIME: (Duration, Duration) =
        (Duration::from_secs(3600), Duration::from_secs(825 * 86400));
    /// `[daemon].worker_threads`.
    pub const WORKER_THREADS: usize = 256;
    /// `max_connections`, `max_connections_per_source`: each connection
    /// holds two sockets, and no open-files limit goes that far.
    pub const CONNECTIONS: usize = 1_000_000;
    /// `warm_connections`: a pool is for latency, not capacity.
    pub const WARM_CONNECTIONS: usize = 1000;
    /// `warm_timeout`: at least one second (a client end replaces its
    /// warm connections at 3/4 of it), at most one hour.
    pub const WARM_TIMEOUT: (Duration, &str) = (Duration::from_secs(3600), "1h");
    pub const WARM_TIMEOUT_MIN: (Duration, &str) = (Duration::from_secs(1), "1s");
}

/// Reads and checks the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let whole = |message: String| ConfigError {
        problems: vec![Problem {
            file: path.to_owned(),
            location: Location::File,
            field: None,
            message,
        }],
    };
    let bytes = files::read(path, files::CONFIG_LIMIT).map_err(|e| whole(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        whole(format!(
            "is not UTF-8 text (byte {})",
            e.utf8_error().valid_up_to()
        ))
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
        found: 0,
        quiet: HashSet::new(),
    };
    let config = cx.parse(text);
    match config {
        Some(config) if cx.problems.is_empty() => Ok(config),
        _ => Err(ConfigError {
            problems: cx.problems,
        }),
    }
}

/// The loading of one file: where it is and what is wrong so far.
struct Context {
    file: PathBuf,
    /// Relative file names are taken from here: the file's folder.
    base: PathBuf,
    problems: Vec<Problem>,
    /// Problems found so far, counting those not reported (see `quiet`).
    found: usize,
    /// Keys of the service being read whose problems are not reported:
    /// their value comes from `[defaults]`, where the problem was already
    /// reported once.
    quiet: HashSet<String>,
}

/// `[defaults]`, and which of its keys had a problem (reported once at
/// `[defaults]`, not again in each service using it).
struct Defaults {
    raw: RawService,
    bad: HashSet<String>,
}

/// The `[daemon]` table, checked.
struct Daemon {
    shutdown_timeout: Duration,
    worker_threads: Option<usize>,
    watch_files: Option<Duration>,
}

/// A service's timeouts, defaults applied.
struct Timeouts {
    connect: Duration,
    handshake: Duration,
    /// `None`: no idle timeout (`idle_timeout = "0s"`).
    idle: Option<Duration>,
    warm: Duration,
    /// `None`: dead-peer detection off (`dead_peer_timeout = "0s"`).
    dead_peer: Option<Duration>,
}

const DAEMON: Location = Location::Table("daemon");
const ADMIN: Location = Location::Table("admin");
const DEFAULTS: Location = Location::Table("defaults");
const RENEWAL: Location = Location::Table("renewal");

impl Context {
    fn problem(&mut self, at: &Location, field: Option<&str>, message: impl Into<String>) {
        self.found += 1;
        let in_service = matches!(at, Location::Service(_));
        if in_service && field.is_some_and(|f| self.quiet.contains(f)) {
            return;
        }
        self.problems.push(Problem {
            file: self.file.clone(),
            location: at.clone(),
            field: field.map(str::to_owned),
            message: message.into(),
        });
    }

    /// Reports a table that does not deserialize, naming the key when
    /// serde says which one.
    fn serde_problem(&mut self, at: &Location, e: &toml::de::Error) {
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
                self.problem(at, Some(&f), format!("unknown key; known keys: {expected}"))
            }
            None => self.problem(at, None, msg),
        }
    }

    fn parse(&mut self, text: &str) -> Option<Config> {
        let mut table: toml::Table = match toml::from_str(text) {
            Ok(t) => t,
            Err(e) => {
                let msg = e.to_string().trim_end().replace('\n', "\n    ");
                self.problem(&Location::File, None, format!("not valid TOML: {msg}"));
                return None;
            }
        };
        let defaults = self.defaults(table.remove("defaults"));
        let daemon = self.daemon(table.remove("daemon"));
        let admin = self.admin(table.remove("admin"));
        let raw_services = self.service_list(table.remove("service"));
        let raw_renewal = table.remove("renewal");
        for key in table.keys() {
            self.problem(
                &Location::File,
                Some(key),
                "unknown top-level key (expected [defaults], [daemon], [admin], [renewal] or [[service]])",
            );
        }
        if raw_services.is_empty() {
            self.problem(&Location::File, None, "no [[service]] defined");
        }
        let services = self.services(raw_services, &defaults);
        let renewal = raw_renewal.and_then(|value| self.renewal(value, &services));
        if let Some(admin) = admin {
            // Port 0 (any free port, for tests) never collides.
            let taken = services
                .iter()
                .rev()
                .find(|s| s.listen == admin && s.listen.port() != 0);
            if let Some(other) = taken {
                self.problem(
                    &ADMIN,
                    Some("listen"),
                    format!(
                        "{admin} is already the listen address of service {:?}",
                        other.name
                    ),
                );
            }
        }
        Some(Config {
            services,
            shutdown_timeout: daemon.shutdown_timeout,
            worker_threads: daemon.worker_threads,
            watch_files: daemon.watch_files,
            admin,
            renewal,
        })
    }

    /// `[renewal]`: the CA service, and the certificate and key the daemon
    /// renews, which must be a pair the CA service would renew, in folders
    /// the daemon can write to, and used by a service.
    fn renewal(&mut self, value: toml::Value, services: &[Arc<Service>]) -> Option<Arc<Renewal>> {
        let raw = match RawRenewal::deserialize(value) {
            Ok(raw) => raw,
            Err(e) => {
                self.serde_problem(&RENEWAL, &e);
                return None;
            }
        };
        let before = self.problems.len();
        let ca_service = match &raw.ca_service {
            None => {
                self.problem(
                    &RENEWAL,
                    Some("ca_service"),
                    "is required: the HOST:PORT of the CA service (mode = \"ca\")",
                );
                None
            }
            Some(v) => Target::parse(v)
                .map_err(|e| self.problem(&RENEWAL, Some("ca_service"), e))
                .ok(),
        };
        let server_name = match (&raw.server_name, &ca_service) {
            (Some(name), _) => Some(name.clone()),
            (None, Some(t)) => Some(match &t.host {
                Host::Ip(ip) => ip.to_string(),
                Host::Name(n) => n.clone(),
            }),
            (None, None) => None,
        }
        .and_then(|n| {
            rustls::pki_types::ServerName::try_from(n.clone())
                .map_err(|_| {
                    self.problem(
                        &RENEWAL,
                        Some("server_name"),
                        format!("{n:?} is not a valid DNS name or IP address"),
                    )
                })
                .ok()
        });
        let file =
            |cx: &mut Self, field: &'static str, value: &Option<String>, what: &str| match value {
                None => {
                    cx.problem(&RENEWAL, Some(field), format!("is required ({what})"));
                    None
                }
                Some(v) => cx.path(&RENEWAL, field, v),
            };
        let cert = file(
            self,
            "cert",
            &raw.cert,
            "the certificate the daemon renews, PEM",
        );
        let key = file(self, "key", &raw.key, "its private key, PEM");
        let ca = file(
            self,
            "ca",
            &raw.ca,
            "the CA certificate that verifies the CA service",
        );
        let (Some(cert), Some(key), Some(ca)) = (cert, key, ca) else {
            return None;
        };
        if cert == key {
            self.problem(
                &RENEWAL,
                Some("key"),
                "is the cert file; renewal writes the key and the certificate to two files",
            );
            return None;
        }
        match crate::renewal::client_config(&cert, &key, &ca) {
            Err(e) => self.problem(&RENEWAL, Some(e.field), e.message),
            Ok((_, leaf)) => {
                if let Err(e) = crate::certs::csr::same_names(&leaf, &cert) {
                    self.problem(
                        &RENEWAL,
                        Some("cert"),
                        format!("{e}: the CA service would not renew it"),
                    );
                }
            }
        }
        for (field, path) in [("cert", &cert), ("key", &key)] {
            if let Some(why) = unwritable_folder(path) {
                self.problem(&RENEWAL, Some(field), why);
            }
        }
        // Only when the rest is right: a service with a problem is not
        // in `services`, and would show here as missing.
        if self.problems.is_empty()
            && !services
                .iter()
                .any(|s| s.files.cert.as_deref() == Some(cert.as_path()))
        {
            self.problem(
                &RENEWAL,
                Some("cert"),
                format!(
                    "no [[service]] uses {}: renewal would renew a certificate no service loads",
                    cert.display()
                ),
            );
        }
        if self.problems.len() > before {
            return None;
        }
        Some(Arc::new(Renewal {
            ca_service: ca_service?,
            server_name: server_name?,
            cert,
            key,
            ca,
        }))
    }

    /// `[defaults]`: any service key but the four that are per service,
    /// each value checked here, once, as far as it can be without a service.
    fn defaults(&mut self, value: Option<toml::Value>) -> Defaults {
        let Some(value) = value else {
            return Defaults {
                raw: RawService::default(),
                bad: HashSet::new(),
            };
        };
        let defaults = RawService::deserialize(value).unwrap_or_else(|e| {
            self.serde_problem(&DEFAULTS, &e);
            RawService::default()
        });
        for (field, set) in [
            ("name", defaults.name.is_some()),
            ("mode", defaults.mode.is_some()),
            ("listen", defaults.listen.is_some()),
            ("connect", defaults.connect.is_some()),
            ("ca_dir", defaults.ca_dir.is_some()),
            ("lifetime", defaults.lifetime.is_some()),
        ] {
            if set {
                self.problem(
                    &DEFAULTS,
                    Some(field),
                    "is per service and cannot have a default",
                );
            }
        }
        let before = self.problems.len();
        self.default_values(&defaults);
        let bad = self.problems[before..]
            .iter()
            .filter_map(|p| p.field.clone())
            .collect();
        Defaults { raw: defaults, bad }
    }

    /// The values of `[defaults]` that can be checked on their own:
    /// durations, limits, networks, names, pins, and the files.
    fn default_values(&mut self, d: &RawService) {
        self.timeouts(&DEFAULTS, d);
        self.limits(&DEFAULTS, d);
        self.allow_sources(&DEFAULTS, d);
        if let Some(list) = &d.allow_peers {
            if let Err(e) = PeerPolicy::parse(list) {
                self.problem(&DEFAULTS, Some("allow_peers"), e);
            }
        }
        if let Some(pins) = &d.peer_pins {
            if let Err(e) = tls::check_pins(pins) {
                self.problem(&DEFAULTS, Some(e.field), e.message);
            }
        }
        let mut read = tls::Contents::new();
        let mut file = |cx: &mut Self, field: &'static str, value: &str| {
            let Some(path) = cx.path(&DEFAULTS, field, value) else {
                return;
            };
            let loaded = match field {
                "ca" => tls::load_roots(&path, &mut read).map(drop),
                "cert" => tls::load_chain(&path, &mut read).map(drop),
                "key" => tls::load_key(&path, &mut read).map(drop),
                _ => tls::load_crls(&path, &mut read).map(drop),
            };
            if let Err(e) = loaded {
                cx.problem(&DEFAULTS, Some(e.field), e.message);
            }
        };
        for (field, value) in [("ca", &d.ca), ("cert", &d.cert), ("key", &d.key)] {
            if let Some(value) = value {
                file(self, field, value);
            }
        }
        for value in d.crl.iter().flatten() {
            file(self, "crl", value);
        }
    }

    fn daemon(&mut self, value: Option<toml::Value>) -> Daemon {
        let raw = match value {
            None => RawDaemon::default(),
            Some(v) => RawDaemon::deserialize(v).unwrap_or_else(|e| {
                self.problem(&DAEMON, None, e.to_string().trim_end());
                RawDaemon::default()
            }),
        };
        let shutdown_timeout = self.duration(
            &DAEMON,
            "shutdown_timeout",
            &raw.shutdown_timeout,
            DEFAULT_SHUTDOWN_TIMEOUT,
            bounds::SHUTDOWN_TIMEOUT,
        );
        match raw.worker_threads {
            Some(0) => self.problem(
                &DAEMON,
                Some("worker_threads"),
                "must be at least 1 (leave it out for one per core)",
            ),
            Some(n) if n > bounds::WORKER_THREADS => self.problem(
                &DAEMON,
                Some("worker_threads"),
                format!(
                    "is {n}, more than the {} dctunnel starts (leave it out for one per core)",
                    bounds::WORKER_THREADS
                ),
            ),
            _ => {}
        }
        let watch_files = self.duration(
            &DAEMON,
            "watch_files",
            &raw.watch_files,
            DEFAULT_WATCH_FILES,
            bounds::WATCH_FILES,
        );
        Daemon {
            shutdown_timeout,
            worker_threads: raw.worker_threads,
            // "0s" turns the watch off.
            watch_files: Some(watch_files).filter(|d| !d.is_zero()),
        }
    }

    /// `[admin]`: where the admin endpoint listens, if it is enabled.
    fn admin(&mut self, value: Option<toml::Value>) -> Option<SocketAddr> {
        let raw = match RawAdmin::deserialize(value?) {
            Ok(raw) => raw,
            Err(e) => {
                self.problem(&ADMIN, None, e.to_string().trim_end());
                return None;
            }
        };
        let field = Some("listen");
        let Some(listen) = raw.listen else {
            self.problem(
                &ADMIN,
                field,
                "is required in [admin], e.g. \"127.0.0.1:9815\"",
            );
            return None;
        };
        let Ok(addr) = listen.parse::<SocketAddr>() else {
            self.problem(&ADMIN, field, format!("{listen:?} is not IP:PORT"));
            return None;
        };
        if is_public_or_wildcard(addr.ip()) && raw.allow_public_listen != Some(true) {
            self.problem(
                &ADMIN,
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

    /// The `[[service]]` tables, not yet read.
    fn service_list(&mut self, value: Option<toml::Value>) -> Vec<toml::Value> {
        match value {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => items,
            Some(_) => {
                self.problem(
                    &Location::File,
                    Some("service"),
                    "must be an array of tables, written [[service]]",
                );
                Vec::new()
            }
        }
    }

    /// Every service that checks out, and the problems of the others,
    /// including names and listen addresses used twice.
    fn services(&mut self, values: Vec<toml::Value>, defaults: &Defaults) -> Vec<Arc<Service>> {
        let mut services: Vec<Arc<Service>> = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        for (index, value) in values.into_iter().enumerate() {
            // Name the service in errors even when the rest does not parse.
            let label = value
                .get("name")
                .and_then(|n| n.as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| format!("#{}", index + 1));
            let raw = match RawService::deserialize(value) {
                Ok(r) => r,
                Err(e) => {
                    self.serde_problem(&Location::Service(label), &e);
                    continue;
                }
            };
            if let Some(name) = &raw.name {
                if let Some(first) = names.insert(name.clone(), index) {
                    self.problem(
                        &Location::Service(name.clone()),
                        Some("name"),
                        format!(
                            "service #{} has the same name as service #{}; names must be unique",
                            index + 1,
                            first + 1
                        ),
                    );
                }
            }
            let Some(service) = self.service(&label, raw, defaults) else {
                continue;
            };
            // Port 0 (any free port, for tests) never collides. The
            // nearest earlier service with the address is named.
            let taken = services
                .iter()
                .rev()
                .find(|s| s.listen == service.listen && s.listen.port() != 0);
            if let Some(other) = taken {
                let message = format!(
                    "{} is already the listen address of service {:?}",
                    service.listen, other.name
                );
                self.problem(
                    &Location::Service(service.name.clone()),
                    Some("listen"),
                    message,
                );
            }
            services.push(Arc::new(service));
        }
        services
    }

    /// One service, checked step by step; `None` if any step found a problem.
    fn service(&mut self, label: &str, own: RawService, defaults: &Defaults) -> Option<Service> {
        let raw = own.clone().with_defaults(&defaults.raw);
        self.quiet = inherited(&own, &defaults.raw)
            .into_iter()
            .filter(|f| defaults.bad.contains(*f))
            .map(str::to_owned)
            .collect();
        let service = self.service_with(label, &own, raw);
        self.quiet.clear();
        service
    }

    /// One service, `raw` with its defaults and `own` as written.
    fn service_with(&mut self, label: &str, own: &RawService, raw: RawService) -> Option<Service> {
        let before = self.found;
        let at = Location::Service(label.to_owned());
        let name = self.name(&at, label, &raw);
        let mode = raw.mode.or_else(|| {
            self.problem(
                &at,
                Some("mode"),
                "is required: \"server\", \"client\" or \"ca\"",
            );
            None
        });
        let listen = self.listen(&at, &raw);
        let authority = match mode {
            Some(Mode::Ca) => self.authority(&at, &raw),
            _ => None,
        };
        // The online CA trusts its own CA certificate, whatever the
        // defaults say: the folder it signs with holds it.
        let raw = match (&authority, mode) {
            (Some(a), _) => RawService {
                ca: Some(
                    a.dir()
                        .join(crate::certs::CA_CERT_FILE)
                        .display()
                        .to_string(),
                ),
                ..raw
            },
            (None, Some(Mode::Ca)) => RawService {
                ca: Some(String::new()),
                ..raw
            },
            _ => raw,
        };
        let connect = match mode {
            Some(Mode::Ca) => Vec::new(),
            _ => self.connect(&at, &raw),
        };
        let allow_sources = self.allow_sources(&at, &raw);
        let timeouts = self.timeouts(&at, &raw);
        self.limits(&at, &raw);
        if let (Some(mode), Some(listen)) = (mode, listen) {
            self.where_it_listens(&at, &raw, mode, listen, &allow_sources);
        }
        if let Some(mode) = mode {
            self.keys_of_the_other_mode(&at, own, mode);
        }
        let files_problems = self.found;
        let files = self.tls_files(&at, &raw);
        let files_missing = self.found > files_problems;
        // Who may connect is said even when files are missing: a server
        // section imported from stunnel lists both at once.
        let peers = match mode {
            Some(Mode::Server) => self.allowed_peers(&at, &raw, &files),
            // Any certificate of its CA may renew, and only its own names.
            Some(Mode::Ca) => match &raw.allow_peers {
                None => Some(PeerPolicy::Any),
                Some(_) => self.allowed_peers(&at, &raw, &files),
            },
            _ => None,
        };
        // Without its files (a key missing, a file name that did not
        // expand), the TLS settings would only repeat that problem.
        if files_missing {
            return None;
        }
        let mut read = tls::Contents::new();
        let role = match mode? {
            Mode::Server => self.server_role(&at, peers?, &files, &mut read),
            Mode::Client => self.client_role(&at, &raw, &files, &connect, &mut read),
            Mode::Ca => self.ca_role(&at, peers?, authority?, &files, &mut read),
        };
        if self.found > before {
            return None;
        }
        let (role, listen) = (role?, listen?);
        Some(Service {
            name,
            listen,
            allow_sources,
            max_connections: raw.max_connections,
            max_connections_per_source: raw.max_connections_per_source,
            connect,
            connect_timeout: timeouts.connect,
            handshake_timeout: timeouts.handshake,
            idle_timeout: timeouts.idle,
            dead_peer_timeout: timeouts.dead_peer,
            proxy_protocol: raw.proxy_protocol,
            warm_connections: match mode {
                Some(Mode::Client) => raw.warm_connections.unwrap_or(0),
                _ => 0,
            },
            max_warm_connections: match mode {
                Some(Mode::Server) => raw
                    .max_warm_connections
                    .unwrap_or(DEFAULT_MAX_WARM_CONNECTIONS),
                _ => 0,
            },
            warm_timeout: timeouts.warm,
            role,
            fingerprint: Fingerprint::of(raw, read),
            files,
        })
    }

    fn name(&mut self, at: &Location, label: &str, raw: &RawService) -> String {
        let name = raw.name.clone().unwrap_or_else(|| {
            self.problem(at, Some("name"), "is required");
            label.to_owned()
        });
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            self.problem(
                at,
                Some("name"),
                "must be non-empty and use only letters, digits, '-', '_' and '.'",
            );
        }
        name
    }

    fn listen(&mut self, at: &Location, raw: &RawService) -> Option<SocketAddr> {
        let Some(l) = &raw.listen else {
            self.problem(at, Some("listen"), "is required, e.g. \"127.0.0.1:6379\"");
            return None;
        };
        l.parse::<SocketAddr>()
            .map_err(|_| {
                self.problem(
                    at,
                    Some("listen"),
                    format!(
                        "{l:?} is not IP:PORT (IPv6 as \"[::1]:16000\"; names are not accepted here)"
                    ),
                )
            })
            .ok()
    }

    fn connect(&mut self, at: &Location, raw: &RawService) -> Vec<Target> {
        let Some(c) = &raw.connect else {
            self.problem(
                at,
                Some("connect"),
                "is required, e.g. \"10.1.0.102:27017\"",
            );
            return Vec::new();
        };
        let list: Vec<&String> = match c {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many.iter().collect(),
        };
        if list.is_empty() {
            self.problem(at, Some("connect"), "must name at least one HOST:PORT");
        }
        list.into_iter()
            .filter_map(|t| {
                Target::parse(t)
                    .map_err(|e| self.problem(at, Some("connect"), e))
                    .ok()
            })
            .collect()
    }

    fn allow_sources(&mut self, at: &Location, raw: &RawService) -> Vec<IpNet> {
        let sources = raw
            .allow_sources
            .iter()
            .flatten()
            .filter_map(|src| {
                parse_source(src)
                    .map_err(|e| self.problem(at, Some("allow_sources"), e))
                    .ok()
            })
            .collect();
        if raw.allow_sources.as_ref().is_some_and(|v| v.is_empty()) {
            self.problem(
                at,
                Some("allow_sources"),
                "is empty, which would refuse every connection; remove the key to allow all sources",
            );
        }
        sources
    }

    fn timeouts(&mut self, at: &Location, raw: &RawService) -> Timeouts {
        let connect = self.duration(
            at,
            "connect_timeout",
            &raw.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
            bounds::TIMEOUT,
        );
        let handshake = self.duration(
            at,
            "handshake_timeout",
            &raw.handshake_timeout,
            DEFAULT_HANDSHAKE_TIMEOUT,
            bounds::TIMEOUT,
        );
        let idle = self.duration(
            at,
            "idle_timeout",
            &raw.idle_timeout,
            DEFAULT_IDLE_TIMEOUT,
            bounds::IDLE_TIMEOUT,
        );
        let warm = self.duration(
            at,
            "warm_timeout",
            &raw.warm_timeout,
            DEFAULT_WARM_TIMEOUT,
            bounds::WARM_TIMEOUT,
        );
        if warm < bounds::WARM_TIMEOUT_MIN.0 {
            self.problem(
                at,
                Some("warm_timeout"),
                format!(
                    "{:?} is shorter than {}, the least it may be",
                    raw.warm_timeout.as_deref().unwrap_or_default(),
                    bounds::WARM_TIMEOUT_MIN.1
                ),
            );
        }
        let dead_peer = self.duration(
            at,
            "dead_peer_timeout",
            &raw.dead_peer_timeout,
            DEFAULT_DEAD_PEER_TIMEOUT,
            bounds::DEAD_PEER_TIMEOUT,
        );
        if !dead_peer.is_zero() && dead_peer < Duration::from_secs(1) {
            self.problem(
                at,
                Some("dead_peer_timeout"),
                format!(
                    "{:?} is shorter than 1s, the least it may be (TCP keepalive counts \
                     whole seconds); \"0s\" turns detection off",
                    raw.dead_peer_timeout.as_deref().unwrap_or_default()
                ),
            );
        }
        for (field, value) in [
            ("connect_timeout", connect),
            ("handshake_timeout", handshake),
        ] {
            if value.is_zero() {
                self.problem(at, Some(field), "must be longer than zero");
            }
        }
        Timeouts {
            connect,
            handshake,
            idle: (!idle.is_zero()).then_some(idle),
            warm: warm.max(bounds::WARM_TIMEOUT_MIN.0),
            dead_peer: (!dead_peer.is_zero()).then_some(dead_peer),
        }
    }

    fn duration(
        &mut self,
        at: &Location,
        field: &str,
        value: &Option<String>,
        default: Duration,
        (most, most_written): (Duration, &str),
    ) -> Duration {
        let Some(v) = value else {
            return default;
        };
        match parse_duration(v) {
            Ok(d) if d > most => {
                self.problem(
                    at,
                    Some(field),
                    format!("{v:?} is longer than {most_written}, the most it may be"),
                );
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.problem(at, Some(field), e);
                default
            }
        }
    }

    /// Connection limits, which may be left out but not set to 0.
    fn limits(&mut self, at: &Location, raw: &RawService) {
        for (field, value) in [
            ("max_connections", raw.max_connections),
            ("max_connections_per_source", raw.max_connections_per_source),
        ] {
            match value {
                Some(0) => {
                    self.problem(at, Some(field), "is 0, which would refuse every connection")
                }
                Some(n) if n > bounds::CONNECTIONS => self.problem(
                    at,
                    Some(field),
                    format!(
                        "is {n}, more than {}, the most it may be",
                        bounds::CONNECTIONS
                    ),
                ),
                _ => {}
            }
        }
        // 0 is meaningful for these two: no warm connections.
        for (field, value, most) in [
            (
                "warm_connections",
                raw.warm_connections,
                bounds::WARM_CONNECTIONS,
            ),
            (
                "max_warm_connections",
                raw.max_warm_connections,
                bounds::CONNECTIONS,
            ),
        ] {
            if let Some(n) = value.filter(|n| *n > most) {
                self.problem(
                    at,
                    Some(field),
                    format!("is {n}, more than {most}, the most it may be"),
                );
            }
        }
    }

    /// Safety rule on where a listener may be: a client-mode service takes
    /// plaintext, so it does not listen where anyone can reach it unless
    /// the user says so and lists who may connect.
    fn where_it_listens(
        &mut self,
        at: &Location,
        raw: &RawService,
        mode: Mode,
        listen: SocketAddr,
        allow_sources: &[IpNet],
    ) {
        if mode != Mode::Client || !is_public_or_wildcard(listen.ip()) {
            return;
        }
        if raw.allow_public_listen != Some(true) {
            self.problem(
                at,
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
                at,
                Some("allow_sources"),
                "is required when allow_public_listen = true: list the networks that may connect",
            );
        }
    }

    /// Keys that mean something in one mode only are refused in the other,
    /// rather than silently ignored.
    /// Only the service's own keys count: a default meant for the services
    /// of one mode does not make those of the other fail.
    fn keys_of_the_other_mode(&mut self, at: &Location, raw: &RawService, mode: Mode) {
        if mode == Mode::Client && raw.allow_peers.is_some() {
            self.problem(
                at,
                Some("allow_peers"),
                "applies to server mode only; a client-mode service checks the server with server_name (or peer_pins)",
            );
        }
        if mode == Mode::Client && raw.proxy_protocol.is_some() {
            self.problem(
                at,
                Some("proxy_protocol"),
                "applies to server mode only (the header tells the backend who the TLS peer is)",
            );
        }
        if mode != Mode::Server && raw.max_warm_connections.is_some() {
            self.problem(
                at,
                Some("max_warm_connections"),
                "applies to server mode only (how many warm connections of clients it keeps waiting); \
                 a client-mode service sets warm_connections",
            );
        }
        if mode != Mode::Client && raw.warm_connections.is_some() {
            self.problem(
                at,
                Some("warm_connections"),
                "applies to client mode only (connections kept ready to the remote); a server-mode \
                 service bounds the warm connections of its clients with max_warm_connections",
            );
        }
        if mode != Mode::Ca {
            for (field, set) in [
                ("ca_dir", raw.ca_dir.is_some()),
                ("lifetime", raw.lifetime.is_some()),
            ] {
                if set {
                    self.problem(at, Some(field), "applies to mode = \"ca\" only");
                }
            }
        } else {
            for (field, set, why) in [
                (
                    "connect",
                    raw.connect.is_some(),
                    "the online CA answers itself; it connects nowhere",
                ),
                (
                    "ca",
                    raw.ca.is_some(),
                    "is ca_dir/ca.pem in mode = \"ca\"; remove it",
                ),
                (
                    "crl",
                    raw.crl.is_some(),
                    "is ca_dir/ca.crl in mode = \"ca\", read at every request; remove it",
                ),
                (
                    "peer_pins",
                    raw.peer_pins.is_some(),
                    "does not apply to mode = \"ca\": it renews certificates of its own CA only",
                ),
                (
                    "proxy_protocol",
                    raw.proxy_protocol.is_some(),
                    "applies to server mode only",
                ),
                (
                    "server_name",
                    raw.server_name.is_some(),
                    "applies to client mode only",
                ),
            ] {
                if set {
                    self.problem(at, Some(field), why);
                }
            }
        }
        if mode == Mode::Server && raw.server_name.is_some() {
            self.problem(
                at,
                Some("server_name"),
                "applies to client mode only; a server-mode service checks clients with allow_peers",
            );
        }
    }

    /// The TLS files and settings, with the keys every service needs.
    fn tls_files(&mut self, at: &Location, raw: &RawService) -> TlsFiles {
        let files = TlsFiles {
            ca: raw.ca.as_deref().and_then(|p| self.path(at, "ca", p)),
            cert: raw.cert.as_deref().and_then(|p| self.path(at, "cert", p)),
            key: raw.key.as_deref().and_then(|p| self.path(at, "key", p)),
            crl: raw
                .crl
                .iter()
                .flatten()
                .filter_map(|p| self.path(at, "crl", p))
                .collect(),
            peer_pins: raw.peer_pins.clone().unwrap_or_default(),
            tls12: raw.tls12.unwrap_or(false),
            resumption: raw.tls_resumption.unwrap_or(true),
        };
        if raw.cert.is_none() {
            self.problem(
                at,
                Some("cert"),
                "is required (this host's certificate, PEM)",
            );
        }
        if raw.key.is_none() {
            self.problem(
                at,
                Some("key"),
                "is required (this host's private key, PEM)",
            );
        }
        if raw.ca.is_none() && files.peer_pins.is_empty() {
            self.problem(
                at,
                Some("ca"),
                "is required to verify the peer (or give peer_pins to trust keys instead)",
            );
        }
        files
    }

    /// Server mode: who may connect (names, or pins alone).
    fn allowed_peers(
        &mut self,
        at: &Location,
        raw: &RawService,
        files: &TlsFiles,
    ) -> Option<PeerPolicy> {
        match &raw.allow_peers {
            None if files.peer_pins.is_empty() => {
                self.problem(
                    at,
                    Some("allow_peers"),
                    "is required in server mode: list the certificate names that may connect, \
                     or write [\"*\"] to accept any certificate the CA signed",
                );
                None
            }
            None => Some(PeerPolicy::Any),
            Some(list) => PeerPolicy::parse(list)
                .map_err(|e| self.problem(at, Some("allow_peers"), e))
                .ok(),
        }
    }

    /// Server mode: the TLS server settings for `peers`.
    fn server_role(
        &mut self,
        at: &Location,
        peers: PeerPolicy,
        files: &TlsFiles,
        read: &mut tls::Contents,
    ) -> Option<Role> {
        let peers = Arc::new(peers);
        tls::server_config(files, peers.clone(), read)
            .map_err(|e| self.problem(at, Some(e.field), e.to_string()))
            .ok()
            .map(|tls| Role::Server {
                negotiating: tls::negotiating(&tls),
                tls,
                peers,
            })
    }

    /// `mode = "ca"`: the CA folder (its key private) and the lifetime of
    /// what it issues.
    fn authority(&mut self, at: &Location, raw: &RawService) -> Option<Arc<Authority>> {
        let lifetime = match &raw.lifetime {
            None => DEFAULT_CA_LIFETIME,
            Some(v) => match parse_duration(v) {
                Ok(d) if d < bounds::LIFETIME.0 || d > bounds::LIFETIME.1 => {
                    self.problem(
                        at,
                        Some("lifetime"),
                        format!("{v:?} is out of range: from 1h to 825d"),
                    );
                    return None;
                }
                Ok(d) => d,
                Err(e) => {
                    self.problem(at, Some("lifetime"), e);
                    return None;
                }
            },
        };
        let Some(dir) = &raw.ca_dir else {
            self.problem(
                at,
                Some("ca_dir"),
                "is required in mode = \"ca\": the folder of `dctunnel certs init-ca` (ca.pem, ca.key)",
            );
            return None;
        };
        let dir = self.path(at, "ca_dir", dir)?;
        let lifetime = time::Duration::try_from(lifetime).ok()?;
        Authority::open(&dir, lifetime)
            .map_err(|e| self.problem(at, Some("ca_dir"), e))
            .ok()
            .map(Arc::new)
    }

    /// `mode = "ca"`: the TLS server settings (a client certificate is
    /// optional at the handshake: enrolment has none) and the authority.
    fn ca_role(
        &mut self,
        at: &Location,
        peers: PeerPolicy,
        authority: Arc<Authority>,
        files: &TlsFiles,
        read: &mut tls::Contents,
    ) -> Option<Role> {
        tls::ca_service_config(files, read)
            .map_err(|e| self.problem(at, Some(e.field), e.to_string()))
            .ok()
            .map(|tls| Role::Ca {
                tls,
                peers: Arc::new(peers),
                authority,
            })
    }

    /// Client mode: the name the server must prove (by default the host of
    /// the first target), and the TLS client settings.
    fn client_role(
        &mut self,
        at: &Location,
        raw: &RawService,
        files: &TlsFiles,
        connect: &[Target],
        read: &mut tls::Contents,
    ) -> Option<Role> {
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
                        at,
                        Some("server_name"),
                        format!("{n:?} is not a valid DNS name or IP address"),
                    )
                })
                .ok()
        });
        let tls = tls::client_config(files, read)
            .map_err(|e| self.problem(at, Some(e.field), e.to_string()))
            .ok();
        Some(Role::Client {
            tls: tls?,
            server_name: server_name?,
        })
    }

    /// Resolves a file name from the configuration: `${VAR}` is replaced by
    /// the environment variable (for systemd's `${CREDENTIALS_DIRECTORY}`),
    /// and a relative path is taken from the configuration file's folder.
    fn path(&mut self, at: &Location, field: &str, value: &str) -> Option<PathBuf> {
        let p = PathBuf::from(
            expand_env(value)
                .map_err(|e| self.problem(at, Some(field), e))
                .ok()?,
        );
        Some(if p.is_absolute() {
            p
        } else {
            self.base.join(p)
        })
    }
}

/// The keys of a service that it leaves out and `[defaults]` sets.
fn inherited(own: &RawService, defaults: &RawService) -> Vec<&'static str> {
    macro_rules! left_to_defaults {
        ($($field:ident),* $(,)?) => {{
            let mut fields = Vec::new();
            $(
                if own.$field.is_none() && defaults.$field.is_some() {
                    fields.push(stringify!($field));
                }
            )*
            fields
        }};
    }
    left_to_defaults!(
        ca,
        cert,
        key,
        crl,
        peer_pins,
        allow_sources,
        allow_peers,
        max_connections,
        max_connections_per_source,
        connect_timeout,
        handshake_timeout,
        idle_timeout,
        warm_timeout,
        warm_connections,
        max_warm_connections,
        dead_peer_timeout,
    )
}

/// Why the daemon could not replace `path` (renewal writes a new file in
/// its folder and renames it over the old one), if it could not.
fn unwritable_folder(path: &Path) -> Option<String> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty())?;
    let credentials =
        std::env::var_os("CREDENTIALS_DIRECTORY").filter(|c| !c.is_empty() && path.starts_with(c));
    if credentials.is_some() {
        return Some(format!(
            "{} is a systemd credential (LoadCredential=), a read-only copy: the daemon cannot \
             replace it. Keep the renewed certificate and key in a folder the daemon's user owns, \
             such as its StateDirectory=",
            path.display()
        ));
    }
    match rustix::fs::access(
        dir,
        rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
    ) {
        Ok(()) => None,
        Err(e) => Some(format!(
            "the daemon cannot write to {} ({}), where renewal replaces {}: make the folder \
             writable by the daemon's user (its StateDirectory=, for example)",
            dir.display(),
            std::io::Error::from(e),
            path.display()
        )),
    }
}
