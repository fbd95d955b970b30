//! A private key never leaves its file: for a key broken in every way we
//! could think of, no fragment of it shows in what a user or a peer can
//! read: `check`, the logs at every level (at start and on a reload), the
//! admin pages and `status`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The ways a PEM key gets broken on its way to a host, from `pem` (a
/// valid PKCS #8 key) and `cert` (a certificate, valid as such).
fn broken_forms(pem: &str, cert: &str) -> Vec<(&'static str, Vec<u8>)> {
    let lines: Vec<&str> = pem.lines().collect();
    let body: Vec<&str> = lines[1..lines.len() - 1].to_vec();
    let begin = lines[0];
    let end = lines[lines.len() - 1];
    let join = |parts: &[&str], sep: &str| parts.join(sep).into_bytes();
    let mut all = vec![begin];
    all.extend(&body);
    all.push(end);
    let mut forms = vec![
        ("one line, spaces", join(&all, " ")),
        ("one line, nothing between", join(&all, "")),
        ("one line, literal \\n", join(&all, "\\n")),
        ("glued to the BEGIN line", {
            format!("{begin}{}\n{end}\n", body.join("\n")).into_bytes()
        }),
        ("glued to the END line", {
            format!("{begin}\n{}{end}\n", body.join("\n")).into_bytes()
        }),
        ("truncated", pem.as_bytes()[..pem.len() / 2].to_vec()),
        ("a body line lost", {
            let mut l = all.clone();
            l.remove(2);
            join(&l, "\n")
        }),
        ("CRLF", pem.replace('\n', "\r\n").into_bytes()),
        ("CR only", pem.replace('\n', "\r").into_bytes()),
        ("indented", join(&all, "\n    ")),
        (
            "wrong label",
            pem.replace("PRIVATE KEY", "RSA PRIVATE KEY").into_bytes(),
        ),
        (
            "unknown label",
            pem.replace("PRIVATE KEY", "PRIVAT KEY").into_bytes(),
        ),
        (
            "END label differs",
            pem.replace("END PRIVATE KEY", "END EC PRIVATE KEY")
                .into_bytes(),
        ),
        ("body only", join(&body, "\n")),
        ("a character damaged", {
            let mut l: Vec<String> = all.iter().map(|s| s.to_string()).collect();
            l[1].replace_range(10..11, "!");
            l.join("\n").into_bytes()
        }),
        (
            "garbage after",
            format!("{pem}trailing words\n").into_bytes(),
        ),
        ("two keys", format!("{pem}{pem}").into_bytes()),
        ("certificate in place of the key", cert.as_bytes().to_vec()),
        (
            "encrypted headers",
            pem.replacen(
                "-----\n",
                "-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\n",
                1,
            )
            .into_bytes(),
        ),
        ("DER", {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(body.concat())
                .unwrap()
        }),
    ];
    forms.push(("empty", Vec::new()));
    forms
}

/// The key's base64, newlines removed.
fn base64_body(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

/// Fails if `output` holds 16 characters in a row of the key's base64
/// (also once its whitespace is removed), or a list of decimal byte values.
fn assert_no_secret(what: &str, form: &str, output: &str, body: &str) {
    let squeezed: String = output.chars().filter(|c| !c.is_whitespace()).collect();
    for start in 0..=body.len() - 16 {
        let window = &body[start..start + 16];
        assert!(
            !output.contains(window) && !squeezed.contains(window),
            "key ({form}): {what} shows key material {window:?}:\n{output}"
        );
    }
    assert!(
        !has_byte_list(output),
        "key ({form}): {what} shows a list of byte values:\n{output}"
    );
}

/// Whether `text` holds `[n, n, n, n` (or without spaces): a byte
/// string written as its values, as `{:?}` writes a `Vec<u8>`.
fn has_byte_list(text: &str) -> bool {
    text.split('[').skip(1).any(|after| {
        let numbers = after
            .split(',')
            .take(4)
            .map(str::trim)
            .take_while(|n| !n.is_empty() && n.len() <= 3 && n.bytes().all(|b| b.is_ascii_digit()))
            .count();
        numbers == 4
    })
}

fn service(port: u16, admin: u16, host: &HostCert, pki: &Pki) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:{admin}"

[[service]]
name = "redis"
mode = "server"
listen = "127.0.0.1:{port}"
connect = "127.0.0.1:6379"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
allow_peers = ["*"]
"#,
        ca = pki.ca_pem.display(),
        cert = host.cert.display(),
        key = host.key.display(),
    )
}

