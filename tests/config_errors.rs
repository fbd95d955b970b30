//! Each configuration mistake gets one clear message naming the file, the
//! service and the key; `check` lists every problem at once.

mod common;

use std::process::Command;

use common::*;

/// A valid server-mode service for the test PKI, to be broken one key at a time.
fn server(pki: &Pki, host: &HostCert, extra: &str) -> String {
    format!(
        r#"
[[service]]
name = "mongodb"
mode = "server"
listen = "127.0.0.1:27017"
connect = "10.1.0.102:27017"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
{extra}
"#,
        ca = pki.ca_pem.display(),
        cert = host.cert.display(),
        key = host.key.display(),
    )
}

fn client(pki: &Pki, host: &HostCert, listen: &str, extra: &str) -> String {
    format!(
        r#"
[[service]]
name = "mongodb-off1"
mode = "client"
listen = "{listen}"
connect = "proxy2.openfoodfacts.org:27017"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
{extra}
"#,
        ca = pki.ca_pem.display(),
        cert = host.cert.display(),
        key = host.key.display(),
    )
}

/// The problems as `check` prints them, one string each.
fn problems(text: &str) -> Vec<String> {
    let (_dir, result) = config(text);
    match result {
        Ok(_) => panic!("configuration accepted:\n{text}"),
        Err(e) => e.problems.iter().map(ToString::to_string).collect(),
    }
}

fn assert_one(text: &str, service: &str, field: &str, words: &str) {
    let p = problems(text);
    assert_eq!(p.len(), 1, "expected one problem, got {p:#?}");
    let needle = format!("service {service:?}: {field}: ");
    assert!(p[0].contains(&needle), "{:?} lacks {needle:?}", p[0]);
    assert!(p[0].contains(words), "{:?} lacks {words:?}", p[0]);
    assert!(
        p[0].contains("dctunnel.toml"),
        "{:?} does not name the file",
        p[0]
    );
}

