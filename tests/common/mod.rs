//! Shared test fixtures: a private PKI made at test time, backends, and a
//! daemon started in-process on port 0.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dctunnel::config::{self, Config};
use dctunnel::daemon::Daemon;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A throwaway CA whose files live in a temporary folder.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca_pem: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

/// A host certificate and its key, as files.
#[derive(Clone, Debug)]
pub struct HostCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn write_private(path: &Path, contents: &str) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    std::io::Write::write_all(&mut f, contents.as_bytes()).unwrap();
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        let ca_pem = dir.path().join("ca.pem");
        std::fs::write(&ca_pem, cert.pem()).unwrap();
        Pki {
            issuer: Issuer::new(params, key),
            dir,
            ca_pem,
        }
    }

    /// A certificate for both roles, valid now, for `name` (DNS SAN) plus
    /// localhost and 127.0.0.1.
    pub fn issue(&self, name: &str) -> HostCert {
        let now = time::OffsetDateTime::now_utc();
        self.issue_with(
            name,
            now - time::Duration::days(1),
            now + time::Duration::days(30),
            true,
        )
    }

    /// A certificate that expired yesterday.
    pub fn issue_expired(&self, name: &str) -> HostCert {
        let now = time::OffsetDateTime::now_utc();
        self.issue_with(
            name,
            now - time::Duration::days(30),
            now - time::Duration::days(1),
            true,
        )
    }

    /// A certificate with no SAN at all: its identity is its CN.
    pub fn issue_cn_only(&self, name: &str) -> HostCert {
        let now = time::OffsetDateTime::now_utc();
        self.issue_with(
            name,
            now - time::Duration::days(1),
            now + time::Duration::days(30),
            false,
        )
    }

    fn issue_with(
        &self,
        name: &str,
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
        sans: bool,
    ) -> HostCert {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        if sans {
            params.subject_alt_names = vec![
                SanType::DnsName(name.try_into().unwrap()),
                SanType::DnsName("localhost".try_into().unwrap()),
                SanType::IpAddress("127.0.0.1".parse().unwrap()),
            ];
        }
        params.distinguished_name.push(DnType::CommonName, name);
        params.not_before = not_before;
        params.not_after = not_after;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let unique = format!("{name}-{}", rand_suffix());
        let cert_path = self.dir.path().join(format!("{unique}.pem"));
        let key_path = self.dir.path().join(format!("{unique}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        write_private(&key_path, &key.serialize_pem());
        HostCert {
            cert: cert_path,
            key: key_path,
        }
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Writes `text` as a configuration file in a fresh folder and checks it.
pub fn config(text: &str) -> (tempfile::TempDir, Result<Config, config::ConfigError>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dctunnel.toml");
    std::fs::write(&path, text).unwrap();
    let c = config::load(&path);
    (dir, c)
}

/// An echo server: sends back what it reads, and half-closes after the
/// client's EOF. Returns its address.
pub async fn echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A server that speaks first: sends `banner`, then echoes.
pub async fn banner_backend(banner: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                s.write_all(banner).await.unwrap();
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// An address on which nothing listens (bound, then released).
pub async fn dead_address() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// The two ends of a loopback tunnel: a client-mode service `plain` that
/// forwards to a server-mode service `tls` that forwards to `backend`.
pub struct Tunnel {
    pub daemon: Daemon,
    pub pki: Pki,
    pub server_cert: HostCert,
    pub client_cert: HostCert,
    pub entrance: SocketAddr,
    pub tls_port: SocketAddr,
    pub dir: tempfile::TempDir,
}

pub const SERVER: &str = "server.test";
pub const CLIENT: &str = "client.test";

/// Options for [`tunnel`]; extra TOML lines go into each service.
#[derive(Default)]
pub struct TunnelOpts {
    pub server_extra: String,
    pub client_extra: String,
    pub allow_peers: Option<String>,
    pub daemon_extra: String,
}

/// Starts a daemon with both ends of a tunnel to `backend`. The server
/// side must start first because the client side names its port.
pub async fn tunnel(backend: SocketAddr, opts: TunnelOpts) -> Tunnel {
    let pki = Pki::new("test CA");
    let server_cert = pki.issue(SERVER);
    let client_cert = pki.issue(CLIENT);
    // The server side is bound on port 0 first, so that the client side
    // can name its real port.
    let server_side = format!(
        r#"
{daemon_extra}
[[service]]
name = "tls"
mode = "server"
listen = "127.0.0.1:0"
connect = "{backend}"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
allow_peers = {peers}
{extra}
"#,
        // Tests that end with connections open should not wait the
        // default 30 s at shutdown.
        daemon_extra = if opts.daemon_extra.is_empty() {
            "[daemon]\nshutdown_timeout = \"1s\"".to_string()
        } else {
            opts.daemon_extra.clone()
        },
        ca = pki.ca_pem.display(),
        cert = server_cert.cert.display(),
        key = server_cert.key.display(),
        peers = opts
            .allow_peers
            .clone()
            .unwrap_or_else(|| format!("[\"{CLIENT}\"]")),
        extra = opts.server_extra,
    );
    let (_d, c) = config(&server_side);
    let mut daemon = Daemon::start(c.unwrap()).unwrap();
    let tls_port = daemon.local_addr("tls").unwrap();
    let full = format!(
        r#"{server_side}
[[service]]
name = "plain"
mode = "client"
listen = "127.0.0.1:0"
connect = "{tls_port}"
server_name = "{SERVER}"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
{extra}
"#,
        ca = pki.ca_pem.display(),
        cert = client_cert.cert.display(),
        key = client_cert.key.display(),
        extra = opts.client_extra,
    );
    let (dir, c) = config(&full);
    let changes = daemon.reload(c.unwrap()).await.unwrap();
    assert!(changes.iter().any(|(n, _)| n == "plain"), "{changes:?}");
    let entrance = daemon.local_addr("plain").unwrap();
    Tunnel {
        daemon,
        pki,
        server_cert,
        client_cert,
        entrance,
        tls_port,
        dir,
    }
}

/// Sends `msg` and reads exactly as many bytes back.
pub async fn roundtrip(stream: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    stream.write_all(msg).await.unwrap();
    let mut buf = vec![0; msg.len()];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut buf))
        .await
        .expect("no reply within 10s")
        .unwrap();
    buf
}

/// Reads until EOF or error, within 10 s; returns what was read and
/// whether it ended with EOF (true) or an error (false).
pub async fn read_to_end(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf))
        .await
        .expect("connection still open after 10s");
    (buf, r.is_ok())
}

