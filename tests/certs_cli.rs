//! `dctunnel certs` as a user runs it: the real binary in temporary
//! directories, its output checked with rustls's verifiers and x509-parser.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore};
use sha2::Digest;
use x509_parser::prelude::{FromDer, X509Certificate};

fn dctunnel<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(env!("CARGO_BIN_EXE_dctunnel"))
        .args(args)
        .output()
        .expect("run dctunnel")
}

/// Runs `dctunnel certs ...`, asserting success; returns stdout.
fn certs_ok(args: &[&OsStr]) -> String {
    let out = dctunnel(std::iter::once(OsStr::new("certs")).chain(args.iter().copied()));
    assert!(
        out.status.success(),
        "dctunnel certs {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Runs `dctunnel certs ...`, asserting failure; returns stderr.
fn certs_err(args: &[&OsStr]) -> String {
    let out = dctunnel(std::iter::once(OsStr::new("certs")).chain(args.iter().copied()));
    assert!(
        !out.status.success(),
        "dctunnel certs {args:?} unexpectedly succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).expect("utf-8 stderr")
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn init_ca(dir: &Path, extra: &[&str]) -> String {
    let mut args = vec![os("init-ca"), os("--dir"), dir.as_os_str()];
    args.extend(extra.iter().map(|s| os(s)));
    certs_ok(&args)
}

fn issue(ca: &Path, out: &Path, name: &str, extra: &[&str]) -> String {
    let mut args = vec![
        os("issue"),
        os("--ca"),
        ca.as_os_str(),
        os("--out"),
        out.as_os_str(),
        os("--name"),
        os(name),
    ];
    args.extend(extra.iter().map(|s| os(s)));
    certs_ok(&args)
}

fn certs_in(path: &Path) -> Vec<CertificateDer<'static>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(!certs.is_empty(), "{}: no certificate", path.display());
    certs
}

fn cert_in(path: &Path) -> CertificateDer<'static> {
    certs_in(path).remove(0)
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn roots(ca_pem: &Path) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots
        .add(cert_in(ca_pem))
        .expect("CA certificate is a usable root");
    Arc::new(roots)
}

/// Verifies `cert` as a TLS server certificate for `name` under the CA.
fn verify_as_server(
    ca_pem: &Path,
    cert: &CertificateDer<'_>,
    name: &str,
) -> Result<(), rustls::Error> {
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca_pem), provider())
        .build()
        .expect("server verifier");
    let name = ServerName::try_from(name.to_owned()).expect("server name");
    verifier
        .verify_server_cert(cert, &[], &name, &[], UnixTime::now())
        .map(|_| ())
}

/// Verifies `cert` as a TLS client certificate under the CA (and its CRLs).
fn verify_as_client(
    ca_pem: &Path,
    crls: Vec<CertificateRevocationListDer<'static>>,
    cert: &CertificateDer<'_>,
) -> Result<(), rustls::Error> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_pem), provider())
        .with_crls(crls)
        .build()
        .expect("client verifier");
    verifier
        .verify_client_cert(cert, &[], UnixTime::now())
        .map(|_| ())
}

fn assert_revoked(result: Result<(), rustls::Error>) {
    assert!(
        matches!(
            result,
            Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
        ),
        "expected a revoked certificate, got {result:?}"
    );
}

fn assert_unknown_issuer(result: Result<(), rustls::Error>) {
    assert!(
        matches!(
            result,
            Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))
        ),
        "expected an unknown issuer, got {result:?}"
    );
}

/// The value printed after `prefix` on a line of `text`, e.g. `pin: `.
fn line_value<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{text}"))
        .trim()
}

