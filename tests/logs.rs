//! What the log says about a connection, read back from the real binary's
//! JSON lines: warnings that still name the service, source and peer when
//! only warnings are shown, refusals explained on the side that did not
//! refuse, pin mismatches called so, plain values, and IPv4 sources shown
//! as IPv4 on an IPv6 listener.

mod common;

use std::net::SocketAddr;

use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::Value;
use tokio::net::TcpStream;

/// Connection lines at warning only; the daemon's own lines at info, for
/// the helpers that wait for "service listening" and "reload done".
const WARNING_ONLY: &str =
    "DCTUNNEL_LOG='warning,dctunnel::daemon=info,dctunnel::process=info'; export DCTUNNEL_LOG;";

/// A client-mode service `dead` whose remote does not answer.
fn dead_client(pki: &Pki, me: &HostCert, remote: SocketAddr) -> String {
    format!(
        r#"
[[service]]
name = "dead"
mode = "client"
listen = "127.0.0.1:0"
connect = "{remote}"
server_name = "{SERVER}"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
"#,
        ca = pki.ca_pem.display(),
        cert = me.cert.display(),
        key = me.key.display(),
    )
}

/// Connects to `entrance`, sends nothing and waits for the close; returns
/// the address the connection came from.
async fn knock(entrance: SocketAddr) -> SocketAddr {
    let mut c = TcpStream::connect(entrance).await.unwrap();
    let me = c.local_addr().unwrap();
    let (got, _) = read_to_end(&mut c).await;
    assert!(got.is_empty(), "{got:?}");
    me
}

/// The line seen so far whose message contains `text` (and its service,
/// in the event or in its span, is `service`).
fn seen<'a>(p: &'a Proc, service: &str, text: &str) -> &'a Value {
    p.seen
        .iter()
        .find(|v| {
            v["fields"]["message"].as_str().unwrap_or("").contains(text)
                && (v["fields"]["service"] == service || v["span"]["service"] == service)
        })
        .unwrap_or_else(|| panic!("no {service} line with {text:?}: {:#?}", p.seen))
}

/// At `DCTUNNEL_LOG=warning` the connection's span is filtered out; its
/// warnings still say which service, which source and which peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warnings_name_service_source_and_peer_when_only_warnings_are_shown() {
    let pki = Pki::new("CA");
    let (s, c) = (pki.issue(SERVER), pki.issue(CLIENT));
    let (backend, nowhere) = (dead_address().await, dead_address().await);
    let dir = tempfile::tempdir().unwrap();
    let mut t = start_tunnel_proc(&dir.path().join("d.toml"), WARNING_ONLY, |tls| {
        tunnel_config(&pki, &s, &c, backend, "127.0.0.1:0", "127.0.0.1:0", tls)
            + &dead_client(&pki, &c, nowhere)
    });
    // Read past already by `start_tunnel_proc`.
    let dead: SocketAddr = seen(&t.proc, "dead", "service listening")["fields"]["listen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // The far end cannot reach its backend.
    knock(t.entrance).await;
    let f = t.proc.wait_for("connection closed: cannot connect to");
    assert_eq!(f["service"], "tls", "{f}");
    assert!(f["peer"].as_str().unwrap().contains(CLIENT), "{f}");
    let source: SocketAddr = f["source"].as_str().unwrap().parse().unwrap();
    assert!(source.ip().is_loopback(), "{f}");

    // This end cannot reach its remote: no peer yet, the source is ours.
    let me = knock(dead).await;
    let f = t.proc.wait_for("connection closed: cannot connect to");
    assert_eq!(f["service"], "dead", "{f}");
    assert_eq!(f["source"], me.to_string(), "{f}");
    assert!(f.get("peer").is_none(), "{f}");

    for v in &t.proc.seen {
        if v["level"] == "WARN" || v["level"] == "ERROR" {
            assert!(
                v["fields"]["service"].is_string() && v["fields"]["source"].is_string(),
                "a warning without its context: {v}"
            );
        }
    }
}

