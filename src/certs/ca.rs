//! The certificate operations behind `dctunnel certs`, usable as a library:
//! a private CA, host certificates, self-signed keys for pinning, reading
//! PEM files and revoking into the CA's CRL.

use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PublicKeyData, RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::pem::Pem;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use super::{
    CertsError, CA_CERT_FILE, CA_CRL_FILE, CA_KEY_FILE, DEFAULT_CA_DAYS, DEFAULT_CA_NAME,
    DEFAULT_HOST_DAYS, MAX_DAYS,
};
use crate::x509::{self, hex_serial, strip_zeros, CertInfo};

/// How far back `notBefore` is set, so that a host whose clock is a little
/// behind the issuing machine's accepts a certificate issued a moment ago.
const BACKDATE: Duration = Duration::hours(1);

/// Private key algorithm of a new certificate.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyType {
    /// ECDSA on NIST P-256 with SHA-256: accepted everywhere.
    #[default]
    #[value(name = "ecdsa-p256")]
    EcdsaP256,
    /// Ed25519: smaller and faster; needs TLS 1.3 peers or recent TLS 1.2 stacks.
    #[value(name = "ed25519")]
    Ed25519,
}

/// Why a certificate is revoked (written as the CRL reason code).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The private key leaked or may have leaked.
    KeyCompromise,
    /// The host got a new certificate.
    Superseded,
    /// The host is decommissioned.
    CessationOfOperation,
    /// The host changed hands or purpose.
    AffiliationChanged,
}

impl From<Reason> for RevocationReason {
    fn from(r: Reason) -> Self {
        match r {
            Reason::KeyCompromise => RevocationReason::KeyCompromise,
            Reason::Superseded => RevocationReason::Superseded,
            Reason::CessationOfOperation => RevocationReason::CessationOfOperation,
            Reason::AffiliationChanged => RevocationReason::AffiliationChanged,
        }
    }
}

/// Options of [`init_ca`].
#[derive(Clone, Debug)]
pub struct CaOptions {
    /// Common name of the CA.
    pub name: String,
    /// Validity in days.
    pub days: u32,
    /// Key algorithm.
    pub key_type: KeyType,
}

impl Default for CaOptions {
    fn default() -> Self {
        CaOptions {
            name: DEFAULT_CA_NAME.to_owned(),
            days: DEFAULT_CA_DAYS,
            key_type: KeyType::default(),
        }
    }
}

/// Options of [`issue`] and [`keygen`].
#[derive(Clone, Debug)]
pub struct HostOptions {
    /// Host name: the common name, the first DNS SAN and the file name stem.
    pub name: String,
    /// Extra DNS SANs.
    pub dns: Vec<String>,
    /// IP address SANs.
    pub ips: Vec<IpAddr>,
    /// Validity in days.
    pub days: u32,
    /// Key algorithm.
    pub key_type: KeyType,
}

impl HostOptions {
    /// Options for `name` with no extra SANs and the default validity and key type.
    pub fn new(name: impl Into<String>) -> Self {
        HostOptions {
            name: name.into(),
            dns: Vec::new(),
            ips: Vec::new(),
            days: DEFAULT_HOST_DAYS,
            key_type: KeyType::default(),
        }
    }
}

