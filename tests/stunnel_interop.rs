//! dctunnel and Debian's stunnel4 at the two ends of one tunnel, both ways:
//! the state of a host pair halfway through a migration
//! (docs/migrating-from-stunnel.md). Each test runs the real `dctunnel`
//! binary and a real stunnel (mutual TLS with certificates from a CA made at
//! test time), moves data end to end, and shows that the identity checks of
//! each side still apply across the mix.
//!
//! stunnel4 must be installed: without it these tests fail, they do not
//! skip (./test.sh installs it).

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A name in no `allow_peers` or `checkHost` of these tests.
const INTRUDER: &str = "intruder.test";

/// 4 MiB each way: many TLS records, and more than the socket buffers hold.
const BULK: usize = 4 << 20;

/// A dctunnel client-mode service in front of a stunnel server-mode section
/// (`checkHost` = our client's name): a bulk transfer both ways ended by a
/// half-close (once the reply is back: see [`HalfClose::AfterReply`]), then
/// request/response on a second connection, which resumes the TLS 1.3
/// session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dctunnel_client_to_stunnel_server_carries_data_both_ways() {
    let pki = Pki::new("CA");
    let (server, client) = (pki.issue(SERVER), pki.issue(CLIENT));
    let (backend, reached) = counting_echo_backend().await;
    let stunnel = Stunnel::start(&stunnel_server(
        "mongodb",
        backend,
        &pki.ca_pem,
        &server,
        &format!("checkHost = {CLIENT}"),
    ));
    let remote = stunnel.address("mongodb");
    let dir = tempfile::tempdir().unwrap();
    let mut dc = start_dctunnel(
        &dir,
        &dctunnel_client("mongodb", remote, SERVER, &pki.ca_pem, &client, ""),
    );
    let entrance = dc.listening("mongodb");

    let data = payload(BULK);
    let back = echo_bulk(entrance, &data, HalfClose::AfterReply).await;
    assert_eq!(back.len(), data.len());
    assert_eq!(sha256_hex(&back), sha256_hex(&data), "data changed");
    // stunnel itself counted every byte, both ways.
    stunnel.wait_for(&format!(
        "Connection closed: {BULK} byte(s) sent to TLS, {BULK} byte(s) sent to socket"
    ));
    stunnel.wait_for("TLS accepted: new session negotiated");
    stunnel.wait_for("TLSv1.3 ciphersuite");
    stunnel.wait_for(&format!("Certificate accepted at depth=0: CN={CLIENT}"));

    let mut conn = TcpStream::connect(entrance).await.unwrap();
    for request in [
        &b"*1\r\n$4\r\nPING\r\n"[..],
        b"GET product:3017620422003\r\n",
    ] {
        assert_eq!(roundtrip(&mut conn, request).await, request);
    }
    stunnel.wait_for("TLS accepted: previous session reused");
    drop(conn);
    assert_eq!(reached.load(Ordering::SeqCst), 2);
}

/// A dctunnel client end with warm connections in front of a stunnel
/// server end: stunnel does not agree on ALPN dctunnel/1, so the client
/// end says so once, keeps no warm connections, and carries each
/// connection as an ordinary one, without a start message (the echo
/// would send it back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_connections_fall_back_to_ordinary_ones_against_a_stunnel_server() {
    let pki = Pki::new("CA");
    let (server, client) = (pki.issue(SERVER), pki.issue(CLIENT));
    let (backend, _) = counting_echo_backend().await;
    let stunnel = Stunnel::start(&stunnel_server(
        "mongodb",
        backend,
        &pki.ca_pem,
        &server,
        &format!("checkHost = {CLIENT}"),
    ));
    let remote = stunnel.address("mongodb");
    let dir = tempfile::tempdir().unwrap();
    let mut dc = start_dctunnel(
        &dir,
        &dctunnel_client(
            "mongodb",
            remote,
            SERVER,
            &pki.ca_pem,
            &client,
            "warm_connections = 2",
        ),
    );
    let entrance = dc.listening("mongodb");
    let told = dc.wait_for("did not agree on ALPN dctunnel/1");
    assert_eq!(told["service"], "mongodb", "{told}");
    for round in 0..3 {
        let mut conn = TcpStream::connect(entrance).await.unwrap();
        let request = format!("request {round}\r\n");
        assert_eq!(
            roundtrip(&mut conn, request.as_bytes()).await,
            request.as_bytes()
        );
        drop(conn);
        dc.wait_for("connection closed");
    }
    let times = dc
        .seen
        .iter()
        .filter(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("did not agree on ALPN"))
        })
        .count();
    assert_eq!(times, 1, "told {times} times");
    // No warm connection was used.
    assert!(
        !dc.seen
            .iter()
            .any(|v| v["fields"]["message"] == "warm connection taken"),
        "a warm connection was used against stunnel"
    );
}

