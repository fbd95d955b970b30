//! `dctunnel status`: asks the running daemon's admin endpoint (the one
//! named in the configuration) how its services are doing, and prints it
//! as tables: services, certificates, and with `--connections` who holds
//! the open connections.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;

use crate::admin::{Connection, ServiceStatus, Status};

/// How long one request to the admin endpoint may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Answers larger than this are refused (a daemon with a great many open
/// connections stays well below it).
const MAX_ANSWER: usize = 64 << 20;

/// Arguments of `dctunnel status`.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// The configuration file; its [admin] listen address is queried
    /// (found even when the rest of the file has a syntax error).
    #[arg(long, short, default_value = crate::config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// The admin endpoint to ask, instead of reading the configuration.
    #[arg(long, value_name = "IP:PORT", conflicts_with = "config")]
    pub admin: Option<SocketAddr>,
    /// Print the admin endpoint's JSON document instead of tables (also
    /// with `--log-format json`).
    #[arg(long)]
    pub json: bool,
    /// List the open connections, grouped by service and peer.
    #[arg(long)]
    pub connections: bool,
    /// Show only this service.
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
}

/// Why `status` could not show anything.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    #[error("cannot reach the admin endpoint at {addr} (is dctunnel running?): {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin endpoint at {addr}: no answer within {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
    #[error("admin endpoint at {addr}: {message}")]
    Answer { addr: SocketAddr, message: String },
}

impl StatusError {
    fn exit_code(&self) -> ExitCode {
        match self {
            StatusError::Config { .. } => ExitCode::from(2),
            _ => ExitCode::FAILURE,
        }
    }
}

/// Runs `dctunnel status` and prints its tables on stdout.
pub fn main(args: StatusArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dctunnel: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(text) => {
            crate::out!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dctunnel: {e}");
            e.exit_code()
        }
    }
}

/// What `status` prints for `args`.
pub async fn run(args: &StatusArgs) -> Result<String, StatusError> {
    let addr = match args.admin {
        Some(addr) => loopback_for_wildcard(addr),
        None => admin_address(&args.config)?,
    };
    let mut status: Status = get_json(addr, "/status").await?;
    if let Some(name) = &args.service {
        status.services.retain(|s| &s.name == name);
        if status.services.is_empty() {
            return Err(StatusError::Answer {
                addr,
                message: format!("no service named {name:?} is running"),
            });
        }
    }
    if args.connections {
        let path = match &args.service {
            Some(name) => format!("/connections?service={name}"),
            None => "/connections".to_owned(),
        };
        let connections: Vec<Connection> = get_json(addr, &path).await?;
        if args.json {
            return Ok(to_json(&connections));
        }
        Ok(render_connections(&status, &connections))
    } else if args.json {
        Ok(to_json(&status))
    } else {
        Ok(render_status(&status))
    }
}

/// The admin endpoint named by the configuration at `path`. Only the
/// `[admin]` table is read: `status` needs neither the keys nor a
/// configuration that would still load (the daemon may run an older one,
/// and during an incident the file on disk may be half edited).
pub fn admin_address(path: &Path) -> Result<SocketAddr, StatusError> {
    let problem = |message: String| StatusError::Config {
        path: path.to_owned(),
        message,
    };
    let bytes =
        crate::files::read(path, crate::files::CONFIG_LIMIT).map_err(|e| problem(e.to_string()))?;
    let text = String::from_utf8_lossy(&bytes);
    let listen = match toml::from_str::<toml::Table>(&text) {
        Ok(table) => match table.get("admin").and_then(|a| a.get("listen")) {
            Some(toml::Value::String(s)) => s.clone(),
            Some(_) => {
                return Err(problem(
                    "[admin].listen must be a string \"IP:PORT\"".into(),
                ))
            }
            None => return Err(problem(NO_ADMIN.into())),
        },
        // A syntax error elsewhere in the file: the [admin] table's lines
        // may still say where the daemon listens.
        Err(e) => match admin_listen_line(&text) {
            Some(listen) => {
                eprintln!(
                    "dctunnel: {}: not valid TOML ({}); asking the admin endpoint its [admin] table names",
                    path.display(),
                    e.message()
                );
                listen
            }
            None => {
                return Err(problem(format!(
                    "not valid TOML: {}; name the endpoint with --admin IP:PORT",
                    e.message()
                )))
            }
        },
    };
    let addr: SocketAddr = listen
        .parse()
        .map_err(|_| problem(format!("[admin].listen: {listen:?} is not IP:PORT")))?;
    Ok(loopback_for_wildcard(addr))
}

const NO_ADMIN: &str = "no [admin] listen address; status asks the daemon's admin endpoint: \
                        add [admin] listen = \"127.0.0.1:9815\" and reload, or name it with --admin IP:PORT";