/// What [`init_ca`], [`issue`] or [`keygen`] wrote.
#[derive(Clone, Debug)]
pub struct Written {
    /// The certificate (PEM).
    pub cert_path: PathBuf,
    /// The private key (PKCS#8 PEM, mode 0600).
    pub key_path: PathBuf,
    /// The certificate in DER.
    pub cert_der: Vec<u8>,
    /// `sha256/<base64>` of the SubjectPublicKeyInfo.
    pub pin: String,
    /// Serial number, colon-separated hex.
    pub serial: String,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

/// What to revoke.
#[derive(Clone, Debug)]
pub enum RevokeTarget {
    /// The first certificate of this PEM file; it must be issued by the CA.
    Cert(PathBuf),
    /// A serial number, big-endian bytes.
    Serial(Vec<u8>),
}

/// What [`revoke`] did.
#[derive(Clone, Debug)]
pub struct Revoked {
    /// The CRL file.
    pub crl_path: PathBuf,
    /// The serial concerned, colon-separated hex.
    pub serial: String,
    /// False when the serial was already listed (the CRL is left untouched).
    pub newly_revoked: bool,
    /// How many serials the CRL lists.
    pub total: usize,
}

/// One revoked serial of a CRL.
#[derive(Clone, Debug)]
pub struct CrlEntry {
    /// Serial number, colon-separated hex.
    pub serial: String,
    /// When it was revoked.
    pub revoked_at: OffsetDateTime,
    /// Reason code name, if any.
    pub reason: Option<String>,
}

/// Facts about one CRL, as `certs show` prints them.
#[derive(Clone, Debug)]
pub struct CrlInfo {
    /// Issuer distinguished name.
    pub issuer: String,
    /// When it was signed.
    pub this_update: OffsetDateTime,
    /// When the next one is due, if stated.
    pub next_update: Option<OffsetDateTime>,
    /// Revoked serials.
    pub revoked: Vec<CrlEntry>,
}

/// One item of a PEM file that `certs show` understands.
#[derive(Clone, Debug)]
pub enum Shown {
    /// A certificate.
    Certificate(CertInfo),
    /// A certificate revocation list.
    Crl(CrlInfo),
}

/// Creates a CA in `dir` (mode 0700 if it has to be created): `ca.pem` and
/// `ca.key` (0600). Fails, writing nothing, if either file exists.
pub fn init_ca(dir: &Path, opts: &CaOptions) -> Result<Written, CertsError> {
    check_days(opts.days)?;
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    refuse_existing(&[&cert_path, &key_path])?;

    let key = generate_key(opts.key_type)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(&opts.name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial()?);
    set_validity(&mut params, opts.days);
    let cert = params.self_signed(&key).map_err(CertsError::Sign)?;

    create_dir(dir, true)?;
    write_pair(&cert_path, &key_path, &cert.pem(), &key.serialize_pem())?;
    written(cert_path, key_path, cert.der())
}

/// Issues a host certificate (serverAuth + clientAuth) signed by the CA in
/// `ca_dir`, writing `out_dir/<name>.pem` and `out_dir/<name>.key` (0600).
pub fn issue(ca_dir: &Path, out_dir: &Path, opts: &HostOptions) -> Result<Written, CertsError> {
    check_days(opts.days)?;
    let ca = Ca::load(ca_dir)?;
    let (cert_path, key_path) = host_paths(out_dir, &opts.name);
    let mut params = host_params(opts)?;
    refuse_existing(&[&cert_path, &key_path])?;
    params.use_authority_key_identifier_extension = true;

    let key = generate_key(opts.key_type)?;
    let cert = params
        .signed_by(&key, &ca.issuer)
        .map_err(CertsError::Sign)?;
    create_dir(out_dir, false)?;
    write_pair(&cert_path, &key_path, &cert.pem(), &key.serialize_pem())?;
    written(cert_path, key_path, cert.der())
}

/// Creates a self-signed certificate (serverAuth + clientAuth, not a CA) for
/// pinning, writing `out_dir/<name>.pem` and `out_dir/<name>.key` (0600).
pub fn keygen(out_dir: &Path, opts: &HostOptions) -> Result<Written, CertsError> {
    check_days(opts.days)?;
    let (cert_path, key_path) = host_paths(out_dir, &opts.name);
    let params = host_params(opts)?;
    refuse_existing(&[&cert_path, &key_path])?;

    let key = generate_key(opts.key_type)?;
    let cert = params.self_signed(&key).map_err(CertsError::Sign)?;
    create_dir(out_dir, false)?;
    write_pair(&cert_path, &key_path, &cert.pem(), &key.serialize_pem())?;
    written(cert_path, key_path, cert.der())
}

/// Adds a serial to `ca_dir/ca.crl` (created if missing) and re-signs it with
/// the CA key. A serial already listed leaves the file untouched.
pub fn revoke(
    ca_dir: &Path,
    target: &RevokeTarget,
    reason: Option<Reason>,
) -> Result<Revoked, CertsError> {
    let ca = Ca::load(ca_dir)?;
    let serial = match target {
        RevokeTarget::Serial(bytes) => strip_zeros(bytes).to_vec(),
        RevokeTarget::Cert(path) => {
            let der = first_cert(path)?;
            let (_, cert) = X509Certificate::from_der(&der).map_err(|e| CertsError::Parse {
                path: path.clone(),
                index: 1,
                what: "certificate",
                source: e.into(),
            })?;
            let aki = authority_key_id(&cert);
            let same_key = match (aki, &ca.ski) {
                (Some(aki), Some(ski)) => aki == ski.as_slice(),
                _ => true,
            };
            if cert.issuer().as_raw() != ca.subject_raw.as_slice() || !same_key {
                return Err(CertsError::NotIssuedByCa {
                    cert: path.clone(),
                    ca_dir: ca_dir.to_path_buf(),
                    issuer: cert.issuer().to_string(),
                });
            }
            strip_zeros(cert.raw_serial()).to_vec()
        }
    };
    if serial.is_empty() {
        return Err(CertsError::InvalidSerial(String::from("0")));
    }

    let crl_path = absolute(ca_dir).join(CA_CRL_FILE);
    let (mut entries, crl_number) = read_crl_state(&crl_path, &ca)?;
    let serial_text = hex_serial(&serial);
    if entries
        .iter()
        .any(|e| strip_zeros(e.serial_number.as_ref()) == serial.as_slice())
    {
        return Ok(Revoked {
            crl_path,
            serial: serial_text,
            newly_revoked: false,
            total: entries.len(),
        });
    }

    let now = OffsetDateTime::now_utc();
    entries.push(RevokedCertParams {
        serial_number: SerialNumber::from_slice(&serial),
        revocation_time: now,
        reason_code: reason.map(RevocationReason::from),
        invalidity_date: None,
    });
    // Nobody re-publishes this CRL on a schedule, so it stays current for as
    // long as the CA does; a verifier that enforces nextUpdate must not start
    // rejecting every peer a week after the last revocation.
    let next_update = ca.not_after.max(now + Duration::days(1));
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update,
        crl_number: SerialNumber::from_slice(&crl_number),
        issuing_distribution_point: None,
        revoked_certs: entries,
        key_identifier_method: match &ca.ski {
            Some(ski) => KeyIdMethod::PreSpecified(ski.clone()),
            None => KeyIdMethod::Sha256,
        },
    };
    let crl = params.signed_by(&ca.issuer).map_err(CertsError::Sign)?;
    let pem = crl.pem().map_err(CertsError::Sign)?;
    replace_file(&crl_path, pem.as_bytes())?;
    Ok(Revoked {
        crl_path,
        serial: serial_text,
        newly_revoked: true,
        total: params.revoked_certs.len(),
    })
}