#[test]
fn issued_certificate_chains_to_the_ca_for_both_roles() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let hosts = tmp.path().join("hosts");
    init_ca(&ca, &["--name", "Open Food Facts tunnels"]);
    let out = issue(
        &ca,
        &hosts,
        "off2.openfoodfacts.org",
        &[
            "--dns",
            "proxy2.openfoodfacts.org",
            "--ip",
            "10.1.0.102",
            "--ip",
            "::1",
        ],
    );

    let cert_path = hosts.join("off2.openfoodfacts.org.pem");
    let key_path = hosts.join("off2.openfoodfacts.org.key");
    let ca_pem = ca.join("ca.pem");
    assert_eq!(mode(&ca.join("ca.key")), 0o600);
    assert_eq!(mode(&key_path), 0o600);

    // The lines to paste into the configuration name the three files.
    let abs = |p: &Path| fs::canonicalize(p).unwrap().display().to_string();
    assert!(out.contains(&format!("ca = \"{}\"", abs(&ca_pem))), "{out}");
    assert!(
        out.contains(&format!("cert = \"{}\"", abs(&cert_path))),
        "{out}"
    );
    assert!(
        out.contains(&format!("key = \"{}\"", abs(&key_path))),
        "{out}"
    );

    let cert = cert_in(&cert_path);
    for name in [
        "off2.openfoodfacts.org",
        "proxy2.openfoodfacts.org",
        "10.1.0.102",
        "::1",
    ] {
        verify_as_server(&ca_pem, &cert, name).unwrap_or_else(|e| panic!("as server {name}: {e}"));
    }
    assert!(matches!(
        verify_as_server(&ca_pem, &cert, "off1.openfoodfacts.org"),
        Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForNameContext { .. }
        ))
    ));
    verify_as_client(&ca_pem, Vec::new(), &cert).expect("as client");

    let (_, x509) = X509Certificate::from_der(&cert).unwrap();
    assert_eq!(x509.subject().to_string(), "CN=off2.openfoodfacts.org");
    assert_eq!(x509.issuer().to_string(), "CN=Open Food Facts tunnels");
    assert!(!x509.is_ca());
    let eku = x509
        .extended_key_usage()
        .unwrap()
        .expect("EKU present")
        .value;
    assert!(eku.server_auth && eku.client_auth, "{eku:?}");
    let sans = x509
        .subject_alternative_name()
        .unwrap()
        .expect("SANs present")
        .value;
    let sans: Vec<String> = sans.general_names.iter().map(|n| n.to_string()).collect();
    assert_eq!(sans.len(), 4, "{sans:?}");
    assert!(
        sans.iter().any(|s| s.contains("off2.openfoodfacts.org")),
        "{sans:?}"
    );
    assert!(
        sans.iter().any(|s| s.contains("proxy2.openfoodfacts.org")),
        "{sans:?}"
    );
    // Positive 16-byte random serial.
    assert_eq!(x509.raw_serial().len(), 16);
    assert!(x509.raw_serial()[0] & 0x80 == 0);
    // Default validity: 365 days.
    let days =
        (x509.validity().not_after.timestamp() - x509.validity().not_before.timestamp()) / 86_400;
    assert_eq!(
        days, 365,
        "validity includes the one-hour backdate, rounded down"
    );

    // The default CA lasts 3650 days and only signs leaf certificates.
    let ca_der = cert_in(&ca_pem);
    let (_, ca_x509) = X509Certificate::from_der(&ca_der).unwrap();
    let ca_days = (ca_x509.validity().not_after.timestamp()
        - ca_x509.validity().not_before.timestamp())
        / 86_400;
    assert_eq!(ca_days, 3650);
    assert!(ca_x509.is_ca());
}

#[test]
fn ed25519_ca_and_host_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    init_ca(&ca, &["--key-type", "ed25519"]);
    issue(
        &ca,
        tmp.path(),
        "ovh1.openfoodfacts.org",
        &["--key-type", "ed25519", "--dns", "pmg.openfoodfacts.org"],
    );
    let cert = cert_in(&tmp.path().join("ovh1.openfoodfacts.org.pem"));
    let ca_pem = ca.join("ca.pem");
    verify_as_server(&ca_pem, &cert, "pmg.openfoodfacts.org").expect("as server");
    verify_as_client(&ca_pem, Vec::new(), &cert).expect("as client");

    let shown = certs_ok(&[
        os("show"),
        tmp.path().join("ovh1.openfoodfacts.org.pem").as_os_str(),
    ]);
    assert_eq!(line_value(&shown, "key "), "Ed25519", "{shown}");
    assert_eq!(mode(&tmp.path().join("ovh1.openfoodfacts.org.key")), 0o600);
}

#[test]
fn a_certificate_from_another_ca_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let (ca, other) = (tmp.path().join("ca"), tmp.path().join("other"));
    // Both CAs get the default name: the impostor CA has the legitimate CA's
    // name, so the verifier finds a candidate issuer and rejects the signature.
    init_ca(&ca, &[]);
    init_ca(&other, &[]);
    issue(&other, &other, "client.example.dctunnel", &[]);
    let cert = cert_in(&other.join("client.example.dctunnel.pem"));
    let bad_signature = |result: Result<(), rustls::Error>| {
        assert!(
            matches!(
                result,
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::BadSignature
                ))
            ),
            "expected a bad signature, got {result:?}"
        );
    };
    bad_signature(verify_as_client(&ca.join("ca.pem"), Vec::new(), &cert));
    bad_signature(verify_as_server(
        &ca.join("ca.pem"),
        &cert,
        "client.example.dctunnel",
    ));
    verify_as_client(&other.join("ca.pem"), Vec::new(), &cert).expect("accepted by its own CA");
}

