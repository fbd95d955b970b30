//! The host side of the online CA, end to end with the real binaries: a
//! host daemon with `[renewal]` renews its certificate from a running CA
//! service (`mode = "ca"`) without a restart or a signal while a connection
//! stays open; a revoked or expired certificate does not renew and the host
//! carries on; the CA service stopped delays renewal and breaks nothing;
//! `dctunnel certs enrol` uses a token once and only for its names.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::{certs_cli, echo_backend, host_files, http_get, tls_client, HostCert, Proc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Retries every 200 ms (doubling to 12 s) instead of every minute.
const FAST_RETRY: &str = "export DCTUNNEL_RENEWAL_RETRY=200ms;";

/// A CA folder made by `certs init-ca`, the CA service's certificate, and
/// the CA service when it runs.
struct Ca {
    folder: common::CaFolder,
    config: PathBuf,
    proc: Option<Proc>,
    /// Where it listens, as written in its file, and as bound.
    listen: String,
    addr: Option<SocketAddr>,
}

impl Ca {
    fn new() -> Ca {
        let folder = common::CaFolder::new();
        Ca {
            config: folder.dir.path().join("ca.toml"),
            folder,
            proc: None,
            listen: String::new(),
            addr: None,
        }
    }

    fn text(&self, listen: &str, allow_sources: &str) -> String {
        let extra = format!("allow_sources = [\"{allow_sources}\"]\nlifetime = \"2d\"");
        self.folder.service("online-ca", listen, &extra)
    }

    /// Starts the CA service on `listen` ("127.0.0.1:0" for any port),
    /// accepting connections from `allow_sources`.
    fn start(&mut self, listen: &str, allow_sources: &str) -> SocketAddr {
        std::fs::write(&self.config, self.text(listen, allow_sources)).unwrap();
        let mut proc = Proc::start(&self.config, "");
        let addr = proc.listening("online-ca");
        proc.wait_for("ready");
        self.proc = Some(proc);
        self.listen = listen.to_owned();
        self.addr = Some(addr);
        addr
    }

    fn stop(&mut self) {
        let mut proc = self.proc.take().unwrap();
        proc.signal("TERM");
        assert_eq!(proc.wait_exit(), Some(0));
    }

    /// Rewrites the CA service's file with `allow_sources` and reloads it.
    fn allow(&mut self, allow_sources: &str) {
        std::fs::write(&self.config, self.text(&self.listen, allow_sources)).unwrap();
        let proc = self.proc.as_mut().unwrap();
        proc.signal("HUP");
        proc.wait_for("reload done");
    }

    fn ca_pem(&self) -> PathBuf {
        self.folder.ca_dir.join("ca.pem")
    }

    /// A client certificate for the test's own connections.
    fn client(&self) -> HostCert {
        let out = self.folder.dir.path().join("client");
        certs_cli(&[
            "issue",
            "--ca",
            self.folder.ca_dir.to_str().unwrap(),
            "--name",
            "client.test",
            "--out",
            out.to_str().unwrap(),
        ]);
        host_files(&out, "client.test")
    }

    /// A certificate for `name` signed by this CA, valid from `from` to
    /// `to` (from now), in a folder of its own as a host keeps them.
    fn host(&self, name: &str, from: time::Duration, to: time::Duration) -> HostCert {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
        let ca_key =
            KeyPair::from_pem(&std::fs::read_to_string(self.folder.ca_dir.join("ca.key")).unwrap())
                .unwrap();
        let ca_pem = std::fs::read_to_string(self.ca_pem()).unwrap();
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.subject_alt_names = vec![
            SanType::DnsName(name.try_into().unwrap()),
            SanType::IpAddress("127.0.0.1".parse().unwrap()),
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + from;
        params.not_after = now + to;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &issuer).unwrap();
        let out = self.folder.dir.path().join(name);
        std::fs::create_dir_all(&out).unwrap();
        let h = host_files(&out, name);
        std::fs::write(&h.cert, cert.pem()).unwrap();
        common::write_private(&h.key, &key.serialize_pem());
        h
    }
}

/// A host certificate two thirds through its lifetime: due now.
fn due_now(ca: &Ca, name: &str) -> HostCert {
    ca.host(name, -time::Duration::days(21), time::Duration::days(9))
}