/// Parses every certificate and CRL of a PEM file (blocks of other kinds,
/// such as private keys, are skipped). Fails if none is found.
pub fn show(path: &Path) -> Result<Vec<Shown>, CertsError> {
    let mut out = Vec::new();
    for (index, pem) in read_pem(path)?.into_iter().enumerate() {
        let index = index + 1;
        match pem.label.as_str() {
            "CERTIFICATE" | "TRUSTED CERTIFICATE" => {
                let info = cert_info(&pem.contents).map_err(|e| match e {
                    CertsError::InvalidDer(source) => CertsError::Parse {
                        path: path.to_path_buf(),
                        index,
                        what: "certificate",
                        source,
                    },
                    other => other,
                })?;
                out.push(Shown::Certificate(info));
            }
            "X509 CRL" => {
                let (_, crl) = CertificateRevocationList::from_der(&pem.contents).map_err(|e| {
                    CertsError::Parse {
                        path: path.to_path_buf(),
                        index,
                        what: "CRL",
                        source: e.into(),
                    }
                })?;
                out.push(Shown::Crl(crl_info(&crl)));
            }
            _ => {}
        }
    }
    if out.is_empty() {
        return Err(CertsError::NoCertificate(path.to_path_buf()));
    }
    Ok(out)
}

/// The pin of a certificate; see [`x509::spki_pin`].
pub fn spki_pin(cert_der: &[u8]) -> Result<String, CertsError> {
    x509::spki_pin(cert_der).map_err(CertsError::InvalidDer)
}

/// Reads what `certs show` prints from a DER certificate.
pub fn cert_info(cert_der: &[u8]) -> Result<CertInfo, CertsError> {
    CertInfo::parse(cert_der).map_err(CertsError::InvalidDer)
}

/// The loaded CA: what signing and revoking need.
pub(super) struct Ca {
    pub(super) issuer: Issuer<'static, KeyPair>,
    subject_raw: Vec<u8>,
    ski: Option<Vec<u8>>,
    not_after: OffsetDateTime,
}