/// A TLS client config presenting `me` and trusting `ca`.
pub fn tls_client(ca: &Path, me: Option<&HostCert>) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match me {
        Some(me) => {
            let chain = CertificateDer::pem_file_iter(&me.cert)
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
            let key = PrivateKeyDer::from_pem_file(&me.key).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
        None => b.with_no_client_auth(),
    };
    Arc::new(config)
}

/// Polls `cond` until it holds (up to 20 s). For counters updated by the
/// daemon's tasks after the client already saw the connection close.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    eventually_ok(what, || {
        std::future::ready(match cond() {
            true => Ok(()),
            false => Err("false"),
        })
    })
    .await
}

/// Runs `probe` every 20 ms until it returns `Ok`, and returns what it
/// found; after 20 s, fails with `what` and the last `Err` (what was seen
/// instead). For conditions that take I/O to observe: a scrape, a
/// connection, a command's output.
pub async fn eventually_ok<T, E: std::fmt::Debug, F>(what: &str, mut probe: impl FnMut() -> F) -> T
where
    F: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let last = match probe().await {
            Ok(found) => return found,
            Err(last) => last,
        };
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out waiting for: {what}; last seen: {last:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The real `dctunnel` binary running in the background, with its JSON log
/// lines readable as they come.
pub struct Proc {
    pub child: std::process::Child,
    lines: std::sync::mpsc::Receiver<serde_json::Value>,
    pub seen: Vec<serde_json::Value>,
}

impl Proc {
    /// Starts `dctunnel --log-format json run --config PATH`, through
    /// `sh -c` with `prefix` (e.g. `ulimit -n 64;`) if given.
    pub fn start(config: &Path, prefix: &str) -> Proc {
        let bin = env!("CARGO_BIN_EXE_dctunnel");
        let script = format!("{prefix} exec \"$0\" --log-format json run --config \"$1\"");
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(bin)
            .arg(config)
            .env("DCTUNNEL_LOG", "info,dctunnel=debug")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                let v = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "fields": { "message": line } }));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        Proc {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits (up to 20 s) for a log line whose message contains `text`, and
    /// returns its fields.
    pub fn wait_for(&mut self, text: &str) -> serde_json::Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let v = match self.lines.recv_timeout(left) {
                Ok(v) => v,
                Err(_) => panic!(
                    "no log line containing {text:?}; seen:\n{}",
                    self.seen
                        .iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join("\n")
                ),
            };
            self.seen.push(v.clone());
            let msg = v["fields"]["message"].as_str().unwrap_or("");
            if msg.contains(text) {
                return v["fields"].clone();
            }
        }
    }

    /// The address of a service, from its "service listening" line.
    pub fn listening(&mut self, service: &str) -> SocketAddr {
        loop {
            let f = self.wait_for("service listening");
            if f["service"] == service {
                return f["listen"].as_str().unwrap().parse().unwrap();
            }
        }
    }

    /// The addresses of `services`, from their "service listening" lines
    /// in whatever order they come.
    pub fn listening_all<const N: usize>(&mut self, services: [&str; N]) -> [SocketAddr; N] {
        let mut found = [None; N];
        while found.iter().any(Option::is_none) {
            let f = self.wait_for("service listening");
            if let Some(i) = services.iter().position(|s| f["service"] == *s) {
                found[i] = Some(f["listen"].as_str().unwrap().parse().unwrap());
            }
        }
        found.map(Option::unwrap)
    }

    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits (up to 20 s) for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        for _ in 0..2000 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("dctunnel did not exit within 20 s");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The text of a one-file tunnel config: server side `tls` on
