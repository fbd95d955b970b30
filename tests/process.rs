//! The real binary as an operator runs it: signals, reload from the file,
//! descriptor exhaustion, and a real Redis behind the tunnel.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use tokio::net::TcpStream;

fn write_config(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("dctunnel.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_drains_and_exits_zero() {
    let pki = Pki::new("CA");
    let (s, c) = (pki.issue(SERVER), pki.issue(CLIENT));
    let backend = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let ProcTunnel {
        proc: mut p,
        entrance,
        ..
    } = start_tunnel_proc(&dir.path().join("dctunnel.toml"), "", |tls| {
        tunnel_config(&pki, &s, &c, backend, "127.0.0.1:0", "127.0.0.1:0", tls)
    });

    let mut conn = TcpStream::connect(entrance).await.unwrap();
    assert_eq!(roundtrip(&mut conn, b"before").await, b"before");
    p.signal("TERM");
    p.wait_for("SIGTERM received");
    p.wait_for("waiting for open connections to finish");
    assert!(
        TcpStream::connect(entrance).await.is_err(),
        "still accepting"
    );
    assert_eq!(roundtrip(&mut conn, b"during drain").await, b"during drain");
    drop(conn);
    p.wait_for("stopped");
    assert_eq!(p.wait_exit(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_at_start_exits_non_zero_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, "[[service]]\nname = \"x\"\n");
    let mut p = Proc::start(&path, "");
    let f = p.wait_for("invalid configuration");
    assert!(f["message"]
        .as_str()
        .unwrap()
        .contains("service \"x\": mode: is required"));
    assert_eq!(p.wait_exit(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_port_at_start_names_the_service() {
    let pki = Pki::new("CA");
    let (s, c) = (pki.issue(SERVER), pki.issue(CLIENT));
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let text = tunnel_config(
        &pki,
        &s,
        &c,
        "127.0.0.1:9".parse().unwrap(),
        &addr,
        "127.0.0.1:0",
        &addr,
    );
    let path = write_config(&dir, &text);
    let mut p = Proc::start(&path, "");
    let f = p.wait_for("cannot listen");
    let msg = f["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("service \"tls\": listen: cannot listen on {addr}")),
        "{msg}"
    );
    assert_eq!(p.wait_exit(), Some(2));
}

/// SIGHUP applies a good file (one line per service) and refuses a bad one
/// while everything keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file_and_keeps_the_old_one_when_bad() {
    let pki = Pki::new("CA");
    let (s, c) = (pki.issue(SERVER), pki.issue(CLIENT));
    let backend = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let ProcTunnel {
        proc: mut p,
        text: base,
        tls,
        entrance,
    } = start_tunnel_proc(&dir.path().join("dctunnel.toml"), "", |tls| {
        tunnel_config(&pki, &s, &c, backend, "127.0.0.1:0", "127.0.0.1:0", tls)
    });
    let tls = tls.to_string();
    let mut live = TcpStream::connect(entrance).await.unwrap();
    assert_eq!(roundtrip(&mut live, b"one").await, b"one");

    // A second entrance is added.
    let second = base.clone()
        + &tunnel_config(&pki, &s, &c, backend, "", "127.0.0.1:0", &tls)
            .split("name = \"plain\"")
            .nth(1)
            .map(|rest| format!("\n[[service]]\nname = \"plain2\"{rest}"))
            .unwrap();
    write_config(&dir, &second);
    p.signal("HUP");
    let added = p.listening("plain2");
    let f = p.wait_for("reload: service added");
    assert_eq!(f["service"], "plain2");
    let mut c2 = TcpStream::connect(added).await.unwrap();
    assert_eq!(roundtrip(&mut c2, b"via plain2").await, b"via plain2");

    // A broken file: refused, everything as before.
    write_config(
        &dir,
        &second.replace("mode = \"client\"", "mode = \"clinet\""),
    );
    p.signal("HUP");
    let f = p.wait_for("reload refused, running configuration kept");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("unknown variant `clinet`"),
        "{f}"
    );
    assert_eq!(roundtrip(&mut live, b"still one").await, b"still one");
    assert_eq!(roundtrip(&mut c2, b"still two").await, b"still two");
    let mut c3 = TcpStream::connect(added).await.unwrap();
    assert_eq!(roundtrip(&mut c3, b"new on plain2").await, b"new on plain2");
}

/// With very few descriptors the daemon fails some connections, logs it,
/// and serves again once descriptors are free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_descriptor_exhaustion_and_recovers() {
    let pki = Pki::new("CA");
    let (s, c) = (pki.issue(SERVER), pki.issue(CLIENT));
    let backend = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let ProcTunnel {
        proc: mut p,
        entrance,
        ..
    } = start_tunnel_proc(&dir.path().join("dctunnel.toml"), "ulimit -n 48;", |tls| {
        tunnel_config(&pki, &s, &c, backend, "127.0.0.1:0", "127.0.0.1:0", tls)
    });
    // Each tunnelled connection costs four descriptors in this one process.
    let mut open = Vec::new();
    for _ in 0..40 {
        if let Ok(mut c) = TcpStream::connect(entrance).await {
            use tokio::io::AsyncWriteExt;
            let _ = c.write_all(b"x").await;
            open.push(c);
        }
    }
    // The daemon says it ran out, one way or another.
    let mut exhausted = false;
    for _ in 0..200 {
        let f = p.wait_for("");
        let m = f["message"].as_str().unwrap_or("").to_owned() + &f["error"].to_string();
        if m.contains("Too many open files") || m.contains("accept failed") {
            exhausted = true;
            break;
        }
    }
    assert!(
        exhausted,
        "descriptors never ran out; raise the connection count"
    );
    drop(open);
    // Recovery: a fresh connection goes through end to end.
    eventually_ok("recovery after descriptors were freed", || async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = TcpStream::connect(entrance)
            .await
            .map_err(|e| e.to_string())?;
        c.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        match tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut buf)).await {
            Ok(Ok(_)) if &buf == b"ping" => Ok(()),
            other => Err(format!("{other:?}, read {buf:?}")),
        }
    })
    .await;
    assert!(p.child.try_wait().unwrap().is_none(), "daemon died");
}