impl Ca {
    pub(super) fn load(dir: &Path) -> Result<Ca, CertsError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let der = first_cert(&cert_path)?;
        let (_, cert) = X509Certificate::from_der(&der).map_err(|e| CertsError::Parse {
            path: cert_path.clone(),
            index: 1,
            what: "certificate",
            source: e.into(),
        })?;
        if !cert.is_ca() {
            return Err(CertsError::NotCa(cert_path));
        }
        let key_pem = fs::read_to_string(&key_path).map_err(|source| CertsError::Read {
            path: key_path.clone(),
            source,
        })?;
        let key = KeyPair::from_pem(&key_pem).map_err(|source| CertsError::Key {
            path: key_path.clone(),
            source,
        })?;
        if key.subject_public_key_info() != cert.public_key().raw {
            return Err(CertsError::KeyMismatch {
                key: key_path,
                cert: cert_path,
            });
        }
        let ski = cert
            .iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            });
        let subject_raw = cert.subject().as_raw().to_vec();
        let not_after = cert.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(der.as_slice()), key).map_err(
            |source| CertsError::Parse {
                path: cert_path.clone(),
                index: 1,
                what: "CA certificate",
                source: rcgen_parse_error(source),
            },
        )?;
        Ok(Ca {
            issuer,
            subject_raw,
            ski,
            not_after,
        })
    }
}

/// rcgen reports CA parsing failures with its own error type; they only occur
/// for certificates x509-parser already accepted, so report them as invalid.
fn rcgen_parse_error(_: rcgen::Error) -> x509_parser::error::X509Error {
    x509_parser::error::X509Error::InvalidCertificate
}

pub(super) fn read_ca_not_after(dir: &Path) -> Result<OffsetDateTime, CertsError> {
    let der = first_cert(&dir.join(CA_CERT_FILE))?;
    Ok(cert_info(&der)?.not_after)
}

/// Entries and next CRL number of the existing CRL, or an empty state.
fn read_crl_state(path: &Path, ca: &Ca) -> Result<(Vec<RevokedCertParams>, Vec<u8>), CertsError> {
    if !path.exists() {
        return Ok((Vec::new(), vec![1]));
    }
    let pems = read_pem(path)?;
    let Some(pem) = pems.iter().find(|p| p.label == "X509 CRL") else {
        return Err(CertsError::NoCertificate(path.to_path_buf()));
    };
    let (_, crl) =
        CertificateRevocationList::from_der(&pem.contents).map_err(|e| CertsError::Parse {
            path: path.to_path_buf(),
            index: 1,
            what: "CRL",
            source: e.into(),
        })?;
    if crl.issuer().as_raw() != ca.subject_raw.as_slice() {
        return Err(CertsError::ForeignCrl {
            path: path.to_path_buf(),
            issuer: crl.issuer().to_string(),
        });
    }
    let entries = crl
        .iter_revoked_certificates()
        .map(|r| RevokedCertParams {
            serial_number: SerialNumber::from_slice(strip_zeros(r.raw_serial())),
            revocation_time: r.revocation_date.to_datetime(),
            reason_code: r
                .reason_code()
                .and_then(|(_, code)| reason_from_code(code.0)),
            invalidity_date: r.invalidity_date().map(|(_, d)| d.to_datetime()),
        })
        .collect();
    let next = crl
        .crl_number()
        .map(|n| (n + 1u32).to_bytes_be())
        .unwrap_or_else(|| vec![1]);
    Ok((entries, next))
}

/// The serials (without leading zeros) in the CA's CRL `ca_dir/ca.crl`;
/// none when it has no CRL yet.
pub(super) fn revoked_serials(ca_dir: &Path, ca: &Ca) -> Result<Vec<Vec<u8>>, CertsError> {
    let (entries, _) = read_crl_state(&ca_dir.join(CA_CRL_FILE), ca)?;
    Ok(entries
        .iter()
        .map(|e| strip_zeros(e.serial_number.as_ref()).to_vec())
        .collect())
}

fn reason_from_code(code: u8) -> Option<RevocationReason> {
    Some(match code {
        1 => RevocationReason::KeyCompromise,
        2 => RevocationReason::CaCompromise,
        3 => RevocationReason::AffiliationChanged,
        4 => RevocationReason::Superseded,
        5 => RevocationReason::CessationOfOperation,
        6 => RevocationReason::CertificateHold,
        8 => RevocationReason::RemoveFromCrl,
        9 => RevocationReason::PrivilegeWithdrawn,
        10 => RevocationReason::AaCompromise,
        _ => return None,
    })
}

