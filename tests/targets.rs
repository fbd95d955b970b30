//! Connect targets that fail are skipped by the next connections and
//! probed back, with the real daemon on loopback: a refusing address
//! stands for a dead target here (the packet-level blackhole, which costs
//! `connect_timeout`, is in tests/netns).

mod common;

use common::*;
use tokio::net::{TcpListener, TcpStream};

/// The client-mode service `plain` of tunnel `t` reloaded with `connect`
/// (a TOML value) instead of its one target.
async fn reconnect(t: &mut Tunnel, connect: &str) {
    let text = std::fs::read_to_string(t.dir.path().join("dctunnel.toml")).unwrap();
    let from = format!("connect = \"{}\"", t.tls_port);
    assert!(text.contains(&from), "{text}");
    let (_d, c) = config(&text.replace(&from, &format!("connect = {connect}")));
    let changes = t.daemon.reload(c.unwrap()).await.unwrap();
    assert!(changes.iter().any(|(n, _)| n == "plain"), "{changes:?}");
}

/// The value of the series `name{service="plain",target="ADDR"}`, if shown.
fn series(t: &Tunnel, name: &str, target: std::net::SocketAddr) -> Option<String> {
    let text = dctunnel::metrics::render(&t.daemon.view()).unwrap();
    let prefix = format!("{name}{{service=\"plain\",target=\"{target}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(str::to_owned)
}

/// Two targets, the first dead: the first connection tries it and goes
/// on to the second; the next ones skip it (counted); once something
/// listens there again, a background probe marks it up.
#[tokio::test]
async fn a_failed_target_is_skipped_then_probed_back() {
    let mut t = tunnel(echo_backend().await, TunnelOpts::default()).await;
    let dead = dead_address().await;
    let both = format!("[\"{dead}\", \"{}\"]", t.tls_port);
    reconnect(&mut t, &both).await;
    for _ in 0..3 {
        let mut s = TcpStream::connect(t.entrance).await.unwrap();
        assert_eq!(roundtrip(&mut s, b"ping").await, b"ping");
    }
    assert_eq!(series(&t, "dctunnel_target_up", dead).as_deref(), Some("0"));
    assert_eq!(
        series(&t, "dctunnel_target_up", t.tls_port).as_deref(),
        Some("1")
    );
    // The first connection tried it; the two after it skipped it.
    assert_eq!(
        series(&t, "dctunnel_target_skips_total", dead).as_deref(),
        Some("2")
    );
    let _back = TcpListener::bind(dead).await.unwrap();
    eventually("the probe marks the target up", || {
        series(&t, "dctunnel_target_up", dead).as_deref() == Some("1")
    })
    .await;
}

/// Never all skipped: a lone target marked down is still tried by the next
/// connection. The target stays dead throughout, so no probe can mark it up
/// in between: the second connection finds it down (it logs that it tries
/// the targets marked down) and its failure names the address, which it
/// would not had it skipped it.
#[tokio::test]
async fn a_lone_target_marked_down_is_still_tried() {
    let pki = Pki::new("targets");
    let (server, client) = (pki.issue(SERVER), pki.issue(CLIENT));
    let dead = dead_address().await;
    let backend = dead_address().await;
    let dir = tempfile::tempdir().unwrap();
    let ProcTunnel {
        mut proc, entrance, ..
    } = start_tunnel_proc(&dir.path().join("dctunnel.toml"), "", |_| {
        tunnel_config(
            &pki,
            &server,
            &client,
            backend,
            "127.0.0.1:0",
            "127.0.0.1:0",
            &dead.to_string(),
        )
    });
    let tried = format!("cannot connect to {dead}: ");

    let mut first = TcpStream::connect(entrance).await.unwrap();
    let (_, _) = read_to_end(&mut first).await;
    let down = proc.wait_for("connect target marked down");
    assert_eq!(down["target"], dead.to_string());
    let failed = proc.wait_for("cannot connect to");
    assert!(
        failed["message"].as_str().unwrap().contains(&tried),
        "{failed}"
    );

    let mut second = TcpStream::connect(entrance).await.unwrap();
    let (_, _) = read_to_end(&mut second).await;
    let last_resort = proc.wait_for("trying those marked down");
    assert_eq!(
        last_resort["targets"].as_str(),
        Some(format!("[{dead}]").as_str()),
        "{last_resort}"
    );
    let failed = proc.wait_for("cannot connect to");
    assert!(
        failed["message"].as_str().unwrap().contains(&tried),
        "the lone target marked down was not tried: {failed}"
    );
}
