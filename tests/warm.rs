//! Warm connections and the start message between two dctunnel ends
//! (issue 13): Redis and a server-first banner through warm connections,
//! the origin address in the PROXY header and in /connections, clients
//! without our ALPN name served as before, warm connections counted and
//! limited apart, closed by a reload that no longer allows them, and
//! never handed out dead after the server end restarts. The fallback
//! against a server end without our ALPN name (stunnel) is in
//! tests/stunnel_interop.rs.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Warm connections of a client end ready to be taken (not opening).
fn ready(state: &dctunnel::service::ServiceState) -> usize {
    state.warm_ready.load(Ordering::Relaxed)
}

fn warm(n: usize) -> TunnelOpts {
    TunnelOpts {
        client_extra: format!("warm_connections = {n}"),
        ..TunnelOpts::default()
    }
}

/// A relay to `to` that counts the connections it gets: the backend as
/// the server end sees it.
async fn counting_relay(to: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut b) = TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut s, &mut b).await;
                }
            });
        }
    });
    (addr, count)
}

/// Stops a helper process even when the test fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Debian's redis-server on a port found free (it cannot take port 0 and
/// say which it got), tried again if something took the port first.
async fn redis(dir: &std::path::Path) -> (KillOnDrop, SocketAddr) {
    for _ in 0..5 {
        let port = free_port();
        let mut redis = KillOnDrop(
            Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir)
                .stdout(Stdio::piped())
                .spawn()
                .expect("redis-server is not installed (./test.sh installs it)"),
        );
        let stdout = redis.0.stdout.take().unwrap();
        let bound = tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            let mut lines = std::io::BufReader::new(stdout).lines();
            let bound = lines.any(|l| l.is_ok_and(|l| l.contains("Ready to accept connections")));
            std::thread::spawn(move || lines.for_each(drop));
            bound
        })
        .await
        .unwrap();
        if bound {
            return (redis, SocketAddr::from(([127, 0, 0, 1], port)));
        }
    }
    panic!("redis-server exited at start 5 times");
}

/// Sends a Redis command (RESP) and reads `reply_len` bytes of reply.
async fn redis_cmd(c: &mut TcpStream, args: &[&str], reply_len: usize) -> String {
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    c.write_all(cmd.as_bytes()).await.unwrap();
    let mut reply = vec![0; reply_len];
    tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut reply))
        .await
        .expect("no reply within 10s")
        .unwrap();
    String::from_utf8(reply).unwrap()
}

/// Redis through warm connections: they are made before any use, hold no
/// backend connection until a local connection takes one, and the pool
/// refills after use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_goes_through_warm_connections_made_before_use() {
    let dir = tempfile::tempdir().unwrap();
    let (_redis, redis_addr) = redis(dir.path()).await;
    let (backend, reached) = counting_relay(redis_addr).await;
    let t = tunnel(backend, warm(2)).await;
    let client = t.daemon.state("plain").unwrap();
    let server = t.daemon.state("tls").unwrap();
    eventually("two warm connections on each end", || {
        ready(&client) == 2 && server.warm() == 2
    })
    .await;
    // Warm, they count apart from connections in use, and the server end
    // has not connected to the backend for them.
    assert_eq!((client.active(), server.active()), (0, 0));
    assert_eq!(reached.load(Ordering::SeqCst), 0);

    let mut c = TcpStream::connect(t.entrance).await.unwrap();
    assert_eq!(redis_cmd(&mut c, &["PING"], 7).await, "+PONG\r\n");
    assert_eq!(
        redis_cmd(&mut c, &["SET", "product:3017620422003", "Nutella"], 5).await,
        "+OK\r\n"
    );
    assert_eq!(
        redis_cmd(&mut c, &["GET", "product:3017620422003"], 13).await,
        "$7\r\nNutella\r\n"
    );
    assert_eq!(client.warm_used.load(Ordering::Relaxed), 1);
    assert_eq!(server.warm_used.load(Ordering::Relaxed), 1);
    assert_eq!(reached.load(Ordering::SeqCst), 1);
    drop(c);

    // The pool refills, and the next connection takes a warm one too.
    eventually("the pool refilled", || {
        ready(&client) == 2 && server.warm() == 2
    })
    .await;
    let mut c = TcpStream::connect(t.entrance).await.unwrap();
    assert_eq!(
        redis_cmd(&mut c, &["GET", "product:3017620422003"], 13).await,
        "$7\r\nNutella\r\n"
    );
    assert_eq!(client.warm_used.load(Ordering::Relaxed), 2);
    t.daemon.shutdown().await;
}

