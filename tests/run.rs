//! `process::run`, the whole daemon with its admin endpoint, driven
//! in-process: everything on port 0, reloads and stop sent as commands.

mod common;

use std::net::SocketAddr;

use common::*;
use dctunnel::process::{self, Command, Started};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// A server-mode service on port 0, the admin endpoint on port 0, and as
/// many more server-mode services as `extra`.
fn text(pki: &Pki, s: &HostCert, backend: SocketAddr, extra: usize) -> String {
    let mut t = format!(
        r#"
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
allow_peers = ["{CLIENT}"]
"#,
        ca = pki.ca_pem.display(),
        cert = s.cert.display(),
        key = s.key.display(),
    );
    for i in 0..extra {
        t += &format!("\n[[service]]\nname = \"extra-{i}\"\nmode = \"server\"\nlisten = \"127.0.0.1:0\"\nconnect = \"{backend}\"\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\nallow_peers = [\"{CLIENT}\"]\n",
            ca = pki.ca_pem.display(), cert = s.cert.display(), key = s.key.display());
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reports_its_addresses_reloads_on_command_and_stops() {
    let pki = Pki::new("CA");
    let s = pki.issue(SERVER);
    let backend = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dctunnel.toml");
    std::fs::write(&path, text(&pki, &s, backend, 0)).unwrap();
    let config = dctunnel::config::load(&path).unwrap();

    let (commands, received) = mpsc::channel(4);
    let (started_tx, started) = oneshot::channel();
    let run = tokio::spawn({
        let path = path.clone();
        async move { process::run(config, &path, None, received, Some(started_tx)).await }
    });
    let Started { admin, view } = started.await.unwrap();
    let admin = admin.expect("admin endpoint configured");
    assert_ne!(admin.port(), 0);
    let status = http_get(admin, "/status").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(status.contains("\"tls\""), "{status}");

    // A reload adding a service: the verdict comes back, the endpoint shows it.
    std::fs::write(&path, text(&pki, &s, backend, 1)).unwrap();
    let (reply, verdict) = oneshot::channel();
    commands
        .send(Command::Reload { reply: Some(reply) })
        .await
        .unwrap();
    let done = verdict.await.unwrap().unwrap();
    assert_eq!(done, "reload done: 2 service(s); extra-0: added");
    assert!(http_get(admin, "/status").await.contains("\"extra-0\""));
    assert_eq!(view.services().len(), 2);

    // A bad file: refused with the reason, nothing changes.
    std::fs::write(&path, "[[service]]\nname = 1\n").unwrap();
    let (reply, verdict) = oneshot::channel();
    commands
        .send(Command::Reload { reply: Some(reply) })
        .await
        .unwrap();
    let refused = verdict.await.unwrap().unwrap_err();
    assert!(
        refused.starts_with("reload refused, running configuration kept: "),
        "{refused}"
    );
    assert_eq!(view.services().len(), 2);

    commands.send(Command::Stop).await.unwrap();
    run.await.unwrap().unwrap();
    assert!(TcpStream::connect(admin).await.is_err(), "admin still open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refuses_a_busy_admin_address_before_any_service_listens() {
    let pki = Pki::new("CA");
    let s = pki.issue(SERVER);
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dctunnel.toml");
    let t = text(&pki, &s, "127.0.0.1:9".parse().unwrap(), 0).replace(
        "listen = \"127.0.0.1:0\"\n\n[[service]]",
        &format!("listen = \"{addr}\"\n\n[[service]]"),
    );
    std::fs::write(&path, t).unwrap();
    let config = dctunnel::config::load(&path).unwrap();
    let (_commands, received) = mpsc::channel(1);
    let err = process::run(config, &path, None, received, None)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("[admin].listen: cannot listen on {addr}: ")),
        "{err}"
    );
}

/// During the drain after a stop, the admin endpoint still shows the
/// connections being drained (who holds the shutdown up) and says it is
/// stopping; a second stop closes them at once instead of waiting for
/// `shutdown_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_is_visible_and_a_second_stop_ends_it() {
    let pki = Pki::new("CA");
    let (s, c) = (pki.issue(SERVER), pki.issue(CLIENT));
    let backend = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dctunnel.toml");
    let server_only = format!(
        "[daemon]\nshutdown_timeout = \"1h\"\n{}",
        text(&pki, &s, backend, 0)
    );
    std::fs::write(&path, &server_only).unwrap();
    let config = dctunnel::config::load(&path).unwrap();
    let (commands, received) = mpsc::channel(4);
    let (started_tx, started) = oneshot::channel();
    let run = tokio::spawn({
        let path = path.clone();
        async move { process::run(config, &path, None, received, Some(started_tx)).await }
    });
    let Started { admin, view } = started.await.unwrap();
    let admin = admin.unwrap();
    // The client side, pointed at the server side's real port.
    let tls = view.services()[0].1.local_addr;
    let with_client = format!(
        "{server_only}\n[[service]]\nname = \"plain\"\nmode = \"client\"\nlisten = \"127.0.0.1:0\"\nconnect = \"{tls}\"\nserver_name = \"{SERVER}\"\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n",
        ca = pki.ca_pem.display(),
        cert = c.cert.display(),
        key = c.key.display(),
    );
    std::fs::write(&path, with_client).unwrap();
    let (reply, verdict) = oneshot::channel();
    commands
        .send(Command::Reload { reply: Some(reply) })
        .await
        .unwrap();
    verdict.await.unwrap().unwrap();
    let entrance = view
        .services()
        .into_iter()
        .find(|(n, _)| n == "plain")
        .unwrap()
        .1
        .local_addr;
    let mut held = TcpStream::connect(entrance).await.unwrap();
    assert_eq!(roundtrip(&mut held, b"held").await, b"held");

    commands.send(Command::Stop).await.unwrap();
    eventually("the daemon drains", || view.draining()).await;
    let ready = http_get(admin, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    assert!(
        ready.contains("not ready: stopping, draining 2 open connection(s)"),
        "{ready}"
    );
    let connections = http_get(admin, "/connections").await;
    assert!(connections.contains("\"plain\""), "{connections}");
    assert!(connections.contains("\"tls\""), "{connections}");
    let status: String = http_get(admin, "/status")
        .await
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    assert!(status.contains("\"draining\":true"), "{status}");
    let metrics = http_get(admin, "/metrics").await;
    assert!(
        metrics.contains("dctunnel_connections_active{service=\"plain\"} 1"),
        "{metrics}"
    );
    // The held connection still works while draining.
    assert_eq!(roundtrip(&mut held, b"draining").await, b"draining");

    // A second stop: the connection is closed and run returns, long before
    // the hour of shutdown_timeout.
    commands.send(Command::Stop).await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(60), run)
        .await
        .expect("a second stop did not end the drain")
        .unwrap()
        .unwrap();
    let (_, closed) = read_to_end(&mut held).await;
    assert!(closed, "held connection still open");
}
