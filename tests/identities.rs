//! Who may use a tunnel: certificates from `dctunnel certs` (the real
//! binary), key pins instead of or on top of a CA, revocation, and the
//! names each service accepts.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use dctunnel::config::describe;
use dctunnel::daemon::Daemon;
use dctunnel::service::Rejection;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const OFF2: &str = "off2.openfoodfacts.org";
const OVH1: &str = "ovh1.openfoodfacts.org";
const OVH2: &str = "ovh2.openfoodfacts.org";

/// Tests that end with connections open should not wait the default 30 s.
const DAEMON: &str = "[daemon]\nshutdown_timeout = \"1s\"\n";

/// A CA made by `dctunnel certs init-ca`, and a folder for the host
/// certificates `certs issue` and `certs keygen` write.
struct CliPki {
    dir: tempfile::TempDir,
}

/// What `certs issue` or `certs keygen` wrote and printed.
struct Issued {
    files: HostCert,
    /// Everything the command printed.
    out: String,
    pin: String,
    serial: String,
}

impl CliPki {
    fn new() -> CliPki {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        certs_cli(&["init-ca", "--dir", ca.to_str().unwrap()]);
        CliPki { dir }
    }

    fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    fn ca_pem(&self) -> PathBuf {
        self.ca_dir().join("ca.pem")
    }

    fn hosts(&self) -> PathBuf {
        self.dir.path().join("hosts")
    }

    /// `dctunnel certs issue --ca CA --name NAME --out HOSTS`.
    fn issue(&self, name: &str) -> Issued {
        let out = certs_cli(&[
            "issue",
            "--ca",
            self.ca_dir().to_str().unwrap(),
            "--name",
            name,
            "--out",
            self.hosts().to_str().unwrap(),
        ]);
        issued(&self.hosts(), name, out)
    }

    /// `dctunnel certs keygen --name NAME --out HOSTS`: self-signed, no CA.
    fn keygen(&self, name: &str) -> Issued {
        let out = certs_cli(&[
            "keygen",
            "--name",
            name,
            "--out",
            self.hosts().to_str().unwrap(),
        ]);
        issued(&self.hosts(), name, out)
    }

    /// `dctunnel certs revoke --ca CA CERT`; returns the serial it printed.
    fn revoke(&self, cert: &HostCert) -> String {
        let out = certs_cli(&[
            "revoke",
            "--ca",
            self.ca_dir().to_str().unwrap(),
            cert.cert.to_str().unwrap(),
        ]);
        let rest = printed(&out, "revoked serial ");
        rest.split(';').next().unwrap().to_owned()
    }
}

fn issued(dir: &Path, name: &str, out: String) -> Issued {
    let files = host_files(dir, name);
    assert!(files.cert.exists() && files.key.exists(), "{out}");
    Issued {
        files,
        pin: printed(&out, "pin: ").to_owned(),
        serial: printed(&out, "serial: ").to_owned(),
        out,
    }
}

impl Issued {
    /// The configuration lines the command printed (`ca = ...`, `cert =
    /// ...`, `key = ...`, `peer_pins = [...]`), as a user pastes them.
    fn lines(&self, keys: &[&str]) -> String {
        let mut text = String::new();
        for line in self.out.lines() {
            if keys.iter().any(|k| line.starts_with(&format!("{k} = "))) {
                text.push_str(line);
                text.push('\n');
            }
        }
        assert_eq!(
            text.lines().count(),
            keys.len(),
            "{keys:?} in:\n{}",
            self.out
        );
        text
    }

    fn cert_key(&self) -> String {
        self.lines(&["cert", "key"])
    }
}

