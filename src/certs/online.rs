//! The online CA's decisions: what a `mode = "ca"` service signs, for whom,
//! and what it refuses. No network here: the service (`crate::ca_service`)
//! hands over the peer's certificate and the request body, and sends back
//! what this returns.
//!
//! - **Renewal**: a host presents its current certificate (checked against
//!   the CA at the handshake: signed by it, not expired) and a request. The
//!   certificate must not be revoked (the CRL is read at every request) and
//!   the request may ask only for names the certificate holds. **Each
//!   certificate renews once**: a second renewal of the same certificate is
//!   refused, unless it is a retry for the very key renewed the first time
//!   (the answer was lost). So a stolen key cannot quietly follow its host:
//!   whichever of thief and host renews second is refused, and says so.
//! - **Enrolment**: a new host has no certificate; it presents a one-time
//!   token ([`super::token`]) granting names, and a request for those names.
//!
//! Every issuance is logged by the service and appended to `issued.log` in
//! the CA folder, with its serial, its names and how it was authorised; the
//! service counts each answer in the authority's [`Answers`], which the
//! metrics show.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use super::ca::{revoked_serials, Ca};
use super::csr::CheckedRequest;
use super::token::{self, Token};
use super::{CA_CERT_FILE, CA_KEY_FILE};
use crate::x509::{self, hex_serial, strip_zeros, CertInfo};

/// Folder, inside the CA folder, recording which certificates were renewed.
pub const RENEWED_DIR: &str = "renewed";
/// The issuance log inside the CA folder, one JSON object per line.
pub const ISSUED_LOG: &str = "issued.log";
/// The largest request body read.
pub const MAX_REQUEST: usize = 64 * 1024;

/// The online CA of one service: its folder and the lifetime it gives.
#[derive(Debug)]
pub struct Authority {
    dir: PathBuf,
    lifetime: Duration,
    /// One issuance at a time: the files it checks and writes are shared.
    issuing: Mutex<()>,
    answers: Answers,
}

/// What a request asked for: the `how` of the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Asked {
    Renewal,
    Enrolment,
}

impl Asked {
    pub const ALL: [Asked; 2] = [Asked::Renewal, Asked::Enrolment];

    pub fn as_str(self) -> &'static str {
        match self {
            Asked::Renewal => "renewal",
            Asked::Enrolment => "enrolment",
        }
    }
}

/// The statuses a refusal is counted under from the start, at zero, so that
/// the first refusal of each shows as an increase (a series that appears
/// at 1 does not, to Prometheus). Any other status is added when it happens.
pub const REFUSAL_STATUSES: [u16; 5] = [400, 401, 403, 413, 503];

/// The answers of one online CA since it was opened: certificates issued,
/// and requests refused by status, each by what was asked.
#[derive(Debug)]
pub struct Answers {
    counts: Mutex<BTreeMap<(Asked, u16), u64>>,
}

impl Default for Answers {
    fn default() -> Answers {
        let counts = Asked::ALL
            .into_iter()
            .flat_map(|a| {
                std::iter::once(200)
                    .chain(REFUSAL_STATUSES)
                    .map(move |s| (a, s))
            })
            .map(|k| (k, 0))
            .collect();
        Answers {
            counts: Mutex::new(counts),
        }
    }
}

impl Answers {
    /// One answer: 200 is a certificate issued, anything else a refusal.
    pub fn count(&self, asked: Asked, status: u16) {
        *self.lock().entry((asked, status)).or_insert(0) += 1;
    }

    /// Certificates issued for `asked`.
    pub fn issued(&self, asked: Asked) -> u64 {
        self.lock().get(&(asked, 200)).copied().unwrap_or(0)
    }

    /// Refusals by what was asked and status, in that order.
    pub fn refused(&self) -> Vec<(Asked, u16, u64)> {
        self.lock()
            .iter()
            .filter(|((_, status), _)| *status != 200)
            .map(|((asked, status), n)| (*asked, *status, *n))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(Asked, u16), u64>> {
        // A counter update cannot leave the map half-changed.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A certificate just issued.
#[derive(Debug)]
pub struct Issued {
    /// The new certificate then the CA certificate, PEM.
    pub chain_pem: String,
    pub info: CertInfo,
    /// The names it carries.
    pub names: Vec<String>,
    /// How it was authorised, for the logs: "renewal of serial …" or
    /// "enrolment token …".
    pub authorised_by: String,
}

/// Why a request is refused, with the HTTP status the service answers. The
/// text goes back to the host and into the log: never a secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unavailable(String),
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::BadRequest(_) => 400,
            Refusal::Unauthorized(_) => 401,
            Refusal::Forbidden(_) => 403,
            Refusal::Unavailable(_) => 503,
        }
    }
}

