//! One-time enrolment tokens: how a new host gets its first certificate
//! from the online CA (`mode = "ca"`) with no certificate yet.
//!
//! `dctunnel certs token`, run where the CA folder is, writes a record
//! `DIR/tokens/<id>.toml` (the names it grants, when it expires, and the
//! SHA-256 of its secret, never the secret) and prints the token once:
//!
//! ```text
//! dct1.<base64url(id[16] || secret[32] || CA key pin[32])>
//! ```
//!
//! The last part pins the CA: the new host accepts the CA service only if it
//! proves that key, so a token cannot be used against an impostor. The CA
//! service redeems a token once: the record is renamed to `<id>.used`
//! before anything is signed, and a rename can succeed only once.

use std::fmt;
use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

use super::ca::{check_dns_name, create_dir, write_new};
use super::{CertsError, CA_CERT_FILE};
use crate::x509;

/// Folder of the token records inside a CA folder.
pub const TOKENS_DIR: &str = "tokens";
/// Longest life of a token: it is meant to be used within minutes.
pub const MAX_TTL: Duration = Duration::days(7);

const PREFIX: &str = "dct1.";
const ID_LEN: usize = 16;
const SECRET_LEN: usize = 32;
const PIN_LEN: usize = 32;

/// An enrolment token as the new host holds it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    id: [u8; ID_LEN],
    secret: [u8; SECRET_LEN],
    ca_pin: [u8; PIN_LEN],
}

/// Why a token string is not a token. Never quotes the string.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not an enrolment token (expected dct1. followed by 107 base64url characters, as `dctunnel certs token` prints)")]
pub struct BadToken;

impl Token {
    pub fn parse(text: &str) -> Result<Token, BadToken> {
        let body = text.trim().strip_prefix(PREFIX).ok_or(BadToken)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| BadToken)?;
        if bytes.len() != ID_LEN + SECRET_LEN + PIN_LEN {
            return Err(BadToken);
        }
        let mut t = Token {
            id: [0; ID_LEN],
            secret: [0; SECRET_LEN],
            ca_pin: [0; PIN_LEN],
        };
        t.id.copy_from_slice(&bytes[..ID_LEN]);
        t.secret
            .copy_from_slice(&bytes[ID_LEN..ID_LEN + SECRET_LEN]);
        t.ca_pin.copy_from_slice(&bytes[ID_LEN + SECRET_LEN..]);
        Ok(t)
    }

    /// SHA-256 of the CA certificate's SubjectPublicKeyInfo.
    pub fn ca_pin(&self) -> [u8; PIN_LEN] {
        self.ca_pin
    }

    /// The CA pin as dctunnel writes pins (`sha256/…`).
    pub fn ca_pin_text(&self) -> String {
        x509::pin_text(&self.ca_pin)
    }

    /// The token's identifier (not secret): names its record, and the logs.
    pub fn id(&self) -> String {
        hex(&self.id)
    }

    fn secret_digest(&self) -> String {
        hex(&Sha256::digest(self.secret))
    }
}

impl fmt::Display for Token {
    /// The token itself, secret included: printed once by `certs token`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bytes = Vec::with_capacity(ID_LEN + SECRET_LEN + PIN_LEN);
        bytes.extend_from_slice(&self.id);
        bytes.extend_from_slice(&self.secret);
        bytes.extend_from_slice(&self.ca_pin);
        f.write_str(PREFIX)?;
        f.write_str(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }
}

impl fmt::Debug for Token {
    /// Never the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token").field("id", &self.id()).finish()
    }
}

/// The names a token lets its holder ask for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The host name: common name and first DNS name.
    pub name: String,
    #[serde(default)]
    pub dns: Vec<String>,
    #[serde(default)]
    pub ips: Vec<IpAddr>,
}

impl Grant {
    /// Every name granted, as certificate identities are compared: DNS names
    /// lowercased, IP addresses in their usual text form.
    pub fn names(&self) -> Vec<String> {
        super::csr::names_as_compared(&self.name, &self.dns, &self.ips)
    }
}

/// The record the CA keeps of a token (`tokens/<id>.toml`).
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    #[serde(flatten)]
    grant: Grant,
    /// RFC 3339.
    expires: String,
    /// SHA-256 of the secret, hex: the record alone does not enrol anyone.
    secret_sha256: String,
}

/// What [`make`] wrote.
#[derive(Debug)]
pub struct Made {
    pub token: Token,
    pub record: PathBuf,
    pub expires: OffsetDateTime,
}

