//! End-to-end behaviour of a tunnel: client-mode service → server-mode
//! service → backend, all in one daemon on loopback, with real TLS.

mod common;

use std::time::Duration;

use common::*;
use dctunnel::service::Rejection;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_go_through_and_come_back() {
    let t = tunnel(echo_backend().await, TunnelOpts::default()).await;
    let mut c = TcpStream::connect(t.entrance).await.unwrap();
    assert_eq!(roundtrip(&mut c, b"PING\r\n").await, b"PING\r\n");
    assert_eq!(
        roundtrip(&mut c, b"second message").await,
        b"second message"
    );
    // Both ends see the connection, and the server end knows who it is.
    let conns = t.daemon.state("tls").unwrap().connections();
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0].peer.get().unwrap(), &format!("{CLIENT},localhost"));
    drop(c);
    let state = t.daemon.state("plain").unwrap();
    eventually("connection forgotten", || state.active() == 0).await;
    t.daemon.shutdown().await;
}

/// 64 MiB each way at once, checksums compared at both ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transfer_both_ways_is_unchanged() {
    let t = tunnel(echo_backend().await, TunnelOpts::default()).await;
    let c = TcpStream::connect(t.entrance).await.unwrap();
    let (mut r, mut w) = c.into_split();
    const SIZE: usize = 64 << 20;
    let writer = tokio::spawn(async move {
        let mut hash = Sha256::new();
        let mut block = vec![0u8; 1 << 16];
        let mut x: u32 = 12345;
        let mut sent = 0;
        while sent < SIZE {
            for b in block.iter_mut() {
                x = x.wrapping_mul(1664525).wrapping_add(1013904223);
                *b = (x >> 24) as u8;
            }
            hash.update(&block);
            w.write_all(&block).await.unwrap();
            sent += block.len();
        }
        w.shutdown().await.unwrap();
        hash.finalize()
    });
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        got += n;
    }
    assert_eq!(got, SIZE);
    assert_eq!(hash.finalize(), writer.await.unwrap());
    t.daemon.shutdown().await;
}

/// The client finishes sending (FIN) and still reads the whole reply: the
/// FIN crosses the tunnel as close_notify and reaches the backend as FIN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_half_close_still_gets_the_reply() {
    // A backend that reads everything until EOF, then answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        let reply = format!("got {} bytes", all.len());
        s.write_all(reply.as_bytes()).await.unwrap();
        s.shutdown().await.unwrap();
    });
    let t = tunnel(backend, TunnelOpts::default()).await;
    let mut c = TcpStream::connect(t.entrance).await.unwrap();
    c.write_all(&vec![7u8; 100_000]).await.unwrap();
    c.shutdown().await.unwrap();
    let (reply, clean) = read_to_end(&mut c).await;
    assert_eq!(String::from_utf8(reply).unwrap(), "got 100000 bytes");
    assert!(clean);
    t.daemon.shutdown().await;
}

/// The backend finishes sending first; the client can still send, and the
/// backend still receives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_half_close_keeps_the_other_direction() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let (mut r, mut w) = s.into_split();
        w.write_all(b"bye from backend").await.unwrap();
        w.shutdown().await.unwrap();
        let mut all = Vec::new();
        r.read_to_end(&mut all).await.unwrap();
        tx.send(all).unwrap();
    });
    let t = tunnel(backend, TunnelOpts::default()).await;
    let mut c = TcpStream::connect(t.entrance).await.unwrap();
    let (got, clean) = read_to_end(&mut c).await;
    assert_eq!(got, b"bye from backend");
    assert!(clean);
    c.write_all(b"client still talking").await.unwrap();
    c.shutdown().await.unwrap();
    let received = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(received, b"client still talking");
    t.daemon.shutdown().await;
}

