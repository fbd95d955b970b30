//! Rotation without a signal: a certificate replaced on disk is used by new
//! handshakes of the running daemon, a broken one is refused and the old
//! one kept; the expiry of the certificates peers show is exported.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn get(addr: SocketAddr, path: &str) -> String {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).await.unwrap();
    out
}

/// The value of the sample `name_and_labels` (written as exported).
fn sample(scrape: &str, name_and_labels: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels))
        .and_then(|v| v.trim().parse().ok())
}

fn der(file: &Path) -> rustls::pki_types::CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(file).unwrap()
}

fn serial_of(der: &[u8]) -> String {
    dctunnel::x509::CertInfo::parse(der).unwrap().serial
}

/// Connects as the client host, sends a few bytes through the service and
/// returns the serial of the certificate the server showed, with the
/// stream, still open.
async fn connect(
    addr: SocketAddr,
    client: Arc<rustls::ClientConfig>,
) -> (String, tokio_rustls::client::TlsStream<TcpStream>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let sni = rustls::pki_types::ServerName::try_from(SERVER).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(client)
        .connect(sni, tcp)
        .await
        .unwrap();
    let serial = serial_of(tls.get_ref().1.peer_certificates().unwrap()[0].as_ref());
    echo(&mut tls, b"ping").await;
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

/// Points the symbolic link `live` at folder `version` in one step (a
/// rename), as certbot's `live/` links and Kubernetes secret volumes move:
/// certificate and key change together.
fn switch(dir: &Path, version: &str) {
    let tmp = dir.join("live.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(dir.join(version), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("live")).unwrap();
}

fn install(dir: &Path, version: &str, cert: &str, key: &Path) {
    let d = dir.join(version);
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("host.pem"), cert).unwrap();
    std::fs::copy(key, d.join("host.key")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_replaced_on_disk_is_used_without_a_signal() {
    let pki = Pki::new("rotation CA");
    let first = pki.issue(SERVER);
    let second = pki.issue(SERVER);
    let third = pki.issue(SERVER);
    let client = pki.issue(CLIENT);
    let backend = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let read = |c: &HostCert| std::fs::read_to_string(&c.cert).unwrap();
    install(d, "v1", &read(&first), &first.key);
    switch(d, "v1");
    let path = d.join("dctunnel.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[daemon]
shutdown_timeout = "1s"
watch_files = "100ms"

[admin]
listen = "127.0.0.1:0"

[[service]]
name = "tls"
mode = "server"
listen = "127.0.0.1:0"
connect = "{backend}"
ca = "{ca}"
cert = "live/host.pem"
key = "live/host.key"
allow_peers = ["{CLIENT}"]
"#,
            ca = pki.ca_pem.display(),
        ),
    )
    .unwrap();
    let mut p = Proc::start(&path, "");
    let tls = p.listening("tls");
    let admin: SocketAddr = p.wait_for("admin endpoint listening")["listen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    p.wait_for("ready");
    let config = tls_client(&pki.ca_pem, Some(&client));

    let (serial, mut live) = connect(tls, config.clone()).await;
    assert_eq!(serial, serial_of(&der(&first.cert)));

    // A new certificate and key, swapped in at once; no signal is sent.
    install(d, "v2", &read(&second), &second.key);
    switch(d, "v2");
    let changed = p.wait_for("file changed: reloading");
    let files = changed["files"].as_str().unwrap();
    assert!(
        files.contains("host.pem") && files.contains("host.key"),
        "{changed}"
    );
    p.wait_for("reload done");
    let (serial, _) = connect(tls, config.clone()).await;
    assert_eq!(serial, serial_of(&der(&second.cert)));
    // The connection opened before carries on.
    echo(&mut live, b"still there").await;

    // Half-written: the certificate file stops in the middle.
    let good = read(&third);
    install(d, "v3", &good[..good.len() / 2], &third.key);
    switch(d, "v3");
    p.wait_for("file changed: reloading");
    let refused = p.wait_for("reload refused, running configuration kept");
    let message = refused["message"].as_str().unwrap();
    assert!(message.contains("host.pem"), "{message}");
    let metrics = get(admin, "/metrics").await;
    assert_eq!(
        sample(&metrics, "dctunnel_file_reload_failures_total "),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "dctunnel_config_last_reload_successful "),
        Some(0.0)
    );
    // The certificate in use stays the last good one.
    let (serial, _) = connect(tls, config.clone()).await;
    assert_eq!(serial, serial_of(&der(&second.cert)));

    // Written again, whole (by rename): applied.
    std::fs::write(d.join("v3/host.pem.tmp"), &good).unwrap();
    std::fs::rename(d.join("v3/host.pem.tmp"), d.join("v3/host.pem")).unwrap();
    p.wait_for("file changed: reloading");
    p.wait_for("reload done");
    let (serial, _) = connect(tls, config.clone()).await;
    assert_eq!(serial, serial_of(&der(&third.cert)));

    // Each change was tried once: the broken file was not retried at
    // every check while it stayed the same.
    let metrics = get(admin, "/metrics").await;
    assert_eq!(sample(&metrics, "dctunnel_file_reloads_total "), Some(3.0));
    assert_eq!(
        sample(&metrics, "dctunnel_file_reload_failures_total "),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, "dctunnel_config_last_reload_successful "),
        Some(1.0)
    );
    echo(&mut live, b"end").await;
}

fn not_after(file: &Path) -> i64 {
    dctunnel::x509::CertInfo::parse(&der(file))
        .unwrap()
        .not_after
        .unix_timestamp()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The server exports when the client host's certificate expires, and the
/// client side when the server's does, once they have met.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_certificate_expiry_is_exported() {
    let t = tunnel(echo_backend().await, TunnelOpts::default()).await;
    let metric = "dctunnel_peer_certificate_expiry_seconds";
    let before = dctunnel::metrics::render(&t.daemon.view()).unwrap();
    assert!(!before.contains(&format!("{metric}{{")), "{before}");

    let mut c = TcpStream::connect(t.entrance).await.unwrap();
    assert_eq!(roundtrip(&mut c, b"hello").await, b"hello");
    let earliest = now();
    let text = dctunnel::metrics::render(&t.daemon.view()).unwrap();
    let latest = now();
    for (service, peer, cert) in [
        ("tls", CLIENT, &t.client_cert.cert),
        ("plain", SERVER, &t.server_cert.cert),
    ] {
        // The label holds every identity of the certificate, its DNS name
        // first.
        let prefix = format!("{metric}{{service=\"{service}\",peer=\"{peer},");
        let line = text
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"));
        let value: i64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        let want = not_after(cert);
        assert!(
            (want - latest..=want - earliest).contains(&value),
            "{line}: notAfter is {want}"
        );
    }
    let status = dctunnel::admin::status(&t.daemon.view());
    let tls = status.services.iter().find(|s| s.name == "tls").unwrap();
    assert_eq!(tls.peer_certificates.len(), 1);
    assert!(tls.peer_certificates[0].peer.starts_with(CLIENT));
    assert_eq!(
        tls.peer_certificates[0].serial,
        serial_of(&der(&t.client_cert.cert))
    );
    t.daemon.shutdown().await;
}