/// A server that speaks first (an SMTP banner) works through a warm
/// connection: the client end sends its start message at once, so the
/// server end connects to the backend before the application says a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_first_banner_comes_through_a_warm_connection() {
    const BANNER: &[u8] = b"220 pmg.openfoodfacts.org ESMTP Proxmox\r\n";
    let t = tunnel(banner_backend(BANNER).await, warm(1)).await;
    let client = t.daemon.state("plain").unwrap();
    let server = t.daemon.state("tls").unwrap();
    eventually("a warm connection on each end", || {
        ready(&client) == 1 && server.warm() == 1
    })
    .await;
    let mut c = TcpStream::connect(t.entrance).await.unwrap();
    let mut banner = vec![0; BANNER.len()];
    tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut banner))
        .await
        .expect("no banner within 10s")
        .unwrap();
    assert_eq!(banner, BANNER);
    assert_eq!(client.warm_used.load(Ordering::Relaxed), 1);
    assert_eq!(roundtrip(&mut c, b"EHLO off1\r\n").await, b"EHLO off1\r\n");
    t.daemon.shutdown().await;
}

/// A backend that sends back the first line it reads (the PROXY header),
/// then stays open until the other side closes.
async fn first_line_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut s = BufReader::new(s);
                let mut line = String::new();
                if s.read_line(&mut line).await.is_ok() {
                    let _ = s.get_mut().write_all(line.as_bytes()).await;
                    let mut rest = Vec::new();
                    let _ = s.read_to_end(&mut rest).await;
                }
            });
        }
    });
    addr
}

/// The application's address (the origin) crosses the tunnel in the start
/// message: the server end puts it in the PROXY header as the source and
/// shows it in /connections, next to the tunnel's own source; with a warm
/// connection and without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_reaches_the_backend_in_the_proxy_header_and_connections() {
    for warm_connections in [0, 1] {
        let opts = TunnelOpts {
            server_extra: "proxy_protocol = \"v1\"".into(),
            client_extra: format!("warm_connections = {warm_connections}"),
            ..TunnelOpts::default()
        };
        let t = tunnel(first_line_echo().await, opts).await;
        let client = t.daemon.state("plain").unwrap();
        eventually("the pool filled", || ready(&client) == warm_connections).await;
        let mut app = TcpStream::connect(t.entrance).await.unwrap();
        let origin = app.local_addr().unwrap();
        let mut header = String::new();
        let mut reader = BufReader::new(&mut app);
        tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut header))
            .await
            .expect("no PROXY header within 10s")
            .unwrap();
        assert_eq!(
            header,
            format!(
                "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n",
                origin.port(),
                t.tls_port.port()
            ),
            "warm_connections = {warm_connections}"
        );
        // In use: this one. (With a pool, its replacement is listed too,
        // as warm and without origin, once its handshake is done.)
        let server = t.daemon.state("tls").unwrap();
        eventually("the replacement is warm on the server end", || {
            server.warm() == warm_connections
        })
        .await;
        let open: Vec<_> = dctunnel::admin::connections(&t.daemon.view(), Some("tls"))
            .into_iter()
            .filter(|c| !c.warm)
            .collect();
        assert_eq!(open.len(), 1, "{open:?}");
        assert_eq!(open[0].origin, Some(origin));
        // The tunnel's source is the client end's own socket.
        assert_ne!(open[0].source, origin);
        // Both ends count it as warm only when it came from the pool.
        for end in [&client, &server] {
            assert_eq!(
                end.warm_used.load(Ordering::Relaxed) as usize,
                warm_connections
            );
        }
        drop(app);
        t.daemon.shutdown().await;
    }
}