/// The far end's backend is down: that end warns, and this end, which only
/// sees the connection closed without a byte after the handshake, says so
/// at info with where to look. Its debug lines write values plainly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_down_at_the_far_end_shows_at_info_on_the_near_side() {
    let pki = Pki::new("CA");
    let (s, c) = (pki.issue(SERVER), pki.issue(CLIENT));
    let backend = dead_address().await;
    let dir = tempfile::tempdir().unwrap();
    let mut t = start_tunnel_proc(&dir.path().join("d.toml"), "", |tls| {
        tunnel_config(&pki, &s, &c, backend, "127.0.0.1:0", "127.0.0.1:0", tls)
    });
    knock(t.entrance).await;
    t.proc
        .wait_for("connection closed by the remote before it sent any byte");
    let line = seen(
        &t.proc,
        "plain",
        "closed by the remote before it sent any byte",
    );
    assert_eq!(line["level"], "INFO", "{line}");
    assert!(
        line["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("its backend may be down"),
        "{line}"
    );
    let open = seen(&t.proc, "plain", "connection open");
    assert_eq!(open["fields"]["remote"], t.tls.to_string(), "{open}");
}

/// Refusals by the remote, told on this side with what was probably
/// refused: its source address (the remote closes before the handshake)
/// and its identity (an alert after it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_by_the_remote_says_what_it_probably_refused() {
    let pki = Pki::new("CA");
    let (s, c) = (pki.issue(SERVER), pki.issue(CLIENT));
    let backend = echo_backend().await;
    let allowed = format!("allow_peers = [\"{CLIENT}\"]\n");
    for (server_lines, expected) in [
        (
            format!("{allowed}allow_sources = [\"10.99.0.0/16\"]\n"),
            // The end of stream, or a reset: the remote closed with the
            // ClientHello unread.
            "; the remote closed the connection before the handshake: it probably refused \
             this host's source address (allow_sources)",
        ),
        (
            "allow_peers = [\"someone-else.test\"]\n".to_owned(),
            "connection refused by the remote: probably the remote refused this host's \
             identity (not in its allow_peers)",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut t = start_tunnel_proc(&dir.path().join("d.toml"), "", |tls| {
            tunnel_config(&pki, &s, &c, backend, "127.0.0.1:0", "127.0.0.1:0", tls).replacen(
                &allowed,
                &server_lines,
                1,
            )
        });
        knock(t.entrance).await;
        let line = eventually_line(&mut t.proc, "plain", expected);
        assert_eq!(line["level"], "INFO", "{line}");
    }
}

/// Waits until a line of `service` contains `text`.
fn eventually_line(p: &mut Proc, service: &str, text: &str) -> Value {
    loop {
        if let Some(v) = p.seen.iter().find(|v| {
            v["fields"]["message"].as_str().unwrap_or("").contains(text)
                && (v["fields"]["service"] == service || v["span"]["service"] == service)
        }) {
            return v.clone();
        }
        p.wait_for("");
    }
}

fn pin_of(cert: &HostCert) -> String {
    let der = CertificateDer::pem_file_iter(&cert.cert)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    dctunnel::x509::spki_pin(&der).unwrap()
}

