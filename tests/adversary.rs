//! The daemon against clients that misbehave on purpose: floods of refused
//! connections, silent and half-open clients, clients that never read,
//! resets mid-transfer, reloads hammered during transfers. Each case keeps
//! a fix (or a property that held from the start) from regressing; the
//! figures an operator would ask about (log lines per refused connection,
//! memory with 2,000 half-open connections, probe latency with idle admin
//! clients) are printed with `--nocapture`.
//!
//! Descriptor exhaustion and recovery is `survives_descriptor_exhaustion_and_recovers`
//! in tests/process.rs, not repeated here.
//!
//! Every loop is bounded in count and time; only loopback addresses (the
//! flood comes from several of 127.0.0.0/8).

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use dctunnel::service::Rejection;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// The daemon's resident memory, in KiB, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// How many descriptors the daemon holds.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The value of one sample in a Prometheus scrape.
fn sample(scrape: &str, name_and_labels: &str) -> Option<u64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels))
        .and_then(|v| v.trim().parse().ok())
}

/// The descriptors this test process may open: the half-open case needs
/// thousands. Raised to the hard limit, as the daemon does for itself.
fn raise_own_nofile() -> u64 {
    dctunnel::systemd::raise_nofile_limit();
    let limit = std::fs::read_to_string("/proc/self/limits").unwrap();
    limit
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// Adds `lines` to the service `tls` of a [`tunnel_config`] text.
fn with_server_lines(text: String, lines: &str) -> String {
    let anchor = format!("allow_peers = [\"{CLIENT}\"]");
    assert!(text.contains(&anchor));
    text.replacen(&anchor, &format!("{anchor}\n{lines}"), 1)
}

/// A flood of connections from sources outside `allow_sources` costs a
/// few log lines, not one per connection, and the counter sees them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_flood_is_summarised_in_the_log_and_counted_exactly() {
    const FLOOD: u64 = 5_000;
    let sources: [IpAddr; 3] = ["127.0.0.1", "127.0.0.2", "127.0.0.3"].map(|s| s.parse().unwrap());
    let pki = Pki::new("CA");
    let server = pki.issue(SERVER);
    let backend = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dctunnel.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[daemon]
shutdown_timeout = "1s"

[admin]
listen = "127.0.0.1:0"

[[service]]
name = "guarded"
mode = "server"
listen = "127.0.0.1:0"
connect = "{backend}"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
allow_peers = ["{CLIENT}"]
allow_sources = ["192.0.2.0/24"]
"#,
            ca = pki.ca_pem.display(),
            cert = server.cert.display(),
            key = server.key.display(),
        ),
    )
    .unwrap();
    let mut p = Proc::start(&path, "");
    let port = p.listening("guarded");
    let admin: SocketAddr = p.wait_for("admin endpoint listening")["listen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    p.wait_for("ready");

    // Connect and close at once, from three sources, 50 at a time.
    let started = Instant::now();
    let workers: Vec<_> = (0..50u64)
        .map(|w| {
            tokio::spawn(async move {
                for i in 0..FLOOD / 50 {
                    let source = sources[((w + i) % 3) as usize];
                    let s = TcpSocket::new_v4().unwrap();
                    s.bind(SocketAddr::new(source, 0)).unwrap();
                    // Refused at once: the daemon closes it; nothing to read.
                    drop(s.connect(port).await.unwrap());
                }
            })
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(30), async {
        for w in workers {
            w.await.unwrap();
        }
    })
    .await
    .expect("the flood did not finish within 30 s");
    let flood_took = started.elapsed();

    // The counter is exact.
    let metric =
        "dctunnel_connections_rejected_total{service=\"guarded\",reason=\"source_not_allowed\"}";
    eventually_ok("all refusals counted", || async {
        let n = sample(&http_get(admin, "/metrics").await, metric);
        match n {
            Some(FLOOD) => Ok(()),
            other => Err(other),
        }
    })
    .await;

    // Every refusal is in the log once: in full, or in a summary's count.
    let (mut full, mut summarised, mut summaries) = (0u64, 0u64, 0u64);
    while full + summarised < FLOOD {
        let f = p.wait_for("");
        let msg = f["message"].as_str().unwrap_or("");
        if msg.contains("connection refused: source not in allow_sources") {
            full += 1;
        } else if msg.contains("connection refusals summarised") {
            assert_eq!(f["service"], "guarded", "{f}");
            assert_eq!(f["reason"], "source_not_allowed", "{f}");
            summaries += 1;
            summarised += f["not_logged"].as_u64().unwrap();
        }
    }
    assert_eq!(full + summarised, FLOOD);
    // The scrapes above add lines of their own (admin, at debug): only
    // the refusals' lines are counted.
    let lines = full + summaries;
    eprintln!(
        "refusal flood: {FLOOD} connections from 3 sources in {flood_took:?}: {lines} log lines \
         ({full} in full, {summaries} summaries), {:.4} lines per refused connection",
        lines as f64 / FLOOD as f64
    );
    // One window normally (five per source, one summary); a flood slowed
    // down past the interval gets one more window per interval.
    let windows = summaries.max(1);
    assert!(
        full <= windows * 3 * dctunnel::refusals::FULL_PER_SOURCE,
        "{full} refusals logged in full over {windows} windows"
    );
    assert!(lines <= 100, "{lines} log lines for {FLOOD} refusals");
}

/// A client that connects and never finishes its ClientHello is dropped at
/// `handshake_timeout`, while other clients are served all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_hello_is_dropped_at_the_handshake_timeout() {
    let backend = echo_backend().await;
    let t = tunnel(
        backend,
        TunnelOpts {
            server_extra: "handshake_timeout = \"1s\"".into(),
            ..Default::default()
        },
    )
    .await;
    // One says nothing; one sends the start of a TLS record announcing
    // 512 bytes, and stops.
    let silent = TcpStream::connect(t.tls_port).await.unwrap();
    let mut partial = TcpStream::connect(t.tls_port).await.unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .await
        .unwrap();
    // Served meanwhile, through the same server side.
    for i in 0..5 {
        let mut c = TcpStream::connect(t.entrance).await.unwrap();
        let msg = format!("served {i}");
        assert_eq!(roundtrip(&mut c, msg.as_bytes()).await, msg.as_bytes());
    }
    for (what, mut s) in [("silent", silent), ("partial", partial)] {
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("the {what} client is still held after 20 s"));
        assert!(matches!(r, Ok(0) | Err(_)), "{what}: {r:?}");
    }
    let state = t.daemon.state("tls").unwrap();
    eventually("both counted as handshake timeouts", || {
        state.rejected(Rejection::HandshakeTimeout) == 2
    })
    .await;
}

