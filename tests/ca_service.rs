//! The online CA (`mode = "ca"`) from the outside: the real daemon, a CA
//! made by `dctunnel certs init-ca`, and hosts speaking HTTP over TLS to it
//! as a renewing host or an enrolling one would. What it signs, what it
//! refuses, and what it logs.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{certs_cli, host_files, HostCert, Pki, Proc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A CA folder, the CA service's own certificate, and the daemon serving it.
struct OnlineCa {
    folder: common::CaFolder,
    ca_dir: PathBuf,
    proc: Proc,
    addr: SocketAddr,
}

impl OnlineCa {
    fn start(extra: &str) -> OnlineCa {
        let folder = common::CaFolder::new();
        let config = folder.dir.path().join("ca.toml");
        let extra = format!("lifetime = \"2d\"\n{extra}");
        std::fs::write(&config, folder.service("online-ca", "127.0.0.1:0", &extra)).unwrap();
        let mut proc = Proc::start(&config, "");
        let addr = proc.listening("online-ca");
        OnlineCa {
            ca_dir: folder.ca_dir.clone(),
            folder,
            proc,
            addr,
        }
    }

    /// A host certificate from this CA, made the offline way.
    fn host(&self, name: &str) -> HostCert {
        let out = self.folder.dir.path().join("hosts");
        certs_cli(&[
            "issue",
            "--ca",
            self.ca_dir.to_str().unwrap(),
            "--name",
            name,
            "--ip",
            "127.0.0.2",
            "--out",
            out.to_str().unwrap(),
        ]);
        host_files(&out, name)
    }

    /// A request for a new key with the names of `cert` (`certs renew`).
    fn renewal_request(&self, cert: &Path) -> Vec<u8> {
        let out = tempfile::tempdir_in(self.folder.dir.path()).unwrap().keep();
        certs_cli(&[
            "renew",
            "--cert",
            cert.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        let csr = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "csr"))
            .unwrap();
        std::fs::read(csr).unwrap()
    }

    /// A request for `name` with a new key (`certs request`).
    fn request(&self, name: &str, ip: Option<&str>) -> Vec<u8> {
        let out = tempfile::tempdir_in(self.folder.dir.path()).unwrap().keep();
        let mut args = vec!["request", "--name", name, "--out", out.to_str().unwrap()];
        if let Some(ip) = ip {
            args.extend(["--ip", ip]);
        }
        certs_cli(&args);
        std::fs::read(out.join(format!("{name}.csr"))).unwrap()
    }

    fn issued_log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.ca_dir.join("issued.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// `POST path` over TLS (trusting the CA, presenting `me` if given),
    /// with an optional bearer token. `Err` when the TLS layer refused.
    async fn post(
        &self,
        path: &str,
        me: Option<&HostCert>,
        token: Option<&str>,
        body: &[u8],
    ) -> Result<(u16, String), String> {
        self.request_raw("POST", path, me, token, body).await
    }

    async fn request_raw(
        &self,
        method: &str,
        path: &str,
        me: Option<&HostCert>,
        token: Option<&str>,
        body: &[u8],
    ) -> Result<(u16, String), String> {
        let config = common::tls_client(&self.ca_dir.join("ca.pem"), me);
        talk(self.addr, config, method, path, token, body).await
    }
}

async fn talk(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> Result<(u16, String), String> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("ca.test").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: ca.test\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let sent = async {
        tls.write_all(head.as_bytes()).await?;
        tls.write_all(body).await?;
        tls.flush().await
    };
    // A refused client certificate shows on the first read in TLS 1.3;
    // a large body may not all be written before the answer comes.
    let _ = sent.await;
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    let answer = String::from_utf8(answer).unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no HTTP answer: {answer:?}"))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The certificates of a PEM text, DER.
fn certs_of(pem: &str) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .map(|p| p.unwrap())
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .collect()
}

fn info(der: &[u8]) -> dctunnel::x509::CertInfo {
    dctunnel::x509::CertInfo::parse(der).unwrap()
}

fn cert_der(path: &Path) -> Vec<u8> {
    certs_of(&std::fs::read_to_string(path).unwrap()).remove(0)
}

#[tokio::test]
async fn a_host_renews_once_for_its_own_names_and_a_lost_answer_can_be_asked_again() {
    let ca = OnlineCa::start("");
    let host = ca.host("db1.test");
    let old = info(&cert_der(&host.cert));
    let csr = ca.renewal_request(&host.cert);

    let (status, body) = ca.post("/v1/renew", Some(&host), None, &csr).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let chain = certs_of(&body);
    assert_eq!(chain.len(), 2, "the new certificate then the CA's");
    let new = info(&chain[0]);
    assert_eq!(new.sans, old.sans);
    assert_ne!(new.serial, old.serial);
    assert_ne!(new.pin, old.pin, "a new key");
    assert_eq!(chain[1], cert_der(&ca.ca_dir.join("ca.pem")));
    let lifetime = new.not_after - time::OffsetDateTime::now_utc();
    assert!(
        lifetime <= time::Duration::days(2) && lifetime > time::Duration::days(1),
        "lifetime = \"2d\": {lifetime}"
    );

    // The same request again (the answer was lost): answered.
    let (status, body) = ca.post("/v1/renew", Some(&host), None, &csr).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(info(&certs_of(&body)[0]).pin, new.pin);

    // Another key for the same certificate: the second renewal is refused.
    let other = ca.renewal_request(&host.cert);
    let (status, body) = ca
        .post("/v1/renew", Some(&host), None, &other)
        .await
        .unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("already renewed"), "{body}");
    let mut proc = ca.proc;
    let refused = proc.wait_for("online CA: renewal refused");
    assert_eq!(refused["service"], "online-ca");
    assert_eq!(refused["peer"], "db1.test");
    assert!(refused["source"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));