#[test]
fn nothing_is_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    init_ca(&ca, &[]);
    let before_pem = fs::read(ca.join("ca.pem")).unwrap();
    let before_key = fs::read(ca.join("ca.key")).unwrap();

    let err = certs_err(&[os("init-ca"), os("--dir"), ca.as_os_str()]);
    assert!(err.starts_with("dctunnel certs: "), "{err}");
    assert!(
        err.contains("ca.pem") && err.contains("already exists"),
        "{err}"
    );
    assert_eq!(fs::read(ca.join("ca.pem")).unwrap(), before_pem);
    assert_eq!(fs::read(ca.join("ca.key")).unwrap(), before_key);
    assert_eq!(mode(&ca.join("ca.key")), 0o600);

    // A key left alone is not replaced either, and no certificate appears next to it.
    let hosts = tmp.path().join("hosts");
    fs::create_dir(&hosts).unwrap();
    fs::write(hosts.join("off1.openfoodfacts.org.key"), "precious").unwrap();
    let err = certs_err(&[
        os("issue"),
        os("--ca"),
        ca.as_os_str(),
        os("--out"),
        hosts.as_os_str(),
        os("--name"),
        os("off1.openfoodfacts.org"),
    ]);
    assert!(
        err.contains("off1.openfoodfacts.org.key") && err.contains("already exists"),
        "{err}"
    );
    assert_eq!(
        fs::read_to_string(hosts.join("off1.openfoodfacts.org.key")).unwrap(),
        "precious"
    );
    assert!(!hosts.join("off1.openfoodfacts.org.pem").exists());
}

#[test]
fn bad_names_are_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    init_ca(&ca, &[]);
    let out = tmp.path().join("out");
    for name in ["../escape", "two words", "*.example.org"] {
        let err = certs_err(&[
            os("issue"),
            os("--ca"),
            ca.as_os_str(),
            os("--out"),
            out.as_os_str(),
            os("--name"),
            os(name),
        ]);
        assert!(
            err.contains(name) && err.contains("not a valid DNS name"),
            "{err}"
        );
    }
    assert!(!out.exists());
}

#[test]
fn keygen_pin_matches_show_and_the_library() {
    let tmp = tempfile::tempdir().unwrap();
    let out = certs_ok(&[
        os("keygen"),
        os("--name"),
        os("off1"),
        os("--dns"),
        os("off1.openfoodfacts.org"),
        os("--out"),
        tmp.path().as_os_str(),
    ]);
    let pin = line_value(&out, "pin: ").to_owned();
    assert!(
        pin.starts_with("sha256/") && pin.len() == "sha256/".len() + 44,
        "{pin}"
    );
    assert!(out.contains(&format!("peer_pins = [\"{pin}\"]")), "{out}");
    let cert_path = tmp.path().join("off1.pem");
    assert_eq!(mode(&tmp.path().join("off1.key")), 0o600);

    // Independently: base64(SHA-256(DER SubjectPublicKeyInfo)).
    let cert = cert_in(&cert_path);
    let (_, x509) = X509Certificate::from_der(&cert).unwrap();
    let digest = sha2::Sha256::digest(x509.public_key().raw);
    use base64::Engine as _;
    let expected = format!(
        "sha256/{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    );
    assert_eq!(pin, expected);
    assert_eq!(dctunnel::certs::spki_pin(&cert).unwrap(), expected);
    assert_eq!(
        x509.subject().to_string(),
        x509.issuer().to_string(),
        "self-signed"
    );
    let eku = x509
        .extended_key_usage()
        .unwrap()
        .expect("EKU present")
        .value;
    assert!(eku.server_auth && eku.client_auth);

    let shown = certs_ok(&[os("show"), cert_path.as_os_str()]);
    assert_eq!(line_value(&shown, "pin "), pin, "{shown}");
    assert_eq!(line_value(&shown, "subject "), "CN=off1", "{shown}");
    assert_eq!(
        line_value(&shown, "names "),
        "DNS:off1, DNS:off1.openfoodfacts.org",
        "{shown}"
    );
    assert_eq!(line_value(&shown, "key "), "ECDSA P-256", "{shown}");
    assert_eq!(line_value(&shown, "CA "), "no", "{shown}");
    // 365 days from now, a few seconds of which have already passed.
    let days = line_value(&shown, "days left ");
    assert!(days == "364" || days == "365", "{shown}");
}

#[test]
fn show_reads_several_certificates_per_file_and_prints_json() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    init_ca(&ca, &["--name", "dctunnel test CA", "--days", "100"]);
    issue(
        &ca,
        tmp.path(),
        "server.example.dctunnel",
        &["--dns", "localhost", "--ip", "127.0.0.1", "--days", "30"],
    );
    // A chain file: host certificate then CA certificate.
    let chain = tmp.path().join("chain.pem");
    let mut text = fs::read_to_string(tmp.path().join("server.example.dctunnel.pem")).unwrap();
    text.push_str(&fs::read_to_string(ca.join("ca.pem")).unwrap());
    fs::write(&chain, text).unwrap();

    let human = certs_ok(&[os("show"), chain.as_os_str()]);
    assert!(
        human.contains("(certificate 1 of 2)") && human.contains("(certificate 2 of 2)"),
        "{human}"
    );
    assert!(
        human.contains("CN=dctunnel test CA (self-signed)"),
        "{human}"
    );

    let json = certs_ok(&[os("show"), os("--json"), chain.as_os_str()]);
    let v: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}:\n{json}"));
    let items = v.as_array().expect("array");
    assert_eq!(items.len(), 2);
    let host = &items[0];
    assert_eq!(host["kind"], "certificate");
    assert_eq!(host["index"], 1);
    assert_eq!(host["subject"], "CN=server.example.dctunnel");
    assert_eq!(host["issuer"], "CN=dctunnel test CA");
    assert_eq!(
        host["sans"],
        serde_json::json!([
            "DNS:server.example.dctunnel",
            "DNS:localhost",
            "IP:127.0.0.1"
        ])
    );
    assert_eq!(
        host["extended_key_usage"],
        serde_json::json!(["serverAuth", "clientAuth"])
    );
    assert_eq!(host["is_ca"], false);
    assert_eq!(host["expired"], false);
    assert_eq!(host["key_type"], "ECDSA P-256");
    let days = host["days_left"].as_i64().expect("days_left is a number");
    assert!(days == 29 || days == 30, "{days}");
    let pin = dctunnel::certs::spki_pin(&cert_in(&tmp.path().join("server.example.dctunnel.pem")))
        .unwrap();
    assert_eq!(host["pin"], pin.as_str());
    assert!(host["not_after"].as_str().unwrap().ends_with('Z'));
    assert_eq!(items[1]["is_ca"], true);
    assert_eq!(items[1]["self_signed"], true);
    let ca_days = items[1]["days_left"].as_i64().unwrap();
    assert!(ca_days == 99 || ca_days == 100, "{ca_days}");
}

