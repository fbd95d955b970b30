//! `proxy_protocol = "v1"` / `"v2"`: the backend learns the TLS peer's
//! address. Checked with a real consumer: Debian's haproxy with
//! `accept-proxy`, which reports the address it parsed in X-Forwarded-For.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An HTTP server that answers every request with the request's headers.
async fn header_echo() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    req.extend_from_slice(&buf[..n]);
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    req.len()
                );
                s.write_all(head.as_bytes()).await.unwrap();
                s.write_all(&req).await.unwrap();
            });
        }
    });
    addr
}

struct Haproxy(std::process::Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// haproxy accepting the PROXY protocol, forwarding HTTP with
/// X-Forwarded-For to `backend`. haproxy cannot listen on port 0, so it is
/// handed a socket listening on a port picked here (as its stdin, which
/// `fd@0` names): the port is known and taken before haproxy starts, and
/// connections wait in the socket's queue until haproxy accepts them.
fn haproxy(dir: &std::path::Path, backend: std::net::SocketAddr) -> (Haproxy, u16) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "defaults\n  mode http\n  timeout connect 5s\n  timeout client 10s\n  timeout server 10s\n\
             frontend fe\n  bind fd@0 accept-proxy\n  option forwardfor\n  default_backend be\n\
             backend be\n  server s1 {backend}\n"
        ),
    )
    .unwrap();
    let guard = Haproxy(
        Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(listener)))
            .stdout(Stdio::null())
            .spawn()
            .expect("haproxy is not installed (./test.sh installs it)"),
    );
    (guard, port)
}

/// A TLS client from 127.0.0.2 (not the tunnel's 127.0.0.1) sends an HTTP
/// request through the server-mode service; returns the headers haproxy
/// forwarded.
async fn request_from_127_0_0_2(t: &Tunnel) -> String {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let tcp = socket.connect(t.tls_port).await.unwrap();
    let cfg = tls_client(&t.pki.ca_pem, Some(&t.client_cert));
    let sni = rustls::pki_types::ServerName::try_from(SERVER).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(sni, tcp)
        .await
        .unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (body, _) = read_to_end(&mut tls).await;
    String::from_utf8(body).unwrap()
}

async fn check(version: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (_haproxy, port) = haproxy(dir.path(), header_echo().await);
    let t = tunnel(
        format!("127.0.0.1:{port}").parse().unwrap(),
        TunnelOpts {
            server_extra: format!("proxy_protocol = \"{version}\""),
            ..Default::default()
        },
    )
    .await;
    let reply = request_from_127_0_0_2(&t).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        reply
            .to_ascii_lowercase()
            .contains("x-forwarded-for: 127.0.0.2\r\n"),
        "haproxy did not see the TLS peer's address:\n{reply}"
    );
    // And the plaintext client of the tunnel also gets through (its TLS
    // peer is the client side, on 127.0.0.1).
    let mut c = TcpStream::connect(t.entrance).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (body, _) = read_to_end(&mut c).await;
    let body = String::from_utf8(body).unwrap().to_ascii_lowercase();
    assert!(body.contains("x-forwarded-for: 127.0.0.1\r\n"), "{body}");
    t.daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_reads_the_v1_header() {
    check("v1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_reads_the_v2_header() {
    check("v2").await;
}

/// Without `proxy_protocol`, the backend's first bytes are the client's
/// own: no header comes before them (a v1 header would start with `P`, a
/// v2 one with `\r`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_option_no_header_is_sent() {
    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let t = tunnel(backend.local_addr().unwrap(), TunnelOpts::default()).await;
    let mut c = TcpStream::connect(t.entrance).await.unwrap();
    c.write_all(REQUEST).await.unwrap();
    let (mut s, _) = tokio::time::timeout(Duration::from_secs(10), backend.accept())
        .await
        .expect("the backend was not reached within 10 s")
        .unwrap();
    let mut got = vec![0u8; REQUEST.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut got))
        .await
        .expect("the request did not reach the backend within 10 s")
        .unwrap();
    assert_eq!(
        got[0],
        REQUEST[0],
        "something came before the client's bytes: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(got, REQUEST, "{:?}", String::from_utf8_lossy(&got));
    t.daemon.shutdown().await;
}