/// The host daemon: a server-mode service `tls` on `host`'s certificate,
/// forwarding to `backend`, the admin endpoint, and `[renewal]` from the
/// CA service at `ca_service`.
struct HostDaemon {
    proc: Proc,
    tls: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

fn start_host(ca: &Ca, host: &HostCert, backend: SocketAddr, ca_service: &str) -> HostDaemon {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("host.toml");
    std::fs::write(
        &config,
        format!(
            r#"[daemon]
shutdown_timeout = "1s"

[admin]
listen = "127.0.0.1:0"

[[service]]
name = "tls"
mode = "server"
listen = "127.0.0.1:0"
connect = "{backend}"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
allow_peers = ["client.test"]

[renewal]
ca_service = "{ca_service}"
server_name = "ca.test"
cert = "{cert}"
key = "{key}"
ca = "{ca}"
"#,
            ca = ca.ca_pem().display(),
            cert = host.cert.display(),
            key = host.key.display(),
        ),
    )
    .unwrap();
    let mut proc = Proc::start(&config, FAST_RETRY);
    let tls = proc.listening("tls");
    let admin = proc.wait_for("admin endpoint listening")["listen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    proc.wait_for("ready");
    HostDaemon {
        proc,
        tls,
        admin,
        _dir: dir,
    }
}

fn serial_of(der: &[u8]) -> String {
    dctunnel::x509::CertInfo::parse(der).unwrap().serial
}

fn file_serial(path: &Path) -> String {
    use rustls::pki_types::pem::PemObject;
    serial_of(
        rustls::pki_types::CertificateDer::from_pem_file(path)
            .unwrap()
            .as_ref(),
    )
}

/// A TLS connection to the host's service as `client.test`: the serial of
/// the certificate the host showed, and the stream (open), after one echo.
async fn connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> (String, tokio_rustls::client::TlsStream<TcpStream>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("host.test").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    let serial = serial_of(tls.get_ref().1.peer_certificates().unwrap()[0].as_ref());
    echo(&mut tls, b"hello").await;
    (serial, tls)
}

async fn echo(tls: &mut tokio_rustls::client::TlsStream<TcpStream>, msg: &[u8]) {
    tls.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(std::time::Duration::from_secs(10), tls.read_exact(&mut buf))
        .await
        .expect("no echo within 10 s")
        .unwrap();
    assert_eq!(buf, msg);
}

/// The value of the sample `name` (no labels) in a scrape.
fn sample(scrape: &str, name: &str) -> Option<f64> {
    scrape.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

async fn metrics(admin: SocketAddr) -> String {
    http_get(admin, "/metrics").await
}

/// No SIGHUP reached the host: the reload was the daemon's own.
fn no_signal(proc: &Proc) {
    assert!(
        !proc
            .seen
            .iter()
            .any(|v| v["fields"]["message"] == "SIGHUP received"),
        "the host was sent a signal"
    );
}

/// (a) A certificate due for renewal is renewed while a connection stays
/// open: new key and certificate on disk, new handshakes see the new
/// serial, the open connection carries on, and no signal is sent. The CA
/// service first refuses the host's address (allow_sources), so that the
/// connection is open before the renewal; then it lets it in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_renews_without_a_restart_while_a_connection_stays_open() {
    let mut ca = Ca::new();
    let ca_addr = ca.start("127.0.0.1:0", "10.255.0.0/16");
    let host = due_now(&ca, "host.test");
    let old_serial = file_serial(&host.cert);
    let old_key = std::fs::read(&host.key).unwrap();
    let backend = echo_backend().await;
    let mut h = start_host(&ca, &host, backend, &ca_addr.to_string());

    let failed = h.proc.wait_for("certificate renewal failed");
    assert_eq!(failed["ca_service"], ca_addr.to_string());
    let client = tls_client(&ca.ca_pem(), Some(&ca.client()));
    let (serial, mut open) = connect(h.tls, client.clone()).await;
    assert_eq!(serial, old_serial);

    ca.allow("127.0.0.0/8");
    let renewed = h.proc.wait_for("certificate renewed");
    let new_serial = renewed["serial"].as_str().unwrap().to_owned();
    assert_eq!(renewed["previous_serial"], old_serial);
    assert_ne!(new_serial, old_serial);
    h.proc.wait_for("renewed certificate in use");
    // The next renewal, planned from the new certificate (in the metrics
    // before this line is logged).
    h.proc.wait_for("certificate renewal scheduled");

    // The open connection carries on; a new one sees the new certificate.
    echo(&mut open, b"still here").await;
    let (serial, mut fresh) = connect(h.tls, client).await;
    assert_eq!(serial, new_serial);
    echo(&mut fresh, b"new").await;

    // On disk: the new certificate, a new key, private.
    assert_eq!(file_serial(&host.cert), new_serial);
    assert_ne!(std::fs::read(&host.key).unwrap(), old_key);
    let mode = std::fs::metadata(&host.key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!dctunnel::renewal::pending_path(&host.key).exists());

    let scrape = metrics(h.admin).await;
    assert_eq!(
        sample(&scrape, "dctunnel_certificate_renewals_total"),
        Some(1.0),
        "{scrape}"
    );
    assert!(
        sample(&scrape, "dctunnel_certificate_renewal_failures_total").unwrap() >= 1.0,
        "{scrape}"
    );
    // The next renewal is planned two thirds into the new certificate.
    let next = sample(
        &scrape,
        "dctunnel_certificate_renewal_next_timestamp_seconds",
    )
    .unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    assert!(next > now + 3600.0, "{next} vs {now}");
    // The renewal metrics the alert rules use are exported (the admin
    // tests check the others, on a daemon without [renewal]).
    let alerts = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring/alerts.yml"),
    )
    .unwrap();
    let used: Vec<&str> = alerts
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("dctunnel_certificate_renewal"))
        .collect();
    assert!(used.len() >= 2, "{used:?}");
    for name in used {
        assert!(
            sample(&scrape, name).is_some(),
            "alerts.yml uses {name}: {scrape}"
        );
    }
    no_signal(&h.proc);
}