/// stunnel sends its `connect` host as SNI, an IP address when that is one
/// (RFC 6066 allows only names): dctunnel ignores it and says so once per
/// service at debug, not as a warning on every connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ip_address_as_sni_is_told_once_at_debug() {
    let pki = Pki::new("CA");
    let (server, client) = (pki.issue(SERVER), pki.issue(CLIENT));
    let backend = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let peers = format!("[\"{CLIENT}\"]");
    let mut dc = start_dctunnel(
        &dir,
        &dctunnel_server("mongodb", backend, &pki.ca_pem, &server, &peers),
    );
    let mongodb = dc.listening("mongodb");
    let stunnel = Stunnel::start(&format!(
        "[mongodb]\nclient = yes\naccept = 127.0.0.1:0\nconnect = {mongodb}\n\
         CAfile = {ca}\ncert = {cert}\nkey = {key}\nverifyChain = yes\n\
         checkHost = {SERVER}\nsni = {ip}\n\n",
        ip = mongodb.ip(),
        ca = pki.ca_pem.display(),
        cert = client.cert.display(),
        key = client.key.display(),
    ));
    let entrance = stunnel.address("mongodb");
    for _ in 0..3 {
        let mut conn = TcpStream::connect(entrance).await.unwrap();
        assert_eq!(roundtrip(&mut conn, b"PING\r\n").await, b"PING\r\n");
        drop(conn);
        dc.wait_for("connection closed");
    }
    let told: Vec<_> = dc
        .seen
        .iter()
        .filter(|v| {
            v["fields"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("IP address as TLS server name")
        })
        .collect();
    assert_eq!(told.len(), 1, "{:#?}", dc.seen);
    assert_eq!(told[0]["level"], "DEBUG", "{}", told[0]);
    assert_eq!(told[0]["fields"]["sni"], "127.0.0.1", "{}", told[0]);
    let warnings: Vec<_> = dc.seen.iter().filter(|v| v["level"] == "WARN").collect();
    assert!(warnings.is_empty(), "{warnings:#?}");
}

/// A stunnel client-mode section (`checkHost` = our server's name) in front
/// of a dctunnel server-mode service: a bulk transfer both ways with a
/// half-close while the reply is in flight, request/response on a resumed
/// session, and a server that speaks first (SMTP) on a second service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stunnel_client_to_dctunnel_server_carries_data_both_ways() {
    let pki = Pki::new("CA");
    let (server, client) = (pki.issue(SERVER), pki.issue(CLIENT));
    let (backend, reached) = counting_echo_backend().await;
    let smtp = banner_backend(b"220 pmg.openfoodfacts.org ESMTP Postfix\r\n").await;
    let dir = tempfile::tempdir().unwrap();
    let peers = format!("[\"{CLIENT}\"]");
    let mut dc = start_dctunnel(
        &dir,
        &(dctunnel_server("mongodb", backend, &pki.ca_pem, &server, &peers)
            + &dctunnel_server("smtp", smtp, &pki.ca_pem, &server, &peers)),
    );
    let mongodb = dc.listening("mongodb");
    let smtp_tls = dc.listening("smtp");
    let stunnel = Stunnel::start(
        &(stunnel_client("mongodb", mongodb, &pki.ca_pem, &client, "")
            + &stunnel_client("smtp", smtp_tls, &pki.ca_pem, &client, "")),
    );
    let (entrance, smtp_entrance) = (stunnel.address("mongodb"), stunnel.address("smtp"));

    let data = payload(BULK);
    let back = echo_bulk(entrance, &data, HalfClose::Early).await;
    assert_eq!(back.len(), data.len());
    assert_eq!(sha256_hex(&back), sha256_hex(&data), "data changed");
    let closed = dc.wait_for("connection closed");
    assert_eq!(closed["up"], BULK as u64, "{closed}");
    assert_eq!(closed["down"], BULK as u64, "{closed}");
    // dctunnel read the client's identity from the certificate stunnel sent.
    let peer = dc.seen.last().unwrap()["span"]["peer"].to_string();
    assert!(peer.contains(CLIENT), "{peer}");
    stunnel.wait_for("TLS connected: new session negotiated");
    stunnel.wait_for("TLSv1.3 ciphersuite");
    stunnel.wait_for(&format!("Certificate accepted at depth=0: CN={SERVER}"));

    let mut conn = TcpStream::connect(entrance).await.unwrap();
    for request in [
        &b"*1\r\n$4\r\nPING\r\n"[..],
        b"GET product:3017620422003\r\n",
    ] {
        assert_eq!(roundtrip(&mut conn, request).await, request);
    }
    stunnel.wait_for("TLS connected: previous session reused");
    drop(conn);
    assert_eq!(reached.load(Ordering::SeqCst), 2);

    let mut mail = TcpStream::connect(smtp_entrance).await.unwrap();
    let banner = b"220 pmg.openfoodfacts.org ESMTP Postfix\r\n";
    let mut got = vec![0; banner.len()];
    tokio::time::timeout(Duration::from_secs(10), mail.read_exact(&mut got))
        .await
        .expect("no SMTP banner within 10s")
        .unwrap();
    assert_eq!(got, banner);
    assert_eq!(
        roundtrip(&mut mail, b"EHLO off1\r\n").await,
        b"EHLO off1\r\n"
    );
}