    let log = OnlineCa::issued_log_of(&ca.ca_dir);
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0]["serial"], new.serial);
    assert_eq!(
        log[0]["authorised_by"],
        format!("renewal of certificate {}", old.serial)
    );
}

impl OnlineCa {
    fn issued_log_of(ca_dir: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(ca_dir.join("issued.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

#[tokio::test]
async fn a_renewal_may_ask_only_for_names_the_certificate_holds() {
    let ca = OnlineCa::start("");
    let host = ca.host("db1.test");
    for (name, ip) in [("db2.test", None), ("db1.test", Some("127.0.0.9"))] {
        let csr = ca.request(name, ip);
        let (status, body) = ca.post("/v1/renew", Some(&host), None, &csr).await.unwrap();
        assert_eq!(status, 403, "{body}");
        let wanted = ip.unwrap_or(name);
        assert!(body.contains(&format!("asks for {wanted}")), "{body}");
    }
    // The refusals did not use up the renewal.
    let csr = ca.renewal_request(&host.cert);
    let (status, body) = ca.post("/v1/renew", Some(&host), None, &csr).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(ca.issued_log().len(), 1);
}

#[tokio::test]
async fn revoked_expired_and_foreign_certificates_cannot_renew() {
    let ca = OnlineCa::start("");

    // Revoked: the CRL is read at each request, no reload needed.
    let stolen = ca.host("db1.test");
    let csr = ca.renewal_request(&stolen.cert);
    certs_cli(&[
        "revoke",
        "--ca",
        ca.ca_dir.to_str().unwrap(),
        stolen.cert.to_str().unwrap(),
    ]);
    let (status, body) = ca
        .post("/v1/renew", Some(&stolen), None, &csr)
        .await
        .unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("is revoked"), "{body}");

    // Expired: signed by this CA's key, but out of date.
    let expired = expired_host(&ca.ca_dir, ca.folder.dir.path(), "db3.test");
    let csr = ca.renewal_request(&expired.cert);
    let answer = ca.post("/v1/renew", Some(&expired), None, &csr).await;
    assert!(
        !matches!(answer, Ok((200, _))),
        "an expired certificate renewed: {answer:?}"
    );

    // Another CA's certificate with the same name.
    let other_ca = Pki::new("another CA");
    let foreign = other_ca.issue("db1.test");
    let csr = ca.renewal_request(&foreign.cert);
    let answer = ca.post("/v1/renew", Some(&foreign), None, &csr).await;
    assert!(
        !matches!(answer, Ok((200, _))),
        "a foreign certificate renewed: {answer:?}"
    );
    assert!(ca.issued_log().is_empty());
}

/// A certificate for `name` signed by the CA in `ca_dir` that expired
/// yesterday.
fn expired_host(ca_dir: &Path, out: &Path, name: &str) -> HostCert {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
    let ca_key =
        KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join("ca.key")).unwrap()).unwrap();
    let ca_pem = std::fs::read_to_string(ca_dir.join("ca.pem")).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.subject_alt_names = vec![SanType::DnsName(name.try_into().unwrap())];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(30);
    params.not_after = now - time::Duration::days(1);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &issuer).unwrap();
    let cert_path = out.join(format!("{name}-expired.pem"));
    let key_path = out.join(format!("{name}-expired.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    common::write_private(&key_path, &key.serialize_pem());
    HostCert {
        cert: cert_path,
        key: key_path,
    }
}

#[tokio::test]
async fn a_token_enrols_once_and_only_for_its_names() {
    let ca = OnlineCa::start("");
    let token = certs_cli(&[
        "token",
        "--ca",
        ca.ca_dir.to_str().unwrap(),
        "--name",
        "new.test",
        "--ip",
        "127.0.0.3",
    ]);
    let token = token.trim();
    assert!(token.starts_with("dct1."), "{token}");

    // A name the token does not grant: refused, and the token still works.
    let wrong = ca.request("other.test", None);
    let (status, body) = ca
        .post("/v1/enrol", None, Some(token), &wrong)
        .await
        .unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("does not grant other.test"), "{body}");

    // A forged secret: refused, and never echoed.
    let mut forged = token.to_owned();
    let c = if forged.ends_with('A') { "B" } else { "A" };
    forged.replace_range(40..41, c);
    let right = ca.request("new.test", Some("127.0.0.3"));
    let (status, body) = ca
        .post("/v1/enrol", None, Some(&forged), &right)
        .await
        .unwrap();
    assert!(status == 401, "{status} {body}");
    assert!(!body.contains(&token[5..]) && !body.contains(&forged[5..]));

    let (status, body) = ca
        .post("/v1/enrol", None, Some(token), &right)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let chain = certs_of(&body);
    let cert = info(&chain[0]);
    assert!(
        cert.sans.iter().any(|n| n.contains("new.test")),
        "{:?}",
        cert.sans
    );
    assert!(
        cert.sans.iter().any(|n| n.contains("127.0.0.3")),
        "{:?}",
        cert.sans
    );

    // Once only.
    let again = ca.request("new.test", None);
    let (status, body) = ca
        .post("/v1/enrol", None, Some(token), &again)
        .await
        .unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("already used"), "{body}");