/// A key that is not the pinned one is reported as a pin mismatch with the
/// pin it has, on the side that checks; the other side is told its
/// certificate was probably refused for that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_not_pinned_is_a_pin_mismatch_not_an_unknown_ca() {
    let pki = Pki::new("CA");
    let (s, c, other) = (
        pki.issue(SERVER),
        pki.issue(CLIENT),
        pki.issue("other.test"),
    );
    let backend = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let pins = format!("peer_pins = [\"{}\"]\n", pin_of(&other));
    let mut t = start_tunnel_proc(&dir.path().join("d.toml"), "", |tls| {
        tunnel_config(&pki, &s, &c, backend, "127.0.0.1:0", "127.0.0.1:0", tls).replacen(
            &format!("allow_peers = [\"{CLIENT}\"]\n"),
            &format!("allow_peers = [\"{CLIENT}\"]\n{pins}"),
            1,
        )
    });
    knock(t.entrance).await;
    let line = eventually_line(&mut t.proc, "tls", "TLS handshake failed");
    let msg = line["fields"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!(
            "peer key not in peer_pins (its pin is {})",
            pin_of(&c)
        )),
        "{line}"
    );
    assert!(!msg.contains("UnknownIssuer"), "{line}");
    let line = eventually_line(&mut t.proc, "plain", "connection refused by the remote");
    let msg = line["fields"]["message"].as_str().unwrap();
    assert!(
        msg.contains("its key is not in the remote's peer_pins"),
        "{line}"
    );
}

/// A plain HTTP GET to the admin endpoint; returns the body.
async fn get(admin: SocketAddr, path: &str) -> String {
    let all = http_get(admin, path).await;
    let (head, body) = all.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{all}");
    body.to_owned()
}

/// An IPv4 client reaching a dual-stack `[::]` listener is shown as the
/// IPv4 address it is, in the log and in /connections, and is matched by
/// an IPv4 allow_sources entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv4_client_on_an_ipv6_listener_is_shown_as_ipv4() {
    let pki = Pki::new("CA");
    let (s, c) = (pki.issue(SERVER), pki.issue(CLIENT));
    let backend = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let mut t = start_tunnel_proc(&dir.path().join("d.toml"), "", |tls| {
        let text = tunnel_config(
            &pki,
            &s,
            &c,
            backend,
            "[::]:0",
            "127.0.0.1:0",
            // The server side's port, reached over IPv4.
            &tls.replace("[::]", "127.0.0.1"),
        )
        .replacen(
            &format!("allow_peers = [\"{CLIENT}\"]\n"),
            &format!("allow_peers = [\"{CLIENT}\"]\nallow_sources = [\"127.0.0.1/32\"]\n"),
            1,
        );
        format!("[admin]\nlisten = \"127.0.0.1:0\"\n{text}")
    });
    let admin: SocketAddr = t
        .proc
        .seen
        .iter()
        .find(|v| v["fields"]["message"] == "admin endpoint listening")
        .and_then(|v| v["fields"]["listen"].as_str())
        .expect("admin endpoint listening")
        .parse()
        .unwrap();
    let mut conn = TcpStream::connect(t.entrance).await.unwrap();
    assert_eq!(roundtrip(&mut conn, b"PING\r\n").await, b"PING\r\n");

    let body = get(admin, "/connections?service=tls").await;
    let conns: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(conns.len(), 1, "{body}");
    let source: SocketAddr = conns[0]["source"].as_str().unwrap().parse().unwrap();
    assert_eq!(source.ip().to_string(), "127.0.0.1", "{body}");

    let open = eventually_line(&mut t.proc, "tls", "connection open");
    let source = open["span"]["source"].as_str().unwrap();
    assert!(source.starts_with("127.0.0.1:"), "{open}");
    drop(conn);
}

/// An allow_sources entry in the IPv4-mapped form would match nobody (IPv4
/// clients are matched as IPv4): `check` refuses it with the form to use.
#[test]
fn an_ipv4_mapped_allow_sources_entry_is_refused_with_the_form_to_use() {
    let pki = Pki::new("CA");
    let s = pki.issue(SERVER);
    let (_dir, result) = config(&format!(
        r#"
[[service]]
name = "redis"
mode = "server"
listen = "[::]:6380"
connect = "127.0.0.1:6379"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
allow_peers = ["*"]
allow_sources = ["::ffff:10.99.0.3/128"]
"#,
        ca = pki.ca_pem.display(),
        cert = s.cert.display(),
        key = s.key.display(),
    ));
    let e = result.unwrap_err().to_string();
    assert!(e.contains("allow_sources"), "{e}");
    assert!(e.contains("write \"10.99.0.3/32\""), "{e}");
}