/// dctunnel's server side checks stunnel clients as it checks its own: a
/// certificate from the right CA with a name not in `allow_peers` is
/// refused, and so is a stunnel section still set up for pre-shared keys
/// (as ovh1's is today), which sends no certificate. The backend never sees
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dctunnel_server_refuses_stunnel_clients_it_does_not_allow() {
    let pki = Pki::new("CA");
    let (server, client, intruder) = (pki.issue(SERVER), pki.issue(CLIENT), pki.issue(INTRUDER));
    let (backend, reached) = counting_echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let mut dc = start_dctunnel(
        &dir,
        &dctunnel_server(
            "mongodb",
            backend,
            &pki.ca_pem,
            &server,
            &format!("[\"{CLIENT}\"]"),
        ),
    );
    let tls = dc.listening("mongodb");
    let psk = tempfile::tempdir().unwrap();
    let secrets = psk.path().join("psk.txt");
    write_private(&secrets, "ovh1:9bd1a2f0c4e84d3b8a7f6e5d4c3b2a19\n");
    let stunnel = Stunnel::start(
        &(stunnel_client("allowed", tls, &pki.ca_pem, &client, "")
            + &stunnel_client("intruder", tls, &pki.ca_pem, &intruder, "")
            + &format!(
                "[psk]\nclient = yes\naccept = 127.0.0.1:0\nconnect = {tls}\n\
                 ciphers = PSK\nPSKsecrets = {}\nPSKidentity = ovh1\n",
                secrets.display()
            )),
    );

    let mut conn = TcpStream::connect(stunnel.address("allowed"))
        .await
        .unwrap();
    assert_eq!(roundtrip(&mut conn, b"PING\r\n").await, b"PING\r\n");
    drop(conn);

    assert_eq!(refused(stunnel.address("intruder")).await, b"");
    let f = dc.wait_for("connection refused");
    assert_eq!(f["reason"], "peer_not_allowed", "{f}");
    let peer = dc.seen.last().unwrap()["span"]["peer"].to_string();
    assert!(peer.contains(INTRUDER), "the log names who tried: {peer}");

    assert_eq!(refused(stunnel.address("psk")).await, b"");
    let f = dc.wait_for("connection refused");
    assert_eq!(f["reason"], "handshake_failed", "{f}");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("peer sent no certificates"),
        "{f}"
    );
    assert_eq!(
        reached.load(Ordering::SeqCst),
        1,
        "a refused client got through"
    );
}

/// Halfway through a migration, a client host already on dctunnel meets a
/// server host whose stunnel section is still the pre-shared-key one
/// (`ciphers = PSK`, `PSKsecrets`, no certificate, as off2's today): the
/// handshake fails on both sides with no word about keys or certificates,
/// only a TLS handshake failure. The log lines each side prints are the ones
/// docs/migrating-from-stunnel.md quotes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dctunnel_client_fails_against_an_unchanged_psk_stunnel_server() {
    let pki = Pki::new("CA");
    let client = pki.issue(CLIENT);
    let (backend, reached) = counting_echo_backend().await;
    let psk = tempfile::tempdir().unwrap();
    let secrets = psk.path().join("mongodb-psk.txt");
    write_private(
        &secrets,
        "ovh-proxy-mongodb:9bd1a2f0c4e84d3b8a7f6e5d4c3b2a19\n",
    );
    let stunnel = Stunnel::start(&format!(
        "[OffMongodb]\nclient = no\naccept = 127.0.0.1:0\nconnect = {backend}\n\
         ciphers = PSK\nPSKsecrets = {}\n",
        secrets.display()
    ));
    let dir = tempfile::tempdir().unwrap();
    let mut dc = start_dctunnel(
        &dir,
        &dctunnel_client(
            "mongodb",
            stunnel.address("OffMongodb"),
            SERVER,
            &pki.ca_pem,
            &client,
            "",
        ),
    );
    let entrance = dc.listening("mongodb");

    assert_eq!(refused(entrance).await, b"");
    let f = dc.wait_for("connection refused");
    assert_eq!(f["reason"], "handshake_failed", "{f}");
    let said = f.to_string();
    assert!(
        said.contains("TLS handshake with the remote failed")
            && said.contains("received fatal alert: HandshakeFailure"),
        "{f}"
    );
    stunnel.wait_for("Peer certificate not required");
    stunnel.wait_for("SSL_accept: ");
    stunnel.wait_for("no suitable signature algorithm");
    stunnel.wait_for("Connection reset/closed: 0 byte(s) sent to TLS, 0 byte(s) sent to socket");
    assert_eq!(reached.load(Ordering::SeqCst), 0, "the backend was reached");
}