/// Two hosts, as two daemons: `server` runs a server-mode service `redis`
/// in front of `backend`; `client` runs a client-mode service `redis` whose
/// plaintext entrance is `entrance`.
struct Pair {
    server: Daemon,
    client: Daemon,
    entrance: std::net::SocketAddr,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Pair {
    async fn start(backend: std::net::SocketAddr, server_tls: &str, client_tls: &str) -> Pair {
        let (sdir, server) = start_daemon(&format!(
            r#"{DAEMON}
[[service]]
name = "redis"
mode = "server"
listen = "127.0.0.1:0"
connect = "{backend}"
{server_tls}"#
        ));
        let tls_port = server.local_addr("redis").unwrap();
        let (cdir, client) = start_daemon(&format!(
            r#"{DAEMON}
[[service]]
name = "redis"
mode = "client"
listen = "127.0.0.1:0"
connect = "{tls_port}"
{client_tls}"#
        ));
        let entrance = client.local_addr("redis").unwrap();
        Pair {
            server,
            client,
            entrance,
            _dirs: (sdir, cdir),
        }
    }

    async fn stop(self) {
        self.client.shutdown().await;
        self.server.shutdown().await;
    }
}

/// Whether a message sent into a plaintext entrance comes back from the
/// echo backend on the other side.
async fn crosses(entrance: std::net::SocketAddr) -> bool {
    let mut c = TcpStream::connect(entrance).await.unwrap();
    if c.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 6];
    matches!(
        tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut buf)).await,
        Ok(Ok(_))
    ) && &buf == b"PING\r\n"
}

async fn rejected(daemon: &Daemon, service: &str, why: Rejection, n: u64) {
    let state = daemon.state(service).unwrap();
    eventually(&format!("{service}: {n} rejections {why}"), || {
        state.rejected(why) == n
    })
    .await;
}

// ---------------------------------------------------------------------------
// Certificates from the CLI

/// `init-ca`, two `issue`, the printed configuration lines pasted into two
/// hosts' configurations, and bytes go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_issued_by_the_cli_carry_a_tunnel() {
    let pki = CliPki::new();
    let off2 = pki.issue(OFF2);
    let ovh1 = pki.issue(OVH1);
    let pair = Pair::start(
        echo_backend().await,
        &format!(
            "{}allow_peers = [\"{OVH1}\"]\n",
            off2.lines(&["ca", "cert", "key"])
        ),
        &format!(
            "{}server_name = \"{OFF2}\"\n",
            ovh1.lines(&["ca", "cert", "key"])
        ),
    )
    .await;
    let mut c = TcpStream::connect(pair.entrance).await.unwrap();
    assert_eq!(roundtrip(&mut c, b"PING\r\n").await, b"PING\r\n");
    // Each side knows the other by the name `certs issue` gave it.
    let on_server = pair.server.state("redis").unwrap().connections();
    assert_eq!(on_server[0].peer.get().unwrap(), OVH1);
    let on_client = pair.client.state("redis").unwrap().connections();
    assert_eq!(on_client[0].peer.get().unwrap(), OFF2);
    drop(c);
    pair.stop().await;
}

// ---------------------------------------------------------------------------
// Key pinning

/// `keygen` on each host, pins exchanged, no CA: the server needs no
/// `allow_peers` (the pins say who may connect) and the client no
/// `server_name` (it connects by IP to a certificate naming only
/// off2.openfoodfacts.org).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_pins_carry_a_tunnel_without_a_ca() {
    let pki = CliPki::new();
    let off2 = pki.keygen(OFF2);
    let ovh1 = pki.keygen(OVH1);
    assert!(!off2.out.contains("ca = "));
    let pair = Pair::start(
        echo_backend().await,
        &format!("{}{}", off2.cert_key(), ovh1.lines(&["peer_pins"])),
        &format!("{}{}", ovh1.cert_key(), off2.lines(&["peer_pins"])),
    )
    .await;
    let mut c = TcpStream::connect(pair.entrance).await.unwrap();
    assert_eq!(roundtrip(&mut c, b"PING\r\n").await, b"PING\r\n");
    let on_server = pair.server.state("redis").unwrap().connections();
    assert_eq!(on_server[0].peer.get().unwrap(), OVH1);
    // What `dctunnel check` and the start-up log say each side checks.
    let peers = |d: &Daemon| describe(&d.settings("redis").unwrap()).peers.to_string();
    assert_eq!(peers(&pair.server), "a pinned key (1 pin)");
    assert_eq!(peers(&pair.client), "server must hold a pinned key (1 pin)");
    drop(c);
    pair.stop().await;
}