#[test]
fn show_names_the_file_it_cannot_read() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.pem");
    let err = certs_err(&[os("show"), missing.as_os_str()]);
    assert!(err.contains("missing.pem"), "{err}");
    let not_pem = tmp.path().join("notes.txt");
    fs::write(&not_pem, "hello\n").unwrap();
    let err = certs_err(&[os("show"), not_pem.as_os_str()]);
    assert!(
        err.contains("notes.txt") && err.contains("no certificate"),
        "{err}"
    );
}

#[test]
fn revoke_writes_a_crl_that_lists_the_serial_and_rustls_enforces() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    init_ca(&ca, &[]);
    issue(&ca, tmp.path(), "off1.openfoodfacts.org", &[]);
    issue(&ca, tmp.path(), "off2.openfoodfacts.org", &[]);
    let off1 = tmp.path().join("off1.openfoodfacts.org.pem");
    let off2 = tmp.path().join("off2.openfoodfacts.org.pem");
    let crl_path = ca.join("ca.crl");
    assert!(!crl_path.exists());

    let out = certs_ok(&[os("revoke"), os("--ca"), ca.as_os_str(), off1.as_os_str()]);
    assert!(out.contains("revoked serial"), "{out}");
    let crl = CertificateRevocationListDer::from_pem_file(&crl_path).expect("PEM CRL");
    let off1_cert = cert_in(&off1);
    let off2_cert = cert_in(&off2);
    let (_, off1_x509) = X509Certificate::from_der(&off1_cert).unwrap();
    {
        let (_, parsed) = x509_parser::parse_x509_crl(&crl).expect("x509-parser reads the CRL");
        let serials: Vec<&[u8]> = parsed
            .iter_revoked_certificates()
            .map(|r| r.raw_serial())
            .collect();
        assert_eq!(serials, vec![off1_x509.raw_serial()]);
        assert_eq!(parsed.issuer().to_string(), "CN=dctunnel CA");
        assert_eq!(
            parsed.crl_number().map(|n| n.to_string()),
            Some("1".to_owned())
        );
    }
    // rustls checks the CRL's signature and applies it.
    let ca_pem = ca.join("ca.pem");
    assert_revoked(verify_as_client(&ca_pem, vec![crl.clone()], &off1_cert));
    verify_as_client(&ca_pem, vec![crl], &off2_cert).expect("off2 is not revoked");

    // Revoking again changes nothing.
    let before = fs::read(&crl_path).unwrap();
    let out = certs_ok(&[os("revoke"), os("--ca"), ca.as_os_str(), off1.as_os_str()]);
    assert!(out.contains("already"), "{out}");
    assert_eq!(fs::read(&crl_path).unwrap(), before);

    // A second revocation, by serial, keeps the first and bumps the CRL number.
    let off2_serial = {
        let (_, x) = X509Certificate::from_der(&off2_cert).unwrap();
        x.raw_serial_as_string()
    };
    certs_ok(&[
        os("revoke"),
        os("--ca"),
        ca.as_os_str(),
        os("--serial"),
        os(&off2_serial),
        os("--reason"),
        os("superseded"),
    ]);
    let crl = CertificateRevocationListDer::from_pem_file(&crl_path).expect("PEM CRL");
    let (_, parsed) = x509_parser::parse_x509_crl(&crl).unwrap();
    assert_eq!(parsed.iter_revoked_certificates().count(), 2);
    assert_eq!(
        parsed.crl_number().map(|n| n.to_string()),
        Some("2".to_owned())
    );
    assert_revoked(verify_as_client(&ca_pem, vec![crl.clone()], &off2_cert));

    // `show` reads CRLs too.
    let json = certs_ok(&[os("show"), os("--json"), crl_path.as_os_str()]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["kind"], "crl");
    assert_eq!(v[0]["revoked"].as_array().unwrap().len(), 2);
    assert_eq!(v[0]["revoked"][1]["serial"], off2_serial.as_str());
}