/// 2,000 connections that never send a byte: a real client is still
/// served, and the daemon's memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_keep_memory_bounded_and_others_served() {
    let limit = raise_own_nofile();
    // Each half-open connection is one descriptor here and one in the
    // daemon; leave room for the rest of the test binary.
    let count = 2_000.min(limit.saturating_sub(500) as usize);
    if count < 2_000 {
        eprintln!("open-files limit {limit}: {count} half-open connections instead of 2000");
    }
    let pki = Pki::new("CA");
    let (s, c) = (pki.issue(SERVER), pki.issue(CLIENT));
    let backend = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let ProcTunnel {
        proc: p,
        entrance,
        tls,
        ..
    } = start_tunnel_proc(
        &dir.path().join("dctunnel.toml"),
        "ulimit -n 8192;",
        |tls| {
            // Long enough that none is dropped while the test looks.
            with_server_lines(
                tunnel_config(&pki, &s, &c, backend, "127.0.0.1:0", "127.0.0.1:0", tls),
                "handshake_timeout = \"120s\"",
            )
        },
    );
    let pid = p.child.id();
    let fds_before = fds(pid);
    // Memory is measured from after a first connection, which sets up what
    // every connection shares (TLS configs, buffers in the allocator).
    let mut warm = TcpStream::connect(entrance).await.unwrap();
    assert_eq!(roundtrip(&mut warm, b"warm").await, b"warm");
    drop(warm);
    let rss_before = rss_kib(pid);

    let mut idle = Vec::with_capacity(count);
    for _ in 0..count {
        idle.push(TcpStream::connect(tls).await.unwrap());
    }
    eventually_ok("the daemon accepted every half-open connection", || {
        let n = fds(pid);
        std::future::ready(match n >= fds_before + count {
            true => Ok(()),
            false => Err(format!("{n} descriptors, {fds_before} before")),
        })
    })
    .await;
    let served = Instant::now();
    let mut c = TcpStream::connect(entrance).await.unwrap();
    assert_eq!(roundtrip(&mut c, b"still served").await, b"still served");
    let served = served.elapsed();
    let rss_after = rss_kib(pid);
    eprintln!(
        "half-open: {count} connections: daemon RSS {} KiB before, {} KiB after \
         (+{} KiB, {:.1} KiB each); a tunnelled round trip took {served:?} meanwhile",
        rss_before,
        rss_after,
        rss_after.saturating_sub(rss_before),
        rss_after.saturating_sub(rss_before) as f64 / count as f64,
    );
    assert!(
        rss_after < 200 * 1024,
        "daemon RSS {rss_after} KiB with {count} half-open connections"
    );
    drop(idle);
    drop(c);
    eventually(
        "the half-open connections' descriptors are released",
        || fds(pid) <= fds_before,
    )
    .await;
}