/// The server pins a key the client does not have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_refuses_a_client_whose_pin_it_does_not_list() {
    let pki = CliPki::new();
    let off2 = pki.keygen(OFF2);
    let ovh1 = pki.keygen(OVH1);
    let other = pki.keygen("other.openfoodfacts.org");
    let pair = Pair::start(
        echo_backend().await,
        &format!("{}{}", off2.cert_key(), other.lines(&["peer_pins"])),
        &format!("{}{}", ovh1.cert_key(), off2.lines(&["peer_pins"])),
    )
    .await;
    assert!(!crosses(pair.entrance).await, "unpinned client got through");
    rejected(&pair.server, "redis", Rejection::HandshakeFailed, 1).await;
    assert_eq!(pair.server.state("redis").unwrap().active(), 0);
    pair.stop().await;
}

/// The client pins a key the server does not have: the client side
/// refuses the server and closes the plaintext connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_refuses_a_server_whose_pin_it_does_not_list() {
    let pki = CliPki::new();
    let off2 = pki.keygen(OFF2);
    let ovh1 = pki.keygen(OVH1);
    let other = pki.keygen("other.openfoodfacts.org");
    let pair = Pair::start(
        echo_backend().await,
        &format!("{}{}", off2.cert_key(), ovh1.lines(&["peer_pins"])),
        &format!("{}{}", ovh1.cert_key(), other.lines(&["peer_pins"])),
    )
    .await;
    assert!(!crosses(pair.entrance).await, "unpinned server accepted");
    rejected(&pair.client, "redis", Rejection::HandshakeFailed, 1).await;
    pair.stop().await;
}

/// Presents `chain` and signs the handshake with `key`, whichever key
/// that is: `CertifiedKey::new` does not check that they belong together.
#[derive(Debug)]
struct Presents(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for Presents {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl rustls::server::ResolvesServerCert for Presents {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The certificate of `cert` with the private key of `key`.
fn certified(cert: &HostCert, key: &HostCert) -> Arc<CertifiedKey> {
    let chain = CertificateDer::pem_file_iter(&cert.cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(&key.key).unwrap();
    let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key).unwrap();
    Arc::new(CertifiedKey::new(chain, signer))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A client trusting `server_cert` (a self-signed certificate is its own
/// trust anchor) and presenting `me`.
fn client_presenting(server_cert: &Path, me: Arc<CertifiedKey>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(server_cert).unwrap())
        .unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_cert_resolver(Arc::new(Presents(me))),
    )
}

/// A peer that has the pinned certificate (it is public) but not its key
/// cannot sign the handshake: the server refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_client_certificate_without_its_key_is_refused() {
    let pki = CliPki::new();
    let off2 = pki.keygen(OFF2);
    let ovh1 = pki.keygen(OVH1);
    let thief = pki.keygen("thief.example.org");
    let (_d, daemon) = start_daemon(&format!(
        r#"{DAEMON}
[[service]]
name = "redis"
mode = "server"
listen = "127.0.0.1:0"
connect = "{backend}"
{cert_key}peer_pins = ["{pin}"]
"#,
        backend = echo_backend().await,
        cert_key = off2.cert_key(),
        pin = ovh1.pin,
    ));
    let port = daemon.local_addr("redis").unwrap();
    // The harness works: the real certificate with its real key gets in.
    let genuine = client_presenting(&off2.files.cert, certified(&ovh1.files, &ovh1.files));
    assert!(
        tls_echo(port, genuine, OFF2).await,
        "genuine client refused"
    );
    // The same certificate with another key: the pin matches, the
    // signature does not.
    let forged = certified(&ovh1.files, &thief.files);
    assert!(forged.keys_match().is_err(), "the forgery is not one");
    let forged = client_presenting(&off2.files.cert, forged);
    assert!(!tls_echo(port, forged, OFF2).await, "forged client got in");
    rejected(&daemon, "redis", Rejection::HandshakeFailed, 1).await;
    assert_eq!(daemon.state("redis").unwrap().active(), 0);
    daemon.shutdown().await;
}

/// A TLS server presenting `me` and echoing what it reads.
async fn fake_server(me: Arc<CertifiedKey>) -> std::net::SocketAddr {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Presents(me)));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let (mut r, mut w) = tokio::io::split(tls);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
        }
    });
    addr
}