#[test]
fn a_valid_configuration_is_accepted() {
    let pki = Pki::new("CA");
    let h = pki.issue("off2.test");
    let text = server(&pki, &h, r#"allow_peers = ["client.test"]"#)
        + &client(&pki, &h, "10.1.0.113:27017", "");
    let (_d, c) = config(&text);
    let c = c.unwrap();
    assert_eq!(c.services.len(), 2);
}

#[test]
fn client_mode_on_a_wildcard_address_is_refused() {
    let pki = Pki::new("CA");
    let h = pki.issue("off1.test");
    assert_one(
        &client(&pki, &h, "0.0.0.0:27017", ""),
        "mongodb-off1",
        "listen",
        "allow_public_listen = true together with allow_sources",
    );
    assert_one(
        &client(&pki, &h, "[::]:27017", ""),
        "mongodb-off1",
        "listen",
        "wildcard",
    );
}

#[test]
fn client_mode_on_a_public_address_is_refused() {
    let pki = Pki::new("CA");
    let h = pki.issue("off1.test");
    assert_one(
        &client(&pki, &h, "213.36.253.206:27017", ""),
        "mongodb-off1",
        "listen",
        "213.36.253.206 is a public address",
    );
}

#[test]
fn public_listen_override_needs_allow_sources() {
    let pki = Pki::new("CA");
    let h = pki.issue("off1.test");
    assert_one(
        &client(&pki, &h, "0.0.0.0:27017", "allow_public_listen = true"),
        "mongodb-off1",
        "allow_sources",
        "is required when allow_public_listen = true",
    );
    // With both, it is the user's explicit choice.
    let text = client(
        &pki,
        &h,
        "0.0.0.0:27017",
        "allow_public_listen = true\nallow_sources = [\"10.1.0.0/16\"]",
    );
    let (_d, c) = config(&text);
    assert!(c.is_ok());
}

#[test]
fn server_mode_without_allow_peers_is_refused() {
    let pki = Pki::new("CA");
    let h = pki.issue("off2.test");
    assert_one(&server(&pki, &h, ""), "mongodb", "allow_peers", "[\"*\"]");
    assert_one(
        &server(&pki, &h, "allow_peers = []"),
        "mongodb",
        "allow_peers",
        "is empty",
    );
}

#[test]
fn a_private_key_others_can_read_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let pki = Pki::new("CA");
    let h = pki.issue("off2.test");
    std::fs::set_permissions(&h.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_one(
        &server(&pki, &h, r#"allow_peers = ["*"]"#),
        "mongodb",
        "key",
        &format!(
            "(mode 0644); a private key must be private: chmod 600 {}",
            h.key.display()
        ),
    );
}

#[test]
fn an_expired_own_certificate_is_refused() {
    let pki = Pki::new("CA");
    let h = pki.issue_expired("off2.test");
    assert_one(
        &server(&pki, &h, r#"allow_peers = ["*"]"#),
        "mongodb",
        "cert",
        "certificate expired on",
    );
}

#[test]
fn missing_and_unreadable_files_are_named() {
    let pki = Pki::new("CA");
    let mut h = pki.issue("off2.test");
    h.cert = "/nonexistent/off2.pem".into();
    assert_one(
        &server(&pki, &h, r#"allow_peers = ["*"]"#),
        "mongodb",
        "cert",
        "/nonexistent/off2.pem: cannot read",
    );
    let h = pki.issue("off2.test");
    let garbage = pki.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let text = server(&pki, &h, r#"allow_peers = ["*"]"#).replace(
        &format!("ca = \"{}\"", pki.ca_pem.display()),
        &format!("ca = \"{}\"", garbage.display()),
    );
    assert_one(
        &text,
        "mongodb",
        "ca",
        "garbage.pem: line 1: text outside a PEM block",
    );
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_refused() {
    let pki = Pki::new("CA");
    let a = pki.issue("off2.test");
    let b = pki.issue("off1.test");
    let mixed = HostCert {
        cert: a.cert,
        key: b.key,
    };
    assert_one(
        &server(&pki, &mixed, r#"allow_peers = ["*"]"#),
        "mongodb",
        "key",
        "does not match the certificate",
    );
}

#[test]
fn duplicate_names_and_listen_addresses_are_refused() {
    let pki = Pki::new("CA");
    let h = pki.issue("off2.test");
    let one = server(&pki, &h, r#"allow_peers = ["*"]"#);
    let p = problems(&format!("{one}{one}"));
    assert!(
        p.iter()
            .any(|p| p
                .contains("service \"mongodb\": name: service #2 has the same name as service #1")),
        "{p:#?}"
    );
    assert!(
        p.iter().any(|p| p.contains(
            "listen: 127.0.0.1:27017 is already the listen address of service \"mongodb\""
        )),
        "{p:#?}"
    );
}

#[test]
fn unknown_keys_and_bad_values_are_named() {
    let pki = Pki::new("CA");
    let h = pki.issue("off2.test");
    let p = problems(&server(
        &pki,
        &h,
        "allow_peers = [\"*\"]\nverifyChain = true",
    ));
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].contains("service \"mongodb\"")
            && p[0].contains("verifyChain: unknown key; known keys: `name`"),
        "{p:#?}"
    );

    assert_one(
        &server(
            &pki,
            &h,
            "allow_peers = [\"*\"]\nidle_timeout = \"10 minutes\"",
        ),
        "mongodb",
        "idle_timeout",
        "is not a duration",
    );
    assert_one(
        &server(
            &pki,
            &h,
            "allow_peers = [\"*\"]\nallow_sources = [\"10.1.0.1/16\"]",
        ),
        "mongodb",
        "allow_sources",
        "did you mean 10.1.0.0/16?",
    );
    assert_one(
        &server(&pki, &h, "allow_peers = [\"*\"]").replace("10.1.0.102:27017", "10.1.0.102"),
        "mongodb",
        "connect",
        "has no port",
    );
    assert_one(
        &server(&pki, &h, "allow_peers = [\"*\"]").replace("127.0.0.1:27017", "localhost:27017"),
        "mongodb",
        "listen",
        "is not IP:PORT",
    );
}

#[test]
fn every_problem_is_listed_at_once() {
    let pki = Pki::new("CA");
    let h = pki.issue("off1.test");
    let text = server(&pki, &h, "") + &client(&pki, &h, "0.0.0.0:1", "idle_timeout = \"x\"");
    let p = problems(&text);
    assert_eq!(p.len(), 3, "{p:#?}");
}

#[test]
fn toml_syntax_errors_show_the_line() {
    let p = problems("[[service]]\nname = \"x\nmode = \"server\"\n");
    assert_eq!(p.len(), 1);
    assert!(
        p[0].contains("not valid TOML") && p[0].contains("line 2"),
        "{p:#?}"
    );
}

#[test]
fn an_empty_file_has_no_service() {
    let p = problems("");
    assert_eq!(
        p,
        vec![format!(
            "{}: no [[service]] defined",
            p[0].split(": ").next().unwrap()
        )]
    );
}

#[test]
fn relative_paths_are_taken_from_the_config_folder() {
    let pki = Pki::new("CA");
    let h = pki.issue("off2.test");
    // Write the config next to the certificates and name them relatively.
    let text = server(&pki, &h, r#"allow_peers = ["*"]"#)
        .replace(&format!("{}/", pki.dir.path().display()), "");
    let path = pki.dir.path().join("relative.toml");
    std::fs::write(&path, text).unwrap();
    let c = dctunnel::config::load(&path).unwrap();
    assert_eq!(
        c.services[0].files.ca.as_deref(),
        Some(pki.ca_pem.as_path())
    );
}

/// `dctunnel check` as a user runs it: exit status and output.
#[test]
fn check_command_prints_services_or_problems() {
    let pki = Pki::new("CA");
    let h = pki.issue("off2.test");
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        server(&pki, &h, r#"allow_peers = ["ovh-stunnel-client.test"]"#),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dctunnel"))
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("OK, 1 service(s)"), "{stdout}");
    assert!(
        stdout.contains("mongodb") && stdout.contains("127.0.0.1:27017 -> 10.1.0.102:27017"),
        "{stdout}"
    );
    assert!(
        stdout.contains("peers: ovh-stunnel-client.test"),
        "{stdout}"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, client(&pki, &h, "0.0.0.0:27017", "")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dctunnel"))
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("invalid configuration (1 problem)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("bad.toml: service \"mongodb-off1\": listen:"),
        "{stderr}"
    );
    // check binds nothing, so a config naming a busy port still checks.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port_taken = server(&pki, &h, r#"allow_peers = ["*"]"#)
        .replace("127.0.0.1:27017", &busy.local_addr().unwrap().to_string());
    std::fs::write(&good, port_taken).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dctunnel"))
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
}

/// Every shipped configuration passes `check` (the example keys need
/// their 0600 modes, which test.sh restores).
#[test]
fn shipped_configurations_pass_check() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            if let Err(e) = dctunnel::config::load(&path) {
                panic!("{e}");
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 5,
        "only {checked} configs found in {}",
        dir.display()
    );
}

#[test]
fn daemon_settings_are_checked() {
    let pki = Pki::new("CA");
    let h = pki.issue("off2.test");
    let service = server(&pki, &h, r#"allow_peers = ["*"]"#);
    let p = problems(&format!("[daemon]\nworker_threads = 0\n{service}"));
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].contains("[daemon].worker_threads: must be at least 1"),
        "{p:#?}"
    );
    let p = problems(&format!("[daemon]\nshutdown_timeout = \"soon\"\n{service}"));
    assert!(
        p[0].contains("[daemon].shutdown_timeout: \"soon\" is not a duration"),
        "{p:#?}"
    );
    let (_d, c) = config(&format!("[daemon]\nworker_threads = 1\n{service}"));
    assert_eq!(c.unwrap().worker_threads, Some(1));
}

#[test]
fn tables_are_named_as_tables() {
    let pki = Pki::new("CA");
    let h = pki.issue("off2.test");
    let service = server(&pki, &h, r#"allow_peers = ["*"]"#);
    let p = problems(&format!("[defaults]\nverifyChain = true\n{service}"));
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].contains("dctunnel.toml: [defaults].verifyChain: unknown key; known keys: `name`"),
        "{p:#?}"
    );
    let p = problems(&format!("[daemon]\nthreads = 2\n{service}"));
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].contains("dctunnel.toml: [daemon]: unknown field `threads`"),
        "{p:#?}"
    );
    let p = problems(&format!("[admin]\nport = 9815\n{service}"));
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].contains("dctunnel.toml: [admin]: unknown field `port`"),
        "{p:#?}"
    );
}

