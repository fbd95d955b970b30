//! `dctunnel status` during an incident: the file on disk half edited, the
//! endpoint named by hand, JSON for scripts.

mod common;

use std::process::Command;

use common::*;

fn status(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dctunnel"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_works_with_a_broken_file_by_hand_and_as_json() {
    let pki = Pki::new("CA");
    let (s, c) = (pki.issue(SERVER), pki.issue(CLIENT));
    let backend = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dctunnel.toml");
    let with_admin = |tls: &str| {
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n{}",
            tunnel_config(&pki, &s, &c, backend, "127.0.0.1:0", "127.0.0.1:0", tls)
        )
    };
    let ProcTunnel {
        proc: mut p, text, ..
    } = start_tunnel_proc(&path, "", with_admin);
    let admin = p
        .seen
        .iter()
        .find(|v| v["fields"]["message"] == "admin endpoint listening")
        .expect("no admin endpoint line")["fields"]["listen"]
        .as_str()
        .unwrap()
        .to_owned();
    // The file as the admin left it: the real admin port written in.
    let text = text.replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{admin}\""),
        1,
    );
    let config = path.to_str().unwrap();

    // The admin half-way through an edit: a syntax error further down.
    std::fs::write(&path, text.replace("mode = \"client\"", "mode = \"client")).unwrap();
    let (code, out, err) = status(&["status", "--config", config]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("plain") && out.contains("tls"), "{out}");
    assert!(err.contains("not valid TOML"), "{err}");

    // The endpoint by hand, and JSON both ways.
    let (code, out, err) = status(&["status", "--admin", &admin, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["services"].as_array().unwrap().len(), 2, "{v}");
    let (code, out, err) = status(&[
        "--log-format",
        "json",
        "status",
        "--admin",
        &admin,
        "--connections",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v.is_array(), "{v}");

    // Nothing to salvage: the error says how to name the endpoint.
    std::fs::write(&path, "[[service]\n").unwrap();
    let (code, _, err) = status(&["status", "--config", config]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--admin IP:PORT"), "{err}");
    p.signal("TERM");
    assert_eq!(p.wait_exit(), Some(0));
}

/// A FIFO given as the file to read is refused at once, naming it, by
/// `status` and `import-stunnel` too (they read files as `check` does).
#[test]
fn status_and_import_refuse_a_fifo_instead_of_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.conf");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let fifo = fifo.to_str().unwrap();
    for args in [
        vec!["status", "--config", fifo],
        vec!["import-stunnel", fifo],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dctunnel"))
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut exited = None;
        for _ in 0..400 {
            if let Some(status) = child.try_wait().unwrap() {
                exited = Some(status);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let Some(status) = exited else {
            let _ = child.kill();
            panic!("{args:?} blocked on a FIFO");
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(!status.success(), "{args:?}");
        assert!(
            err.contains("is a FIFO, not a regular file"),
            "{args:?}: {err}"
        );
    }
}