/// A backend that streams to a client that never reads: the daemon passes
/// on what the client's socket takes and no more, so the backend is held
/// back instead of the daemon's memory growing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_does_not_grow_the_daemon() {
    const OFFERED: u64 = 512 << 20;
    let written = Arc::new(AtomicU64::new(0));
    let stalled = Arc::new(AtomicBool::new(false));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    {
        let (written, stalled) = (written.clone(), stalled.clone());
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let chunk = vec![0x5a; 64 << 10];
            while written.load(Ordering::Relaxed) < OFFERED {
                // A write that waits this long is held back by the tunnel.
                match tokio::time::timeout(Duration::from_secs(2), s.write_all(&chunk)).await {
                    Ok(Ok(())) => written.fetch_add(chunk.len() as u64, Ordering::Relaxed),
                    Ok(Err(e)) => panic!("backend write failed: {e}"),
                    Err(_) => {
                        stalled.store(true, Ordering::Relaxed);
                        // Keep the connection open while the test looks.
                        let _ = s.readable().await;
                        return;
                    }
                };
            }
        });
    }
    let pki = Pki::new("CA");
    let (s, c) = (pki.issue(SERVER), pki.issue(CLIENT));
    let dir = tempfile::tempdir().unwrap();
    let ProcTunnel {
        proc: p, entrance, ..
    } = start_tunnel_proc(&dir.path().join("dctunnel.toml"), "", |tls| {
        tunnel_config(&pki, &s, &c, backend, "127.0.0.1:0", "127.0.0.1:0", tls)
    });
    let pid = p.child.id();
    let rss_before = rss_kib(pid);
    let never_reads = TcpStream::connect(entrance).await.unwrap();
    eventually("the backend is held back", || {
        stalled.load(Ordering::Relaxed) || written.load(Ordering::Relaxed) >= OFFERED
    })
    .await;
    let (written, rss_after) = (written.load(Ordering::Relaxed), rss_kib(pid));
    eprintln!(
        "never reads: the backend got {} KiB out before it was held back; \
         daemon RSS {rss_before} KiB before, {rss_after} KiB after",
        written >> 10
    );
    assert!(
        stalled.load(Ordering::Relaxed) && written < 128 << 20,
        "the tunnel took {written} bytes for a client that reads nothing"
    );
    assert!(rss_after < 200 * 1024, "daemon RSS {rss_after} KiB");
    // Held back, not broken: what waits for the client is the backend's.
    let mut never_reads = never_reads;
    let mut first = vec![0u8; 64 << 10];
    tokio::time::timeout(Duration::from_secs(10), never_reads.read_exact(&mut first))
        .await
        .expect("nothing waits for the client")
        .unwrap();
    assert!(first.iter().all(|b| *b == 0x5a));
}

/// A peer that resets its connection in the middle of a transfer, on
/// either side of the tunnel, leaves no descriptor behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_mid_transfer_leaves_no_descriptor_behind() {
    // Reads 64 KiB of each connection, then resets it.
    let resetting = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let resetting_addr = resetting.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = resetting.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                let _ = s.read_exact(&mut buf).await;
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            });
        }
    });
    let echo = echo_backend().await;
    let pki = Pki::new("CA");
    let (s, c) = (pki.issue(SERVER), pki.issue(CLIENT));
    let dir = tempfile::tempdir().unwrap();
    // First a tunnel to the echo backend, for resets by the client.
    let ProcTunnel {
        proc: p, entrance, ..
    } = start_tunnel_proc(&dir.path().join("dctunnel.toml"), "", |tls| {
        tunnel_config(&pki, &s, &c, echo, "127.0.0.1:0", "127.0.0.1:0", tls)
    });
    let pid = p.child.id();
    let fds_before = fds(pid);

    // The client resets while its data is echoed back.
    for _ in 0..10 {
        let mut c = TcpStream::connect(entrance).await.unwrap();
        c.write_all(&vec![1u8; 256 << 10]).await.unwrap();
        let mut some = vec![0u8; 16 << 10];
        c.read_exact(&mut some).await.unwrap();
        socket2::SockRef::from(&c)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(c);
    }
    eventually("client resets leave no descriptor", || {
        fds(pid) <= fds_before
    })
    .await;

    // Then one to the backend that resets while the client still sends.
    let dir2 = tempfile::tempdir().unwrap();
    let ProcTunnel {
        proc: p2,
        entrance: entrance2,
        ..
    } = start_tunnel_proc(&dir2.path().join("dctunnel.toml"), "", |tls| {
        tunnel_config(
            &pki,
            &s,
            &c,
            resetting_addr,
            "127.0.0.1:0",
            "127.0.0.1:0",
            tls,
        )
    });
    let pid2 = p2.child.id();
    let fds_before2 = fds(pid2);
    for _ in 0..10 {
        let mut c = TcpStream::connect(entrance2).await.unwrap();
        let chunk = vec![2u8; 64 << 10];
        // Until the reset comes back through the tunnel (bounded: 64 MiB).
        for _ in 0..1024 {
            if c.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = read_to_end(&mut c).await;
    }
    eventually("backend resets leave no descriptor", || {
        fds(pid2) <= fds_before2
    })
    .await;
}