impl Authority {
    /// Opens the CA folder, checking what a configuration load must: the CA
    /// certificate and key load and match, and the key is readable by its
    /// owner only. The `Err` names the problem, for the `ca_dir` key.
    pub fn open(dir: &Path, lifetime: Duration) -> Result<Authority, String> {
        let key = dir.join(CA_KEY_FILE);
        let mode = fs::metadata(&key)
            .map_err(|e| format!("cannot read {}: {e}", key.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(format!(
                "{} can be read by others (mode {:04o}); the CA key must be 0600",
                key.display(),
                mode & 0o7777
            ));
        }
        Ca::load(dir).map_err(|e| error_chain(&e))?;
        Ok(Authority {
            dir: dir.to_path_buf(),
            lifetime,
            issuing: Mutex::new(()),
            answers: Answers::default(),
        })
    }

    /// The answers given since this authority was opened (the service's
    /// start, or the reload that last changed it).
    pub fn answers(&self) -> &Answers {
        &self.answers
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// A renewal: `peer` is the certificate the host presented (its chain
    /// to this CA and its dates checked at the handshake), `body` the PEM
    /// request.
    pub fn renew(&self, peer: &[u8], body: &[u8]) -> Result<Issued, Refusal> {
        let request = read_request(body)?;
        let _one = self.issuing.lock().unwrap_or_else(|e| e.into_inner());
        let ca = self.load()?;
        let (_, cert) = X509Certificate::from_der(peer)
            .map_err(|_| Refusal::Unauthorized("client certificate unreadable".into()))?;
        if let Some(problem) = x509::validity_problem(peer) {
            return Err(Refusal::Forbidden(format!(
                "the presented certificate {problem}; enrol again with a token"
            )));
        }
        let serial = strip_zeros(cert.raw_serial()).to_vec();
        let serial_text = hex_serial(&serial);
        let revoked = revoked_serials(&self.dir, &ca)
            .map_err(|e| unavailable("cannot read the CA's CRL", &e))?;
        if revoked.contains(&serial) {
            return Err(Refusal::Forbidden(format!(
                "certificate {serial_text} is revoked; it cannot be renewed"
            )));
        }
        let held = names_of(&cert);
        let asked = request.names();
        if let Some(n) = asked.iter().find(|n| !held.contains(n)) {
            return Err(Refusal::Forbidden(format!(
                "the request asks for {n}, which certificate {serial_text} does not hold \
                 (it holds {})",
                held.join(", ")
            )));
        }
        // Each certificate renews once; a retry for the same new key is
        // answered again (the first answer may have been lost).
        let record = self.dir.join(RENEWED_DIR).join(&serial_text);
        let new_pin = request.key_pin().to_owned();
        match fs::read_to_string(&record) {
            Ok(earlier) if earlier.trim() == new_pin => {}
            Ok(_) => {
                return Err(Refusal::Forbidden(format!(
                    "certificate {serial_text} was already renewed, for another key; \
                     if its host did not do it, its key may be in someone else's hands: \
                     revoke both certificates and enrol the host again"
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(unavailable("cannot read the renewal records", &e)),
        }
        let how = format!("renewal of certificate {serial_text}");
        let issued = self.issue(&ca, request, how)?;
        write_record(&self.dir.join(RENEWED_DIR), &record, &new_pin)
            .map_err(|e| unavailable("cannot record the renewal", &e))?;
        Ok(issued)
    }

    /// An enrolment: `token` as the host sent it, `body` the PEM request.
    pub fn enrol(&self, token: &str, body: &[u8]) -> Result<Issued, Refusal> {
        let token = Token::parse(token).map_err(|e| Refusal::Unauthorized(e.to_string()))?;
        let request = read_request(body)?;
        let _one = self.issuing.lock().unwrap_or_else(|e| e.into_inner());
        let ca = self.load()?;
        let asked = request.names();
        token::redeem(&self.dir, &token, &asked, OffsetDateTime::now_utc()).map_err(|r| {
            let text = format!("token {}: {r}", token.id());
            match r {
                token::Refused::Unknown | token::Refused::WrongSecret => {
                    Refusal::Unauthorized(text)
                }
                token::Refused::Record(_) => Refusal::Unavailable(text),
                _ => Refusal::Forbidden(text),
            }
        })?;
        let how = format!("enrolment token {}", token.id());
        self.issue(&ca, request, how)
    }

    fn load(&self) -> Result<Ca, Refusal> {
        Ca::load(&self.dir).map_err(|e| unavailable("the CA cannot sign", &e))
    }

    fn issue(&self, ca: &Ca, request: CheckedRequest, how: String) -> Result<Issued, Refusal> {
        let names = request.names();
        let (pem, der) = request
            .sign(ca, self.lifetime)
            .map_err(|e| unavailable("cannot sign", &e))?;
        let info = CertInfo::parse(&der)
            .map_err(|_| Refusal::Unavailable("signed an unreadable certificate".into()))?;
        let ca_pem = fs::read_to_string(self.dir.join(CA_CERT_FILE))
            .map_err(|e| unavailable("cannot read the CA certificate", &e))?;
        let line = serde_json::json!({
            "time": x509::rfc3339(OffsetDateTime::now_utc()),
            "serial": info.serial,
            "names": names,
            "not_after": x509::rfc3339(info.not_after),
            "pin": info.pin,
            "authorised_by": how,
        });
        append_line(&self.dir.join(ISSUED_LOG), &line.to_string())
            .map_err(|e| unavailable("cannot write the issuance log", &e))?;
        Ok(Issued {
            chain_pem: format!("{pem}{ca_pem}"),
            info,
            names,
            authorised_by: how,
        })
    }
}

/// The request in a PEM body; a body holding a private key is refused
/// (and its content never repeated).
fn read_request(body: &[u8]) -> Result<CheckedRequest, Refusal> {
    let bad = |m: &str| Refusal::BadRequest(m.to_owned());
    let mut der = None;
    for pem in x509_parser::pem::Pem::iter_from_buffer(body) {
        let pem = pem.map_err(|_| bad("the body is not PEM"))?;
        if pem.label.contains("PRIVATE KEY") {
            return Err(bad(
                "the body holds a private key: send only the request; the key stays on its host",
            ));
        }
        if pem.label == "CERTIFICATE REQUEST" || pem.label == "NEW CERTIFICATE REQUEST" {
            der.get_or_insert(pem.contents);
        }
    }
    let der = der.ok_or_else(|| bad("no CERTIFICATE REQUEST in the body"))?;
    CheckedRequest::from_der(&der).map_err(|p| Refusal::BadRequest(p.to_string()))
}

/// The names a certificate holds, compared as [`CheckedRequest::names`]
/// writes them: its common name, DNS names and IP addresses.
fn names_of(cert: &X509Certificate<'_>) -> Vec<String> {
    let mut v: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => v.push(d.trim_end_matches('.').to_ascii_lowercase()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => v.push(
                        std::net::IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())
                            .to_string(),
                    ),
                    16 => v.push(
                        std::net::IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())
                            .to_string(),
                    ),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    v
}

fn write_record(dir: &Path, path: &Path, pin: &str) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(format!("{pin}\n").as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

fn append_line(path: &Path, line: &str) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(format!("{line}\n").as_bytes())?;
    f.sync_data()
}

fn unavailable(what: &str, e: &dyn std::error::Error) -> Refusal {
    // The details (paths, causes) stay in the CA's own log: the caller
    // logs `Refusal` text only, and this one is enough for the host.
    tracing::error!(error = %error_chain(e), "online CA: {what}");
    Refusal::Unavailable(format!("the CA is unavailable ({what})"))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every status counted, the usual refusals shown at zero before any,
    /// an unusual one added when it happens.
    #[test]
    fn answers_are_counted_by_what_was_asked_and_status() {
        let a = Answers::default();
        assert_eq!(a.issued(Asked::Renewal), 0);
        let zeros = a.refused();
        assert_eq!(zeros.len(), 2 * REFUSAL_STATUSES.len(), "{zeros:?}");
        assert!(zeros.iter().all(|(_, _, n)| *n == 0));
        a.count(Asked::Renewal, 200);
        a.count(Asked::Renewal, 200);
        a.count(Asked::Enrolment, 200);
        a.count(Asked::Renewal, 403);
        a.count(Asked::Enrolment, 418);
        assert_eq!(a.issued(Asked::Renewal), 2);
        assert_eq!(a.issued(Asked::Enrolment), 1);
        let refused = a.refused();
        assert!(refused.contains(&(Asked::Renewal, 403, 1)), "{refused:?}");
        assert!(refused.contains(&(Asked::Enrolment, 403, 0)), "{refused:?}");
        assert!(refused.contains(&(Asked::Enrolment, 418, 1)), "{refused:?}");
        assert!(!refused.iter().any(|(_, s, _)| *s == 200));
    }
}