/// (b) A revoked certificate cannot renew: the CA service refuses, the host
/// logs why (naming the CA service, the status and the reason), counts it,
/// keeps its files, and its service keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_cannot_renew_and_the_host_carries_on() {
    let mut ca = Ca::new();
    let ca_addr = ca.start("127.0.0.1:0", "127.0.0.0/8");
    let host = due_now(&ca, "host.test");
    certs_cli(&[
        "revoke",
        "--ca",
        ca.folder.ca_dir.to_str().unwrap(),
        host.cert.to_str().unwrap(),
    ]);
    let before = (
        std::fs::read(&host.cert).unwrap(),
        std::fs::read(&host.key).unwrap(),
    );
    let backend = echo_backend().await;
    let mut h = start_host(&ca, &host, backend, &ca_addr.to_string());

    let failed = h.proc.wait_for("certificate renewal failed");
    assert_eq!(failed["ca_service"], ca_addr.to_string());
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("403 Forbidden") && error.contains("revoked"),
        "{error}"
    );
    let client = tls_client(&ca.ca_pem(), Some(&ca.client()));
    let (serial, _open) = connect(h.tls, client).await;
    assert_eq!(serial, file_serial(&host.cert));
    assert_eq!(
        before,
        (
            std::fs::read(&host.cert).unwrap(),
            std::fs::read(&host.key).unwrap()
        )
    );
    let scrape = metrics(h.admin).await;
    assert_eq!(
        sample(&scrape, "dctunnel_certificate_renewals_total"),
        Some(0.0),
        "{scrape}"
    );
    assert!(sample(&scrape, "dctunnel_certificate_renewal_failures_total").unwrap() >= 1.0);
}