/// Eight transfers through the tunnel while the daemon is told to reload
/// every 100 ms: every byte arrives, in order, on every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_survive_a_reload_every_100ms_byte_for_byte() {
    const TRANSFERS: u64 = 8;
    const SIZE: usize = 8 << 20;
    let backend = echo_backend().await;
    let pki = Pki::new("CA");
    let (s, c) = (pki.issue(SERVER), pki.issue(CLIENT));
    let dir = tempfile::tempdir().unwrap();
    let ProcTunnel {
        proc: mut p,
        entrance,
        ..
    } = start_tunnel_proc(&dir.path().join("dctunnel.toml"), "", |tls| {
        tunnel_config(&pki, &s, &c, backend, "127.0.0.1:0", "127.0.0.1:0", tls)
    });
    let pid = p.child.id();
    let done = Arc::new(AtomicBool::new(false));
    let hups = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut sent = 0u32;
            // At most a minute of reloads.
            while !done.load(Ordering::Relaxed) && sent < 600 {
                let ok = std::process::Command::new("kill")
                    .args(["-HUP", &pid.to_string()])
                    .status()
                    .unwrap()
                    .success();
                assert!(ok, "kill -HUP failed: the daemon is gone");
                sent += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            sent
        })
    };
    let transfers: Vec<_> = (0..TRANSFERS)
        .map(|n| {
            tokio::spawn(async move {
                // Different bytes on each transfer (xorshift from its number).
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (n + 1);
                let data: Vec<u8> = (0..SIZE / 8)
                    .flat_map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x.to_le_bytes()
                    })
                    .collect();
                let sent = Sha256::digest(&data);
                let c = TcpStream::connect(entrance).await.unwrap();
                let (mut r, mut w) = c.into_split();
                let writer = tokio::spawn(async move {
                    for chunk in data.chunks(64 << 10) {
                        w.write_all(chunk).await.unwrap();
                    }
                    w.shutdown().await.unwrap();
                });
                let mut hash = Sha256::new();
                let mut got = 0;
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let k = r.read(&mut buf).await.unwrap();
                    if k == 0 {
                        break;
                    }
                    hash.update(&buf[..k]);
                    got += k;
                }
                writer.await.unwrap();
                (got, sent, hash.finalize())
            })
        })
        .collect();
    let results = tokio::time::timeout(Duration::from_secs(60), async {
        let mut v = Vec::new();
        for t in transfers {
            v.push(t.await.unwrap());
        }
        v
    })
    .await;
    done.store(true, Ordering::Relaxed);
    let sent_hups = hups.join().unwrap();
    let results = results.expect("the transfers did not finish within 60 s");
    for (n, (got, sent, received)) in results.iter().enumerate() {
        assert_eq!(*got, SIZE, "transfer {n}: length");
        assert_eq!(sent, received, "transfer {n}: SHA-256 differs");
    }
    eprintln!(
        "reload storm: {TRANSFERS} transfers of {} MiB each way, {sent_hups} SIGHUPs",
        SIZE >> 20
    );
    assert!(sent_hups > 0);
    // Still running and still reloading.
    assert!(p.child.try_wait().unwrap().is_none(), "the daemon exited");
    p.wait_for("reload done");
}

/// /healthz answers while the admin endpoint holds more idle clients than
/// its connection limit (the fix lives in tests/admin_flood.rs; here its
/// latency is measured).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_latency_with_idle_admin_clients() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(dctunnel::admin::serve(
        listener,
        dctunnel::daemon::DaemonView::default(),
        stop.clone(),
    ));
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let mut took = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(30), http_get(addr, "/healthz"))
            .await
            .expect("/healthz kept out by idle clients");
        took.push(t.elapsed());
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    took.sort();
    eprintln!(
        "/healthz with 40 idle admin clients: median {:?}, max {:?} over {} probes",
        took[took.len() / 2],
        took[took.len() - 1],
        took.len()
    );
    stop.cancel();
    drop(idle);
    server.await.unwrap();
}