/// `listen = "..."` inside the `[admin]` table, read line by line from a
/// file that does not parse as a whole.
fn admin_listen_line(text: &str) -> Option<String> {
    let mut in_admin = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_admin = line.split('#').next().map(str::trim) == Some("[admin]");
            continue;
        }
        if !in_admin {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.trim() == "listen" {
            let value = value.split('#').next()?.trim();
            let value = value.strip_prefix('"')?.strip_suffix('"')?;
            return Some(value.to_owned());
        }
    }
    None
}

/// A wildcard listener is reached on loopback.
fn loopback_for_wildcard(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Serialising our own plain structs cannot fail.
    serde_json::to_string_pretty(value).unwrap_or_default() + "\n"
}

async fn get_json<T: serde::de::DeserializeOwned>(
    addr: SocketAddr,
    path: &str,
) -> Result<T, StatusError> {
    let (code, body) = fetch(addr, path).await?;
    let answer = |message: String| StatusError::Answer { addr, message };
    if code != StatusCode::OK {
        return Err(answer(format!(
            "GET {path}: {code}: {}",
            String::from_utf8_lossy(&body).trim()
        )));
    }
    serde_json::from_slice(&body).map_err(|e| answer(format!("GET {path}: unexpected answer: {e}")))
}

/// One GET request to the admin endpoint: status code and body.
pub async fn fetch(addr: SocketAddr, path: &str) -> Result<(StatusCode, Bytes), StatusError> {
    let answer = |message: String| StatusError::Answer { addr, message };
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|source| StatusError::Connect { addr, source })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| answer(e.to_string()))?;
        let driver = tokio::spawn(conn);
        let request = Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| answer(format!("GET {path}: {e}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| answer(format!("GET {path}: {e}")))?;
        let code = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| answer(format!("GET {path}: {e}")))?
            .to_bytes();
        driver.abort();
        Ok((code, body))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| StatusError::Timeout {
            addr,
            after: REQUEST_TIMEOUT,
        })?
}