    // Without a token.
    let (status, _) = ca.post("/v1/enrol", None, None, &again).await.unwrap();
    assert_eq!(status, 401);
    assert_eq!(ca.issued_log().len(), 1);

    // Neither the token nor its secret reached the log.
    let mut proc = ca.proc;
    proc.wait_for("online CA: enrolment refused");
    let _ = proc.child.kill();
    let _ = proc.wait_exit();
    let all: String = proc.seen.iter().map(|v| v.to_string()).collect();
    assert!(!all.contains(&token[5..]), "the token was logged");
}

#[tokio::test]
async fn bad_requests_get_a_status_and_a_reason() {
    let ca = OnlineCa::start("");
    let host = ca.host("db1.test");
    let csr = ca.renewal_request(&host.cert);

    let (status, body) = ca.post("/v1/renew", None, None, &csr).await.unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("current certificate"), "{body}");

    let (status, _) = ca
        .request_raw("GET", "/v1/renew", Some(&host), None, b"")
        .await
        .unwrap();
    assert_eq!(status, 405);
    let (status, _) = ca.post("/admin", Some(&host), None, &csr).await.unwrap();
    assert_eq!(status, 404);

    let (status, body) = ca
        .post("/v1/renew", Some(&host), None, b"garbage")
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");

    // A body holding a key: refused, and the key is not repeated.
    let key = std::fs::read_to_string(&host.key).unwrap();
    let mut with_key = csr.clone();
    with_key.extend_from_slice(key.as_bytes());
    let (status, body) = ca
        .post("/v1/renew", Some(&host), None, &with_key)
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("private key"), "{body}");
    let key_body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!body.contains(&key_body[..20]));

    let (status, _) = ca
        .post("/v1/renew", Some(&host), None, &vec![b'x'; 100_000])
        .await
        .unwrap();
    assert_eq!(status, 413);

    // None of these used up the renewal.
    let (status, body) = ca.post("/v1/renew", Some(&host), None, &csr).await.unwrap();
    assert_eq!(status, 200, "{body}");
}

impl OnlineCa {
    /// The admin endpoint's address, from its log line (the CA must have
    /// been started with an `[admin]` table listening on port 0).
    fn admin(&mut self) -> SocketAddr {
        let line = "admin endpoint listening";
        let seen = self
            .proc
            .seen
            .iter()
            .find(|v| v["fields"]["message"] == line)
            .map(|v| v["fields"].clone());
        let fields = seen.unwrap_or_else(|| self.proc.wait_for(line));
        fields["listen"].as_str().unwrap().parse().unwrap()
    }
}

/// The online CA's series in `/metrics` (name and labels, to value).
async fn ca_series(admin: SocketAddr) -> std::collections::BTreeMap<String, String> {
    let answer = common::http_get(admin, "/metrics").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer
        .lines()
        .filter(|l| l.starts_with("dctunnel_ca_"))
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(series, value)| (series.to_owned(), value.to_owned()))
        .collect()
}