/// (c) An expired certificate cannot renew (the CA service accepts only a
/// valid one): once the certificate has expired, the host stops asking,
/// says to enrol again, and plans no renewal. The certificate here expires
/// a few seconds after it is made, while the CA service is unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_not_renewed_and_the_host_says_to_enrol_again() {
    let ca = Ca::new();
    // Valid for the daemon's start (it must load it within 8 s: the one
    // time this test assumes), expired seconds later.
    let host = ca.host(
        "host.test",
        -time::Duration::hours(1),
        time::Duration::seconds(8),
    );
    let backend = echo_backend().await;
    let nobody = common::dead_address().await;
    let mut h = start_host(&ca, &host, backend, &nobody.to_string());
    let failed = h.proc.wait_for("certificate renewal failed");
    assert!(
        failed["error"].as_str().unwrap().contains("cannot connect"),
        "{failed}"
    );
    let expired = h.proc.wait_for("the certificate has expired");
    assert!(
        expired["message"].as_str().unwrap().contains("enrol"),
        "{expired}"
    );
    let scrape = metrics(h.admin).await;
    assert_eq!(
        sample(
            &scrape,
            "dctunnel_certificate_renewal_next_timestamp_seconds"
        ),
        None,
        "{scrape}"
    );
    assert_eq!(
        sample(&scrape, "dctunnel_certificate_renewals_total"),
        Some(0.0)
    );
}

/// (e) The CA service stopped: the host logs the failure, keeps serving,
/// and renews once the CA service is back, without a signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_service_down_delays_renewal_and_breaks_nothing() {
    let mut ca = Ca::new();
    let ca_addr = ca.start("127.0.0.1:0", "127.0.0.0/8");
    ca.stop();
    let host = due_now(&ca, "host.test");
    let old_serial = file_serial(&host.cert);
    let backend = echo_backend().await;
    let mut h = start_host(&ca, &host, backend, &ca_addr.to_string());

    let failed = h.proc.wait_for("certificate renewal failed");
    assert_eq!(failed["ca_service"], ca_addr.to_string());
    assert!(
        failed["error"].as_str().unwrap().contains("cannot connect"),
        "{failed}"
    );
    let client = tls_client(&ca.ca_pem(), Some(&ca.client()));
    let (serial, mut open) = connect(h.tls, client.clone()).await;
    assert_eq!(serial, old_serial);

    ca.start(&ca_addr.to_string(), "127.0.0.0/8");
    let renewed = h.proc.wait_for("certificate renewed");
    let new_serial = renewed["serial"].as_str().unwrap().to_owned();
    assert_ne!(new_serial, old_serial);
    h.proc.wait_for("renewed certificate in use");
    echo(&mut open, b"still here").await;
    let (serial, _) = connect(h.tls, client).await;
    assert_eq!(serial, new_serial);
    no_signal(&h.proc);
}