/// A stunnel server with `verifyChain = yes` and `CAfile` refuses a dctunnel
/// client whose certificate carries the right name but comes from another
/// CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stunnel_server_refuses_a_dctunnel_client_from_another_ca() {
    let pki = Pki::new("CA");
    let server = pki.issue(SERVER);
    let other_pki = Pki::new("other CA");
    let impostor = other_pki.issue(CLIENT);
    let (backend, reached) = counting_echo_backend().await;
    let stunnel = Stunnel::start(&stunnel_server(
        "mongodb",
        backend,
        &pki.ca_pem,
        &server,
        &format!("checkHost = {CLIENT}"),
    ));
    let remote = stunnel.address("mongodb");
    let dir = tempfile::tempdir().unwrap();
    // It trusts the server's CA: only the server side can refuse.
    let mut dc = start_dctunnel(
        &dir,
        &dctunnel_client("mongodb", remote, SERVER, &pki.ca_pem, &impostor, ""),
    );
    let entrance = dc.listening("mongodb");

    assert_eq!(refused(entrance).await, b"");
    stunnel.wait_for("unable to get local issuer certificate");
    stunnel.wait_for(&format!("Rejected by CERT at depth=0: CN={CLIENT}"));
    // TLS 1.3: the client's handshake ends before the server has judged the
    // client certificate, so dctunnel hears the verdict as an alert, and
    // counts it as a refusal.
    let f = dc.wait_for("connection refused by the remote");
    assert!(f["error"].as_str().unwrap().contains("UnknownCA"), "{f}");
    assert_eq!(f["reason"], "handshake_failed", "{f}");
    assert_eq!(reached.load(Ordering::SeqCst), 0, "the backend was reached");
}

/// stunnel's `checkHost` in a server section refuses a dctunnel client whose
/// certificate (from the right CA) names another host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stunnel_server_check_host_refuses_a_dctunnel_client_with_another_name() {
    let pki = Pki::new("CA");
    let (server, intruder) = (pki.issue(SERVER), pki.issue(INTRUDER));
    let (backend, reached) = counting_echo_backend().await;
    let stunnel = Stunnel::start(&stunnel_server(
        "mongodb",
        backend,
        &pki.ca_pem,
        &server,
        &format!("checkHost = {CLIENT}"),
    ));
    let remote = stunnel.address("mongodb");
    let dir = tempfile::tempdir().unwrap();
    let mut dc = start_dctunnel(
        &dir,
        &dctunnel_client("mongodb", remote, SERVER, &pki.ca_pem, &intruder, ""),
    );
    let entrance = dc.listening("mongodb");

    assert_eq!(refused(entrance).await, b"");
    stunnel.wait_for("CERT: Subject checks failed");
    stunnel.wait_for(&format!("Rejected by CERT at depth=0: CN={INTRUDER}"));
    dc.wait_for("connection refused by the remote");
    assert_eq!(reached.load(Ordering::SeqCst), 0, "the backend was reached");
}