/// Makes a token for `grant`, valid `ttl`, recording it in `ca_dir/tokens/`.
pub fn make(ca_dir: &Path, grant: &Grant, ttl: Duration) -> Result<Made, CertsError> {
    if ttl <= Duration::ZERO || ttl > MAX_TTL {
        return Err(CertsError::TokenTtl);
    }
    for name in std::iter::once(&grant.name).chain(&grant.dns) {
        check_dns_name(name, false)?;
    }
    let ca_der = super::ca::first_cert(&ca_dir.join(CA_CERT_FILE))?;
    let ca_pin = spki_sha256(&ca_der).map_err(CertsError::InvalidDer)?;
    let mut token = Token {
        id: [0; ID_LEN],
        secret: [0; SECRET_LEN],
        ca_pin,
    };
    let random = rustls::crypto::aws_lc_rs::default_provider().secure_random;
    random.fill(&mut token.id).map_err(|_| CertsError::Random)?;
    random
        .fill(&mut token.secret)
        .map_err(|_| CertsError::Random)?;
    let now = OffsetDateTime::now_utc();
    let expires = now.replace_nanosecond(0).unwrap_or(now) + ttl;
    let record = Record {
        grant: grant.clone(),
        expires: x509::rfc3339(expires),
        secret_sha256: token.secret_digest(),
    };
    let text = toml::to_string(&record).map_err(|e| CertsError::Write {
        path: ca_dir.join(TOKENS_DIR),
        source: io::Error::other(e),
    })?;
    let dir = ca_dir.join(TOKENS_DIR);
    create_dir(&dir, true)?;
    let path = dir.join(format!("{}.toml", token.id()));
    write_new(&path, text.as_bytes(), 0o600)?;
    same_owner_as(ca_dir, &[&dir, &path])?;
    Ok(Made {
        token,
        record: path,
        expires,
    })
}

/// Run as root (as an admin does), gives `paths` to the owner of the CA
/// folder: the online CA runs as that user, and must be able to rename
/// the record when the token is used.
fn same_owner_as(ca_dir: &Path, paths: &[&Path]) -> Result<(), CertsError> {
    use std::os::unix::fs::MetadataExt;
    if !rustix::process::geteuid().is_root() {
        return Ok(());
    }
    let owner = fs::metadata(ca_dir).map_err(|source| CertsError::Read {
        path: ca_dir.to_path_buf(),
        source,
    })?;
    if owner.uid() == 0 {
        return Ok(());
    }
    for path in paths {
        let uid = rustix::fs::Uid::from_raw(owner.uid());
        let gid = rustix::fs::Gid::from_raw(owner.gid());
        rustix::fs::chown(*path, Some(uid), Some(gid)).map_err(|e| CertsError::Write {
            path: path.to_path_buf(),
            source: e.into(),
        })?;
    }
    Ok(())
}

/// Why the CA service refuses a token. The messages go back to the host
/// and into the CA's log: they never quote the secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("unknown token")]
    Unknown,
    #[error("wrong token secret")]
    WrongSecret,
    #[error("token expired at {0}")]
    Expired(String),
    #[error("token already used")]
    Used,
    #[error("token record unreadable: {0}")]
    Record(String),
    #[error("the token does not grant {0}")]
    NotGranted(String),
}