/// The same in the other direction: a server that shows off2's pinned
/// certificate without off2's key is refused by the client side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_server_certificate_without_its_key_is_refused() {
    let pki = CliPki::new();
    let off2 = pki.keygen(OFF2);
    let ovh1 = pki.keygen(OVH1);
    let thief = pki.keygen("thief.example.org");
    let genuine = fake_server(certified(&off2.files, &off2.files)).await;
    let forged = fake_server(certified(&off2.files, &thief.files)).await;
    let (_d, daemon) = start_daemon(&format!(
        r#"{DAEMON}
[[service]]
name = "genuine"
mode = "client"
listen = "127.0.0.1:0"
connect = "{genuine}"
{cert_key}{pins}
[[service]]
name = "forged"
mode = "client"
listen = "127.0.0.1:0"
connect = "{forged}"
{cert_key}{pins}"#,
        cert_key = ovh1.cert_key(),
        pins = off2.lines(&["peer_pins"]),
    ));
    assert!(crosses(daemon.local_addr("genuine").unwrap()).await);
    assert!(!crosses(daemon.local_addr("forged").unwrap()).await);
    rejected(&daemon, "forged", Rejection::HandshakeFailed, 1).await;
    daemon.shutdown().await;
}

// ---------------------------------------------------------------------------
// Pins and a CA together

/// With `ca` and `peer_pins`, a client must pass both: a CA-signed
/// certificate whose key is not pinned is refused, and so is a pinned key
/// the CA did not sign.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_with_ca_and_pins_requires_both() {
    let pki = CliPki::new();
    let off2 = pki.issue(OFF2);
    let signed_and_pinned = pki.issue(OVH1);
    let signed_only = pki.issue(OVH2);
    let pinned_only = pki.keygen("ovh3.openfoodfacts.org");
    let (_d, daemon) = start_daemon(&format!(
        r#"{DAEMON}
[[service]]
name = "redis"
mode = "server"
listen = "127.0.0.1:0"
connect = "{backend}"
{files}peer_pins = ["{a}", "{b}"]
"#,
        backend = echo_backend().await,
        files = off2.lines(&["ca", "cert", "key"]),
        a = signed_and_pinned.pin,
        b = pinned_only.pin,
    ));
    let port = daemon.local_addr("redis").unwrap();
    assert_eq!(
        describe(&daemon.settings("redis").unwrap())
            .peers
            .to_string(),
        "any certificate the CA signed, with a pinned key (2 pins)"
    );
    let ca = pki.ca_pem();
    let connect = |me: &Issued| tls_echo(port, tls_client(&ca, Some(&me.files)), OFF2);
    assert!(
        connect(&signed_and_pinned).await,
        "signed and pinned refused"
    );
    assert!(
        !connect(&signed_only).await,
        "unpinned certificate accepted"
    );
    assert!(
        !connect(&pinned_only).await,
        "certificate from no CA accepted"
    );
    rejected(&daemon, "redis", Rejection::HandshakeFailed, 2).await;
    daemon.shutdown().await;
}