/// SMTP: the server speaks first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_speaks_first() {
    let t = tunnel(
        banner_backend(b"220 pmg.example ESMTP ready\r\n").await,
        TunnelOpts::default(),
    )
    .await;
    let mut c = TcpStream::connect(t.entrance).await.unwrap();
    let mut banner = vec![0; 29];
    tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut banner))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(banner, b"220 pmg.example ESMTP ready\r\n");
    assert_eq!(roundtrip(&mut c, b"EHLO off1\r\n").await, b"EHLO off1\r\n");
    t.daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_connections() {
    let t = tunnel(echo_backend().await, TunnelOpts::default()).await;
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let entrance = t.entrance;
        tasks.push(tokio::spawn(async move {
            let mut c = TcpStream::connect(entrance).await.unwrap();
            let msg = format!("connection {i}").repeat(50);
            assert_eq!(roundtrip(&mut c, msg.as_bytes()).await, msg.as_bytes());
            c
        }));
    }
    let mut open = Vec::new();
    for task in tasks {
        open.push(task.await.unwrap());
    }
    // All 200 are open at once through both ends.
    assert_eq!(t.daemon.state("plain").unwrap().active(), 200);
    assert_eq!(t.daemon.state("tls").unwrap().active(), 200);
    drop(open);
    let state = t.daemon.state("tls").unwrap();
    eventually("all closed", || state.active() == 0).await;
    assert_eq!(
        state.accepted.load(std::sync::atomic::Ordering::Relaxed),
        200
    );
    t.daemon.shutdown().await;
}

/// Connects straight to the server-mode port with a TLS client of our
/// choosing, and says whether a request got an answer.
async fn direct_tls(t: &Tunnel, config: std::sync::Arc<rustls::ClientConfig>, name: &str) -> bool {
    let tcp = TcpStream::connect(t.tls_port).await.unwrap();
    let sni = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let Ok(mut tls) = TlsConnector::from(config).connect(sni, tcp).await else {
        return false;
    };
    // In TLS 1.3 the client finishes its handshake before the server has
    // checked the client certificate; the refusal shows on the first read.
    if tls.write_all(b"hello").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 5];
    matches!(
        tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut buf)).await,
        Ok(Ok(_))
    )
}