/// The expected series: `issued` by how, `refused` by (how, status); every
/// other usual refusal at zero.
fn expected_series(
    issued: &[(&str, u64)],
    refused: &[(&str, u16, u64)],
) -> std::collections::BTreeMap<String, String> {
    let mut m = std::collections::BTreeMap::new();
    for how in ["renewal", "enrolment"] {
        let n = issued.iter().find(|i| i.0 == how).map_or(0, |i| i.1);
        m.insert(
            format!("dctunnel_ca_certificates_issued_total{{service=\"online-ca\",how=\"{how}\"}}"),
            n.to_string(),
        );
        for status in [400, 401, 403, 413, 503] {
            let n = refused
                .iter()
                .find(|r| r.0 == how && r.1 == status)
                .map_or(0, |r| r.2);
            m.insert(
                format!(
                    "dctunnel_ca_requests_refused_total{{service=\"online-ca\",how=\"{how}\",status=\"{status}\"}}"
                ),
                n.to_string(),
            );
        }
    }
    m
}

/// The metrics count what the CA answered: a renewal issued, a second
/// renewal of the same certificate refused (403, the stolen-key signal the
/// alert watches), an enrolment without a token refused (401). Every
/// series is there at zero before any request, so that Prometheus sees the
/// first one as an increase.
#[tokio::test]
async fn issuances_and_refusals_are_counted_in_the_metrics() {
    let mut ca = OnlineCa::start("\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    let admin = ca.admin();
    assert_eq!(ca_series(admin).await, expected_series(&[], &[]));

    let host = ca.host("db1.test");
    let csr = ca.renewal_request(&host.cert);
    let (status, body) = ca.post("/v1/renew", Some(&host), None, &csr).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let other = ca.renewal_request(&host.cert);
    let (status, body) = ca
        .post("/v1/renew", Some(&host), None, &other)
        .await
        .unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("already renewed"), "{body}");
    let (status, body) = ca
        .post("/v1/enrol", None, None, &ca.request("new.test", None))
        .await
        .unwrap();
    assert_eq!(status, 401, "{body}");
    // A wrong path asks for neither: not counted.
    let (status, _) = ca.post("/admin", Some(&host), None, &csr).await.unwrap();
    assert_eq!(status, 404);

    assert_eq!(
        ca_series(admin).await,
        expected_series(
            &[("renewal", 1)],
            &[("renewal", 403, 1), ("enrolment", 401, 1)]
        )
    );
}

#[tokio::test]
async fn allow_peers_limits_who_may_renew() {
    let ca = OnlineCa::start(r#"allow_peers = ["*.web.test"]"#);
    let db = ca.host("db1.test");
    let csr = ca.renewal_request(&db.cert);
    let (status, body) = ca.post("/v1/renew", Some(&db), None, &csr).await.unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("allow_peers"), "{body}");
    let web = ca.host("a.web.test");
    let csr = ca.renewal_request(&web.cert);
    let (status, body) = ca.post("/v1/renew", Some(&web), None, &csr).await.unwrap();
    assert_eq!(status, 200, "{body}");
}

#[test]
fn ca_service_configuration_problems_name_the_field() {
    let folder = common::CaFolder::new();
    let (ca_dir, svc) = (&folder.ca_dir, &folder.svc);
    let service = |extra: &str| {
        format!(
            "[[service]]\nname = \"ca\"\nmode = \"ca\"\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n{extra}\n",
            svc.cert.display(),
            svc.key.display()
        )
    };
    let ca_line = format!("ca_dir = \"{}\"", ca_dir.display());
    let problems = |text: String| -> String {
        match common::config(&text).1 {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    };
    assert_eq!(problems(service(&ca_line)), "");
    let p = problems(service(""));
    assert!(p.contains("ca_dir") && p.contains("is required"), "{p}");
    let p = problems(service(&format!("{ca_line}\nconnect = \"127.0.0.1:1\"")));
    assert!(p.contains("connect"), "{p}");
    let p = problems(service(&format!("{ca_line}\nlifetime = \"5m\"")));
    assert!(p.contains("lifetime") && p.contains("out of range"), "{p}");
    let p = problems(service(&format!("{ca_line}\ncrl = [\"x.crl\"]")));
    assert!(p.contains("crl"), "{p}");

    // The CA key readable by others: refused.
    use std::os::unix::fs::PermissionsExt;
    let key = ca_dir.join("ca.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let p = problems(service(&ca_line));
    assert!(p.contains("ca_dir") && p.contains("0600"), "{p}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    // ca_dir in another mode.
    let server = format!(
        "[[service]]\nname = \"s\"\nmode = \"server\"\nlisten = \"127.0.0.1:0\"\nconnect = \"127.0.0.1:1\"\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\nallow_peers = [\"*\"]\n{ca_line}\n",
        svc.cert.display(),
        svc.key.display(),
        ca_dir.join("ca.pem").display()
    );
    let p = problems(server);
    assert!(
        p.contains("ca_dir") && p.contains("mode = \"ca\" only"),
        "{p}"
    );
}