/// Debian's redis-server behind the tunnel, driven with redis-cli.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_through_the_tunnel() {
    let cli = |port: u16, args: &[&str], input: Option<&[u8]>| -> String {
        let mut child = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("redis-cli is not installed");
        let mut stdin = child.stdin.take().unwrap();
        if let Some(input) = input {
            stdin.write_all(input).unwrap();
        }
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    // redis-server can neither listen on port 0 and say which port it got
    // nor take a listening socket from us: it gets a port found free, and
    // another try if something else took that port before it could bind
    // (it then exits at once).
    let dir = tempfile::tempdir().unwrap();
    let mut tries = 0;
    let (_redis, port) = loop {
        tries += 1;
        let port = free_port();
        let mut redis = KillOnDrop(
            Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::piped())
                .spawn()
                .expect("redis-server is not installed (./test.sh installs it)"),
        );
        // It says when it listens, and exits at once if the port was
        // taken. (Asking with redis-cli could reach whatever took it.)
        let stdout = redis.0.stdout.take().unwrap();
        let bound = tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            let mut lines = std::io::BufReader::new(stdout).lines();
            let bound = lines.any(|l| l.is_ok_and(|l| l.contains("Ready to accept connections")));
            // Keep reading, so that its log never fills the pipe.
            std::thread::spawn(move || lines.for_each(drop));
            bound
        })
        .await
        .unwrap();
        if bound {
            break (redis, port);
        }
        assert!(tries < 5, "redis-server exited at start {tries} times");
    };

    let t = tunnel(
        format!("127.0.0.1:{port}").parse().unwrap(),
        TunnelOpts::default(),
    )
    .await;
    let entrance = t.entrance.port();
    let (tx, rx) = (entrance, entrance);
    let out = tokio::task::spawn_blocking(move || {
        let mut results = Vec::new();
        results.push(cli(tx, &["PING"], None));
        results.push(cli(tx, &["SET", "product:3017620422003", "Nutella"], None));
        results.push(cli(rx, &["GET", "product:3017620422003"], None));
        // A 1 MiB value in and out.
        let big: Vec<u8> = (0..(1 << 20)).map(|i| b'a' + (i % 26) as u8).collect();
        results.push(cli(tx, &["-x", "SET", "big"], Some(&big)));
        results.push(cli(rx, &["STRLEN", "big"], None));
        results.push(cli(rx, &["DBSIZE"], None));
        results
    })
    .await
    .unwrap();
    assert_eq!(out, ["PONG", "OK", "Nutella", "OK", "1048576", "2"]);
    // What went through the tunnel is what redis holds.
    assert_eq!(
        cli(port, &["GET", "product:3017620422003"], None),
        "Nutella"
    );
    t.daemon.shutdown().await;
}