/// A server end still serves clients that do not offer our ALPN name, and
/// clients that offer other names (rustls alone would refuse those: no
/// name in common). A client that offers ours and then sends something
/// other than a start message is closed, and never reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_end_serves_clients_without_alpn_or_with_other_names() {
    let (backend, reached) = counting_relay(echo_backend().await).await;
    let t = tunnel(backend, TunnelOpts::default()).await;
    let base = tls_client(&t.pki.ca_pem, Some(&t.client_cert));
    assert!(base.alpn_protocols.is_empty());
    assert!(tls_echo(t.tls_port, base.clone(), SERVER).await, "no ALPN");
    for names in [vec!["h2"], vec!["h2", "http/1.1"]] {
        let mut config = (*base).clone();
        config.alpn_protocols = names.iter().map(|n| n.as_bytes().to_vec()).collect();
        assert!(
            tls_echo(t.tls_port, Arc::new(config), SERVER).await,
            "ALPN {names:?}"
        );
    }
    assert_eq!(reached.load(Ordering::SeqCst), 3);

    let mut config = (*base).clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"dctunnel/1".to_vec()];
    let tcp = TcpStream::connect(t.tls_port).await.unwrap();
    let sni = rustls::pki_types::ServerName::try_from(SERVER).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(sni, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"dctunnel/1"[..]));
    tls.write_all(b"EHLO this is no start message\r\n")
        .await
        .unwrap();
    let (got, _) = read_to_end(&mut tls).await;
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(reached.load(Ordering::SeqCst), 3);
    t.daemon.shutdown().await;
}

/// Warm connections count apart from connections in use, in the state,
/// the metrics and the status, and a server end keeps at most
/// max_warm_connections of them: the others stay counted in use (under
/// max_connections, as while they handshook) and may wait only
/// handshake_timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_connections_are_counted_apart_and_limited() {
    let opts = TunnelOpts {
        server_extra: "max_warm_connections = 1\nmax_connections = 5".into(),
        client_extra: "warm_connections = 3".into(),
        ..TunnelOpts::default()
    };
    let t = tunnel(echo_backend().await, opts).await;
    let client = t.daemon.state("plain").unwrap();
    let server = t.daemon.state("tls").unwrap();
    eventually(
        "three warm on the client end, one warm and two waiting in use on the server end",
        || client.warm() == 3 && ready(&client) == 3 && server.warm() == 1 && server.active() == 2,
    )
    .await;
    let metrics = dctunnel::metrics::render(&t.daemon.view()).unwrap();
    for line in [
        "dctunnel_connections_warm{service=\"tls\"} 1",
        "dctunnel_connections_warm{service=\"plain\"} 3",
        "dctunnel_service_warm_limit{service=\"tls\"} 1",
        "dctunnel_service_warm_limit{service=\"plain\"} 3",
        "dctunnel_connections_active{service=\"plain\"} 0",
    ] {
        assert!(metrics.contains(line), "no {line:?} in\n{metrics}");
    }
    let status = dctunnel::admin::status(&t.daemon.view());
    let tls = status.services.iter().find(|s| s.name == "tls").unwrap();
    assert_eq!((tls.warm, tls.warm_limit, tls.active), (1, 1, 2));
    let rendered = dctunnel::status::render_status(&status);
    assert!(rendered.contains("WARM/LIMIT"), "{rendered}");
    assert!(rendered.contains("1/1"), "{rendered}");

    let mut c = TcpStream::connect(t.entrance).await.unwrap();
    assert_eq!(roundtrip(&mut c, b"through").await, b"through");
    assert_eq!(client.warm_used.load(Ordering::Relaxed), 1);
    let warm_listed = dctunnel::admin::connections(&t.daemon.view(), Some("tls"))
        .iter()
        .filter(|c| c.warm)
        .count();
    assert!(warm_listed <= 1, "{warm_listed} warm listed");
    t.daemon.shutdown().await;
}