/// `dctunnel ARGS`: stdout and stderr together.
fn dctunnel(args: &[&str], config: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_dctunnel"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env("DCTUNNEL_LOG", "trace")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// An HTTP GET on the admin endpoint: the whole answer, headers included.
fn get(admin: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

/// The daemon, with every log line (trace level, JSON) kept as text.
struct Daemon {
    child: std::process::Child,
    log: std::sync::mpsc::Receiver<String>,
    seen: String,
}

impl Daemon {
    fn start(config: &Path) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dctunnel"))
            .args(["--log-format", "json", "run", "--config"])
            .arg(config)
            .env("DCTUNNEL_LOG", "trace")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, log) = std::sync::mpsc::channel();
        for out in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(out).lines() {
                    let Ok(line) = line else { return };
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
        }
        Daemon {
            child,
            log,
            seen: String::new(),
        }
    }

    /// Waits (up to 20 s) for a log line containing one of `texts`.
    fn wait_for(&mut self, texts: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push_str(&line);
                    self.seen.push('\n');
                    if texts.iter().any(|t| line.contains(t)) {
                        return;
                    }
                }
                Err(_) => panic!("no log line containing {texts:?}; seen:\n{}", self.seen),
            }
        }
    }

    /// Waits (up to 20 s) for the process to end, and reads the rest of
    /// its log.
    fn finish(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Ok(line) = self
            .log
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push_str(&line);
            self.seen.push('\n');
        }
        self.child.wait().unwrap().code()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn no_fragment_of_a_broken_key_is_ever_shown() {
    let pki = Pki::new("CA");
    let host = pki.issue("off2.test");
    let good_key = std::fs::read_to_string(&host.key).unwrap();
    let cert = std::fs::read_to_string(&host.cert).unwrap();
    let body = base64_body(&good_key);
    assert!(body.len() > 100, "{good_key}");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("dctunnel.toml");
    let (port, admin_port) = (free_port(), free_port());
    std::fs::write(&config, service(port, admin_port, &host, &pki)).unwrap();
    let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();

    let forms = broken_forms(&good_key, &cert);
    let mut refused = 0;
    for (form, bytes) in &forms {
        // The daemon starts with the good key, then reloads to the broken one.
        std::fs::write(&host.key, &good_key).unwrap();
        let mut daemon = Daemon::start(&config);
        daemon.wait_for(&["\"ready\""]);
        std::fs::write(&host.key, bytes).unwrap();
        daemon.signal("HUP");
        daemon.wait_for(&["reload done", "reload refused"]);

        let check = dctunnel(&["check"], &config);
        let mut outputs = vec![("check", check.clone())];
        for page in ["/status", "/connections", "/metrics", "/readyz", "/healthz"] {
            outputs.push((page, get(admin, page)));
        }
        outputs.push(("status", dctunnel(&["status"], &config)));
        outputs.push((
            "status --connections",
            dctunnel(&["status", "--connections"], &config),
        ));
        daemon.signal("TERM");
        assert_eq!(daemon.finish(), Some(0), "{}", daemon.seen);
        outputs.push(("log of a reload", daemon.seen.clone()));

        // Started with the broken key: the start is refused, and logged.
        let accepted = check.contains("OK, 1 service(s)");
        let mut daemon = Daemon::start(&config);
        if accepted {
            daemon.wait_for(&["\"ready\""]);
            daemon.signal("TERM");
        }
        let code = daemon.finish();
        outputs.push(("log of a start", daemon.seen.clone()));

        if !accepted {
            refused += 1;
            assert_eq!(code, Some(2), "key ({form}): {}", daemon.seen);
            assert!(
                check.contains(&format!("key: {}", host.key.display())),
                "key ({form}): check does not name the key file:\n{check}"
            );
        }
        for (what, output) in &outputs {
            assert_no_secret(what, form, output, &body);
        }
    }
    // Only the line-ending and indentation variants are still a key.
    assert_eq!(
        refused,
        forms.len() - 3,
        "{refused} of {} refused",
        forms.len()
    );
}