/// `dctunnel certs enrol ARGS`, with the token in DCTUNNEL_TOKEN: exit
/// status, stdout, stderr.
fn enrol(token: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dctunnel"))
        .args(["certs", "enrol"])
        .args(args)
        .env("DCTUNNEL_TOKEN", token)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// (d) A token enrols once and only for its names; the key is made on the
/// host; nothing is overwritten; the token's secret and the key are never
/// printed; a token pinning another CA is refused by the host itself; and
/// the files enrolment writes are what `[renewal]` takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_enrols_once_and_only_for_its_names() {
    let mut ca = Ca::new();
    let ca_addr = ca.start("127.0.0.1:0", "127.0.0.0/8").to_string();
    let token = certs_cli(&[
        "token",
        "--ca",
        ca.folder.ca_dir.to_str().unwrap(),
        "--name",
        "new.test",
        "--ip",
        "127.0.0.1",
    ]);
    let token = token.trim().to_owned();
    let secret = &token[5..];
    let out = ca.folder.dir.path().join("new");
    let out_s = out.to_str().unwrap();
    let via = ["--ca-service", ca_addr.as_str(), "--server-name", "ca.test"];
    let leaks = |text: &str| text.contains(secret) || text.contains("PRIVATE KEY");

    // Another name: refused by the CA service, the token not used up.
    let (ok, stdout, stderr) = enrol(
        &token,
        &[&via[..], &["--name", "other.test", "--out", out_s]].concat(),
    );
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains(&ca_addr) && stderr.contains("403 Forbidden"),
        "{stderr}"
    );
    assert!(!leaks(&stderr) && !leaks(&stdout));
    assert!(!out.join("other.test.key").exists());

    // A key already there: refused before anything is sent.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("new.test.key"), "mine").unwrap();
    let (ok, _, stderr) = enrol(
        &token,
        &[&via[..], &["--name", "new.test", "--out", out_s]].concat(),
    );
    assert!(!ok);
    assert!(stderr.contains("already exists"), "{stderr}");
    assert_eq!(std::fs::read(out.join("new.test.key")).unwrap(), b"mine");
    std::fs::remove_file(out.join("new.test.key")).unwrap();

    // The token's names: enrolled.
    let args = [
        &via[..],
        &["--name", "new.test", "--ip", "127.0.0.1", "--out", out_s],
    ]
    .concat();
    let (ok, stdout, stderr) = enrol(&token, &args);
    assert!(ok, "{stderr}");
    assert!(!leaks(&stdout) && !leaks(&stderr), "{stdout}{stderr}");
    let files = host_files(&out, "new.test");
    let serial = file_serial(&files.cert);
    assert!(stdout.contains(&format!("serial: {serial}")), "{stdout}");
    assert!(
        stdout.contains("names: DNS:new.test, IP:127.0.0.1"),
        "{stdout}"
    );
    assert!(stdout.contains("not after: "), "{stdout}");
    let ca_der = std::fs::read(ca.ca_pem()).unwrap();
    let ca_der = rustls::pki_types::pem::PemObject::from_pem_slice(&ca_der)
        .map(|c: rustls::pki_types::CertificateDer| c.to_vec())
        .unwrap();
    let ca_pin = dctunnel::x509::spki_pin(&ca_der).unwrap();
    assert!(stdout.contains(&format!("CA pin: {ca_pin}")), "{stdout}");
    let mode = std::fs::metadata(&files.key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        std::fs::read(out.join("ca.pem")).unwrap(),
        std::fs::read(ca.ca_pem()).unwrap()
    );

    // Once only.
    let again = ca.folder.dir.path().join("again");
    let again_args = [
        &via[..],
        &["--name", "new.test", "--out", again.to_str().unwrap()],
    ]
    .concat();
    let (ok, _, stderr) = enrol(&token, &again_args);
    assert!(!ok);
    assert!(stderr.contains("already used"), "{stderr}");
    assert!(!again.join("new.test.key").exists());

    // A token pinning another CA: the host refuses this CA service.
    let other = ca.folder.dir.path().join("other-ca");
    certs_cli(&["init-ca", "--dir", other.to_str().unwrap()]);
    let foreign = certs_cli(&[
        "token",
        "--ca",
        other.to_str().unwrap(),
        "--name",
        "new.test",
    ]);
    let elsewhere = ca.folder.dir.path().join("elsewhere");
    let (ok, _, stderr) = enrol(
        foreign.trim(),
        &[
            &via[..],
            &["--name", "new.test", "--out", elsewhere.to_str().unwrap()],
        ]
        .concat(),
    );
    assert!(!ok);
    assert!(
        stderr.contains("did not present the CA the token pins"),
        "{stderr}"
    );

    // The enrolled files are what [renewal] takes.
    let backend = echo_backend().await;
    let config = ca.folder.dir.path().join("new.toml");
    std::fs::write(
        &config,
        format!(
            r#"[[service]]
name = "tls"
mode = "server"
listen = "127.0.0.1:0"
connect = "{backend}"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
allow_peers = ["*"]

[renewal]
ca_service = "{ca_addr}"
server_name = "ca.test"
cert = "{cert}"
key = "{key}"
ca = "{ca}"
"#,
            ca = out.join("ca.pem").display(),
            cert = files.cert.display(),
            key = files.key.display(),
        ),
    )
    .unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_dctunnel"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{check:?}");
    assert!(stdout.contains("renewal: "), "{stdout}");
}

/// The host's configuration file, as `start_host` wrote it.
fn host_config(h: &HostDaemon) -> PathBuf {
    h._dir.path().join("host.toml")
}

/// A reload that changes `[renewal]` restarts the renewal with the new
/// settings: pointed at nothing first, then at the CA service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_renewal_restarts_it() {
    let mut ca = Ca::new();
    let ca_addr = ca.start("127.0.0.1:0", "127.0.0.0/8");
    let host = due_now(&ca, "host.test");
    let backend = echo_backend().await;
    let nobody = common::dead_address().await;
    let mut h = start_host(&ca, &host, backend, &nobody.to_string());
    let failed = h.proc.wait_for("certificate renewal failed");
    assert_eq!(failed["ca_service"], nobody.to_string());

    let path = host_config(&h);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace(&nobody.to_string(), &ca_addr.to_string()),
    )
    .unwrap();
    h.proc.signal("HUP");
    h.proc.wait_for("certificate renewal off");
    let on = h.proc.wait_for("certificate renewal on");
    assert_eq!(on["ca_service"], ca_addr.to_string());
    let renewed = h.proc.wait_for("certificate renewed");
    assert_eq!(renewed["serial"].as_str().unwrap(), file_serial(&host.cert));
}