/// A dctunnel client refuses a stunnel server whose certificate does not
/// carry `server_name`, and one whose certificate has the right name from
/// another CA; the same stunnel with the right name gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dctunnel_client_refuses_a_stunnel_server_with_the_wrong_name_or_ca() {
    let pki = Pki::new("CA");
    let (server, client) = (pki.issue(SERVER), pki.issue(CLIENT));
    let other_pki = Pki::new("other CA");
    let impostor = other_pki.issue(SERVER);
    let (backend, reached) = counting_echo_backend().await;
    let checks = format!("checkHost = {CLIENT}");
    let stunnel = Stunnel::start(
        &(stunnel_server("genuine", backend, &pki.ca_pem, &server, &checks)
            + &stunnel_server("impostor", backend, &pki.ca_pem, &impostor, &checks)),
    );
    let (genuine, fake) = (stunnel.address("genuine"), stunnel.address("impostor"));
    let dir = tempfile::tempdir().unwrap();
    let mut dc = start_dctunnel(
        &dir,
        &(dctunnel_client("right", genuine, SERVER, &pki.ca_pem, &client, "")
            + &dctunnel_client(
                "wrong-name",
                genuine,
                "db.elsewhere.test",
                &pki.ca_pem,
                &client,
                "",
            )
            + &dctunnel_client("other-ca", fake, SERVER, &pki.ca_pem, &client, "")),
    );
    let right = dc.listening("right");
    let wrong_name = dc.listening("wrong-name");
    let other_ca = dc.listening("other-ca");

    let mut conn = TcpStream::connect(right).await.unwrap();
    assert_eq!(roundtrip(&mut conn, b"PING\r\n").await, b"PING\r\n");
    drop(conn);

    assert_eq!(refused(wrong_name).await, b"");
    let f = dc.wait_for("connection refused");
    assert_eq!(f["reason"], "handshake_failed", "{f}");
    let msg = f["message"].as_str().unwrap();
    assert!(
        msg.contains("certificate not valid for name \"db.elsewhere.test\""),
        "{msg}"
    );

    assert_eq!(refused(other_ca).await, b"");
    let f = dc.wait_for("connection refused");
    assert_eq!(f["reason"], "handshake_failed", "{f}");
    let msg = f["message"].as_str().unwrap();
    assert!(msg.contains("UnknownIssuer"), "{msg}");
    assert_eq!(
        reached.load(Ordering::SeqCst),
        1,
        "a refused server was used"
    );
}

/// stunnel's `checkHost` in a client section refuses a dctunnel server whose
/// certificate (from the right CA) names another host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stunnel_client_check_host_refuses_a_dctunnel_server_with_another_name() {
    let pki = Pki::new("CA");
    let (impostor, client) = (pki.issue(INTRUDER), pki.issue(CLIENT));
    let (backend, reached) = counting_echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let mut dc = start_dctunnel(
        &dir,
        &dctunnel_server(
            "mongodb",
            backend,
            &pki.ca_pem,
            &impostor,
            &format!("[\"{CLIENT}\"]"),
        ),
    );
    let tls = dc.listening("mongodb");
    let stunnel = Stunnel::start(&stunnel_client("mongodb", tls, &pki.ca_pem, &client, ""));

    assert_eq!(refused(stunnel.address("mongodb")).await, b"");
    stunnel.wait_for("CERT: Subject checks failed");
    stunnel.wait_for(&format!("Rejected by CERT at depth=0: CN={INTRUDER}"));
    dc.wait_for("connection refused");
    assert_eq!(reached.load(Ordering::SeqCst), 0, "the backend was reached");
}

/// A stunnel capped at TLS 1.2 (`sslVersion = TLSv1.2`, as old files have)
/// is refused by dctunnel's default TLS 1.3-only setting, and works with
/// `tls12 = true`, which `dctunnel import-stunnel` writes for such files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stunnel_capped_at_tls12_needs_tls12_true() {
    let pki = Pki::new("CA");
    let (server, client) = (pki.issue(SERVER), pki.issue(CLIENT));
    let (backend, reached) = counting_echo_backend().await;
    let stunnel = Stunnel::start(&stunnel_server(
        "legacy",
        backend,
        &pki.ca_pem,
        &server,
        &format!("checkHost = {CLIENT}\nsslVersion = TLSv1.2"),
    ));
    let remote = stunnel.address("legacy");
    let dir = tempfile::tempdir().unwrap();
    let mut dc = start_dctunnel(
        &dir,
        &(dctunnel_client("tls13-only", remote, SERVER, &pki.ca_pem, &client, "")
            + &dctunnel_client(
                "tls12",
                remote,
                SERVER,
                &pki.ca_pem,
                &client,
                "tls12 = true",
            )),
    );
    let default = dc.listening("tls13-only");
    let tls12 = dc.listening("tls12");

    assert_eq!(refused(default).await, b"");
    let f = dc.wait_for("connection refused");
    let msg = f["message"].as_str().unwrap();
    assert!(msg.contains("ProtocolVersion"), "{msg}");
    stunnel.wait_for("unsupported protocol");

    let mut conn = TcpStream::connect(tls12).await.unwrap();
    assert_eq!(roundtrip(&mut conn, b"PING\r\n").await, b"PING\r\n");
    stunnel.wait_for("TLSv1.2 ciphersuite");
    drop(conn);
    assert_eq!(reached.load(Ordering::SeqCst), 1);
}