/// A reload that takes the client end's name out of allow_peers closes
/// its warm connection at once (it was allowed at its handshake), and
/// says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_narrowing_allow_peers_closes_a_warm_connection() {
    let pki = Pki::new("CA");
    let (server, client) = (pki.issue(SERVER), pki.issue(CLIENT));
    let backend = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dctunnel.toml");
    let text = |peers: &str, tls_connect: &str| {
        tunnel_config(
            &pki,
            &server,
            &client,
            backend,
            "127.0.0.1:0",
            "127.0.0.1:0",
            tls_connect,
        )
        .replace(
            &format!("allow_peers = [\"{CLIENT}\"]"),
            &format!("allow_peers = [\"{peers}\"]"),
        )
        .replace(
            "mode = \"client\"",
            "mode = \"client\"\nwarm_connections = 1",
        )
    };
    let mut t = start_tunnel_proc(&path, "", |connect| text(CLIENT, connect));
    // The pool made with the reload that named the server end may be
    // ready before that reload's last line.
    let ready = |v: &serde_json::Value| v["fields"]["message"] == "warm connection ready";
    if !t.proc.seen.iter().any(ready) {
        t.proc.wait_for("warm connection ready");
    }
    std::fs::write(&path, text("someone-else.test", &t.tls.to_string())).unwrap();
    t.proc.signal("HUP");
    let closed = t
        .proc
        .wait_for("its peer identity is no longer in allow_peers");
    assert_eq!(
        closed["message"],
        "connection closed: warm connection closed: after a reload, its peer identity is no \
         longer in allow_peers",
        "{closed}"
    );
    // New warm connections are refused at their handshake.
    t.proc.wait_for("peer identity not in allow_peers");
}

/// A server end that restarts kills its warm connections; the client end
/// sees each end at once and drops it, so the next local connection is
/// carried (by a new warm connection or its own), never by a dead one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_connection_killed_by_a_server_restart_is_not_handed_out() {
    let pki = Pki::new("CA");
    let (server, client) = (pki.issue(SERVER), pki.issue(CLIENT));
    let backend = echo_backend().await;
    let server_text = |listen: &str| {
        format!(
            r#"
[daemon]
shutdown_timeout = "1s"

[[service]]
name = "tls"
mode = "server"
listen = "{listen}"
connect = "{backend}"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
allow_peers = ["{CLIENT}"]
"#,
            ca = pki.ca_pem.display(),
            cert = server.cert.display(),
            key = server.key.display(),
        )
    };
    let (_d1, first) = start_daemon(&server_text("127.0.0.1:0"));
    let port = first.local_addr("tls").unwrap();
    let (_d2, client_end) = start_daemon(&format!(
        r#"
[daemon]
shutdown_timeout = "1s"

[[service]]
name = "plain"
mode = "client"
listen = "127.0.0.1:0"
connect = "{port}"
server_name = "{SERVER}"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
warm_connections = 2
"#,
        ca = pki.ca_pem.display(),
        cert = client.cert.display(),
        key = client.key.display(),
    ));
    let entrance = client_end.local_addr("plain").unwrap();
    let pool = client_end.state("plain").unwrap();
    let first_state = first.state("tls").unwrap();
    eventually("two warm connections on each end", || {
        ready(&pool) == 2 && first_state.warm() == 2
    })
    .await;
    first.shutdown().await;
    let (_d3, second) = start_daemon(&server_text(&port.to_string()));
    for round in 0..3 {
        let mut c = TcpStream::connect(entrance).await.unwrap();
        assert_eq!(
            roundtrip(&mut c, b"after the restart").await,
            b"after the restart",
            "connection {round}"
        );
    }
    second.shutdown().await;
    client_end.shutdown().await;
}