async fn assert_rejected(t: &Tunnel, reason: Rejection) {
    let state = t.daemon.state("tls").unwrap();
    eventually(&format!("rejection {reason} counted"), || {
        state.rejected(reason) == 1
    })
    .await;
    assert_eq!(state.accepted.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(state.active(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_client_certificate_gets_through_directly() {
    let t = tunnel(echo_backend().await, TunnelOpts::default()).await;
    let ok = direct_tls(&t, tls_client(&t.pki.ca_pem, Some(&t.client_cert)), SERVER).await;
    assert!(ok, "a valid client was refused");
    t.daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_certificate_is_refused() {
    let t = tunnel(echo_backend().await, TunnelOpts::default()).await;
    assert!(!direct_tls(&t, tls_client(&t.pki.ca_pem, None), SERVER).await);
    assert_rejected(&t, Rejection::HandshakeFailed).await;
    t.daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_from_another_ca_is_refused() {
    let t = tunnel(echo_backend().await, TunnelOpts::default()).await;
    // Same name as the allowed client, signed by a different CA.
    let other = Pki::new("other CA");
    let impostor = other.issue(CLIENT);
    assert!(!direct_tls(&t, tls_client(&t.pki.ca_pem, Some(&impostor)), SERVER).await);
    assert_rejected(&t, Rejection::HandshakeFailed).await;
    t.daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_client_certificate_is_refused() {
    let t = tunnel(echo_backend().await, TunnelOpts::default()).await;
    let expired = t.pki.issue_expired(CLIENT);
    assert!(!direct_tls(&t, tls_client(&t.pki.ca_pem, Some(&expired)), SERVER).await);
    assert_rejected(&t, Rejection::HandshakeFailed).await;
    t.daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_identity_not_in_allow_peers_is_refused() {
    let t = tunnel(echo_backend().await, TunnelOpts::default()).await;
    let stranger = t.pki.issue("redis-client.test");
    assert!(!direct_tls(&t, tls_client(&t.pki.ca_pem, Some(&stranger)), SERVER).await);
    assert_rejected(&t, Rejection::PeerNotAllowed).await;
    t.daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_without_san_is_matched_by_its_cn() {
    let t = tunnel(
        echo_backend().await,
        TunnelOpts {
            allow_peers: Some(r#"["legacy-host.test"]"#.into()),
            ..Default::default()
        },
    )
    .await;
    let legacy = t.pki.issue_cn_only("legacy-host.test");
    assert!(direct_tls(&t, tls_client(&t.pki.ca_pem, Some(&legacy)), SERVER).await);
    // The tunnel's own client (client.test) is not on this list.
    let mut c = TcpStream::connect(t.entrance).await.unwrap();
    c.write_all(b"x").await.unwrap();
    let (got, _) = read_to_end(&mut c).await;
    assert!(got.is_empty());
    t.daemon.shutdown().await;
}

/// The client side checks the server's name: a server certificate for
/// another name is refused and the plaintext connection closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_server_name_is_refused_by_the_client_side() {
    let t = tunnel(
        echo_backend().await,
        TunnelOpts {
            client_extra: String::new(),
            ..Default::default()
        },
    )
    .await;
    // Re-point the client side at a name the server certificate lacks.
    let text = std::fs::read_to_string(t.dir.path().join("dctunnel.toml"))
        .unwrap()
        .replace(
            &format!("server_name = \"{SERVER}\""),
            "server_name = \"proxy2.example.org\"",
        );
    let (_d, c) = config(&text);
    let mut daemon = t.daemon;
    daemon.reload(c.unwrap()).await.unwrap();
    let mut c = TcpStream::connect(t.entrance).await.unwrap();
    c.write_all(b"PING").await.unwrap();
    let (got, _) = read_to_end(&mut c).await;
    assert!(got.is_empty(), "data crossed a tunnel to the wrong server");
    let state = daemon.state("plain").unwrap();
    eventually("client side counted the failure", || {
        state.rejected(Rejection::HandshakeFailed) == 1
    })
    .await;
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_not_allowed_is_closed_before_tls() {
    let t = tunnel(
        echo_backend().await,
        TunnelOpts {
            server_extra: r#"allow_sources = ["10.0.0.0/8", "2a06:c484:5::/48"]"#.into(),
            ..Default::default()
        },
    )
    .await;
    // Raw TCP to the TLS port: closed without a single byte from us.
    let mut raw = TcpStream::connect(t.tls_port).await.unwrap();
    let _ = raw.write_all(b"\x16\x03\x01").await;
    let (got, _) = read_to_end(&mut raw).await;
    assert!(got.is_empty());
    let state = t.daemon.state("tls").unwrap();
    eventually("source rejection counted", || {
        state.rejected(Rejection::SourceNotAllowed) == 1
    })
    .await;
    assert_eq!(state.accepted.load(std::sync::atomic::Ordering::Relaxed), 0);
    t.daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peer_is_dropped_at_the_handshake_timeout() {
    let t = tunnel(
        echo_backend().await,
        TunnelOpts {
            server_extra: r#"handshake_timeout = "300ms""#.into(),
            ..Default::default()
        },
    )
    .await;
    let started = std::time::Instant::now();
    let mut silent = TcpStream::connect(t.tls_port).await.unwrap();
    // Meanwhile, a real client is served: the silent one blocks nobody.
    let mut c = TcpStream::connect(t.entrance).await.unwrap();
    assert_eq!(roundtrip(&mut c, b"still served").await, b"still served");
    let (got, _) = read_to_end(&mut silent).await;
    assert!(got.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(300));
    let state = t.daemon.state("tls").unwrap();
    eventually("timeout counted", || {
        state.rejected(Rejection::HandshakeTimeout) == 1
    })
    .await;
    t.daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_tls_port_is_closed_and_harms_nothing() {
    let t = tunnel(echo_backend().await, TunnelOpts::default()).await;
    let mut keep = TcpStream::connect(t.entrance).await.unwrap();
    assert_eq!(roundtrip(&mut keep, b"before").await, b"before");
    let mut junk = TcpStream::connect(t.tls_port).await.unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (reply, _) = read_to_end(&mut junk).await;
    // rustls may answer with an alert record, never with backend data.
    assert!(!reply.windows(4).any(|w| w == b"HTTP"));
    let state = t.daemon.state("tls").unwrap();
    eventually("garbage counted", || {
        state.rejected(Rejection::HandshakeFailed) == 1
    })
    .await;
    // The established connection is untouched.
    assert_eq!(roundtrip(&mut keep, b"after").await, b"after");
    t.daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_down_closes_promptly_and_recovers() {
    let backend = dead_address().await;
    let t = tunnel(backend, TunnelOpts::default()).await;
    let mut c = TcpStream::connect(t.entrance).await.unwrap();
    let _ = c.write_all(b"PING").await;
    let (got, _) = read_to_end(&mut c).await;
    assert!(got.is_empty());
    let state = t.daemon.state("tls").unwrap();
    eventually("connect failure counted", || {
        state.rejected(Rejection::BackendConnectFailed) == 1
    })
    .await;
    // The backend comes up on the same port: the tunnel works again.
    let listener = tokio::net::TcpListener::bind(backend).await.unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let (mut r, mut w) = s.split();
        tokio::io::copy(&mut r, &mut w).await.unwrap();
    });
    let mut c = TcpStream::connect(t.entrance).await.unwrap();
    assert_eq!(roundtrip(&mut c, b"back up").await, b"back up");
    t.daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_is_closed_after_the_idle_timeout() {
    let t = tunnel(
        echo_backend().await,
        TunnelOpts {
            client_extra: r#"idle_timeout = "400ms""#.into(),
            ..Default::default()
        },
    )
    .await;
    let mut c = TcpStream::connect(t.entrance).await.unwrap();
    // The daemon's last activity is after this instant (it reads what we
    // send next), so it may not close before 400 ms from here.
    let before_last_byte = std::time::Instant::now();
    assert_eq!(roundtrip(&mut c, b"active").await, b"active");
    let (got, _) = read_to_end(&mut c).await;
    assert!(got.is_empty());
    assert!(before_last_byte.elapsed() >= Duration::from_millis(400));
    t.daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_open_connections_finish() {
    let t = tunnel(
        echo_backend().await,
        TunnelOpts {
            daemon_extra: "[daemon]\nshutdown_timeout = \"10s\"".into(),
            ..Default::default()
        },
    )
    .await;
    let mut c = TcpStream::connect(t.entrance).await.unwrap();
    assert_eq!(roundtrip(&mut c, b"one").await, b"one");
    let entrance = t.entrance;
    let stopping = tokio::spawn(t.daemon.shutdown());
    // New connections are refused at once...
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect(entrance).await.is_err() {
            refused = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(refused, "still accepting after shutdown began");
    // ...while the open one still works, and its end lets the stop finish.
    assert_eq!(roundtrip(&mut c, b"two").await, b"two");
    assert!(!stopping.is_finished());
    drop(c);
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_deadline_closes_what_is_left() {
    let t = tunnel(
        echo_backend().await,
        TunnelOpts {
            daemon_extra: "[daemon]\nshutdown_timeout = \"300ms\"".into(),
            ..Default::default()
        },
    )
    .await;
    let mut c = TcpStream::connect(t.entrance).await.unwrap();
    assert_eq!(roundtrip(&mut c, b"one").await, b"one");
    tokio::time::timeout(Duration::from_secs(10), t.daemon.shutdown())
        .await
        .unwrap();
    let (got, _) = read_to_end(&mut c).await;
    assert!(got.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_only_peer_is_refused_by_default() {
    let t = tunnel(echo_backend().await, TunnelOpts::default()).await;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&t.pki.ca_pem).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = vec![CertificateDer::from_pem_file(&t.client_cert.cert).unwrap()];
    let key = PrivateKeyDer::from_pem_file(&t.client_cert.key).unwrap();
    let old = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    // Refused for its protocol version, not for anything else: the server
    // side answers its ClientHello with a protocol_version alert.
    let tcp = TcpStream::connect(t.tls_port).await.unwrap();
    let sni = rustls::pki_types::ServerName::try_from(SERVER).unwrap();
    let err = TlsConnector::from(std::sync::Arc::new(old))
        .connect(sni, tcp)
        .await
        .map(|_| ())
        .expect_err("a TLS 1.2-only client finished its handshake");
    assert_eq!(
        err.get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>()),
        Some(&rustls::Error::AlertReceived(
            rustls::AlertDescription::ProtocolVersion
        )),
        "{err}"
    );
    assert_rejected(&t, Rejection::HandshakeFailed).await;
    t.daemon.shutdown().await;
}

/// A pool filling up opens many connections at once: they resume TLS
/// sessions instead of doing full handshakes (the client side keeps
/// enough tickets for a burst).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_new_connections_resume_sessions() {
    let t = tunnel(echo_backend().await, TunnelOpts::default()).await;
    let burst = |n: usize| {
        let entrance = t.entrance;
        async move {
            let mut tasks = Vec::new();
            for _ in 0..n {
                tasks.push(tokio::spawn(async move {
                    let mut c = TcpStream::connect(entrance).await.unwrap();
                    assert_eq!(roundtrip(&mut c, b"x").await, b"x");
                }));
            }
            for task in tasks {
                task.await.unwrap();
            }
        }
    };
    burst(60).await; // the first connection is full; tickets accumulate
    let plain = t.daemon.state("plain").unwrap();
    let before = plain.resumed.load(std::sync::atomic::Ordering::Relaxed);
    burst(50).await;
    let resumed = plain.resumed.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert!(
        resumed >= 45,
        "only {resumed} of 50 concurrent connections resumed"
    );
    // The server side saw the same resumptions.
    let tls = t.daemon.state("tls").unwrap();
    assert!(tls.resumed.load(std::sync::atomic::Ordering::Relaxed) >= resumed);
    t.daemon.shutdown().await;
}

/// tls_resumption = false: every handshake is full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumption_can_be_switched_off() {
    let t = tunnel(
        echo_backend().await,
        TunnelOpts {
            client_extra: "tls_resumption = false".into(),
            ..Default::default()
        },
    )
    .await;
    for _ in 0..5 {
        let mut c = TcpStream::connect(t.entrance).await.unwrap();
        assert_eq!(roundtrip(&mut c, b"x").await, b"x");
    }
    let plain = t.daemon.state("plain").unwrap();
    assert_eq!(plain.resumed.load(std::sync::atomic::Ordering::Relaxed), 0);
    t.daemon.shutdown().await;
}

/// When the server side refuses our certificate, the client side learns it
/// from an alert after its own handshake (TLS 1.3): it counts and logs a
/// refusal, not an ordinary close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_side_counts_a_refusal_by_the_remote() {
    let t = tunnel(
        echo_backend().await,
        TunnelOpts {
            allow_peers: Some(r#"["somebody-else.test"]"#.into()),
            ..Default::default()
        },
    )
    .await;
    let mut c = TcpStream::connect(t.entrance).await.unwrap();
    let _ = c.write_all(b"PING").await;
    let (got, _) = read_to_end(&mut c).await;
    assert!(got.is_empty());
    let plain = t.daemon.state("plain").unwrap();
    eventually("client side counted the refusal", || {
        plain.rejected(Rejection::HandshakeFailed) == 1
    })
    .await;
    // The server side counts its refusal once its alert is sent, which
    // may come after the client side has seen it.
    let tls = t.daemon.state("tls").unwrap();
    eventually("server side counted the refusal", || {
        tls.rejected(Rejection::PeerNotAllowed) == 1
    })
    .await;
    t.daemon.shutdown().await;
}
