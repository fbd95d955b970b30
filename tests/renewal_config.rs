//! `[renewal]` in the configuration: what `check` and `run` accept, and
//! every problem named with its table and key.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;

/// A server-mode service on `host`'s files, and `renewal` as the rest.
fn text(pki: &Pki, host: &HostCert, renewal: &str) -> String {
    format!(
        r#"
[[service]]
name = "redis"
mode = "server"
listen = "127.0.0.1:0"
connect = "127.0.0.1:6379"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
allow_peers = ["*"]

{renewal}
"#,
        ca = pki.ca_pem.display(),
        cert = host.cert.display(),
        key = host.key.display(),
    )
}

fn renewal(pki: &Pki, host: &HostCert) -> String {
    format!(
        r#"[renewal]
ca_service = "ca.test:7443"
cert = "{cert}"
key = "{key}"
ca = "{ca}"
"#,
        ca = pki.ca_pem.display(),
        cert = host.cert.display(),
        key = host.key.display(),
    )
}

fn problems(text: &str) -> Vec<String> {
    match config(text).1 {
        Ok(_) => Vec::new(),
        Err(e) => e.problems.iter().map(ToString::to_string).collect(),
    }
}

fn has(problems: &[String], what: &[&str]) -> bool {
    problems.iter().any(|p| what.iter().all(|w| p.contains(w)))
}

#[test]
fn a_good_renewal_table_is_loaded() {
    let pki = Pki::new("CA");
    let host = pki.issue("off2.test");
    let (_dir, c) = config(&text(&pki, &host, &renewal(&pki, &host)));
    let c = c.unwrap();
    let r = c.renewal.unwrap();
    assert_eq!(r.ca_service.to_string(), "ca.test:7443");
    // The server name defaults to the host part of ca_service.
    assert_eq!(r.server_name.to_str(), "ca.test");
    assert_eq!(r.cert, host.cert);
    // No [renewal], no renewal.
    let (_dir, c) = config(&text(&pki, &host, ""));
    assert!(c.unwrap().renewal.is_none());
}

#[test]
fn missing_and_malformed_keys_are_named() {
    let pki = Pki::new("CA");
    let host = pki.issue("off2.test");
    let found = problems(&text(&pki, &host, "[renewal]\nserver_name = \"ca.test\"\n"));
    for key in ["ca_service", "cert", "key", "ca"] {
        assert!(
            has(&found, &[&format!("[renewal].{key}: is required")]),
            "{key}: {found:#?}"
        );
    }
    let bad_address = renewal(&pki, &host).replace("ca.test:7443", "ca.test");
    let found = problems(&text(&pki, &host, &bad_address));
    assert!(has(&found, &["[renewal].ca_service"]), "{found:#?}");
    let unknown = format!("{}retry = \"1s\"\n", renewal(&pki, &host));
    let found = problems(&text(&pki, &host, &unknown));
    assert!(
        has(&found, &["[renewal].retry", "unknown key"]),
        "{found:#?}"
    );
    let bad_name = format!("{}server_name = \"not a name\"\n", renewal(&pki, &host));
    let found = problems(&text(&pki, &host, &bad_name));
    assert!(has(&found, &["[renewal].server_name"]), "{found:#?}");
}

#[test]
fn the_files_must_be_a_private_key_and_a_certificate_the_ca_would_renew() {
    let pki = Pki::new("CA");
    let host = pki.issue("off2.test");

    // A key others can read.
    let open_key = pki.issue("open.test");
    std::fs::set_permissions(&open_key.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let found = problems(&text(&pki, &host, &renewal(&pki, &open_key)));
    assert!(
        has(&found, &["[renewal].key", "readable by group or others"]),
        "{found:#?}"
    );

    // A key that is not the certificate's.
    let other = pki.issue("other.test");
    let mismatched = HostCert {
        cert: host.cert.clone(),
        key: other.key.clone(),
    };
    let found = problems(&text(&pki, &host, &renewal(&pki, &mismatched)));
    assert!(
        has(&found, &["[renewal].key", "does not match"]),
        "{found:#?}"
    );

    // One file for both.
    let same = HostCert {
        cert: host.cert.clone(),
        key: host.cert.clone(),
    };
    let found = problems(&text(&pki, &host, &renewal(&pki, &same)));
    assert!(has(&found, &["[renewal].key", "two files"]), "{found:#?}");

    // A missing certificate.
    let gone = HostCert {
        cert: pki.dir.path().join("gone.pem"),
        key: host.key.clone(),
    };
    let found = problems(&text(&pki, &host, &renewal(&pki, &gone)));
    assert!(has(&found, &["[renewal].cert", "gone.pem"]), "{found:#?}");

    // A certificate with a name of another kind (an e-mail address).
    let mailbox = mailbox_cert(&pki);
    let found = problems(&text(&pki, &mailbox, &renewal(&pki, &mailbox)));
    assert!(
        has(&found, &["[renewal].cert", "would not renew"]),
        "{found:#?}"
    );
}

/// A self-signed certificate named by an e-mail address beside its host
/// name, as a CA never issues to a tunnel host.
fn mailbox_cert(pki: &Pki) -> HostCert {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["mail.test".to_owned()]).unwrap();
    params.subject_alt_names.push(rcgen::SanType::Rfc822Name(
        "admin@mail.test".try_into().unwrap(),
    ));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mail.test");
    let cert = params.self_signed(&key).unwrap();
    let h = HostCert {
        cert: pki.dir.path().join("mail.pem"),
        key: pki.dir.path().join("mail.key"),
    };
    std::fs::write(&h.cert, cert.pem()).unwrap();
    write_private(&h.key, &key.serialize_pem());
    h
}

