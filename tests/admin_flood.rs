//! The admin endpoint against clients that hold connections and send
//! nothing: probes and scrapes still answer.

mod common;

use std::time::Duration;

use common::http_get;
use dctunnel::daemon::DaemonView;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// With the header deadline at an hour, idle clients past the connection
/// limit would hold /healthz for that hour if newcomers waited for a slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_never_keep_a_probe_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let options = dctunnel::admin::Options {
        header_read_timeout: Duration::from_secs(3600),
        connection_lifetime: Duration::from_secs(3600),
        ..Default::default()
    };
    let limit = options.max_connections;
    let stop = CancellationToken::new();
    let server = tokio::spawn(dctunnel::admin::serve_with(
        listener,
        DaemonView::default(),
        stop.clone(),
        options,
    ));
    let mut idle = Vec::new();
    for _ in 0..limit + 8 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    for probe in ["/healthz", "/metrics", "/status"] {
        let answer = tokio::time::timeout(Duration::from_secs(60), http_get(addr, probe))
            .await
            .unwrap_or_else(|_| panic!("{probe} kept out by idle clients"));
        assert!(answer.starts_with("HTTP/1.1 200"), "{probe}: {answer}");
    }
    // The oldest idle clients were the ones let go.
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(60), idle[0].read(&mut buf))
        .await
        .expect("the oldest idle client is still held")
        .unwrap_or(0);
    assert_eq!(n, 0);
    stop.cancel();
    drop(idle);
    server.await.unwrap();
}