/// `tls_listen`, client side `plain` on `plain_listen` connecting to
/// `tls_connect`.
pub fn tunnel_config(
    pki: &Pki,
    server: &HostCert,
    client: &HostCert,
    backend: SocketAddr,
    tls_listen: &str,
    plain_listen: &str,
    tls_connect: &str,
) -> String {
    format!(
        r#"
[daemon]
shutdown_timeout = "10s"

[[service]]
name = "tls"
mode = "server"
listen = "{tls_listen}"
connect = "{backend}"
ca = "{ca}"
cert = "{scert}"
key = "{skey}"
allow_peers = ["{CLIENT}"]

[[service]]
name = "plain"
mode = "client"
listen = "{plain_listen}"
connect = "{tls_connect}"
server_name = "{SERVER}"
ca = "{ca}"
cert = "{ccert}"
key = "{ckey}"
"#,
        ca = pki.ca_pem.display(),
        scert = server.cert.display(),
        skey = server.key.display(),
        ccert = client.cert.display(),
        ckey = client.key.display(),
    )
}

/// The real binary on a one-file tunnel, ready and with both ends joined.
pub struct ProcTunnel {
    pub proc: Proc,
    /// The file's text in force (the client side points at `tls`).
    pub text: String,
    /// The server side's address.
    pub tls: SocketAddr,
    /// The client side's entrance.
    pub entrance: SocketAddr,
}

/// Starts the real binary on a one-file tunnel written to `path` by
/// `text(tls_connect)` (e.g. [`tunnel_config`] with both ends on port 0),
/// naming no port before it is bound: a port found free and then named
/// could be taken by another process in between. The client side first
/// points at a placeholder (no connection is made yet); once the server
/// side's port is read back from the log, the file is rewritten to point
/// at it and applied with SIGHUP.
pub fn start_tunnel_proc(path: &Path, prefix: &str, text: impl Fn(&str) -> String) -> ProcTunnel {
    std::fs::write(path, text("127.0.0.1:9")).unwrap();
    let mut proc = Proc::start(path, prefix);
    let [tls, entrance] = proc.listening_all(["tls", "plain"]);
    // SIGHUP is handled from "ready" on; before, it would kill the process.
    proc.wait_for("ready");
    let text = text(&tls.to_string());
    std::fs::write(path, &text).unwrap();
    proc.signal("HUP");
    proc.wait_for("reload done");
    ProcTunnel {
        proc,
        text,
        tls,
        entrance,
    }
}