/// The steps of docs/migrating-from-stunnel.md with the certificates that
/// guide makes (`dctunnel certs init-ca` and `issue`, the real host names):
/// stunnel at both ends on certificates, then either side switched to
/// dctunnel while the other still runs stunnel, then dctunnel at both ends.
/// Two dctunnel processes play off2 (server side) and the ovh1 container
/// (client side).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_steps_work_with_certificates_from_dctunnel_certs() {
    const OFF2: &str = "off2.openfoodfacts.org";
    const PROXY2: &str = "proxy2.openfoodfacts.org";
    const OVH: &str = "ovh-stunnel-client.openfoodfacts.org";
    let pki = tempfile::tempdir().unwrap();
    let (ca, hosts) = (pki.path().join("ca"), pki.path().join("hosts"));
    let (ca_dir, hosts_dir) = (ca.to_str().unwrap(), hosts.to_str().unwrap());
    dctunnel_cli(&["certs", "init-ca", "--dir", ca_dir]);
    dctunnel_cli(&[
        "certs", "issue", "--ca", ca_dir, "--name", OFF2, "--dns", PROXY2, "--out", hosts_dir,
    ]);
    dctunnel_cli(&[
        "certs", "issue", "--ca", ca_dir, "--name", OVH, "--out", hosts_dir,
    ]);
    let host = |name: &str| HostCert {
        cert: hosts.join(format!("{name}.pem")),
        key: hosts.join(format!("{name}.key")),
    };
    let (off2, ovh, ca_pem) = (host(OFF2), host(OVH), ca.join("ca.pem"));
    let (mongodb, reached) = counting_echo_backend().await;

    // off2 on dctunnel.
    let off2_dir = tempfile::tempdir().unwrap();
    let mut off2_dctunnel = start_dctunnel(
        &off2_dir,
        &dctunnel_server("mongodb", mongodb, &ca_pem, &off2, &format!("[\"{OVH}\"]")),
    );
    let off2_dctunnel_addr = off2_dctunnel.listening("mongodb");
    // off2 on stunnel.
    let off2_stunnel = Stunnel::start(&stunnel_server(
        "off2-mongodb",
        mongodb,
        &ca_pem,
        &off2,
        &format!("checkHost = {OVH}"),
    ));
    let off2_stunnel_addr = off2_stunnel.address("off2-mongodb");
    // The ovh1 container on stunnel, towards each.
    let ovh_stunnel = Stunnel::start(
        &(stunnel_client_for("ovh1-mongodb", off2_stunnel_addr, PROXY2, &ca_pem, &ovh, "")
            + &stunnel_client_for(
                "ovh1-mongodb-to-dctunnel",
                off2_dctunnel_addr,
                PROXY2,
                &ca_pem,
                &ovh,
                "",
            )),
    );
    // The ovh1 container on dctunnel, towards each.
    let ovh_dir = tempfile::tempdir().unwrap();
    let mut ovh_dctunnel = start_dctunnel(
        &ovh_dir,
        &(dctunnel_client("to-stunnel", off2_stunnel_addr, PROXY2, &ca_pem, &ovh, "")
            + &dctunnel_client("to-dctunnel", off2_dctunnel_addr, PROXY2, &ca_pem, &ovh, "")),
    );
    let ovh_dctunnel_to_stunnel = ovh_dctunnel.listening("to-stunnel");
    let ovh_dctunnel_to_dctunnel = ovh_dctunnel.listening("to-dctunnel");

    for (step, entrance) in [
        ("stunnel at both ends", ovh_stunnel.address("ovh1-mongodb")),
        ("ovh1 on dctunnel, off2 on stunnel", ovh_dctunnel_to_stunnel),
        (
            "ovh1 on stunnel, off2 on dctunnel",
            ovh_stunnel.address("ovh1-mongodb-to-dctunnel"),
        ),
        ("dctunnel at both ends", ovh_dctunnel_to_dctunnel),
    ] {
        let mut conn = TcpStream::connect(entrance).await.unwrap();
        let request = format!("find products: {step}\r\n");
        assert_eq!(
            roundtrip(&mut conn, request.as_bytes()).await,
            request.as_bytes(),
            "{step}"
        );
    }
    assert_eq!(reached.load(Ordering::SeqCst), 4);
}