fn crl_info(crl: &CertificateRevocationList<'_>) -> CrlInfo {
    CrlInfo {
        issuer: crl.issuer().to_string(),
        this_update: crl.last_update().to_datetime(),
        next_update: crl.next_update().map(|t| t.to_datetime()),
        revoked: crl
            .iter_revoked_certificates()
            .map(|r| CrlEntry {
                serial: hex_serial(r.raw_serial()),
                revoked_at: r.revocation_date.to_datetime(),
                reason: r.reason_code().map(|(_, code)| code.to_string()),
            })
            .collect(),
    }
}

fn authority_key_id<'a>(cert: &'a X509Certificate<'_>) -> Option<&'a [u8]> {
    cert.iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| k.0)
            }
            _ => None,
        })
}

pub(super) fn host_params(opts: &HostOptions) -> Result<CertificateParams, CertsError> {
    let name = opts.name.trim_end_matches('.');
    check_dns_name(name, false)?;
    let mut sans = vec![dns_san(name)?];
    for dns in &opts.dns {
        check_dns_name(dns, true)?;
        let san = dns_san(dns)?;
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    for ip in &opts.ips {
        let san = SanType::IpAddress(*ip);
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(name);
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.serial_number = Some(random_serial()?);
    set_validity(&mut params, opts.days);
    Ok(params)
}

pub(super) fn dns_san(name: &str) -> Result<SanType, CertsError> {
    let ia5 = name
        .try_into()
        .map_err(|_| CertsError::InvalidName(name.to_owned()))?;
    Ok(SanType::DnsName(ia5))
}

/// Host names become file names and SANs: only letters, digits, `-`, `_` and
/// dots, as a verifier would accept them. `*.` is allowed for extra SANs.
pub(super) fn check_dns_name(name: &str, allow_wildcard: bool) -> Result<(), CertsError> {
    let bare = match name.strip_prefix("*.") {
        Some(rest) if allow_wildcard => rest,
        _ => name,
    };
    rustls::pki_types::DnsName::try_from(bare)
        .map(|_| ())
        .map_err(|_| CertsError::InvalidName(name.to_owned()))
}

pub(super) fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

pub(super) fn set_validity(params: &mut CertificateParams, days: u32) {
    set_lifetime(params, Duration::days(i64::from(days)));
}

/// Valid from a little before now (see [`BACKDATE`]) to `lifetime` from now.
pub(super) fn set_lifetime(params: &mut CertificateParams, lifetime: Duration) {
    let now = OffsetDateTime::now_utc();
    // Whole seconds: certificates carry no fractions, and this keeps
    // `days_left` exact right after issuing.
    let now = now.replace_nanosecond(0).unwrap_or(now);
    params.not_before = now - BACKDATE;
    params.not_after = now + lifetime;
}

pub(super) fn check_days(days: u32) -> Result<(), CertsError> {
    if days == 0 || days > MAX_DAYS {
        return Err(CertsError::Days(days));
    }
    Ok(())
}

pub(super) fn generate_key(key_type: KeyType) -> Result<KeyPair, CertsError> {
    let alg = match key_type {
        KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyType::Ed25519 => &rcgen::PKCS_ED25519,
    };
    KeyPair::generate_for(alg).map_err(CertsError::Sign)
}

/// 16 random bytes, first bit clear (positive) and second bit set (so the
/// DER INTEGER is exactly 16 bytes long): 126 random bits.
pub(super) fn random_serial() -> Result<SerialNumber, CertsError> {
    let mut bytes = [0u8; 16];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| CertsError::Random)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

pub(super) fn host_paths(out_dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let stem = name.trim_end_matches('.');
    (
        out_dir.join(format!("{stem}.pem")),
        out_dir.join(format!("{stem}.key")),
    )
}

fn written(cert_path: PathBuf, key_path: PathBuf, der: &[u8]) -> Result<Written, CertsError> {
    let info = cert_info(der)?;
    Ok(Written {
        cert_path: absolute(&cert_path),
        key_path: absolute(&key_path),
        cert_der: der.to_vec(),
        pin: info.pin,
        serial: info.serial,
        not_after: info.not_after,
    })
}

pub(super) fn refuse_existing(paths: &[&Path]) -> Result<(), CertsError> {
    for p in paths {
        // symlink_metadata: a dangling symlink is also "something there".
        if fs::symlink_metadata(p).is_ok() {
            return Err(CertsError::Exists(p.to_path_buf()));
        }
    }
    Ok(())
}

pub(super) fn create_dir(dir: &Path, private: bool) -> Result<(), CertsError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    if private {
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| CertsError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })
}