/// Left-aligned columns two spaces apart, trailing spaces trimmed.
fn table(rows: &[Vec<String>], indent: &str) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::from(indent);
        for (cell, width) in row.iter().zip(&widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `12 B`, `3.4 KiB`, `1.2 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `45s`, `3m05s`, `2h03m`, `3d04h`.
pub fn human_duration(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

fn route(s: &ServiceStatus) -> String {
    format!("{} → {}", s.listen, s.connect.join(", "))
}

fn rejected(s: &ServiceStatus) -> String {
    let nonzero: Vec<String> = s
        .rejected
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(reason, n)| format!("{reason}={n}"))
        .collect();
    if nonzero.is_empty() {
        "-".to_owned()
    } else {
        nonzero.join(" ")
    }
}

/// Whole days until expiry, rounded down: 0 means "within 24 hours".
fn days_left(seconds: i64) -> String {
    if seconds < 0 {
        format!("EXPIRED {} days ago", (-seconds) / 86400)
    } else {
        (seconds / 86400).to_string()
    }
}

/// The services table, the certificates table and the reload state.
pub fn render_status(status: &Status) -> String {
    let mut out = String::new();
    let r = &status.reloads;
    let _ = write!(
        out,
        "dctunnel {}, configuration loaded {}",
        status.version,
        r.last_success.as_deref().unwrap_or("(unknown)")
    );
    if r.attempts > 0 {
        let _ = write!(out, ", {} reload(s), {} failed", r.attempts, r.failures);
    }
    out.push('\n');
    if r.last_failed {
        let _ = writeln!(
            out,
            "LAST RELOAD FAILED, previous configuration still running: {}",
            r.last_error.as_deref().unwrap_or("(no reason recorded)")
        );
    }
    out.push('\n');

    let mut rows = vec![[
        "SERVICE",
        "MODE",
        "LISTEN → CONNECT",
        "ACTIVE/LIMIT",
        "WARM/LIMIT",
        "ACCEPTED",
        "REJECTED",
        "UP",
        "DOWN",
    ]
    .map(String::from)
    .to_vec()];
    for s in &status.services {
        rows.push(vec![
            s.name.clone(),
            s.mode.clone(),
            route(s),
            format!(
                "{}/{}",
                s.active,
                s.max_connections
                    .map_or_else(|| "-".to_owned(), |m| m.to_string())
            ),
            if s.warm_limit == 0 && s.warm == 0 {
                "-".to_owned()
            } else {
                format!("{}/{}", s.warm, s.warm_limit)
            },
            s.accepted.to_string(),
            rejected(s),
            human_bytes(s.bytes_up),
            human_bytes(s.bytes_down),
        ]);
    }
    out.push_str(&table(&rows, ""));

    // One row per certificate, with every service that loaded it.
    let mut certs: BTreeMap<(i64, PathBuf, String), (Vec<&str>, &crate::admin::CertificateStatus)> =
        BTreeMap::new();
    for s in &status.services {
        for c in &s.certificates {
            let key = (c.expires_in_seconds, c.file.clone(), c.serial.clone());
            certs
                .entry(key)
                .or_insert_with(|| (Vec::new(), c))
                .0
                .push(&s.name);
        }
    }
    if !certs.is_empty() {
        out.push('\n');
        let mut rows = vec![[
            "CERTIFICATE",
            "KIND",
            "SUBJECT",
            "NOT AFTER",
            "DAYS LEFT",
            "SERVICES",
        ]
        .map(String::from)
        .to_vec()];
        for (services, c) in certs.values() {
            rows.push(vec![
                c.file.display().to_string(),
                c.kind.clone(),
                c.subject.clone(),
                c.not_after.clone(),
                days_left(c.expires_in_seconds),
                services.join(", "),
            ]);
        }
        out.push_str(&table(&rows, ""));
    }
    out
}

/// Source addresses by number of connections: `10.1.0.200 (120), 10.1.0.201 (3)`.
fn sources(conns: &[&Connection]) -> String {
    const SHOWN: usize = 10;
    let mut count: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for c in conns {
        *count.entry(c.source.ip().to_canonical()).or_default() += 1;
    }
    let mut count: Vec<(IpAddr, usize)> = count.into_iter().collect();
    count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut parts: Vec<String> = count
        .iter()
        .take(SHOWN)
        .map(|(ip, n)| format!("{ip} ({n})"))
        .collect();
    if count.len() > SHOWN {
        parts.push(format!("and {} more addresses", count.len() - SHOWN));
    }
    parts.join(", ")
}

/// The open connections, by service, then by peer (most connections
/// first), one line each.
pub fn render_connections(status: &Status, connections: &[Connection]) -> String {
    let mut out = String::new();
    for (i, s) in status.services.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let mine: Vec<&Connection> = connections.iter().filter(|c| c.service == s.name).collect();
        let _ = writeln!(
            out,
            "{} ({}, {}): {} open{}",
            s.name,
            s.mode,
            route(s),
            mine.len(),
            s.max_connections
                .map_or_else(String::new, |m| format!(" of {m}"))
        );
        let mut by_peer: BTreeMap<&str, Vec<&Connection>> = BTreeMap::new();
        for c in &mine {
            let peer = c.peer.as_deref().unwrap_or("(no peer identity yet)");
            by_peer.entry(peer).or_default().push(c);
        }
        let mut groups: Vec<(&str, Vec<&Connection>)> = by_peer.into_iter().collect();
        groups.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
        for (peer, conns) in groups {
            let up: u64 = conns.iter().map(|c| c.bytes_up).sum();
            let down: u64 = conns.iter().map(|c| c.bytes_down).sum();
            let _ = writeln!(
                out,
                "  peer {peer}: {} connection{}, up {}, down {}, from {}",
                conns.len(),
                if conns.len() == 1 { "" } else { "s" },
                human_bytes(up),
                human_bytes(down),
                sources(&conns)
            );
            let mut rows = vec![
                ["SOURCE", "ORIGIN", "REMOTE", "STARTED", "AGE", "UP", "DOWN"]
                    .map(String::from)
                    .to_vec(),
            ];
            for c in conns {
                rows.push(vec![
                    c.source.to_string(),
                    match (c.warm, c.origin) {
                        (true, _) => "(warm)".to_owned(),
                        (false, Some(origin)) => origin.to_string(),
                        (false, None) => "-".to_owned(),
                    },
                    c.remote.map_or_else(|| "-".to_owned(), |r| r.to_string()),
                    c.started.clone(),
                    human_duration(c.duration_seconds),
                    human_bytes(c.bytes_up),
                    human_bytes(c.bytes_down),
                ]);
            }
            out.push_str(&table(&rows, "    "));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(human_duration(5.9), "5s");
        assert_eq!(human_duration(185.0), "3m05s");
        assert_eq!(human_duration(7380.0), "2h03m");
        assert_eq!(human_duration(273600.0), "3d04h");
        assert_eq!(days_left(86400 * 20 + 5), "20");
        assert_eq!(days_left(-86400 * 2), "EXPIRED 2 days ago");
    }

    #[test]
    fn admin_address_comes_from_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[admin]\nlisten = \"0.0.0.0:9815\"\n").unwrap();
        assert_eq!(
            admin_address(&path).unwrap(),
            "127.0.0.1:9815".parse().unwrap()
        );
        std::fs::write(&path, "[[service]]\nname = \"x\"\n").unwrap();
        let e = admin_address(&path).unwrap_err().to_string();
        assert!(e.contains("no [admin] listen address"), "{e}");
        // Half edited: the [admin] table still names the endpoint.
        std::fs::write(
            &path,
            "[admin]\nlisten = \"127.0.0.1:9900\" # here\n\n[[service]]\nname = \"x\nmode = ",
        )
        .unwrap();
        assert_eq!(
            admin_address(&path).unwrap(),
            "127.0.0.1:9900".parse().unwrap()
        );
        std::fs::write(&path, "[[service]\nname = ").unwrap();
        let e = admin_address(&path).unwrap_err().to_string();
        assert!(e.contains("not valid TOML") && e.contains("--admin"), "{e}");
    }
}