/// Runs `dctunnel ARGS` and checks that it succeeds.
fn dctunnel_cli(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_dctunnel"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dctunnel {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Debian's stunnel4 running in the foreground on a configuration written
/// to a temporary folder, its log lines kept as they come; killed when
/// dropped, so that a failing test leaves no stunnel behind.
struct Stunnel {
    child: Child,
    log: Arc<Log>,
    _dir: tempfile::TempDir,
}

/// stunnel's log lines so far, and whether it closed its stderr (exited).
#[derive(Default)]
struct Log {
    state: Mutex<(Vec<String>, bool)>,
    grew: Condvar,
}

impl Stunnel {
    /// Starts stunnel with `sections` (stunnel syntax) and waits until it
    /// accepts connections.
    fn start(sections: &str) -> Stunnel {
        let bin = stunnel_binary();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stunnel.conf");
        // Foreground, logging to stderr only (not to the host's syslog), no
        // pid file, no setuid: everything stays in the test's folder.
        let text = format!("foreground = yes\npid =\nsyslog = no\ndebug = info\n\n{sections}");
        std::fs::write(&path, &text).unwrap();
        let mut child = Command::new(&bin)
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Log::default());
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.state.lock().unwrap().0.push(line);
                sink.grew.notify_all();
            }
            sink.state.lock().unwrap().1 = true;
            sink.grew.notify_all();
        });
        let stunnel = Stunnel {
            child,
            log,
            _dir: dir,
        };
        // stunnel says this once every section's port is bound. (A probe
        // connection would do too for a server section, but would make a
        // client section open a TLS connection to the dctunnel under test.)
        if !stunnel.wait_until("Accepting new connections") {
            panic!(
                "stunnel exited on this configuration:\n{text}\nits log:\n{}",
                stunnel.log()
            );
        }
        stunnel
    }

    /// The address section `name` listens on (its `accept` names port 0),
    /// from stunnel's "Service [name] (FD=...) bound to ADDRESS" line.
    fn address(&self, name: &str) -> SocketAddr {
        let prefix = format!("Service [{name}] (FD=");
        let state = self.log.state.lock().unwrap();
        let line = state
            .0
            .iter()
            .find(|l| l.contains(&prefix) && l.contains(") bound to "))
            .unwrap_or_else(|| panic!("stunnel never said where [{name}] listens"));
        let (_, address) = line.rsplit_once(" bound to ").unwrap();
        address
            .parse()
            .unwrap_or_else(|e| panic!("{address:?} in {line:?}: {e}"))
    }

    fn log(&self) -> String {
        self.log.state.lock().unwrap().0.join("\n")
    }

    /// Waits (up to 20 s) until a log line so far contains `text`; false
    /// if stunnel exited without saying it.
    fn wait_until(&self, text: &str) -> bool {
        let state = self.log.state.lock().unwrap();
        let (state, timeout) = self
            .log
            .grew
            .wait_timeout_while(state, Duration::from_secs(20), |(lines, closed)| {
                !*closed && !lines.iter().any(|l| l.contains(text))
            })
            .unwrap();
        let said = state.0.iter().any(|l| l.contains(text));
        assert!(
            said || !timeout.timed_out(),
            "stunnel never logged {text:?} in 20 s; its log:\n{}",
            state.0.join("\n")
        );
        said
    }

    /// Waits (up to 20 s) until a log line so far contains `text`.
    fn wait_for(&self, text: &str) {
        assert!(
            self.wait_until(text),
            "stunnel exited without logging {text:?}; its log:\n{}",
            self.log()
        );
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The stunnel binary: Debian installs `stunnel4` and links `stunnel` to it.
fn stunnel_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["stunnel4", "stunnel"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "stunnel4 is not installed: these interoperability tests run Debian's stunnel4 for real \
         and do not skip without it. Install it with `apt-get install stunnel4`, or run ./test.sh, \
         which does"
    );
}

/// A stunnel server-mode section: accepts mutual TLS on 127.0.0.1 (port
/// 0: see [`Stunnel::address`]) with `me`, demands a client certificate signed by `ca`, forwards to
/// `backend`. `extra` holds more lines (checkHost, sslVersion...).
fn stunnel_server(
    name: &str,
    backend: SocketAddr,
    ca: &Path,
    me: &HostCert,
    extra: &str,
) -> String {
    format!(
        "[{name}]\naccept = 127.0.0.1:0\nconnect = {backend}\nCAfile = {ca}\n\
         cert = {cert}\nkey = {key}\nverifyChain = yes\n{extra}\n\n",
        ca = ca.display(),
        cert = me.cert.display(),
        key = me.key.display(),
    )
}

/// A stunnel client-mode section: accepts plaintext on 127.0.0.1 (port 0:
/// see [`Stunnel::address`]), connects with TLS to `remote`, presenting `me`, and checks the
/// server's certificate against `ca` and the name [`SERVER`].
///
/// It sends that name as SNI: in production `connect` names the host
/// (`proxy2.openfoodfacts.org:27017`) and stunnel sends that name; here it
/// is an IP address, which stunnel would send as SNI, against RFC 6066.
fn stunnel_client(name: &str, remote: SocketAddr, ca: &Path, me: &HostCert, extra: &str) -> String {
    stunnel_client_for(name, remote, SERVER, ca, me, extra)
}