#[test]
fn revoke_refuses_a_certificate_of_another_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let (ca, other) = (tmp.path().join("ca"), tmp.path().join("other"));
    init_ca(&ca, &[]);
    init_ca(&other, &["--name", "someone else"]);
    issue(&other, tmp.path(), "off1.openfoodfacts.org", &[]);
    let cert = tmp.path().join("off1.openfoodfacts.org.pem");
    let err = certs_err(&[os("revoke"), os("--ca"), ca.as_os_str(), cert.as_os_str()]);
    assert!(
        err.contains("not issued by the CA") && err.contains("someone else"),
        "{err}"
    );
    assert!(!ca.join("ca.crl").exists());
}

/// Validity periods certs-example/regenerate.sh gives (`host_days`,
/// `ca_days`).
const HOST_DAYS: i64 = 3650;
const CA_DAYS: i64 = 3660;

/// The example certificate `name` was issued for `days` days (so it does
/// not rot) and is valid today.
fn assert_lasts(name: &str, cert: &[u8], days: i64) {
    let info = dctunnel::certs::cert_info(cert).unwrap();
    let period = (info.not_after - info.not_before).whole_days();
    assert!(
        period >= days,
        "{name} was issued for {period} days, regenerate.sh gives {days}"
    );
    let now = time::OffsetDateTime::now_utc();
    assert!(
        info.not_before <= now && now < info.not_after,
        "{name} is not valid today (valid from {} to {}): run certs-example/regenerate.sh",
        info.not_before,
        info.not_after
    );
}

/// The vendored example PKI (certs-example/) is what the repository's tests
/// and example configurations rely on: check it is complete and consistent.
#[test]
fn certs_example_is_complete_and_consistent() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("certs-example");
    let ca_pem = root.join("ca/ca.pem");
    let crl = CertificateRevocationListDer::from_pem_file(root.join("ca/ca.crl")).expect("ca.crl");

    // Every certificate in hosts/ is checked: the table gives the names each
    // host answers to besides its own; a file it does not know fails the
    // test, and so does one it expects and does not find.
    let expected = BTreeMap::from([
        (
            "server.example.dctunnel",
            &["localhost", "127.0.0.1", "::1"][..],
        ),
        ("client.example.dctunnel", &[][..]),
        ("off1.openfoodfacts.org", &[][..]),
        ("off2.openfoodfacts.org", &["proxy2.openfoodfacts.org"][..]),
        ("ovh1.openfoodfacts.org", &["pmg.openfoodfacts.org"][..]),
        ("ovh2.openfoodfacts.org", &[][..]),
        ("ovh-stunnel-client.openfoodfacts.org", &[][..]),
        (
            "ed25519.example.dctunnel",
            &["localhost", "127.0.0.1", "::1"][..],
        ),
    ]);
    // Checked on its own below.
    const REVOKED: &str = "revoked.example.dctunnel";
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(root.join("hosts")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension() != Some(OsStr::new("pem")) {
            continue;
        }
        let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
        if name == REVOKED {
            continue;
        }
        let extra = expected
            .get(name.as_str())
            .unwrap_or_else(|| panic!("hosts/{name}.pem is not in this test's table"));
        assert!(
            root.join("hosts").join(format!("{name}.key")).exists(),
            "{name}.key"
        );
        let cert = cert_in(&path);
        for n in std::iter::once(name.as_str()).chain(extra.iter().copied()) {
            verify_as_server(&ca_pem, &cert, n).unwrap_or_else(|e| panic!("{name} as {n}: {e}"));
        }
        verify_as_client(&ca_pem, vec![crl.clone()], &cert)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_lasts(&name, &cert, HOST_DAYS);
        checked.push(name);
    }
    checked.sort();
    assert_eq!(checked, expected.keys().copied().collect::<Vec<_>>());
    assert_lasts("ca/ca.pem", &cert_in(&ca_pem), CA_DAYS);

    let revoked = cert_in(&root.join("hosts").join(format!("{REVOKED}.pem")));
    assert_lasts(REVOKED, &revoked, HOST_DAYS);
    verify_as_client(&ca_pem, Vec::new(), &revoked).expect("valid apart from the CRL");
    assert_revoked(verify_as_client(&ca_pem, vec![crl.clone()], &revoked));

    let impostor = cert_in(&root.join("other-ca/client.example.dctunnel.pem"));
    assert_unknown_issuer(verify_as_client(&ca_pem, vec![crl], &impostor));
    verify_as_client(&root.join("other-ca/ca.pem"), Vec::new(), &impostor)
        .expect("signed by other-ca");
    let (_, x) = X509Certificate::from_der(&impostor).unwrap();
    assert_eq!(x.subject().to_string(), "CN=client.example.dctunnel");
    assert_lasts("other-ca/client.example.dctunnel.pem", &impostor, HOST_DAYS);
    let other_ca = cert_in(&root.join("other-ca/ca.pem"));
    assert_lasts("other-ca/ca.pem", &other_ca, CA_DAYS);

    for name in [
        "pinned-server.example.dctunnel",
        "pinned-client.example.dctunnel",
    ] {
        let cert = cert_in(&root.join("pinned").join(format!("{name}.pem")));
        let info = dctunnel::certs::cert_info(&cert).unwrap();
        assert!(info.self_signed && !info.is_ca, "{name}");
        assert_lasts(name, &cert, HOST_DAYS);
    }
}