/// The client side with `ca` and `peer_pins`: the server must pass both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_with_ca_and_pins_requires_both() {
    let pki = CliPki::new();
    let signed_and_pinned = pki.issue(OFF2);
    let signed_only = pki.issue("proxy2.openfoodfacts.org");
    let pinned_only = pki.keygen("proxy3.openfoodfacts.org");
    let ovh1 = pki.issue(OVH1);
    let backend = echo_backend().await;
    let sides = [
        ("a", &signed_and_pinned, OFF2),
        ("b", &signed_only, "proxy2.openfoodfacts.org"),
        ("c", &pinned_only, "proxy3.openfoodfacts.org"),
    ];
    let mut text = String::from(DAEMON);
    for (name, server, _) in sides {
        // Each server accepts ovh1 by name; the pinned-only one by pin.
        let server_tls = match name {
            "c" => format!("{}peer_pins = [\"{}\"]\n", server.cert_key(), ovh1.pin),
            _ => format!(
                "{}allow_peers = [\"{OVH1}\"]\n",
                server.lines(&["ca", "cert", "key"])
            ),
        };
        text.push_str(&format!(
            r#"
[[service]]
name = "server-{name}"
mode = "server"
listen = "127.0.0.1:0"
connect = "{backend}"
{server_tls}"#
        ));
    }
    let (_d, servers) = start_daemon(&text);
    let mut text = String::from(DAEMON);
    for (name, _, server_name) in sides {
        let port = servers.local_addr(&format!("server-{name}")).unwrap();
        text.push_str(&format!(
            r#"
[[service]]
name = "client-{name}"
mode = "client"
listen = "127.0.0.1:0"
connect = "{port}"
server_name = "{server_name}"
{files}peer_pins = ["{pin}"]
"#,
            files = ovh1.lines(&["ca", "cert", "key"]),
            pin = signed_and_pinned.pin,
        ));
    }
    let (_d2, clients) = start_daemon(&text);
    let entrance = |name: &str| clients.local_addr(&format!("client-{name}")).unwrap();
    assert!(crosses(entrance("a")).await, "signed and pinned refused");
    assert!(!crosses(entrance("b")).await, "unpinned server accepted");
    assert!(!crosses(entrance("c")).await, "server from no CA accepted");
    for name in ["b", "c"] {
        rejected(
            &clients,
            &format!("client-{name}"),
            Rejection::HandshakeFailed,
            1,
        )
        .await;
    }
    clients.shutdown().await;
    servers.shutdown().await;
}

// ---------------------------------------------------------------------------
// Revocation

/// The real daemon, a CRL made by `certs revoke`, and a reload: the
/// revoked client is refused and logged with its serial, another client of
/// the same CA still connects; revoking that one too (the CRL file
/// changes, the configuration does not) takes effect at the next reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_client_is_refused_and_logged_with_its_serial() {
    let pki = CliPki::new();
    let off2 = pki.issue(OFF2);
    let ovh1 = pki.issue(OVH1);
    let ovh2 = pki.issue(OVH2);
    let backend = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("off2.toml");
    let service = format!(
        r#"{DAEMON}
[[service]]
name = "redis"
mode = "server"
listen = "127.0.0.1:0"
connect = "{backend}"
{files}allow_peers = ["{OVH1}", "{OVH2}"]
"#,
        files = off2.lines(&["ca", "cert", "key"]),
    );
    std::fs::write(&path, &service).unwrap();
    let mut p = Proc::start(&path, "");
    let port = p.listening("redis");
    let ca = pki.ca_pem();
    let connect = |me: &Issued| tls_echo(port, tls_client(&ca, Some(&me.files)), OFF2);
    assert!(connect(&ovh1).await);
    assert!(connect(&ovh2).await);

    assert_eq!(pki.revoke(&ovh1.files), ovh1.serial);
    let crl = pki.ca_dir().join("ca.crl");
    let with_crl = format!("{service}crl = [\"{}\"]\n", crl.display());
    std::fs::write(&path, with_crl).unwrap();
    p.signal("HUP");
    let f = p.wait_for("reload: service updated");
    assert_eq!(f["service"], "redis");
    assert!(!connect(&ovh1).await, "revoked certificate accepted");
    let f = p.wait_for("peer certificate is revoked");
    assert_eq!(f["serial"], ovh1.serial.as_str());
    let f = p.wait_for("connection refused");
    assert!(f["message"].as_str().unwrap().contains("Revoked"), "{f}");
    assert!(
        connect(&ovh2).await,
        "a valid certificate of the same CA refused"
    );

    // Revoke the other one: only the CRL file changes.
    assert_eq!(pki.revoke(&ovh2.files), ovh2.serial);
    p.signal("HUP");
    p.wait_for("reload: service updated");
    assert!(!connect(&ovh2).await, "second revocation not applied");
    let f = p.wait_for("peer certificate is revoked");
    assert_eq!(f["serial"], ovh2.serial.as_str());

    p.signal("TERM");
    assert_eq!(p.wait_exit(), Some(0));
}