/// [`stunnel_client`] checking and sending `server_name` instead.
fn stunnel_client_for(
    name: &str,
    remote: SocketAddr,
    server_name: &str,
    ca: &Path,
    me: &HostCert,
    extra: &str,
) -> String {
    format!(
        "[{name}]\nclient = yes\naccept = 127.0.0.1:0\nconnect = {remote}\n\
         CAfile = {ca}\ncert = {cert}\nkey = {key}\nverifyChain = yes\n\
         checkHost = {server_name}\nsni = {server_name}\n{extra}\n\n",
        ca = ca.display(),
        cert = me.cert.display(),
        key = me.key.display(),
    )
}

/// A dctunnel server-mode `[[service]]` on 127.0.0.1:0.
fn dctunnel_server(
    name: &str,
    backend: SocketAddr,
    ca: &Path,
    me: &HostCert,
    allow_peers: &str,
) -> String {
    format!(
        r#"
[[service]]
name = "{name}"
mode = "server"
listen = "127.0.0.1:0"
connect = "{backend}"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
allow_peers = {allow_peers}
"#,
        ca = ca.display(),
        cert = me.cert.display(),
        key = me.key.display(),
    )
}

/// A dctunnel client-mode `[[service]]` on 127.0.0.1:0 towards `remote`;
/// `extra` holds more keys.
fn dctunnel_client(
    name: &str,
    remote: SocketAddr,
    server_name: &str,
    ca: &Path,
    me: &HostCert,
    extra: &str,
) -> String {
    format!(
        r#"
[[service]]
name = "{name}"
mode = "client"
listen = "127.0.0.1:0"
connect = "{remote}"
server_name = "{server_name}"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
{extra}
"#,
        ca = ca.display(),
        cert = me.cert.display(),
        key = me.key.display(),
    )
}

/// Runs the real binary on `services` and waits until it is ready.
fn start_dctunnel(dir: &tempfile::TempDir, services: &str) -> Proc {
    let path = dir.path().join("dctunnel.toml");
    std::fs::write(
        &path,
        format!("[daemon]\nshutdown_timeout = \"1s\"\n{services}"),
    )
    .unwrap();
    Proc::start(&path, "")
}

/// An echo backend (sends back what it reads, half-closes after the
/// client's EOF) that counts the connections it gets: a refused peer must
/// never reach it.
async fn counting_echo_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, count)
}

/// `len` bytes that do not compress, the same at every run.
fn payload(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// When the client half-closes in [`echo_bulk`].
#[derive(Clone, Copy)]
enum HalfClose {
    /// Right after the last byte sent, with the reply still in flight.
    Early,
    /// Once the whole reply is back. Needed when stunnel faces the
    /// backend: stunnel 5.68 may drop the end of a backend's reply when the
    /// backend closes right after sending it (it takes the hangup for an
    /// end of data while bytes are still unread; mtrojnar/stunnel#23).
    AfterReply,
}

/// Sends `data` to the echo backend behind `entrance` while reading what
/// comes back, half-closes as `when` says, and reads to the end: the reply
/// only ends if the EOF crossed the tunnel and the backend's own close came
/// back.
async fn echo_bulk(entrance: SocketAddr, data: &[u8], when: HalfClose) -> Vec<u8> {
    let conn = TcpStream::connect(entrance).await.unwrap();
    let (mut r, mut w) = conn.into_split();
    let sent = data.to_vec();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        if let HalfClose::Early = when {
            w.shutdown().await.unwrap();
        }
        w
    });
    let mut back = Vec::with_capacity(data.len());
    let read = async {
        if let HalfClose::AfterReply = when {
            let expected = data.len() as u64;
            (&mut r)
                .take(expected)
                .read_to_end(&mut back)
                .await
                .unwrap();
        }
        let mut w = writer.await.unwrap();
        if let HalfClose::AfterReply = when {
            w.shutdown().await.unwrap();
        }
        r.read_to_end(&mut back).await.unwrap();
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("transfer not finished within 60 s");
    back
}

/// Connects to a plaintext entrance whose tunnel is refused, sends a
/// request, and returns whatever came back before the connection ended
/// (with EOF or a reset).
async fn refused(entrance: SocketAddr) -> Vec<u8> {
    // The tunnel may already be gone: a reset here is part of the refusal,
    // even one that comes before `connect` returns.
    let mut conn = match TcpStream::connect(entrance).await {
        Ok(conn) => conn,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Vec::new(),
        Err(e) => panic!("cannot connect to {entrance}: {e}"),
    };
    let _ = conn.write_all(b"*1\r\n$4\r\nPING\r\n").await;
    read_to_end(&mut conn).await.0
}