/// The keys are checked where they are written: each in its mode, within
/// bounds.
#[test]
fn warm_settings_are_checked() {
    let pki = Pki::new("CA");
    let me = pki.issue(SERVER);
    let service = |mode: &str, extra: &str| {
        format!(
            r#"
[[service]]
name = "mongodb"
mode = "{mode}"
listen = "127.0.0.1:0"
connect = "127.0.0.1:27017"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
{peers}
{extra}
"#,
            peers = if mode == "server" {
                "allow_peers = [\"*\"]"
            } else {
                ""
            },
            ca = pki.ca_pem.display(),
            cert = me.cert.display(),
            key = me.key.display(),
        )
    };
    let problems = |text: String| match config(&text).1 {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    };
    for (mode, extra, expected) in [
        (
            "server",
            "warm_connections = 2",
            "service \"mongodb\": warm_connections: applies to client mode only",
        ),
        (
            "client",
            "max_warm_connections = 2",
            "service \"mongodb\": max_warm_connections: applies to server mode only",
        ),
        (
            "client",
            "warm_connections = 5000",
            "service \"mongodb\": warm_connections: is 5000, more than 1000",
        ),
        (
            "server",
            "max_warm_connections = 2000000",
            "max_warm_connections: is 2000000, more than 1000000",
        ),
        (
            "client",
            "warm_timeout = \"500ms\"",
            "service \"mongodb\": warm_timeout: \"500ms\" is shorter than 1s",
        ),
        (
            "server",
            "warm_timeout = \"2h\"",
            "service \"mongodb\": warm_timeout: \"2h\" is longer than 1h",
        ),
        (
            "server",
            "warm_timeout = \"soon\"",
            "service \"mongodb\": warm_timeout: \"soon\" is not a duration",
        ),
    ] {
        let found = problems(service(mode, extra));
        assert!(found.contains(expected), "{mode} {extra}: {found}");
    }
    for (mode, extra) in [
        ("client", "warm_connections = 0"),
        ("client", "warm_connections = 4\nwarm_timeout = \"5m\""),
        ("server", "max_warm_connections = 0"),
        ("server", "max_warm_connections = 10\nwarm_timeout = \"1s\""),
    ] {
        assert_eq!(problems(service(mode, extra)), "", "{mode} {extra}");
    }
    // `check` says what it will run.
    let (_dir, c) = config(&service("client", "warm_connections = 4"));
    let c = c.unwrap();
    let line = dctunnel::config::describe(&c.services[0]).warm.to_string();
    assert_eq!(line, "  warm: 4 kept ready");
}

/// Idle, the pool shrinks to one warm connection (the others are not
/// replaced when they reach their age), and the next use brings it back
/// to its size. warm_timeout is short here so that ages pass quickly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_pool_shrinks_to_one_and_grows_back_on_use() {
    let opts = TunnelOpts {
        server_extra: "warm_timeout = \"4s\"".into(),
        client_extra: "warm_connections = 3\nwarm_timeout = \"4s\"".into(),
        ..TunnelOpts::default()
    };
    let t = tunnel(echo_backend().await, opts).await;
    let client = t.daemon.state("plain").unwrap();
    let server = t.daemon.state("tls").unwrap();
    eventually("three ready", || ready(&client) == 3).await;
    eventually("shrunk to one on each end", || {
        client.warm() == 1 && ready(&client) == 1 && server.warm() == 1
    })
    .await;
    let mut c = TcpStream::connect(t.entrance).await.unwrap();
    assert_eq!(roundtrip(&mut c, b"wake up").await, b"wake up");
    assert_eq!(client.warm_used.load(Ordering::Relaxed), 1);
    eventually("back to three", || ready(&client) == 3).await;
    t.daemon.shutdown().await;
}

/// The wait for a start message is bounded: a client end that agrees on
/// dctunnel/1 and then says nothing is closed at warm_timeout (or, when
/// max_warm_connections is full, at handshake_timeout), without the
/// backend ever being reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_end_is_closed_when_its_wait_ends() {
    for server_extra in [
        "warm_timeout = \"1s\"",
        "max_warm_connections = 0\nhandshake_timeout = \"1s\"",
    ] {
        let (backend, reached) = counting_relay(echo_backend().await).await;
        let opts = TunnelOpts {
            server_extra: server_extra.into(),
            ..TunnelOpts::default()
        };
        let t = tunnel(backend, opts).await;
        let server = t.daemon.state("tls").unwrap();
        let mut config = (*tls_client(&t.pki.ca_pem, Some(&t.client_cert))).clone();
        config.alpn_protocols = vec![b"dctunnel/1".to_vec()];
        let tcp = TcpStream::connect(t.tls_port).await.unwrap();
        let sni = rustls::pki_types::ServerName::try_from(SERVER).unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(sni, tcp)
            .await
            .unwrap();
        let (got, _) = read_to_end(&mut tls).await;
        assert!(got.is_empty(), "{server_extra}: {got:?}");
        assert_eq!(reached.load(Ordering::SeqCst), 0, "{server_extra}");
        eventually("its place freed", || server.warm() + server.active() == 0).await;
        t.daemon.shutdown().await;
    }
}
