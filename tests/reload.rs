//! Changing a running daemon: reload keeps what did not change, applies
//! what did, refuses bad files whole; connection limits.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use dctunnel::daemon::Change;
use dctunnel::service::Rejection;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn config_path(t: &Tunnel) -> std::path::PathBuf {
    t.dir.path().join("dctunnel.toml")
}

fn current(t: &Tunnel) -> String {
    std::fs::read_to_string(config_path(t)).unwrap()
}

/// Writes `text` as the tunnel's config and reloads it the way SIGHUP does.
async fn reload_with(t: &mut Tunnel, text: &str) {
    let path = config_path(t);
    std::fs::write(&path, text).unwrap();
    // The verdict is checked by each test through what it changed.
    let _ = dctunnel::daemon::reload(&mut t.daemon, &path).await;
}

async fn changes(t: &mut Tunnel, text: &str) -> Vec<(String, Change)> {
    let (_d, c) = config(text);
    t.daemon.reload(c.unwrap()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_services_keep_their_connections() {
    let mut t = tunnel(echo_backend().await, TunnelOpts::default()).await;
    let mut live = TcpStream::connect(t.entrance).await.unwrap();
    assert_eq!(roundtrip(&mut live, b"before").await, b"before");
    let text = current(&t);
    let report = changes(&mut t, &text).await;
    assert_eq!(
        report,
        vec![
            ("tls".to_string(), Change::Kept),
            ("plain".to_string(), Change::Kept)
        ]
    );
    assert_eq!(roundtrip(&mut live, b"after reload").await, b"after reload");
    assert_eq!(t.daemon.local_addr("plain"), Some(t.entrance));
    t.daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_changes_nothing_and_is_recorded() {
    let mut t = tunnel(echo_backend().await, TunnelOpts::default()).await;
    let mut live = TcpStream::connect(t.entrance).await.unwrap();
    assert_eq!(roundtrip(&mut live, b"before").await, b"before");
    let good = current(&t);
    let before = t.daemon.settings("tls").unwrap();
    // Valid TOML, but the server side would let anybody in by mistake.
    let bad = good.replacen(&format!("allow_peers = [\"{CLIENT}\"]"), "", 1);
    reload_with(&mut t, &bad).await;
    let stats = t.daemon.view().reloads();
    assert_eq!(
        (stats.attempts, stats.failures, stats.last_failed),
        (1, 1, true)
    );
    assert!(stats
        .last_error
        .unwrap()
        .contains("service \"tls\": allow_peers: is required"));
    assert!(std::sync::Arc::ptr_eq(
        &before,
        &t.daemon.settings("tls").unwrap()
    ));
    assert_eq!(roundtrip(&mut live, b"untouched").await, b"untouched");
    let mut fresh = TcpStream::connect(t.entrance).await.unwrap();
    assert_eq!(roundtrip(&mut fresh, b"new one").await, b"new one");
    // Fixing the file and reloading again succeeds.
    reload_with(&mut t, &good).await;
    let stats = t.daemon.view().reloads();
    assert_eq!(
        (stats.attempts, stats.failures, stats.last_failed),
        (2, 1, false)
    );
    t.daemon.shutdown().await;
}

/// The server's certificate is replaced: new connections get the new one
/// (checked from the peer's side), the open connection carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_applies_to_new_connections() {
    let mut t = tunnel(echo_backend().await, TunnelOpts::default()).await;
    let mut live = TcpStream::connect(t.entrance).await.unwrap();
    assert_eq!(roundtrip(&mut live, b"old cert").await, b"old cert");
    let seen_before = presented_cert(&t).await;
    assert_eq!(seen_before, der_of(&t.server_cert.cert));

    let renewed = t.pki.issue(SERVER);
    let text = current(&t)
        .replace(
            &t.server_cert.cert.display().to_string(),
            &renewed.cert.display().to_string(),
        )
        .replace(
            &t.server_cert.key.display().to_string(),
            &renewed.key.display().to_string(),
        );
    let report = changes(&mut t, &text).await;
    assert!(
        report.contains(&("tls".to_string(), Change::Updated)),
        "{report:?}"
    );
    assert!(
        report.contains(&("plain".to_string(), Change::Kept)),
        "{report:?}"
    );

    let seen_after = presented_cert(&t).await;
    assert_eq!(seen_after, der_of(&renewed.cert));
    assert_ne!(seen_after, seen_before);
    assert_eq!(
        roundtrip(&mut live, b"still the old session").await,
        b"still the old session"
    );
    let mut fresh = TcpStream::connect(t.entrance).await.unwrap();
    assert_eq!(
        roundtrip(&mut fresh, b"through the new cert").await,
        b"through the new cert"
    );
    t.daemon.shutdown().await;
}

/// The certificate the server side presents (DER).
async fn presented_cert(t: &Tunnel) -> Vec<u8> {
    let tcp = TcpStream::connect(t.tls_port).await.unwrap();
    let cfg = tls_client(&t.pki.ca_pem, Some(&t.client_cert));
    let sni = rustls::pki_types::ServerName::try_from(SERVER).unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(sni, tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn der_of(path: &std::path::Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(path)
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_are_added_removed_and_moved() {
    let mut t = tunnel(echo_backend().await, TunnelOpts::default()).await;
    let mut live = TcpStream::connect(t.entrance).await.unwrap();
    assert_eq!(
        roundtrip(&mut live, b"on the old address").await,
        b"on the old address"
    );
    let old_entrance = t.entrance;

    // Moved: the entrance goes to another address (port 0 on another
    // loopback address; the port it gets is read back).
    let moved_to = "127.0.0.2:0";
    let text = current(&t);
    let (head, tail) = text.split_at(text.find("name = \"plain\"").unwrap());
    let moved = format!(
        "{head}{}",
        tail.replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{moved_to}\""),
            1
        )
    );
    let report = changes(&mut t, &moved).await;
    let moved_to = t.daemon.local_addr("plain").unwrap();
    assert_eq!(moved_to.ip().to_string(), "127.0.0.2");
    assert!(
        matches!(&report[1], (n, Change::Moved { from, to }) if n == "plain" && *from == old_entrance && *to == moved_to),
        "{report:?}"
    );
    assert!(
        TcpStream::connect(old_entrance).await.is_err(),
        "old address still accepts"
    );
    let mut c = TcpStream::connect(moved_to).await.unwrap();
    assert_eq!(roundtrip(&mut c, b"new address").await, b"new address");
    assert_eq!(
        roundtrip(&mut live, b"old connection drains").await,
        b"old connection drains"
    );

    // Removed: stops accepting at once, open connection goes on.
    let only_tls = moved[..moved.find("[[service]]\nname = \"plain\"").unwrap()].to_string();
    let report = changes(&mut t, &only_tls).await;
    assert!(
        report.contains(&("plain".to_string(), Change::Removed)),
        "{report:?}"
    );
    assert!(
        TcpStream::connect(moved_to).await.is_err(),
        "removed service still accepts"
    );
    assert_eq!(
        roundtrip(&mut c, b"removed but open").await,
        b"removed but open"
    );
    assert!(t.daemon.state("plain").is_none());

    // Added back.
    let report = changes(&mut t, &text).await;
    assert!(
        report.contains(&("plain".to_string(), Change::Added)),
        "{report:?}"
    );
    let mut again = TcpStream::connect(t.daemon.local_addr("plain").unwrap())
        .await
        .unwrap();
    assert_eq!(roundtrip(&mut again, b"added again").await, b"added again");
    t.daemon.shutdown().await;
}

/// Reloads in a loop while connections open and close as fast as they
/// can: no established connection is lost, no new one fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_connection_churn_lose_nothing() {
    let mut t = tunnel(echo_backend().await, TunnelOpts::default()).await;
    let entrance = t.entrance;
    let mut held = Vec::new();
    for i in 0..50 {
        let mut c = TcpStream::connect(entrance).await.unwrap();
        let msg = format!("held {i}");
        assert_eq!(roundtrip(&mut c, msg.as_bytes()).await, msg.as_bytes());
        held.push(c);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut churners = Vec::new();
    for _ in 0..4 {
        let stop = stop.clone();
        churners.push(tokio::spawn(async move {
            let mut done = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let mut c = TcpStream::connect(entrance).await.unwrap();
                assert_eq!(roundtrip(&mut c, b"churn").await, b"churn");
                done += 1;
            }
            done
        }));
    }
    let a = current(&t);
    let b = a.clone(); // the same file again: every service kept
    let updated = a.replacen(
        &format!("allow_peers = [\"{CLIENT}\"]"),
        &format!("allow_peers = [\"{CLIENT}\", \"other.test\"]"),
        1,
    );
    for i in 0..20 {
        let text = if i % 2 == 0 { &updated } else { &b };
        let report = changes(&mut t, text).await;
        assert!(
            report
                .iter()
                .all(|(_, c)| matches!(c, Change::Kept | Change::Updated)),
            "{report:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for c in churners {
        total += c.await.unwrap();
    }
    assert!(total > 0);
    for (i, c) in held.iter_mut().enumerate() {
        let msg = format!("still held {i}");
        assert_eq!(roundtrip(c, msg.as_bytes()).await, msg.as_bytes());
    }
    t.daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_the_next_one_only() {
    let t = tunnel(
        echo_backend().await,
        TunnelOpts {
            client_extra: "max_connections = 3".into(),
            ..Default::default()
        },
    )
    .await;
    let mut open = Vec::new();
    for i in 0..3 {
        let mut c = TcpStream::connect(t.entrance).await.unwrap();
        let msg = format!("conn {i}");
        assert_eq!(roundtrip(&mut c, msg.as_bytes()).await, msg.as_bytes());
        open.push(c);
    }
    let mut fourth = TcpStream::connect(t.entrance).await.unwrap();
    let _ = fourth.write_all(b"let me in").await;
    let (got, _) = read_to_end(&mut fourth).await;
    assert!(got.is_empty());
    let state = t.daemon.state("plain").unwrap();
    assert_eq!(state.rejected(Rejection::LimitReached), 1);
    assert_eq!(state.active(), 3);
    for (i, c) in open.iter_mut().enumerate() {
        let msg = format!("conn {i} unaffected");
        assert_eq!(roundtrip(c, msg.as_bytes()).await, msg.as_bytes());
    }
    // A place frees up: the next connection is served.
    drop(open.pop());
    eventually("a place freed", || state.active() == 2).await;
    let mut c = TcpStream::connect(t.entrance).await.unwrap();
    assert_eq!(roundtrip(&mut c, b"served").await, b"served");
    assert_eq!(state.accepted.load(Ordering::Relaxed), 4);
    t.daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_per_source_stops_one_runaway_client() {
    let t = tunnel(
        echo_backend().await,
        TunnelOpts {
            client_extra: "max_connections_per_source = 2".into(),
            ..Default::default()
        },
    )
    .await;
    let from = |ip: &str| {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        let entrance = t.entrance;
        async move {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind(std::net::SocketAddr::new(ip, 0)).unwrap();
            s.connect(entrance).await.unwrap()
        }
    };
    let mut a1 = from("127.0.0.1").await;
    let mut a2 = from("127.0.0.1").await;
    assert_eq!(roundtrip(&mut a1, b"a1").await, b"a1");
    assert_eq!(roundtrip(&mut a2, b"a2").await, b"a2");
    let mut a3 = from("127.0.0.1").await;
    let _ = a3.write_all(b"a3").await;
    let (got, _) = read_to_end(&mut a3).await;
    assert!(
        got.is_empty(),
        "third connection from one source was served"
    );
    // Another source still gets in.
    let mut b1 = from("127.0.0.2").await;
    assert_eq!(roundtrip(&mut b1, b"b1").await, b"b1");
    let state = t.daemon.state("plain").unwrap();
    assert_eq!(state.rejected(Rejection::LimitReached), 1);
    t.daemon.shutdown().await;
}