// ---------------------------------------------------------------------------
// Which names each service accepts

/// One daemon, two services, each listing its own client: the Redis
/// client's certificate is refused by MongoDB and accepted by Redis, and
/// the other way round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_accepts_only_the_identities_it_lists() {
    let pki = CliPki::new();
    let off2 = pki.issue(OFF2);
    let redis_client = pki.issue("redis-client.openfoodfacts.org");
    let mongodb_client = pki.issue("mongodb-client.openfoodfacts.org");
    let files = off2.lines(&["ca", "cert", "key"]);
    let (_d, daemon) = start_daemon(&format!(
        r#"{DAEMON}
[[service]]
name = "redis"
mode = "server"
listen = "127.0.0.1:0"
connect = "{redis}"
{files}allow_peers = ["redis-client.openfoodfacts.org"]

[[service]]
name = "mongodb"
mode = "server"
listen = "127.0.0.1:0"
connect = "{mongodb}"
{files}allow_peers = ["mongodb-client.openfoodfacts.org"]
"#,
        redis = echo_backend().await,
        mongodb = echo_backend().await,
    ));
    let ca = pki.ca_pem();
    let connect = |service: &str, me: &Issued| {
        tls_echo(
            daemon.local_addr(service).unwrap(),
            tls_client(&ca, Some(&me.files)),
            OFF2,
        )
    };
    assert!(connect("redis", &redis_client).await);
    assert!(!connect("mongodb", &redis_client).await);
    assert!(connect("mongodb", &mongodb_client).await);
    assert!(!connect("redis", &mongodb_client).await);
    rejected(&daemon, "mongodb", Rejection::PeerNotAllowed, 1).await;
    rejected(&daemon, "redis", Rejection::PeerNotAllowed, 1).await;
    daemon.shutdown().await;
}

/// `allow_peers` matches DNS SANs, case-insensitively; the CN only when
/// the certificate has no SAN; `*.ovh.example` exactly one label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_peers_matches_sans_or_cn_and_wildcards_match_one_label() {
    let pki = Pki::new("test CA");
    let server = pki.issue(SERVER);
    let (_d, daemon) = start_daemon(&format!(
        r#"{DAEMON}
[[service]]
name = "redis"
mode = "server"
listen = "127.0.0.1:0"
connect = "{backend}"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
allow_peers = ["*.ovh.example", "legacy.example"]
"#,
        backend = echo_backend().await,
        ca = pki.ca_pem.display(),
        cert = server.cert.display(),
        key = server.key.display(),
    ));
    let port = daemon.local_addr("redis").unwrap();
    let cases: &[(&str, &[&str], bool)] = &[
        ("ct113.ovh.example", &["ct113.ovh.example"], true),
        ("anything", &["CT114.OVH.Example"], true),
        ("x", &["other.example", "ct115.ovh.example"], true),
        ("ct116.ovh.example", &[], true),
        ("legacy.example", &[], true),
        ("a.b.ovh.example", &["a.b.ovh.example"], false),
        ("ovh.example", &["ovh.example"], false),
        ("wildcard", &["*.ovh.example"], false),
        // The CN is not looked at when there is a SAN.
        ("ct117.ovh.example", &["other.example"], false),
        ("legacy.example", &["legacy.example.org"], false),
    ];
    let mut refused = 0;
    for (cn, sans, accepted) in cases {
        let me = pki.issue_names(cn, sans);
        let got = tls_echo(port, tls_client(&pki.ca_pem, Some(&me)), SERVER).await;
        assert_eq!(got, *accepted, "CN {cn:?}, SANs {sans:?}");
        refused += u64::from(!accepted);
    }
    assert_eq!(refused, 5);
    rejected(&daemon, "redis", Rejection::PeerNotAllowed, refused).await;
    daemon.shutdown().await;
}