#[test]
fn the_certificate_must_be_one_a_service_uses() {
    let pki = Pki::new("CA");
    let host = pki.issue("off2.test");
    let unused = pki.issue("unused.test");
    let found = problems(&text(&pki, &host, &renewal(&pki, &unused)));
    assert!(
        has(&found, &["[renewal].cert", "no [[service]] uses"]),
        "{found:#?}"
    );
}

fn check(config: &Path, env: &[(&str, &Path)]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dctunnel"));
    cmd.args(["check", "--config"]).arg(config);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// `check` says renewal is on and when it will renew; a key passed as a
/// systemd credential (read-only) is refused with what to do instead.
#[test]
fn check_mentions_renewal_and_refuses_a_credential_key() {
    let pki = Pki::new("CA");
    let host = pki.issue("off2.test");
    let path = pki.dir.path().join("host.toml");
    std::fs::write(&path, text(&pki, &host, &renewal(&pki, &host))).unwrap();
    let (code, out, err) = check(&path, &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("renewal: ")
            && out.contains("from the CA service ca.test:7443")
            && out.contains("next on "),
        "{out}"
    );

    let (code, _, err) = check(&path, &[("CREDENTIALS_DIRECTORY", pki.dir.path())]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("[renewal].key")
            && err.contains("LoadCredential")
            && err.contains("StateDirectory"),
        "{err}"
    );
}

/// A folder the daemon's user cannot write to is refused at load, naming
/// the folder: renewal could never put the new files there. Checked as an
/// unprivileged user (`nobody`, through setpriv, when the tests run as
/// root: root may write anywhere).
#[test]
fn a_folder_the_daemon_cannot_write_is_refused() {
    let root = rustix::process::geteuid().is_root();
    let pki = Pki::new("CA");
    let host = pki.issue("off2.test");
    let dir = tempfile::tempdir().unwrap();
    let readonly = dir.path().join("readonly");
    std::fs::create_dir(&readonly).unwrap();
    let files = HostCert {
        cert: readonly.join("host.pem"),
        key: readonly.join("host.key"),
    };
    std::fs::copy(&host.cert, &files.cert).unwrap();
    std::fs::copy(&host.key, &files.key).unwrap();
    std::fs::copy(&pki.ca_pem, dir.path().join("ca.pem")).unwrap();
    let pki_ca = dir.path().join("ca.pem");
    let config = dir.path().join("host.toml");
    let text = text(&pki, &files, &renewal(&pki, &files)).replace(
        &pki.ca_pem.display().to_string(),
        &pki_ca.display().to_string(),
    );
    std::fs::write(&config, text).unwrap();
    for p in [dir.path(), readonly.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    if !root {
        std::fs::set_permissions(&readonly, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    let mut cmd = if root {
        // The key readable by nobody only, as it would be by the daemon.
        let nobody = rustix::process::Uid::from_raw(65534);
        rustix::fs::chown(&files.key, Some(nobody), None).unwrap();
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_dctunnel"));
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_dctunnel"))
    };
    let out = cmd
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for key in ["[renewal].cert", "[renewal].key"] {
        assert!(
            err.lines().any(|l| l.contains(key)
                && l.contains("cannot write to")
                && l.contains(&readonly.display().to_string())),
            "{key}: {err}"
        );
    }
    // The services themselves load: only renewal is refused.
    assert_eq!(err.matches("service \"").count(), 0, "{err}");
    if !root {
        std::fs::set_permissions(&readonly, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}