/// Renewed files that the reload refuses (here the configuration file was
/// broken meanwhile) are reported loudly, and the services keep the
/// certificate they had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_the_reload_refuses_is_logged_as_an_error() {
    let mut ca = Ca::new();
    let ca_addr = ca.start("127.0.0.1:0", "127.0.0.0/8");
    ca.stop();
    let host = due_now(&ca, "host.test");
    let old_serial = file_serial(&host.cert);
    let backend = echo_backend().await;
    let mut h = start_host(&ca, &host, backend, &ca_addr.to_string());
    h.proc.wait_for("certificate renewal failed");
    let path = host_config(&h);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("shutdown_timeout", "shutdown_timeuot")).unwrap();

    ca.start(&ca_addr.to_string(), "127.0.0.0/8");
    h.proc.wait_for("certificate renewed");
    let refused = h.proc.wait_for("but the reload refused");
    assert_eq!(refused["ca_service"], ca_addr.to_string());
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("shutdown_timeuot"),
        "{refused}"
    );
    let line = h
        .proc
        .seen
        .iter()
        .find(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("but the reload refused"))
        })
        .unwrap();
    assert_eq!(line["level"], "ERROR");
    let client = tls_client(&ca.ca_pem(), Some(&ca.client()));
    let (serial, _) = connect(h.tls, client).await;
    assert_eq!(serial, old_serial);
    assert_ne!(file_serial(&host.cert), old_serial);
}

/// An answer whose files could not be written is asked for again with the
/// same key, even by a daemon started afresh: the CA service renews a
/// certificate once, and a new key would be refused. In-process, on the
/// library's renewal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_that_could_not_be_written_is_asked_again_with_the_same_key() {
    let mut ca = Ca::new();
    let ca_addr = ca.start("127.0.0.1:0", "127.0.0.0/8");
    let host = due_now(&ca, "host.test");
    let old_serial = file_serial(&host.cert);
    let old_key = std::fs::read(&host.key).unwrap();
    let settings = dctunnel::config::Renewal {
        ca_service: dctunnel::config::Target {
            host: dctunnel::config::Host::Ip(ca_addr.ip()),
            port: ca_addr.port(),
        },
        server_name: rustls::pki_types::ServerName::try_from("ca.test").unwrap(),
        cert: host.cert.clone(),
        key: host.key.clone(),
        ca: ca.ca_pem(),
    };
    // A folder where the certificate's temporary file would go: the
    // answer comes, and cannot be written.
    let blocker = host.cert.with_file_name(".host.test.pem.renewing");
    std::fs::create_dir(&blocker).unwrap();
    let e = dctunnel::renewal::renew_once(&settings).await.unwrap_err();
    assert!(e.to_string().contains("cannot write"), "{e}");
    assert_eq!(file_serial(&host.cert), old_serial);
    assert_eq!(std::fs::read(&host.key).unwrap(), old_key);
    std::fs::remove_dir(&blocker).unwrap();
    let pending = dctunnel::renewal::pending_path(&host.key);
    let waiting = std::fs::read(&pending).unwrap();

    // Without the waiting key, a new one: refused ("already renewed").
    let aside = pending.with_file_name("aside");
    std::fs::rename(&pending, &aside).unwrap();
    let refused = dctunnel::renewal::renew_once(&settings).await.unwrap_err();
    assert!(refused.to_string().contains("already renewed"), "{refused}");
    // With it (as after a restart: nothing kept in memory), answered again.
    std::fs::rename(&aside, &pending).unwrap();
    let issued = dctunnel::renewal::renew_once(&settings).await.unwrap();
    assert_ne!(issued.info.serial, old_serial);
    assert_eq!(file_serial(&host.cert), issued.info.serial);
    assert_eq!(std::fs::read(&host.key).unwrap(), waiting);
    assert!(!pending.exists());
}