/// A port that was free a moment ago, for a program that can neither
/// listen on port 0 and tell which port it got, nor take a listening
/// socket from us (redis-server). Racy: another process may take the port
/// before the program binds it, so the caller must retry when the program
/// cannot bind.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs the real `dctunnel certs ARGS...`, asserting success; returns what
/// it printed on stdout.
pub fn certs_cli(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dctunnel"))
        .arg("certs")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dctunnel certs {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The rest of the first line of `out` that starts with `prefix`, e.g.
/// `printed(out, "pin: ")` after `certs issue` or `certs keygen`.
pub fn printed<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{out}"))
}

/// The files `certs issue` and `certs keygen` write for `name` in `dir`.
pub fn host_files(dir: &Path, name: &str) -> HostCert {
    HostCert {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    }
}

/// Starts a daemon in-process from configuration `text`; the folder holds
/// the file and must outlive the daemon.
pub fn start_daemon(text: &str) -> (tempfile::TempDir, Daemon) {
    let (dir, c) = config(text);
    let c = c.unwrap_or_else(|e| panic!("{e}\n{text}"));
    (dir, Daemon::start(c).unwrap())
}

/// Connects to `addr` with TLS as `config` (SNI `name`), sends a few bytes
/// and says whether they came back (the service forwards to an echo
/// backend). In TLS 1.3 a refused client certificate shows on the first
/// read, not in the client's handshake.
pub async fn tls_echo(addr: SocketAddr, config: Arc<rustls::ClientConfig>, name: &str) -> bool {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let sni = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let Ok(mut tls) = tokio_rustls::TlsConnector::from(config)
        .connect(sni, tcp)
        .await
    else {
        return false;
    };
    if tls.write_all(b"hello").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 5];
    matches!(
        tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut buf)).await,
        Ok(Ok(_))
    ) && &buf == b"hello"
}

impl Pki {
    /// A certificate with common name `cn` and exactly the DNS SANs `sans`
    /// (none at all if empty: then its identity is its CN).
    pub fn issue_names(&self, cn: &str, sans: &[&str]) -> HostCert {
        let now = time::OffsetDateTime::now_utc();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans
            .iter()
            .map(|s| SanType::DnsName((*s).try_into().unwrap()))
            .collect();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(30);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let unique = format!("names-{}", rand_suffix());
        let cert_path = self.dir.path().join(format!("{unique}.pem"));
        let key_path = self.dir.path().join(format!("{unique}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        write_private(&key_path, &key.serialize_pem());
        HostCert {
            cert: cert_path,
            key: key_path,
        }
    }
}

/// A plain HTTP/1.1 GET written by hand (the admin endpoint tested against
/// a client other than its own); returns the whole answer, head and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).await.unwrap();
    out
}

/// A CA folder made by the real `dctunnel certs init-ca`, with the
/// certificate of an online CA service (`ca.test`, IP 127.0.0.1) issued
/// from it: what a `mode = "ca"` service needs.
pub struct CaFolder {
    pub dir: tempfile::TempDir,
    /// The CA folder: ca.pem, ca.key (0600), later ca.crl, issued.log…
    pub ca_dir: PathBuf,
    /// The CA service's own certificate and key.
    pub svc: HostCert,
}

impl CaFolder {
    pub fn new() -> CaFolder {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        certs_cli(&["init-ca", "--dir", ca_dir.to_str().unwrap()]);
        let svc_dir = dir.path().join("svc");
        certs_cli(&[
            "issue",
            "--ca",
            ca_dir.to_str().unwrap(),
            "--name",
            "ca.test",
            "--ip",
            "127.0.0.1",
            "--out",
            svc_dir.to_str().unwrap(),
        ]);
        CaFolder {
            svc: host_files(&svc_dir, "ca.test"),
            dir,
            ca_dir,
        }
    }

    /// A `mode = "ca"` service named `name` on `listen`, with `extra`
    /// lines (lifetime, allow_sources, …).
    pub fn service(&self, name: &str, listen: &str, extra: &str) -> String {
        format!(
            "[[service]]\nname = \"{name}\"\nmode = \"ca\"\nlisten = \"{listen}\"\n\
             cert = \"{}\"\nkey = \"{}\"\nca_dir = \"{}\"\n{extra}\n",
            self.svc.cert.display(),
            self.svc.key.display(),
            self.ca_dir.display()
        )
    }
}