/// Every number has an upper bound that `check` enforces, naming the key:
/// past it, `run` would panic on each connection or fail to start.
#[test]
fn numbers_past_their_bound_are_refused() {
    let pki = Pki::new("CA");
    let h = pki.issue("off2.test");
    let service = |extra: &str| server(&pki, &h, &format!("allow_peers = [\"*\"]\n{extra}"));
    for (extra, field, words) in [
        (
            "idle_timeout = \"18446744073709551615s\"",
            "idle_timeout",
            "is longer than 30d",
        ),
        (
            "idle_timeout = \"31d\"",
            "idle_timeout",
            "is longer than 30d",
        ),
        (
            "connect_timeout = \"2h\"",
            "connect_timeout",
            "is longer than 1h",
        ),
        (
            "handshake_timeout = \"61m\"",
            "handshake_timeout",
            "is longer than 1h",
        ),
        (
            "max_connections = 1000000000000",
            "max_connections",
            "more than 1000000",
        ),
        (
            "max_connections_per_source = 1000001",
            "max_connections_per_source",
            "more than 1000000",
        ),
    ] {
        assert_one(&service(extra), "mongodb", field, words);
    }
    // At the bound, accepted.
    let (_d, c) = config(&service(
        "idle_timeout = \"30d\"\nmax_connections = 1000000",
    ));
    c.unwrap();

    let p = problems(&format!(
        "[daemon]\nworker_threads = 100000\n{}",
        service("")
    ));
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].contains("[daemon].worker_threads: is 100000, more than the 256"),
        "{p:#?}"
    );
    let p = problems(&format!(
        "[daemon]\nshutdown_timeout = \"2h\"\n{}",
        service("")
    ));
    assert!(
        p[0].contains("[daemon].shutdown_timeout: \"2h\" is longer than 1h"),
        "{p:#?}"
    );
}