/// Stops a helper process even when the test fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The systemd notify protocol, spoken to a datagram socket standing in for
/// systemd: READY=1 once listening, RELOADING=1 then READY=1 around a
/// reload with the outcome in STATUS=, STOPPING=1 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tells_systemd_when_ready_reloading_and_stopping() {
    let backend = echo_backend().await;
    // The client side goes through a server side run in-process (same CA
    // and certificates), whose port is known before the file is written:
    // this daemon's own server side listens on port 0 and its address is
    // only read back. (Joining the two ends with a reload, as
    // `start_tunnel_proc` does, would add to the notifications checked.)
    let remote = tunnel(backend, TunnelOpts::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let good = tunnel_config(
        &remote.pki,
        &remote.server_cert,
        &remote.client_cert,
        backend,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &remote.tls_port.to_string(),
    );
    let path = write_config(&dir, &good);
    let socket_path = dir.path().join("notify.sock");
    let systemd = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let next = || {
        let mut buf = [0u8; 4096];
        let n = systemd.recv(&mut buf).expect("no notification within 20 s");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    };
    let mut p = Proc::start(
        &path,
        &format!(
            "NOTIFY_SOCKET={}; export NOTIFY_SOCKET;",
            socket_path.display()
        ),
    );
    // Each listening socket goes to systemd's descriptor store first, so
    // that a restart keeps it open.
    let mut stored = Vec::new();
    let ready = loop {
        let m = next();
        match m.strip_prefix("FDSTORE=1\nFDNAME=") {
            Some(name) => stored.push(name.to_owned()),
            None => break m,
        }
    };
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    assert!(ready.contains("STATUS=running 2 service(s)"), "{ready:?}");
    // Listening before READY: the entrance answers now.
    let [tls, entrance] = p.listening_all(["tls", "plain"]);
    stored.sort();
    let mut expected = vec![
        tls.to_string().replace(':', "_"),
        entrance.to_string().replace(':', "_"),
    ];
    expected.sort();
    assert_eq!(stored, expected);
    let mut conn = TcpStream::connect(entrance).await.unwrap();
    assert_eq!(roundtrip(&mut conn, b"ready").await, b"ready");

    write_config(&dir, &good.replace("mode = \"client\"", "mode = \"nope\""));
    p.signal("HUP");
    let reloading = next();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading:?}"
    );
    let after = next();
    assert!(
        after.contains("READY=1") && after.contains("last reload FAILED"),
        "{after:?}"
    );

    write_config(&dir, &good);
    p.signal("HUP");
    assert!(next().starts_with("RELOADING=1"));
    let after = next();
    assert!(
        after.contains("READY=1") && after.contains("last reload OK"),
        "{after:?}"
    );

    drop(conn);
    p.signal("TERM");
    let stopping = next();
    assert!(stopping.starts_with("STOPPING=1"), "{stopping:?}");
    assert_eq!(p.wait_exit(), Some(0));
    remote.daemon.shutdown().await;
}