/// Writes the key (0600) then the certificate, both with `create_new`; if the
/// certificate cannot be written the key just created is removed again.
pub(super) fn write_pair(
    cert_path: &Path,
    key_path: &Path,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(), CertsError> {
    write_new(key_path, key_pem.as_bytes(), 0o600)?;
    if let Err(e) = write_new(cert_path, cert_pem.as_bytes(), 0o644) {
        let _ = fs::remove_file(key_path);
        return Err(e);
    }
    Ok(())
}

/// Creates `path` with `mode` (the mode applies from creation, before any byte
/// is written; the umask can only remove bits), failing if it exists.
pub(super) fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertsError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| {
            if source.kind() == io::ErrorKind::AlreadyExists {
                CertsError::Exists(path.to_path_buf())
            } else {
                CertsError::Write {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
    let result = file.write_all(contents).and_then(|()| file.sync_all());
    if let Err(source) = result {
        drop(file);
        let _ = fs::remove_file(path);
        return Err(CertsError::Write {
            path: path.to_path_buf(),
            source,
        });
    }
    Ok(())
}

/// Replaces `path` atomically: a reader sees the old file or the new one.
fn replace_file(path: &Path, contents: &[u8]) -> Result<(), CertsError> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    write_new(&tmp, contents, 0o644)?;
    fs::rename(&tmp, path).map_err(|source| {
        let _ = fs::remove_file(&tmp);
        CertsError::Write {
            path: path.to_path_buf(),
            source,
        }
    })
}

pub(super) fn read_pem(path: &Path) -> Result<Vec<Pem>, CertsError> {
    let bytes = fs::read(path).map_err(|source| CertsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Pem::iter_from_buffer(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| CertsError::Pem {
            path: path.to_path_buf(),
            source,
        })
}

pub(super) fn first_cert(path: &Path) -> Result<Vec<u8>, CertsError> {
    read_pem(path)?
        .into_iter()
        .find(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .ok_or_else(|| CertsError::NoCertificate(path.to_path_buf()))
}

/// Parses hex with optional colons (and an optional `0x`) into bytes.
pub fn parse_serial(text: &str) -> Result<Vec<u8>, CertsError> {
    let bad = || CertsError::InvalidSerial(text.to_owned());
    let t = text.trim();
    let t = t.strip_prefix("0x").unwrap_or(t);
    let digits: Vec<u8> = t
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_digit(16).map(|d| d as u8))
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    if digits.is_empty() {
        return Err(bad());
    }
    // An odd number of digits means a leading zero nibble.
    let mut padded = Vec::with_capacity(digits.len() + 1);
    if digits.len() % 2 == 1 {
        padded.push(0);
    }
    padded.extend(digits);
    Ok(padded.chunks(2).map(|p| (p[0] << 4) | p[1]).collect())
}

pub(super) fn absolute(path: &Path) -> PathBuf {
    fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_round_trips_through_text() {
        let bytes = vec![0x4a, 0x00, 0xff, 0x01];
        let text = hex_serial(&bytes);
        assert_eq!(text, "4a:00:ff:01");
        assert_eq!(parse_serial(&text).unwrap(), bytes);
        assert_eq!(parse_serial("0x4a00ff01").unwrap(), bytes);
        assert_eq!(parse_serial("abc").unwrap(), vec![0x0a, 0xbc]);
        assert!(parse_serial("xyz").is_err());
        assert!(parse_serial("").is_err());
    }

    #[test]
    fn host_names_are_checked() {
        assert!(check_dns_name("off1.openfoodfacts.org", false).is_ok());
        assert!(check_dns_name("localhost", false).is_ok());
        assert!(check_dns_name("../etc/passwd", false).is_err());
        assert!(check_dns_name("*.example.org", false).is_err());
        assert!(check_dns_name("*.example.org", true).is_ok());
        assert!(check_dns_name("bad name", true).is_err());
    }

    #[test]
    fn random_serials_are_positive_16_bytes_and_differ() {
        let a = random_serial().unwrap().to_bytes();
        let b = random_serial().unwrap().to_bytes();
        assert_eq!(a.len(), 16);
        assert!(a[0] & 0x80 == 0 && a[0] & 0x40 != 0);
        assert_ne!(a, b);
    }
}