#[test]
fn port_zero_is_refused_as_a_destination_in_every_form() {
    let pki = Pki::new("CA");
    let h = pki.issue("off2.test");
    for target in ["127.0.0.1:0", "localhost:0", "[::1]:0"] {
        assert_one(
            &server(&pki, &h, "allow_peers = [\"*\"]").replace("10.1.0.102:27017", target),
            "mongodb",
            "connect",
            "port 0 is not a destination",
        );
    }
}

/// `dctunnel check` on `text`, killed if it has not ended within 20 s;
/// returns its exit code and stderr.
fn check_bounded(text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dctunnel.toml");
    std::fs::write(&path, text).unwrap();
    check_bounded_path(&path)
}

fn check_bounded_path(path: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new("timeout")
        .args(["20", env!("CARGO_BIN_EXE_dctunnel"), "check", "--config"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A FIFO would block `check` (and a reload) forever, /dev/zero would be
/// read until memory runs out: both are refused at once, by name.
#[test]
fn only_regular_files_are_read() {
    let pki = Pki::new("CA");
    let h = pki.issue("off2.test");
    let fifo = pki.dir.path().join("ca.fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    for (path, kind) in [
        (fifo.as_path(), "is a FIFO, not a regular file"),
        (std::path::Path::new("/dev/zero"), "is a character device"),
        (pki.dir.path(), "is a directory"),
    ] {
        let text = server(&pki, &h, r#"allow_peers = ["*"]"#).replace(
            &format!("ca = \"{}\"", pki.ca_pem.display()),
            &format!("ca = \"{}\"", path.display()),
        );
        let (code, stderr) = check_bounded(&text);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("ca: {}: {kind}", path.display())),
            "{stderr}"
        );
    }
    // The configuration file itself, too.
    let (code, stderr) = check_bounded_path(&fifo);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("is a FIFO"), "{stderr}");
}