/// Runs `dctunnel reload --control PATH` and returns (exit code, stdout, stderr).
fn reload_command(control: &std::path::Path) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dctunnel"))
        .arg("reload")
        .arg("--control")
        .arg(control)
        .env_remove("DCTUNNEL_CONTROL")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `dctunnel reload` (the unit's ExecReload=) asks the daemon through its
/// control socket and exits with the daemon's verdict: 0 when the new file
/// is in force, 1 with the reason when it was refused, 2 when there is no
/// daemon to ask. It reads no configuration or key itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_command_reports_the_daemons_verdict() {
    let pki = Pki::new("CA");
    let (s, c) = (pki.issue(SERVER), pki.issue(CLIENT));
    let backend = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("control.sock");
    let ProcTunnel {
        proc: mut p,
        text: good,
        entrance,
        ..
    } = start_tunnel_proc(
        &dir.path().join("dctunnel.toml"),
        &format!(
            "DCTUNNEL_CONTROL={}; export DCTUNNEL_CONTROL;",
            control.display()
        ),
        |tls| tunnel_config(&pki, &s, &c, backend, "127.0.0.1:0", "127.0.0.1:0", tls),
    );
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let meta = std::fs::metadata(&control).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let mut live = TcpStream::connect(entrance).await.unwrap();
    assert_eq!(roundtrip(&mut live, b"before").await, b"before");

    // A bad file: exit 1, the daemon's reason, the old configuration serving.
    write_config(
        &dir,
        &good.replace("mode = \"client\"", "mode = \"clinet\""),
    );
    let (code, out, err) = tokio::task::spawn_blocking({
        let control = control.clone();
        move || reload_command(&control)
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1), "stdout {out:?} stderr {err:?}");
    assert!(
        err.starts_with("dctunnel reload: reload refused, running configuration kept: "),
        "{err}"
    );
    assert!(err.contains("unknown variant `clinet`"), "{err}");
    assert_eq!(roundtrip(&mut live, b"after bad").await, b"after bad");

    // A good file with a change: exit 0 and what changed.
    let changed = good.replace("[[service]]", "[[service]]\nidle_timeout = \"77s\"");
    write_config(&dir, &changed);
    let (code, out, err) = tokio::task::spawn_blocking({
        let control = control.clone();
        move || reload_command(&control)
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "stdout {out:?} stderr {err:?}");
    assert!(out.starts_with("reload done: 2 service(s); "), "{out}");
    assert!(out.contains("updated"), "{out}");
    assert_eq!(roundtrip(&mut live, b"after good").await, b"after good");

    // Stopped: the socket is gone and the command says it cannot ask.
    drop(live);
    p.signal("TERM");
    assert_eq!(p.wait_exit(), Some(0));
    assert!(!control.exists(), "control socket left behind");
    let (code, _, err) = reload_command(&control);
    assert_eq!(code, Some(2));
    assert!(err.contains("cannot ask the daemon through"), "{err}");
}

/// A notify socket nobody reads (systemd busy, its queue full) must not
/// stop the daemon: notifications that cannot be sent are dropped, and
/// reloads, tunnels and SIGTERM work as usual, even on one thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_notify_socket_never_blocks_the_daemon() {
    let pki = Pki::new("CA");
    let (s, c) = (pki.issue(SERVER), pki.issue(CLIENT));
    let backend = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    // Bound and never read: its queue fills after a few datagrams.
    let _systemd = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    let ProcTunnel {
        proc: mut p,
        entrance,
        ..
    } = start_tunnel_proc(
        &dir.path().join("dctunnel.toml"),
        &format!(
            "NOTIFY_SOCKET={}; WATCHDOG_USEC=2000; export NOTIFY_SOCKET WATCHDOG_USEC;",
            socket_path.display()
        ),
        |tls| {
            tunnel_config(&pki, &s, &c, backend, "127.0.0.1:0", "127.0.0.1:0", tls)
                .replace("[daemon]\n", "[daemon]\nworker_threads = 1\n")
        },
    );
    // The watchdog pings every millisecond: the queue is full by now.
    p.wait_for("cannot notify systemd; dropped");
    for round in 0..3 {
        p.signal("HUP");
        p.wait_for("reload done");
        let mut conn = TcpStream::connect(entrance).await.unwrap();
        let msg = format!("round {round}");
        assert_eq!(roundtrip(&mut conn, msg.as_bytes()).await, msg.as_bytes());
    }
    p.signal("TERM");
    p.wait_for("stopped");
    assert_eq!(p.wait_exit(), Some(0));
}