/// `certs request` on a host, as the README's guide runs it.
fn request(out: &Path, name: &str, extra: &[&str]) -> String {
    let mut args = vec![
        os("request"),
        os("--out"),
        out.as_os_str(),
        os("--name"),
        os(name),
    ];
    args.extend(extra.iter().map(|s| os(s)));
    certs_ok(&args)
}

/// `certs sign` on the admin machine, the certificate written to `out`.
fn sign(ca: &Path, csr: &Path, out: &Path) -> String {
    certs_ok(&[
        os("sign"),
        os("--ca"),
        ca.as_os_str(),
        os("--out"),
        out.as_os_str(),
        csr.as_os_str(),
    ])
}

fn sign_err(ca: &Path, csr: &Path) -> String {
    certs_err(&[os("sign"), os("--ca"), ca.as_os_str(), csr.as_os_str()])
}

/// Every file in `dir` (not recursive), by name.
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The PEM text of a DER certificate signing request.
fn csr_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE REQUEST-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE REQUEST-----\n");
    pem
}

/// The DER of the first certificate signing request of a PEM file.
fn csr_der(path: &Path) -> Vec<u8> {
    let bytes = fs::read(path).unwrap();
    let pem = x509_parser::pem::Pem::iter_from_buffer(&bytes)
        .next()
        .expect("a PEM block")
        .unwrap();
    assert_eq!(pem.label, "CERTIFICATE REQUEST");
    pem.contents
}

/// The whole flow of the README's two-host guide, with a real tunnel at the
/// end: each host makes its key and a request, only the requests reach the
/// CA, only the certificates come back, and `check` then a real mutual-TLS
/// round trip accept them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_then_sign_makes_certificates_a_real_tunnel_accepts() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let admin = tmp.path().join("admin");
    let server_host = tmp.path().join("server-host");
    let client_host = tmp.path().join("client-host");
    init_ca(&ca, &[]);

    let out = request(
        &server_host,
        "server.test",
        &["--dns", "localhost", "--ip", "127.0.0.1"],
    );
    let server_pin = line_value(&out, "pin:").to_owned();
    request(&client_host, "client.test", &[]);
    assert_eq!(
        files_in(&server_host),
        ["server.test.csr", "server.test.key"]
    );
    assert_eq!(mode(&server_host.join("server.test.key")), 0o600);
    assert_eq!(mode(&server_host.join("server.test.csr")), 0o644);
    let csr_text = fs::read_to_string(server_host.join("server.test.csr")).unwrap();
    assert!(!csr_text.contains("PRIVATE KEY"), "{csr_text}");

    // Only the requests travel to the admin machine.
    fs::create_dir(&admin).unwrap();
    for (dir, name) in [(&server_host, "server.test"), (&client_host, "client.test")] {
        let csr = format!("{name}.csr");
        fs::copy(dir.join(&csr), admin.join(&csr)).unwrap();
    }
    let signed_dir = admin.join("signed");
    let out = sign(&ca, &admin.join("server.test.csr"), &signed_dir);
    // What it signed is printed, and the pin is the one the host printed.
    assert_eq!(line_value(&out, "subject:"), "CN=server.test");
    assert_eq!(
        line_value(&out, "names:"),
        "DNS:server.test, DNS:localhost, IP:127.0.0.1"
    );
    assert_eq!(line_value(&out, "pin:"), server_pin);
    line_value(&out, "serial:");
    line_value(&out, "not after:");
    let cert_path = signed_dir.join("server.test.pem");
    assert!(
        out.contains(&format!(
            "wrote {} (certificate",
            fs::canonicalize(&cert_path).unwrap().display()
        )),
        "{out}"
    );
    // Without --out it writes next to the request.
    sign_ok_next_to_request(&ca, &admin.join("client.test.csr"));

    // The key never left: nothing sign wrote or printed holds a private key,
    // and only certificates were added on the admin machine.
    assert!(!out.contains("PRIVATE KEY"));
    assert_eq!(files_in(&signed_dir), ["server.test.pem"]);
    assert_eq!(
        files_in(&admin),
        [
            "client.test.csr",
            "client.test.pem",
            "server.test.csr",
            "signed"
        ]
    );
    for f in [&cert_path, &admin.join("client.test.pem")] {
        assert_eq!(mode(f), 0o644);
        assert!(!fs::read_to_string(f).unwrap().contains("PRIVATE KEY"));
    }

    // The certificates come back to their hosts, next to their keys.
    fs::copy(&cert_path, server_host.join("server.test.pem")).unwrap();
    fs::copy(
        admin.join("client.test.pem"),
        client_host.join("client.test.pem"),
    )
    .unwrap();
    let server = common::host_files(&server_host, "server.test");
    let client = common::host_files(&client_host, "client.test");
    let ca_pem = ca.join("ca.pem");

    let backend = common::echo_backend().await;
    let text = format!(
        r#"
[daemon]
shutdown_timeout = "1s"

[[service]]
name = "tls"
mode = "server"
listen = "127.0.0.1:0"
connect = "{backend}"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
allow_peers = ["client.test"]
"#,
        ca = ca_pem.display(),
        cert = server.cert.display(),
        key = server.key.display(),
    );
    let config_path = tmp.path().join("server.toml");
    fs::write(&config_path, &text).unwrap();
    let check = dctunnel([os("check"), os("--config"), config_path.as_os_str()]);
    assert!(
        check.status.success(),
        "check refused the signed files: {}",
        String::from_utf8_lossy(&check.stderr)
    );

    let (_dir, daemon) = common::start_daemon(&text);
    let addr = daemon.local_addr("tls").unwrap();
    let config = common::tls_client(&ca_pem, Some(&client));
    assert!(
        common::tls_echo(addr, config, "server.test").await,
        "round trip through the tunnel failed"
    );
    // The CA's own name for it works too, by IP: the IP SAN was signed.
    let config = common::tls_client(&ca_pem, Some(&client));
    assert!(common::tls_echo(addr, config, "127.0.0.1").await);
    daemon.shutdown().await;
}