/// The chain goes to every peer, unauthenticated, in each handshake.
#[test]
fn a_certificate_file_holding_a_bundle_is_refused() {
    let pki = Pki::new("CA");
    let mut h = pki.issue("off2.test");
    let ca = std::fs::read_to_string(&pki.ca_pem).unwrap();
    let bundle = std::fs::read_to_string(&h.cert).unwrap() + &ca.repeat(10);
    h.cert = pki.dir.path().join("bundle.pem");
    std::fs::write(&h.cert, bundle).unwrap();
    assert_one(
        &server(&pki, &h, r#"allow_peers = ["*"]"#),
        "mongodb",
        "cert",
        "holds 11 certificates",
    );
}

#[test]
fn text_after_a_certificate_in_a_ca_file_is_reported() {
    let pki = Pki::new("CA");
    let h = pki.issue("off2.test");
    let ca = std::fs::read_to_string(&pki.ca_pem).unwrap();
    let lines = ca.lines().count();
    // A second certificate whose BEGIN line was lost.
    let damaged = pki.dir.path().join("damaged.pem");
    std::fs::write(
        &damaged,
        format!(
            "{ca}{}",
            ca.replacen("-----BEGIN CERTIFICATE-----\n", "", 1)
        ),
    )
    .unwrap();
    let text = server(&pki, &h, r#"allow_peers = ["*"]"#).replace(
        &format!("ca = \"{}\"", pki.ca_pem.display()),
        &format!("ca = \"{}\"", damaged.display()),
    );
    assert_one(
        &text,
        "mongodb",
        "ca",
        &format!("damaged.pem: line {}: text outside a PEM block", lines + 1),
    );
}

/// A problem of `[defaults]` is reported once, there, not in each service.
#[test]
fn a_bad_default_is_reported_once() {
    let pki = Pki::new("CA");
    let h = pki.issue("off2.test");
    let two = server(&pki, &h, r#"allow_peers = ["*"]"#)
        + &server(&pki, &h, r#"allow_peers = ["*"]"#)
            .replace("\"mongodb\"", "\"redis\"")
            .replace("27017\"\nconnect", "6379\"\nconnect");
    let p = problems(&format!("[defaults]\nidle_timeout = \"x\"\n{two}"));
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].contains("[defaults].idle_timeout: \"x\" is not"),
        "{p:#?}"
    );

    // A key file from ${CREDENTIALS_DIRECTORY}, which is not set.
    let without_key = two.replace(&format!("key = \"{}\"\n", h.key.display()), "");
    assert!(!without_key.contains("key ="));
    let p = problems(&format!(
        "[defaults]\nkey = \"${{CREDENTIALS_DIRECTORY}}/off2.key\"\n{without_key}"
    ));
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].contains("[defaults].key: \"${CREDENTIALS_DIRECTORY}/off2.key\": CREDENTIALS_DIRECTORY is not set"),
        "{p:#?}"
    );

    // A broken default key file: once.
    let broken = pki.dir.path().join("broken.key");
    write_private(
        &broken,
        "-----BEGIN PRIVATE KEY----- AAAA -----END PRIVATE KEY-----\n",
    );
    let p = problems(&format!(
        "[defaults]\nkey = \"{}\"\n{without_key}",
        broken.display()
    ));
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(p[0].contains("[defaults].key: "), "{p:#?}");
}

/// A default meant for server-mode services does not break the
/// client-mode ones.
#[test]
fn a_default_of_the_other_mode_is_not_an_error() {
    let pki = Pki::new("CA");
    let h = pki.issue("off2.test");
    let text = format!(
        "[defaults]\nallow_peers = [\"client.test\"]\n{}{}",
        server(&pki, &h, ""),
        client(&pki, &h, "10.1.0.113:27017", "")
    );
    let (_d, c) = config(&text);
    c.unwrap();
}

/// A host name that does not resolve now is a warning, not an error: DNS
/// may differ where and when the daemon runs.
#[test]
fn check_warns_of_a_connect_name_that_does_not_resolve() {
    let pki = Pki::new("CA");
    let h = pki.issue("off2.test");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dctunnel.toml");
    let text = server(&pki, &h, r#"allow_peers = ["*"]"#)
        .replace("10.1.0.102:27017", "mongodb.dctunnel-test.invalid:27017")
        + &server(&pki, &h, r#"allow_peers = ["*"]"#)
            .replace("\"mongodb\"", "\"redis\"")
            .replace("27017\"\nconnect", "6379\"\nconnect")
            .replace("10.1.0.102:27017", "localhost:6379");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dctunnel"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "service \"mongodb\": connect: mongodb.dctunnel-test.invalid:27017 does not resolve now"
        ),
        "{stderr}"
    );
    assert_eq!(stderr.matches("warning:").count(), 1, "{stderr}");
}
