//! The admin endpoint as Prometheus and an operator see it: `/metrics`
//! parsed with a Prometheus parser after known traffic, `/connections`,
//! the probes, and `dctunnel status` run against the real binary.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use common::*;
use dctunnel::daemon::DaemonView;
use prometheus_parse::{Scrape, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

/// Serves the admin endpoint of `view` on a fresh loopback port.
async fn admin(view: DaemonView) -> SocketAddr {
    admin_with(view, dctunnel::admin::Options::default()).await
}

async fn admin_with(view: DaemonView, options: dctunnel::admin::Options) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(dctunnel::admin::serve_with(
        listener,
        view,
        CancellationToken::new(),
        options,
    ));
    addr
}

struct Answer {
    code: u16,
    content_type: String,
    body: String,
}

/// One request written by hand (so that the server is tested against a
/// client other than its own), answer read to the end.
async fn request(addr: SocketAddr, method: &str, path: &str) -> Answer {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let (raw, _) = read_to_end(&mut s).await;
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("no end of headers");
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    Answer {
        code,
        content_type,
        body: body.to_owned(),
    }
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    request(addr, "GET", path).await
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let a = get(addr, "/metrics").await;
    assert_eq!(a.code, 200, "{}", a.body);
    assert!(
        a.content_type.starts_with("application/openmetrics-text"),
        "{}",
        a.content_type
    );
    assert!(a.body.ends_with("# EOF\n"));
    Scrape::parse(a.body.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

fn number(v: &Value) -> f64 {
    match v {
        Value::Counter(n) | Value::Gauge(n) | Value::Untyped(n) => *n,
        other => panic!("not a number: {other:?}"),
    }
}

/// The samples of `metric` whose labels include `labels`.
fn find<'a>(
    s: &'a Scrape,
    metric: &str,
    labels: &[(&str, &str)],
) -> Vec<&'a prometheus_parse::Sample> {
    s.samples
        .iter()
        .filter(|x| x.metric == metric)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .collect()
}

/// The value of the one sample of `metric` with `labels`.
fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found = find(s, metric, labels);
    assert_eq!(found.len(), 1, "{metric} {labels:?}: {found:#?}");
    number(&found[0].value)
}

/// Every rejection counter, by (service, reason).
fn rejections(s: &Scrape) -> BTreeMap<(String, String), f64> {
    find(s, "dctunnel_connections_rejected_total", &[])
        .into_iter()
        .map(|x| {
            let key = (
                x.labels.get("service").unwrap().to_owned(),
                x.labels.get("reason").unwrap().to_owned(),
            );
            (key, number(&x.value))
        })
        .collect()
}

/// Scrapes until `cond` holds (see [`eventually_ok`]).
async fn scrape_until(addr: SocketAddr, what: &str, cond: impl Fn(&Scrape) -> bool) -> Scrape {
    eventually_ok(what, || async {
        let s = scrape(addr).await;
        match cond(&s) {
            true => Ok(s),
            false => Err(s.samples),
        }
    })
    .await
}