fn sign_ok_next_to_request(ca: &Path, csr: &Path) {
    certs_ok(&[os("sign"), os("--ca"), ca.as_os_str(), csr.as_os_str()]);
}

#[test]
fn sign_refuses_a_tampered_request() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    init_ca(&ca, &[]);
    request(tmp.path(), "host.test", &[]);
    let csr = tmp.path().join("host.test.csr");
    let mut der = csr_der(&csr);
    // The signature is the last field: flip its last byte.
    *der.last_mut().unwrap() ^= 0x01;
    let tampered = tmp.path().join("tampered.csr");
    fs::write(&tampered, csr_pem(&der)).unwrap();

    let err = sign_err(&ca, &tampered);
    assert!(err.contains("signature does not verify"), "{err}");
    assert!(err.contains("tampered.csr"), "{err}");
    assert!(!tmp.path().join("host.test.pem").exists());
    // The untouched request signs.
    sign_ok_next_to_request(&ca, &csr);
    assert!(tmp.path().join("host.test.pem").exists());
}

/// Requests made with rcgen, as another tool could make them: a wildcard,
/// a CA, a private key pasted in; none is signed and nothing is written.
#[test]
fn sign_refuses_wildcards_cas_and_files_holding_a_key() {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    init_ca(&ca, &[]);
    let key = KeyPair::generate().unwrap();
    let write = |file: &str, params: &CertificateParams| {
        let csr = params.serialize_request(&key).unwrap();
        let path = tmp.path().join(file);
        fs::write(&path, csr.pem().unwrap()).unwrap();
        path
    };

    let mut wildcard =
        CertificateParams::new(vec!["host.test".to_owned(), "*.example.org".to_owned()]).unwrap();
    wildcard
        .distinguished_name
        .push(DnType::CommonName, "host.test");
    let path = write("wildcard.csr", &wildcard);
    let err = sign_err(&ca, &path);
    assert!(err.contains("wildcard name \"*.example.org\""), "{err}");

    let mut wild_cn = CertificateParams::new(Vec::<String>::new()).unwrap();
    wild_cn
        .distinguished_name
        .push(DnType::CommonName, "*.example.org");
    let err = sign_err(&ca, &write("wild-cn.csr", &wild_cn));
    assert!(err.contains("wildcard"), "{err}");

    let mut as_ca = CertificateParams::new(vec!["host.test".to_owned()]).unwrap();
    as_ca
        .distinguished_name
        .push(DnType::CommonName, "host.test");
    as_ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let err = sign_err(&ca, &write("ca.csr", &as_ca));
    assert!(err.contains("asks for a CA certificate"), "{err}");

    let mut fine = CertificateParams::new(vec!["host.test".to_owned()]).unwrap();
    fine.distinguished_name
        .push(DnType::CommonName, "host.test");
    let fine_path = write("fine.csr", &fine);
    let with_key = tmp.path().join("with-key.csr");
    fs::write(
        &with_key,
        fs::read_to_string(&fine_path).unwrap() + &key.serialize_pem(),
    )
    .unwrap();
    let err = sign_err(&ca, &with_key);
    assert!(err.contains("holds a private key"), "{err}");
    // The message names the file, never the key.
    assert!(!err.contains("PRIVATE KEY"), "{err}");

    let names = files_in(tmp.path());
    assert!(
        !names.iter().any(|n| n.ends_with(".pem")),
        "a refused request left a certificate: {names:?}"
    );
    // The same key and names without the wildcard or CA flag are signed.
    sign_ok_next_to_request(&ca, &fine_path);
    assert!(tmp.path().join("host.test.pem").exists());
}

