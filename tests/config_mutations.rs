//! A seeded-mutation test of the configuration loader: thousands of
//! variations of the shipped configurations and of a test one, each
//! loaded; none may panic, and every configuration `check` accepts must
//! start (or fail only to bind its address), as `run` would start it.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use dctunnel::config::{self, Config};
use dctunnel::process::{self, Command, RunError};

/// xorshift64*: deterministic, so a failure is found again by its case
/// number.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Values that have broken, or could break, something past `check`.
fn strings(files: &Files) -> Vec<String> {
    let mut v: Vec<String> = [
        "18446744073709551615s",
        "99999999999999999999999s",
        "0s",
        "1ms",
        "30d",
        "31d",
        "1h",
        "61m",
        "x",
        "",
        "127.0.0.1:0",
        "localhost:0",
        "[::1]:0",
        "[::1]:1",
        "0.0.0.0:1",
        "[::]:1",
        "213.36.253.206:1",
        "localhost:65535",
        "localhost:65536",
        "a..b:1",
        "/dev/zero",
        "/dev/null",
        "/",
        "${CREDENTIALS_DIRECTORY}/k",
        "${DCTUNNEL_SURELY_UNSET}",
        "${",
        "*",
        "*.example",
        "a.*.b",
        "sha256/AAAA",
        "sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
        "server",
        "client",
        "v1",
        "v2",
        "10.1.0.0/16",
        "10.1.0.1/16",
        "::/0",
        "é",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push("a".repeat(300));
    for p in [
        &files.fifo,
        &files.broken_key,
        &files.cert,
        &files.key,
        &files.ca,
    ] {
        v.push(p.display().to_string());
    }
    v
}

const INTEGERS: &[&str] = &[
    "0",
    "1",
    "2",
    "256",
    "257",
    "100000",
    "1000000",
    "1000001",
    "9223372036854775807",
    "-1",
    "1.5",
    "true",
    "[]",
    "{}",
];

const KEYS: &[&str] = &[
    "idle_timeout",
    "connect_timeout",
    "handshake_timeout",
    "dead_peer_timeout",
    "max_connections",
    "max_connections_per_source",
    "connect",
    "listen",
    "ca",
    "cert",
    "key",
    "crl",
    "peer_pins",
    "allow_peers",
    "allow_sources",
    "server_name",
    "proxy_protocol",
    "tls12",
    "tls_resumption",
    "allow_public_listen",
    "worker_threads",
    "shutdown_timeout",
    "mode",
    "name",
];

/// Files the mutations name: a FIFO, a broken key, and a good identity.
struct Files {
    _pki: Pki,
    fifo: PathBuf,
    broken_key: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

/// One change to the text of a configuration.
fn mutate(text: &str, rng: &mut Rng, strings: &[String]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let n = rng.below(3) + 1;
    for _ in 0..n {
        if lines.is_empty() {
            break;
        }
        let i = rng.below(lines.len());
        match rng.below(7) {
            // A quoted value replaced.
            0 | 1 => {
                if let Some((key, _)) = lines[i].split_once(" = ") {
                    let value = rng.pick(strings);
                    lines[i] = format!("{key} = {}", toml_string(value));
                }
            }
            // A value replaced by a number or another type.
            2 => {
                if let Some((key, _)) = lines[i].split_once(" = ") {
                    lines[i] = format!("{key} = {}", rng.pick(INTEGERS));
                }
            }
            // A key added where a table goes on.
            3 => {
                let key = rng.pick(KEYS);
                let value = if rng.below(2) == 0 {
                    toml_string(rng.pick::<String>(strings))
                } else {
                    rng.pick(INTEGERS).to_string()
                };
                lines.insert(i, format!("{key} = {value}"));
            }
            4 => {
                lines.remove(i);
            }
            5 => {
                let line = lines[i].clone();
                lines.insert(i, line);
            }
            // A character changed.
            _ => {
                let mut chars: Vec<char> = lines[i].chars().collect();
                if !chars.is_empty() {
                    let at = rng.below(chars.len());
                    chars[at] = *rng.pick(&['0', '9', '"', '[', ']', '=', ':', 'x', ' ', '.']);
                    lines[i] = chars.into_iter().collect();
                }
            }
        }
    }
    lines.join("\n") + "\n"
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// Listens where the test may: ports 0, loopback only (a non-loopback
/// address would only add a bind error, which is allowed anyway).
fn local(addr: SocketAddr) -> SocketAddr {
    let ip = if addr.ip().is_loopback() {
        addr.ip()
    } else {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    };
    SocketAddr::new(ip, 0)
}

/// Starts `config` as `dctunnel run` does (its runtime, then
/// `process::run`), and stops it. `Err` for anything but a start or a
/// failure to bind.
fn start(mut config: Config, path: &Path) -> Result<(), String> {
    for s in &mut config.services {
        let s = Arc::get_mut(s).ok_or("a service is shared")?;
        s.listen = local(s.listen);
    }
    config.admin = config.admin.map(local);
    // As `process::main` builds it.
    let runtime =
        dctunnel::process::runtime(config.worker_threads).map_err(|e| format!("runtime: {e}"))?;
    runtime.block_on(async {
        let (commands, received) = tokio::sync::mpsc::channel(1);
        let (tell, started) = tokio::sync::oneshot::channel();
        let path = path.to_owned();
        let running =
            tokio::spawn(
                async move { process::run(config, &path, None, received, Some(tell)).await },
            );
        if started.await.is_ok() {
            commands
                .send(Command::Stop)
                .await
                .map_err(|_| "run ended")?;
        }
        match tokio::time::timeout(Duration::from_secs(20), running).await {
            Err(_) => Err("run did not stop within 20 s".to_owned()),
            Ok(Err(e)) => Err(format!("run panicked: {e}")),
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(RunError::Service(_) | RunError::Admin { .. }))) => Ok(()),
            Ok(Ok(Err(e))) => Err(format!("run failed: {e}")),
        }
    })
}

static PANICS: AtomicUsize = AtomicUsize::new(0);

#[test]
fn no_configuration_panics_and_what_check_accepts_starts() {
    // A panic in a task does not reach the test: count every one.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info)
    }));

    let pki = Pki::new("CA");
    let host = pki.issue("off2.test");
    let fifo = pki.dir.path().join("fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let broken_key = pki.dir.path().join("broken.key");
    write_private(
        &broken_key,
        "-----BEGIN PRIVATE KEY----- AAAA -----END PRIVATE KEY-----",
    );
    let files = Files {
        fifo,
        broken_key,
        cert: host.cert.clone(),
        key: host.key.clone(),
        ca: pki.ca_pem.clone(),
        _pki: pki,
    };

    // The seeds: the shipped configurations, and a tunnel of the test PKI.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut seeds: Vec<(PathBuf, String)> = std::fs::read_dir(&shipped)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect();
    assert!(seeds.len() >= 5, "only {} shipped configs", seeds.len());
    let test_dir = tempfile::tempdir().unwrap();
    seeds.push((
        test_dir.path().join("tunnel.toml"),
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n{}",
            tunnel_config(
                &files._pki,
                &host,
                &host,
                "127.0.0.1:9".parse().unwrap(),
                "127.0.0.1:0",
                "127.0.0.1:0",
                "127.0.0.1:1",
            )
        ),
    ));
    seeds.sort();
    let strings = strings(&files);

    let mut rng = Rng(0x05ee_ddc7_u64);
    let (mut accepted, mut refused) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    const CASES: usize = 1500;
    for case in 0..CASES {
        assert!(Instant::now() < deadline, "case {case}: out of time");
        let (path, seed) = &seeds[case % seeds.len()];
        let text = mutate(seed, &mut rng, &strings);
        let loaded = std::panic::catch_unwind(|| config::parse(path, &text))
            .unwrap_or_else(|_| panic!("case {case}: load panicked on:\n{text}"));
        match loaded {
            Ok(config) => {
                accepted += 1;
                if let Err(e) = start(config, path) {
                    panic!("case {case}: check accepted, but {e}:\n{text}");
                }
            }
            Err(e) => {
                refused += 1;
                assert!(!e.problems.is_empty(), "case {case}: no problem named");
            }
        }
        assert_eq!(
            PANICS.load(Ordering::SeqCst),
            0,
            "case {case}: a panic, on:\n{text}"
        );
    }
    eprintln!("{accepted} accepted, {refused} refused");
    // The mutations reach both sides.
    assert!(
        accepted > CASES / 20 && refused > CASES / 5,
        "{accepted} accepted, {refused} refused"
    );
}