/// Checks `token` against its record, then `asked` (every name of the
/// request) against what it grants, and only then consumes it: a request
/// for a name it does not grant leaves it usable for the right request.
/// Returns what it granted.
pub fn redeem(
    ca_dir: &Path,
    token: &Token,
    asked: &[String],
    now: OffsetDateTime,
) -> Result<Grant, Refused> {
    let dir = ca_dir.join(TOKENS_DIR);
    let path = dir.join(format!("{}.toml", token.id()));
    let used = dir.join(format!("{}.used", token.id()));
    let text = match crate::files::read(&path, 64 * 1024) {
        Ok(t) => t,
        Err(crate::files::ReadError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
            return Err(if used.exists() {
                Refused::Used
            } else {
                Refused::Unknown
            })
        }
        Err(e) => return Err(Refused::Record(e.to_string())),
    };
    let record: Record = std::str::from_utf8(&text)
        .ok()
        .and_then(|t| toml::from_str(t).ok())
        .ok_or_else(|| Refused::Record("not a token record".into()))?;
    if !constant_time_eq(
        record.secret_sha256.as_bytes(),
        token.secret_digest().as_bytes(),
    ) {
        return Err(Refused::WrongSecret);
    }
    let expires = OffsetDateTime::parse(
        &record.expires,
        &time::format_description::well_known::Rfc3339,
    )
    .map_err(|_| Refused::Record("bad expiry".into()))?;
    if now >= expires {
        return Err(Refused::Expired(record.expires));
    }
    let granted = record.grant.names();
    if let Some(n) = asked.iter().find(|n| !granted.contains(n)) {
        return Err(Refused::NotGranted(n.clone()));
    }
    // The one step that can succeed only once, whatever runs concurrently.
    fs::rename(&path, &used).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Refused::Used,
        _ => Refused::Record(e.to_string()),
    })?;
    Ok(record.grant)
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo: what a token pins.
pub fn spki_sha256(cert_der: &[u8]) -> Result<[u8; PIN_LEN], x509_parser::error::X509Error> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert_der)
        .map_err(|_| x509_parser::error::X509Error::InvalidCertificate)?;
    Ok(Sha256::digest(cert.public_key().raw).into())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{init_ca, CaOptions};

    fn grant() -> Grant {
        Grant {
            name: "db1.example.org".into(),
            dns: vec!["db1".into()],
            ips: vec!["10.0.0.7".parse().unwrap()],
        }
    }

    #[test]
    fn tokens_round_trip_and_never_show_their_secret() {
        let ca = tempfile::tempdir().unwrap();
        init_ca(ca.path(), &CaOptions::default()).unwrap();
        let made = make(ca.path(), &grant(), Duration::minutes(15)).unwrap();
        let text = made.token.to_string();
        assert!(text.starts_with("dct1."));
        assert_eq!(text.len(), 5 + 107);
        assert_eq!(Token::parse(&text).unwrap(), made.token);
        let debug = format!("{:?}", made.token);
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(made.token.secret);
        assert!(!debug.contains(&secret));
        let record = fs::read_to_string(&made.record).unwrap();
        assert!(!record.contains(&secret), "{record}");
        assert!(!record.contains(&hex(&made.token.secret)));
        let ca_der = super::super::ca::first_cert(&ca.path().join(CA_CERT_FILE)).unwrap();
        assert_eq!(made.token.ca_pin_text(), x509::spki_pin(&ca_der).unwrap());
        assert_eq!(Token::parse("dct1.abc"), Err(BadToken));
        assert_eq!(Token::parse(&text[1..]), Err(BadToken));
    }

    #[test]
    fn a_token_is_redeemed_once_and_only_for_its_names() {
        let ca = tempfile::tempdir().unwrap();
        init_ca(ca.path(), &CaOptions::default()).unwrap();
        let made = make(ca.path(), &grant(), Duration::minutes(15)).unwrap();
        let now = OffsetDateTime::now_utc();
        let other = vec!["db2.example.org".to_owned()];
        assert_eq!(
            redeem(ca.path(), &made.token, &other, now),
            Err(Refused::NotGranted("db2.example.org".into()))
        );
        let mut forged = made.token.clone();
        forged.secret[0] ^= 1;
        assert_eq!(
            redeem(ca.path(), &forged, &[], now),
            Err(Refused::WrongSecret)
        );
        let late = now + Duration::minutes(16);
        assert!(matches!(
            redeem(ca.path(), &made.token, &[], late),
            Err(Refused::Expired(_))
        ));
        let asked = vec!["db1.example.org".to_owned(), "10.0.0.7".to_owned()];
        assert_eq!(
            redeem(ca.path(), &made.token, &asked, now).unwrap(),
            grant()
        );
        assert_eq!(
            redeem(ca.path(), &made.token, &asked, now),
            Err(Refused::Used)
        );
        let mut unknown = made.token.clone();
        unknown.id[0] ^= 1;
        assert_eq!(
            redeem(ca.path(), &unknown, &asked, now),
            Err(Refused::Unknown)
        );
    }

    #[test]
    fn a_token_made_by_root_belongs_to_the_ca_folders_owner() {
        use std::os::unix::fs::MetadataExt;
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root (CI runs the tests as root)");
            return;
        }
        let ca = tempfile::tempdir().unwrap();
        init_ca(ca.path(), &CaOptions::default()).unwrap();
        let nobody = rustix::fs::Uid::from_raw(65534);
        let nogroup = rustix::fs::Gid::from_raw(65534);
        rustix::fs::chown(ca.path(), Some(nobody), Some(nogroup)).unwrap();
        let made = make(ca.path(), &grant(), Duration::minutes(15)).unwrap();
        for p in [made.record.as_path(), ca.path().join(TOKENS_DIR).as_path()] {
            let m = fs::metadata(p).unwrap();
            assert_eq!((m.uid(), m.gid()), (65534, 65534), "{}", p.display());
        }
    }

    #[test]
    fn token_lifetimes_are_bounded() {
        let ca = tempfile::tempdir().unwrap();
        init_ca(ca.path(), &CaOptions::default()).unwrap();
        assert!(matches!(
            make(ca.path(), &grant(), Duration::days(8)),
            Err(CertsError::TokenTtl)
        ));
        assert!(matches!(
            make(ca.path(), &grant(), Duration::ZERO),
            Err(CertsError::TokenTtl)
        ));
    }
}
