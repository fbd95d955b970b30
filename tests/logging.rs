//! `DCTUNNEL_LOG` as an admin writes it (syslog's words, stunnel's `debug =`
//! habit), with the real binary: every accepted level still shows a failed
//! start, anything else is refused before the daemon does anything.

mod common;

use std::process::Command;

use common::*;

/// Runs `dctunnel run` on `config` with `DCTUNNEL_LOG=level`; returns the
/// exit code and stderr.
fn run_with(level: &str, config: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dctunnel"))
        .args(["run", "--config"])
        .arg(config)
        .env("DCTUNNEL_LOG", level)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_failed_start_is_told_at_every_level_an_admin_may_write() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[service]]\nname = \"x\"\n").unwrap();
    for level in [
        "emerg", "alert", "crit", "err", "error", "warning", "warn", "notice", "info", "debug",
        "trace", "0", "1", "2", "3", "4", "5", "6", "7", "WARNING",
    ] {
        let (code, err) = run_with(level, &bad);
        assert_eq!(code, Some(2), "{level}: {err}");
        assert!(
            err.contains("service \"x\": mode: is required"),
            "DCTUNNEL_LOG={level} hid the reason: {err:?}"
        );
    }
}

#[test]
fn an_unknown_level_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    // A valid file: were the level accepted, the daemon would start.
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "").unwrap();
    for level in ["verbose", "off", "8", "dctunnel=loud", ""] {
        let (code, err) = run_with(level, &good);
        assert_eq!(code, Some(2), "{level}: {err}");
        assert!(
            err.starts_with(&format!("dctunnel: DCTUNNEL_LOG={level:?}: ")),
            "{err}"
        );
        assert!(err.contains("syslog's names"), "{err}");
    }
}

/// At debug, a connection's lines are dctunnel's own: the TLS library's
/// internals only when asked for by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_shows_our_lines_and_the_libraries_only_when_named() {
    let pki = Pki::new("CA");
    let (s, c) = (pki.issue(SERVER), pki.issue(CLIENT));
    let backend = echo_backend().await;
    for (level, library_lines_expected) in [("debug", false), ("debug,rustls=debug", true)] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dctunnel.toml");
        let ProcTunnel {
            proc: mut p,
            entrance,
            ..
        } = start_tunnel_proc(
            &path,
            &format!("DCTUNNEL_LOG='{level}'; export DCTUNNEL_LOG;"),
            |tls| tunnel_config(&pki, &s, &c, backend, "127.0.0.1:0", "127.0.0.1:0", tls),
        );
        let mut conn = tokio::net::TcpStream::connect(entrance).await.unwrap();
        assert_eq!(roundtrip(&mut conn, b"x").await, b"x");
        drop(conn);
        p.wait_for("connection closed");
        p.signal("TERM");
        p.wait_for("stopped");
        let from_rustls = p
            .seen
            .iter()
            .filter(|v| v["target"].as_str().unwrap_or("").starts_with("rustls"))
            .count();
        let ours = p
            .seen
            .iter()
            .filter(|v| {
                v["level"] == "DEBUG" && v["target"].as_str().unwrap_or("").starts_with("dctunnel")
            })
            .count();
        assert!(ours > 0, "{level}: no debug line of ours");
        assert_eq!(
            from_rustls > 0,
            library_lines_expected,
            "{level}: {from_rustls} rustls lines"
        );
    }
}
