//! The command-line tools under `| head`: a reader that has gone away ends
//! the command quietly, never with a panic (exit 101).

mod common;

use std::process::{Command, Stdio};

use common::*;

/// Runs the real binary with `args`, its stdout a socket whose reading end
/// is already closed (writes fail with EPIPE, as into `| head` that has
/// exited); returns the exit code and stderr.
fn into_a_closed_pipe(args: &[&str]) -> (Option<i32>, String) {
    let (reader, writer) = std::os::unix::net::UnixStream::pair().unwrap();
    drop(reader);
    let writer = std::os::fd::OwnedFd::from(writer);
    let out = Command::new(env!("CARGO_BIN_EXE_dctunnel"))
        .args(args)
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn certs_and_check_end_quietly_when_the_reader_goes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let hosts = dir.path().join("hosts");
    let (code, err) = into_a_closed_pipe(&[
        "certs",
        "init-ca",
        "--dir",
        ca.to_str().unwrap(),
        "--name",
        "pipe CA",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(ca.join("ca.pem").is_file(), "init-ca did its work first");
    let (code, err) = into_a_closed_pipe(&[
        "certs",
        "issue",
        "--ca",
        ca.to_str().unwrap(),
        "--name",
        SERVER,
        "--out",
        hosts.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let cert = hosts.join(format!("{SERVER}.pem"));
    let (code, err) = into_a_closed_pipe(&["certs", "show", cert.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[[service]]\nname = \"s\"\nmode = \"server\"\nlisten = \"127.0.0.1:0\"\nconnect = \"127.0.0.1:9\"\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\nallow_peers = [\"{CLIENT}\"]\n",
            ca = ca.join("ca.pem").display(),
            cert = cert.display(),
            key = hosts.join(format!("{SERVER}.key")).display(),
        ),
    )
    .unwrap();
    let (code, err) = into_a_closed_pipe(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