async fn tls_to(port: SocketAddr, ca: &std::path::Path, me: &HostCert) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(port).await.unwrap();
    let sni = rustls::pki_types::ServerName::try_from(SERVER.to_owned()).unwrap();
    TlsConnector::from(tls_client(ca, Some(me)))
        .connect(sni, tcp)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_connections_and_bytes() {
    let t = tunnel(
        echo_backend().await,
        TunnelOpts {
            server_extra: "max_connections = 10".into(),
            ..Default::default()
        },
    )
    .await;
    let addr = admin(t.daemon.view()).await;

    // Three connections, of 5, 10 and 15 bytes each way.
    let mut sent = 0;
    for n in 1..=3 {
        let msg = vec![b'x'; 5 * n];
        let mut c = TcpStream::connect(t.entrance).await.unwrap();
        assert_eq!(roundtrip(&mut c, &msg).await, msg);
        sent += msg.len();
        drop(c);
    }
    for service in ["plain", "tls"] {
        let state = t.daemon.state(service).unwrap();
        eventually("connections closed", || state.active() == 0).await;
    }
    let s = scrape(addr).await;
    for service in ["plain", "tls"] {
        let l = [("service", service)];
        assert_eq!(value(&s, "dctunnel_connections_accepted_total", &l), 3.0);
        assert_eq!(value(&s, "dctunnel_connections_active", &l), 0.0);
        let up = [("service", service), ("direction", "up")];
        let down = [("service", service), ("direction", "down")];
        assert_eq!(value(&s, "dctunnel_bytes_total", &up), sent as f64);
        assert_eq!(value(&s, "dctunnel_bytes_total", &down), sent as f64);
        for h in [
            "dctunnel_tls_handshake_duration_seconds",
            "dctunnel_backend_connect_duration_seconds",
            "dctunnel_connection_duration_seconds",
        ] {
            assert_eq!(value(&s, &format!("{h}_count"), &l), 3.0, "{h} {service}");
            let buckets = find(&s, h, &l);
            assert_eq!(buckets.len(), 1, "{h}");
            let Value::Histogram(b) = &buckets[0].value else {
                panic!("{h} is not a histogram")
            };
            assert_eq!(b.last().unwrap().less_than, f64::INFINITY);
            assert_eq!(b.last().unwrap().count, 3.0);
        }
        // Every reason is exported, at zero.
        let r = find(&s, "dctunnel_connections_rejected_total", &l);
        assert_eq!(r.len(), 6, "{r:#?}");
        assert!(r.iter().all(|x| number(&x.value) == 0.0));
    }
    // The limit is exported where there is one.
    assert_eq!(
        value(
            &s,
            "dctunnel_service_max_connections",
            &[("service", "tls")]
        ),
        10.0
    );
    assert!(find(
        &s,
        "dctunnel_service_max_connections",
        &[("service", "plain")]
    )
    .is_empty());
    let info = find(&s, "dctunnel_service_info", &[("service", "tls")]);
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].labels.get("mode"), Some("server"));
    assert_eq!(
        info[0].labels.get("listen"),
        Some(t.tls_port.to_string().as_str())
    );
    // Process-wide figures.
    let build = find(&s, "dctunnel_build_info", &[]);
    assert_eq!(build.len(), 1);
    assert_eq!(
        build[0].labels.get("version"),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert!(build[0]
        .labels
        .get("rustls_version")
        .unwrap()
        .starts_with("0.23."));
    assert!(value(&s, "process_open_fds", &[]) > 0.0);
    assert!(value(&s, "process_max_fds", &[]) >= value(&s, "process_open_fds", &[]));
    t.daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rejection_reason_has_its_own_counter() {
    // Backend down (connect_failed), one connection at a time on the TLS
    // side (limit_reached), a short handshake timeout.
    let mut t = tunnel(
        dead_address().await,
        TunnelOpts {
            server_extra: "max_connections = 1\nhandshake_timeout = \"2s\"".into(),
            ..Default::default()
        },
    )
    .await;
    // A third service that admits no loopback source.
    let path = t.dir.path().join("dctunnel.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let guarded = format!(
        r#"{text}
[[service]]
name = "guarded"
mode = "server"
listen = "127.0.0.1:0"
connect = "{backend}"
allow_sources = ["192.0.2.0/24"]
ca = "{ca}"
cert = "{cert}"
key = "{key}"
allow_peers = ["*"]
"#,
        backend = dead_address().await,
        ca = t.pki.ca_pem.display(),
        cert = t.server_cert.cert.display(),
        key = t.server_cert.key.display(),
    );
    std::fs::write(&path, guarded).unwrap();
    t.daemon
        .reload(dctunnel::config::load(&path).unwrap())
        .await
        .unwrap();
    let addr = admin(t.daemon.view()).await;
    let tls_state = t.daemon.state("tls").unwrap();

    let mut expected: BTreeMap<(String, String), f64> = BTreeMap::new();
    for service in ["plain", "tls", "guarded"] {
        for r in dctunnel::service::Rejection::ALL {
            expected.insert((service.into(), r.as_str().into()), 0.0);
        }
    }
    let s = scrape(addr).await;
    assert_eq!(rejections(&s), expected);

    // Counts one more `reason` for `service`, and checks that nothing else moved.
    async fn expect_one_more(
        addr: SocketAddr,
        expected: &mut BTreeMap<(String, String), f64>,
        service: &str,
        reason: &str,
    ) {
        *expected.get_mut(&(service.into(), reason.into())).unwrap() += 1.0;
        let want = expected.clone();
        scrape_until(addr, &format!("{service} {reason} counted"), |s| {
            rejections(s) == want
        })
        .await;
    }

    // source_not_allowed: closed before TLS.
    let guarded_port = t.daemon.local_addr("guarded").unwrap();
    let mut c = TcpStream::connect(guarded_port).await.unwrap();
    read_to_end(&mut c).await;
    expect_one_more(addr, &mut expected, "guarded", "source_not_allowed").await;

    // handshake_failed: not TLS at all.
    let mut c = TcpStream::connect(t.tls_port).await.unwrap();
    c.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    read_to_end(&mut c).await;
    expect_one_more(addr, &mut expected, "tls", "handshake_failed").await;
    eventually("slot freed", || tls_state.active() == 0).await;

    // peer_not_allowed: a certificate of the right CA, for a name not
    // in allow_peers. TLS 1.3 shows the refusal on the first read.
    let stranger = t.pki.issue("stranger.test");
    let mut c = tls_to(t.tls_port, &t.pki.ca_pem, &stranger).await;
    let _ = c.write_all(b"hello").await;
    let _ = tokio::time::timeout(Duration::from_secs(10), c.read(&mut [0u8; 8])).await;
    expect_one_more(addr, &mut expected, "tls", "peer_not_allowed").await;
    eventually("slot freed", || tls_state.active() == 0).await;

    // connect_failed: through the tunnel to a backend that is down.
    let mut c = TcpStream::connect(t.entrance).await.unwrap();
    c.write_all(b"PING\r\n").await.unwrap();
    read_to_end(&mut c).await;
    expect_one_more(addr, &mut expected, "tls", "connect_failed").await;
    eventually("slot freed", || tls_state.active() == 0).await;

    // limit_reached: the only slot is held by a silent client...
    let mut silent = TcpStream::connect(t.tls_port).await.unwrap();
    eventually("silent client admitted", || tls_state.active() == 1).await;
    let mut c = TcpStream::connect(t.tls_port).await.unwrap();
    read_to_end(&mut c).await;
    expect_one_more(addr, &mut expected, "tls", "limit_reached").await;
    // ...which is dropped at the handshake timeout.
    read_to_end(&mut silent).await;
    expect_one_more(addr, &mut expected, "tls", "handshake_timeout").await;

    // Refused before admission (source, limit) is not "accepted".
    let s = scrape(addr).await;
    assert_eq!(
        value(
            &s,
            "dctunnel_connections_accepted_total",
            &[("service", "tls")]
        ),
        4.0
    );
    assert_eq!(
        value(
            &s,
            "dctunnel_connections_accepted_total",
            &[("service", "guarded")]
        ),
        0.0
    );
    assert_eq!(
        value(
            &s,
            "dctunnel_connections_accepted_total",
            &[("service", "plain")]
        ),
        1.0
    );
    t.daemon.shutdown().await;
}

/// notAfter of the first certificate of a PEM file, Unix seconds.
fn not_after(path: &std::path::Path) -> i64 {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    cert.validity().not_after.timestamp()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_expiry_matches_not_after() {
    let t = tunnel(echo_backend().await, TunnelOpts::default()).await;
    let addr = admin(t.daemon.view()).await;
    let s = scrape(addr).await;
    let metric = "dctunnel_certificate_expiry_seconds";
    for (service, own) in [("tls", &t.server_cert.cert), ("plain", &t.client_cert.cert)] {
        assert_eq!(find(&s, metric, &[("service", service)]).len(), 2);
        for (kind, file) in [("cert", own), ("ca", &t.pki.ca_pem)] {
            let file_label = file.display().to_string();
            let labels = [
                ("service", service),
                ("kind", kind),
                ("file", file_label.as_str()),
            ];
            let seconds = value(&s, metric, &labels);
            let want = not_after(file) - now();
            assert!(
                (seconds - want as f64).abs() <= 5.0,
                "{service} {kind}: {seconds} s, notAfter says {want} s"
            );
        }
        // The test certificates are valid for 30 days from now.
        let own_label = own.display().to_string();
        let own_seconds = value(
            &s,
            metric,
            &[("service", service), ("file", own_label.as_str())],
        );
        assert!((29.9 * 86400.0..=30.0 * 86400.0).contains(&own_seconds));
        let subject = find(&s, metric, &[("service", service), ("kind", "cert")])[0]
            .labels
            .get("subject")
            .unwrap()
            .to_owned();
        assert_eq!(subject, if service == "tls" { SERVER } else { CLIENT });
    }
    t.daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_are_counted() {
    let mut t = tunnel(echo_backend().await, TunnelOpts::default()).await;
    let addr = admin(t.daemon.view()).await;
    let s = scrape(addr).await;
    assert_eq!(value(&s, "dctunnel_config_reloads_total", &[]), 0.0);
    assert_eq!(
        value(&s, "dctunnel_config_last_reload_successful", &[]),
        1.0
    );
    let started = value(
        &s,
        "dctunnel_config_last_reload_success_timestamp_seconds",
        &[],
    );
    assert!((started - now() as f64).abs() <= 5.0);

    let path = t.dir.path().join("dctunnel.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, "not toml [").unwrap();
    let refused = dctunnel::daemon::reload(&mut t.daemon, &path)
        .await
        .unwrap_err();
    assert!(
        refused.starts_with("reload refused, running configuration kept: "),
        "{refused}"
    );
    let s = scrape(addr).await;
    assert_eq!(value(&s, "dctunnel_config_reloads_total", &[]), 1.0);
    assert_eq!(value(&s, "dctunnel_config_reload_failures_total", &[]), 1.0);
    assert_eq!(
        value(&s, "dctunnel_config_last_reload_successful", &[]),
        0.0
    );

    std::fs::write(&path, good).unwrap();
    let done = dctunnel::daemon::reload(&mut t.daemon, &path)
        .await
        .unwrap();
    assert!(done.starts_with("reload done: "), "{done}");
    let s = scrape(addr).await;
    assert_eq!(value(&s, "dctunnel_config_reloads_total", &[]), 2.0);
    assert_eq!(value(&s, "dctunnel_config_reload_failures_total", &[]), 1.0);
    assert_eq!(
        value(&s, "dctunnel_config_last_reload_successful", &[]),
        1.0
    );
    let reloaded = value(
        &s,
        "dctunnel_config_last_reload_success_timestamp_seconds",
        &[],
    );
    assert!(reloaded >= started);
    t.daemon.shutdown().await;
}

async fn connections(addr: SocketAddr, query: &str) -> Vec<dctunnel::admin::Connection> {
    let a = get(addr, &format!("/connections{query}")).await;
    assert_eq!(a.code, 200, "{}", a.body);
    assert_eq!(a.content_type, "application/json");
    serde_json::from_str(&a.body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_lists_exactly_the_open_ones() {
    let backend = echo_backend().await;
    let t = tunnel(
        backend,
        TunnelOpts {
            allow_peers: Some(format!("[\"{CLIENT}\", \"other.test\"]")),
            ..Default::default()
        },
    )
    .await;
    let addr = admin(t.daemon.view()).await;
    assert!(connections(addr, "").await.is_empty());

    // Two through the tunnel, one straight to the TLS side as another host.
    let mut a = TcpStream::connect(t.entrance).await.unwrap();
    roundtrip(&mut a, b"first").await;
    let mut b = TcpStream::connect(t.entrance).await.unwrap();
    roundtrip(&mut b, b"second!").await;
    let other = t.pki.issue("other.test");
    let mut d = tls_to(t.tls_port, &t.pki.ca_pem, &other).await;
    d.write_all(b"direct").await.unwrap();
    let mut buf = [0u8; 6];
    d.read_exact(&mut buf).await.unwrap();

    let all = connections(addr, "").await;
    assert_eq!(all.len(), 5, "{all:#?}");
    let plain: Vec<_> = all.iter().filter(|c| c.service == "plain").collect();
    let tls: Vec<_> = all.iter().filter(|c| c.service == "tls").collect();
    // The client side: who connected, to which remote, proving which name.
    let mine = [a.local_addr().unwrap(), b.local_addr().unwrap()];
    assert_eq!(plain.iter().map(|c| c.source).collect::<Vec<_>>(), mine);
    for (c, len) in plain.iter().zip([5, 7]) {
        assert_eq!(c.remote, Some(t.tls_port));
        assert_eq!(c.peer.as_deref(), Some(&*format!("{SERVER},localhost")));
        assert_eq!((c.bytes_up, c.bytes_down), (len, len));
    }
    // The server side: the identities of both client hosts.
    let mut peers: Vec<(&str, u64)> = tls
        .iter()
        .map(|c| (c.peer.as_deref().unwrap(), c.bytes_up))
        .collect();
    peers.sort();
    assert_eq!(
        peers,
        [
            ("client.test,localhost", 5),
            ("client.test,localhost", 7),
            ("other.test,localhost", 6)
        ]
    );
    assert!(tls.iter().all(|c| c.remote == Some(backend)));
    assert_eq!(
        tls.iter()
            .find(|c| c.peer.as_deref() == Some("other.test,localhost"))
            .unwrap()
            .source,
        d.get_ref().0.local_addr().unwrap()
    );

    // Filtered by service.
    let only = connections(addr, "?service=plain").await;
    assert_eq!(only.len(), 2);
    assert!(only.iter().all(|c| c.service == "plain"));
    assert_eq!(get(addr, "/connections?service=nope").await.code, 404);
    assert_eq!(get(addr, "/connections?color=red").await.code, 400);

    // Closed connections are forgotten.
    drop(a);
    let a_source = mine[0];
    let left = eventually_ok("3 connections left", || async {
        let left = connections(addr, "").await;
        match left.len() {
            3 => Ok(left),
            _ => Err(left),
        }
    })
    .await;
    assert!(left.iter().all(|c| c.source != a_source));
    drop(b);
    drop(d);
    eventually_ok("no connection left", || async {
        let left = connections(addr, "").await;
        match left.is_empty() {
            true => Ok(()),
            false => Err(left),
        }
    })
    .await;
    t.daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_unknown_requests() {
    let t = tunnel(echo_backend().await, TunnelOpts::default()).await;
    let view = t.daemon.view();
    let addr = admin(view).await;
    let health = get(addr, "/healthz").await;
    assert_eq!((health.code, health.body.as_str()), (200, "ok\n"));
    let ready = get(addr, "/readyz").await;
    assert_eq!(ready.code, 200);
    assert!(ready
        .body
        .contains(&format!("tls listening on {}", t.tls_port)));
    assert_eq!(get(addr, "/nothing-here").await.code, 404);
    assert_eq!(request(addr, "POST", "/metrics").await.code, 405);
    let status = get(addr, "/status").await;
    assert_eq!(status.code, 200);
    let status: dctunnel::admin::Status = serde_json::from_str(&status.body).unwrap();
    assert_eq!(
        status
            .services
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["plain", "tls"]
    );

    // While stopping, nothing listens: not ready, still alive.
    t.daemon.shutdown().await;
    assert_eq!(get(addr, "/readyz").await.code, 503);
    assert_eq!(get(addr, "/healthz").await.code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_cut_off() {
    let options = dctunnel::admin::Options {
        header_read_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let addr = admin_with(DaemonView::default(), options).await;
    // Headers never finished.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (answer, _) = read_to_end(&mut slow).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"));
    // A kept-alive connection left idle after its request.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = read_to_end(&mut idle).await;
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200 OK"));
}

/// The real binary: `run` with an [admin] section, then `status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_command_shows_a_running_daemon() {
    let pki = Pki::new("test CA");
    let server = pki.issue(SERVER);
    let client = pki.issue(CLIENT);
    let robotoff = pki.issue("robotoff.test");
    let backend = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("dctunnel.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[admin]
listen = "127.0.0.1:0"

[[service]]
name = "mongodb"
mode = "server"
listen = "127.0.0.1:0"
connect = "{backend}"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
allow_peers = ["{CLIENT}", "robotoff.test"]
max_connections = 300
"#,
            ca = pki.ca_pem.display(),
            cert = server.cert.display(),
            key = server.key.display(),
        ),
    )
    .unwrap();
    let mut daemon = Proc::start(&config, "");
    let admin_addr: SocketAddr = daemon.wait_for("admin endpoint listening")["listen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // `status` finds the endpoint through the file: now that the daemon has
    // its port, the file names it, as an operator's file names a fixed one.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replacen("127.0.0.1:0", &admin_addr.to_string(), 1),
    )
    .unwrap();

    // Ready when /readyz says so.
    eventually_ok("/readyz answers 200", || async {
        let a = get(admin_addr, "/readyz").await;
        match a.code {
            200 => Ok(()),
            _ => Err(a.body),
        }
    })
    .await;
    let status = get(admin_addr, "/status").await;
    let status: dctunnel::admin::Status = serde_json::from_str(&status.body).unwrap();
    let port = status.services[0].listen;

    // Two connections from client.test, one from robotoff.test, one refused.
    let mut held = Vec::new();
    for me in [&client, &client, &robotoff] {
        let mut c = tls_to(port, &pki.ca_pem, me).await;
        c.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.unwrap();
        held.push(c);
    }
    let mut garbage = TcpStream::connect(port).await.unwrap();
    garbage.write_all(b"EHLO\r\n").await.unwrap();
    read_to_end(&mut garbage).await;

    let status = |extra: &'static [&'static str]| {
        let config = config.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_dctunnel"))
                    .args(["status", "--config"])
                    .arg(&config)
                    .args(extra)
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    // The refusal is counted once the daemon has seen it.
    let (table, asked_before, asked_after) = eventually_ok("status shows the refusal", || async {
        let asked_before = now();
        let out = status(&[]).await;
        let asked_after = now();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let table = String::from_utf8(out.stdout).unwrap();
        match table.contains("handshake_failed=1") {
            true => Ok((table, asked_before, asked_after)),
            false => Err(table),
        }
    })
    .await;
    let rows = columns(&table, "SERVICE");
    assert_eq!(rows.len(), 1, "{table}");
    let row = &rows[0];
    assert_eq!(row["SERVICE"], "mongodb");
    assert_eq!(row["MODE"], "server");
    assert_eq!(row["LISTEN → CONNECT"], format!("{port} → {backend}"));
    assert_eq!(row["ACTIVE/LIMIT"], "3/300");
    assert_eq!(row["ACCEPTED"], "4");
    assert_eq!(row["REJECTED"], "handshake_failed=1");
    assert_eq!((row["UP"].as_str(), row["DOWN"].as_str()), ("12 B", "12 B"));
    let certs = columns(&table, "CERTIFICATE");
    assert_eq!(certs.len(), 2, "{table}");
    let own = certs
        .iter()
        .find(|r| r["CERTIFICATE"] == server.cert.display().to_string())
        .unwrap_or_else(|| panic!("{table}"));
    assert_eq!(own["KIND"], "cert");
    assert_eq!(own["SUBJECT"], SERVER);
    // Whole days left, rounded down, as of when status ran.
    let left = |at: i64| ((not_after(&server.cert) - at) / 86400).to_string();
    assert!(
        [left(asked_after), left(asked_before)].contains(&own["DAYS LEFT"]),
        "{table}"
    );
    assert_eq!(own["SERVICES"], "mongodb");
    let ca = certs.iter().find(|r| r["KIND"] == "ca").unwrap();
    assert_eq!(ca["CERTIFICATE"], pki.ca_pem.display().to_string());

    // Who holds the connections, by peer, most first.
    let out = status(&["--connections"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(
        lines[0],
        format!("mongodb (server, {port} → {backend}): 3 open of 300"),
        "{listing}"
    );
    assert_eq!(
        lines[1],
        "  peer client.test,localhost: 2 connections, up 8 B, down 8 B, from 127.0.0.1 (2)",
        "{listing}"
    );
    let sources = |c: &[&TlsStream<TcpStream>]| -> Vec<String> {
        c.iter()
            .map(|s| s.get_ref().0.local_addr().unwrap().to_string())
            .collect()
    };
    let robotoff_at = listing
        .find("  peer robotoff.test,localhost: 1 connection,")
        .unwrap_or_else(|| panic!("{listing}"));
    for source in sources(&[&held[0], &held[1]]) {
        let at = listing.find(&format!("    {source} ")).unwrap();
        assert!(at < robotoff_at, "{listing}");
    }
    for source in sources(&[&held[2]]) {
        let at = listing.find(&format!("    {source} ")).unwrap();
        assert!(at > robotoff_at, "{listing}");
    }

    // Once the daemon is gone, status says so.
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    let out = status(&[]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is dctunnel running?"), "{err}");
}

/// The names of the metrics a text refers to (`dctunnel_*`, `process_*`).
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = text.as_bytes();
    for prefix in ["dctunnel_", "process_"] {
        for (at, _) in text.match_indices(prefix) {
            let boundary =
                at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
            if !boundary {
                continue;
            }
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            names.push(name);
        }
    }
    names.sort();
    names.dedup();
    names
}

/// Every metric the Grafana dashboard and the alert rules use is one the
/// daemon exports (a renamed metric would silently empty a panel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_use_exported_metrics() {
    let t = tunnel(
        echo_backend().await,
        TunnelOpts {
            server_extra: "max_connections = 10".into(),
            ..Default::default()
        },
    )
    .await;
    // One connection, so that the metrics of peers seen in handshakes exist.
    let mut c = TcpStream::connect(t.entrance).await.unwrap();
    assert_eq!(roundtrip(&mut c, b"hello").await, b"hello");
    // And an online CA, whose metrics only a `mode = "ca"` service has.
    let folder = common::CaFolder::new();
    let (_ca_config, ca) = start_daemon(&folder.service("online-ca", "127.0.0.1:0", ""));
    // And renewal figures, which the renewal task ([renewal], in
    // `process::run`) records.
    t.daemon.view().update_renewal(|r| {
        *r = Some(dctunnel::renewal::RenewalStats {
            next_attempt: Some(std::time::SystemTime::now()),
            last_success: Some(std::time::SystemTime::now()),
            ..Default::default()
        })
    });
    let mut exported: Vec<String> = Vec::new();
    for view in [t.daemon.view(), ca.view()] {
        let s = scrape(admin(view).await).await;
        for sample in &s.samples {
            exported.push(sample.metric.clone());
            if matches!(sample.value, Value::Histogram(_)) {
                exported.push(format!("{}_bucket", sample.metric));
            }
        }
    }
    for name in [
        "dctunnel_target_up",
        "dctunnel_target_skips_total",
        "dctunnel_ca_certificates_issued_total",
        "dctunnel_ca_requests_refused_total",
        "dctunnel_certificate_renewals_total",
        "dctunnel_certificate_renewal_failures_total",
        "dctunnel_certificate_renewal_next_timestamp_seconds",
    ] {
        assert!(exported.iter().any(|e| e == name), "{name} not exported");
    }

    let monitoring = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(monitoring.join("grafana-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is not valid JSON");
    fn exprs(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(e)) => {
                            out.push_str(e);
                            out.push('\n');
                        }
                        _ => exprs(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
            _ => {}
        }
    }
    let mut queries = String::new();
    exprs(&dashboard, &mut queries);
    let alerts = std::fs::read_to_string(monitoring.join("alerts.yml")).unwrap();
    for (file, text) in [("grafana-dashboard.json", queries), ("alerts.yml", alerts)] {
        let used = metric_names(&text);
        assert!(used.len() >= 5, "{file}: found only {used:?}");
        for name in used {
            assert!(
                exported.contains(&name),
                "{file} uses {name}, which is not exported"
            );
        }
    }
    t.daemon.shutdown().await;
    ca.shutdown().await;
}

/// Reads the table whose header starts with `first`: one map per row,
/// column name to cell, cut at the header's column positions.
fn columns(text: &str, first: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = text.lines().skip_while(|l| !l.starts_with(first));
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let header: Vec<char> = header.chars().collect();
    // Columns start after two spaces (names may hold one).
    let mut starts = vec![0];
    for i in 2..header.len() {
        if header[i - 1] == ' ' && header[i - 2] == ' ' && header[i] != ' ' {
            starts.push(i);
        }
    }
    let names: Vec<String> = starts
        .iter()
        .enumerate()
        .map(|(n, &s)| {
            let end = starts.get(n + 1).copied().unwrap_or(header.len());
            header[s..end].iter().collect::<String>().trim().to_owned()
        })
        .collect();
    lines
        .take_while(|l| !l.trim().is_empty())
        .map(|l| {
            let chars: Vec<char> = l.chars().collect();
            names
                .iter()
                .enumerate()
                .map(|(n, name)| {
                    let s = starts[n].min(chars.len());
                    let end = starts
                        .get(n + 1)
                        .copied()
                        .unwrap_or(chars.len())
                        .min(chars.len());
                    (
                        name.clone(),
                        chars[s..end].iter().collect::<String>().trim().to_owned(),
                    )
                })
                .collect()
        })
        .collect()
}