#[test]
fn request_refuses_to_overwrite_and_refuses_wildcards() {
    let tmp = tempfile::tempdir().unwrap();
    request(tmp.path(), "host.test", &[]);
    let key = tmp.path().join("host.test.key");
    let before = fs::read(&key).unwrap();
    let csr_before = fs::read(tmp.path().join("host.test.csr")).unwrap();
    let err = certs_err(&[
        os("request"),
        os("--out"),
        tmp.path().as_os_str(),
        os("--name"),
        os("host.test"),
    ]);
    assert!(
        err.contains("already exists, refusing to overwrite"),
        "{err}"
    );
    assert_eq!(fs::read(&key).unwrap(), before);
    assert_eq!(
        fs::read(tmp.path().join("host.test.csr")).unwrap(),
        csr_before
    );

    // A key alone is enough to refuse: it is what must never be lost.
    fs::remove_file(tmp.path().join("host.test.csr")).unwrap();
    let err = certs_err(&[
        os("request"),
        os("--out"),
        tmp.path().as_os_str(),
        os("--name"),
        os("host.test"),
    ]);
    assert!(err.contains("host.test.key already exists"), "{err}");
    assert_eq!(fs::read(&key).unwrap(), before);
    assert!(!tmp.path().join("host.test.csr").exists());

    let other = tmp.path().join("other");
    let err = certs_err(&[
        os("request"),
        os("--out"),
        other.as_os_str(),
        os("--name"),
        os("host.test"),
        os("--dns"),
        os("*.example.org"),
    ]);
    assert!(err.contains("wildcard"), "{err}");
    assert!(!other.exists());
}

#[test]
fn renew_keeps_the_names_and_makes_a_new_key() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let host = tmp.path().join("host");
    let next = tmp.path().join("host-2027");
    init_ca(&ca, &[]);
    request(
        &host,
        "off2.openfoodfacts.org",
        &["--dns", "proxy2.openfoodfacts.org", "--ip", "10.1.0.102"],
    );
    sign_ok_next_to_request(&ca, &host.join("off2.openfoodfacts.org.csr"));
    let old_cert = host.join("off2.openfoodfacts.org.pem");
    let old = dctunnel::certs::cert_info(&cert_in(&old_cert)).unwrap();

    let out = certs_ok(&[
        os("renew"),
        os("--cert"),
        old_cert.as_os_str(),
        os("--out"),
        next.as_os_str(),
    ]);
    assert_eq!(
        files_in(&next),
        ["off2.openfoodfacts.org.csr", "off2.openfoodfacts.org.key"]
    );
    assert_eq!(mode(&next.join("off2.openfoodfacts.org.key")), 0o600);
    let requested_pin = line_value(&out, "pin:").to_owned();
    assert_ne!(requested_pin, old.pin, "renew must make a new key");

    let signed = sign(&ca, &next.join("off2.openfoodfacts.org.csr"), &next);
    let new =
        dctunnel::certs::cert_info(&cert_in(&next.join("off2.openfoodfacts.org.pem"))).unwrap();
    assert_eq!(new.sans, old.sans);
    assert_eq!(new.subject, old.subject);
    assert_eq!(
        new.sans,
        [
            "DNS:off2.openfoodfacts.org",
            "DNS:proxy2.openfoodfacts.org",
            "IP:10.1.0.102"
        ]
    );
    assert_eq!(new.pin, requested_pin);
    assert_eq!(line_value(&signed, "pin:"), requested_pin);
    assert_ne!(new.pin, old.pin);
    assert_ne!(new.serial, old.serial);
    verify_as_server(
        &ca.join("ca.pem"),
        &cert_in(&next.join("off2.openfoodfacts.org.pem")),
        "proxy2.openfoodfacts.org",
    )
    .unwrap();

    // --keep-key: the request carries the old key and no key is written.
    let kept = tmp.path().join("kept");
    let out = certs_ok(&[
        os("renew"),
        os("--cert"),
        old_cert.as_os_str(),
        os("--keep-key"),
        host.join("off2.openfoodfacts.org.key").as_os_str(),
        os("--out"),
        kept.as_os_str(),
    ]);
    assert_eq!(line_value(&out, "pin:"), old.pin);
    assert_eq!(files_in(&kept), ["off2.openfoodfacts.org.csr"]);
    // ...and only the key that matches the certificate is accepted.
    let err = certs_err(&[
        os("renew"),
        os("--cert"),
        old_cert.as_os_str(),
        os("--keep-key"),
        next.join("off2.openfoodfacts.org.key").as_os_str(),
        os("--out"),
        tmp.path().join("wrong").as_os_str(),
    ]);
    assert!(err.contains("does not match"), "{err}");

    // It never overwrites the request or key it made before.
    let err = certs_err(&[
        os("renew"),
        os("--cert"),
        old_cert.as_os_str(),
        os("--out"),
        next.as_os_str(),
    ]);
    assert!(err.contains("already exists"), "{err}");
}
