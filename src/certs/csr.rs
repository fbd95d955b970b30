//! Certificate signing requests, for keys that never leave their host: the
//! host makes a key and a request (`request`, or `renew` for an existing
//! certificate); the admin machine checks and signs the request (`sign`).

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, CertificateSigningRequestParams, KeyPair, PublicKeyData, SanType};
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use super::ca::{
    absolute, cert_info, check_days, check_dns_name, create_dir, first_cert, generate_key,
    host_params, host_paths, read_pem, refuse_existing, set_lifetime, write_new, write_pair, Ca,
    HostOptions, KeyType,
};
use super::{CertsError, RequestProblem, DEFAULT_HOST_DAYS};
use crate::x509::{self, CertInfo};

/// Options of [`request`]: the names a host asks for, and its key type.
#[derive(Clone, Debug)]
pub struct RequestOptions {
    /// Host name: the common name, the first DNS SAN and the file name stem.
    pub name: String,
    /// Extra DNS SANs (no wildcards: `sign` refuses them).
    pub dns: Vec<String>,
    /// IP address SANs.
    pub ips: Vec<IpAddr>,
    /// Key algorithm.
    pub key_type: KeyType,
}

/// What [`request`] or [`renew`] wrote.
#[derive(Clone, Debug)]
pub struct Requested {
    /// The certificate signing request (PEM, mode 0644).
    pub csr_path: PathBuf,
    /// The new private key (mode 0600), or `None` when an existing key signed
    /// the request (`renew --keep-key`).
    pub key_path: Option<PathBuf>,
    /// The names asked for, as `certs show` prints them (`DNS:…`, `IP:…`).
    pub names: Vec<String>,
    /// Pin of the requested key: `sign` prints the same one for the same key.
    pub pin: String,
}

/// What [`sign`] wrote.
#[derive(Clone, Debug)]
pub struct Signed {
    /// The certificate (PEM, mode 0644).
    pub cert_path: PathBuf,
    /// The facts of the certificate just signed.
    pub info: CertInfo,
}

/// Makes a key and a certificate signing request for a host, on the host:
/// `out_dir/<name>.key` (0600) and `out_dir/<name>.csr` (0644). Only the
/// request is meant to travel to the CA ([`sign`]); the key stays here.
pub fn request(out_dir: &Path, opts: &RequestOptions) -> Result<Requested, CertsError> {
    let stem = opts.name.trim_end_matches('.');
    let csr_path = out_dir.join(format!("{stem}.csr"));
    let key_path = out_dir.join(format!("{stem}.key"));
    let params = request_params(opts)?;
    refuse_existing(&[&csr_path, &key_path])?;

    let key = generate_key(opts.key_type)?;
    let csr = params.serialize_request(&key).map_err(CertsError::Sign)?;
    let csr_pem = csr.pem().map_err(CertsError::Sign)?;
    create_dir(out_dir, false)?;
    write_pair(&csr_path, &key_path, &csr_pem, &key.serialize_pem())?;
    Ok(Requested {
        csr_path: absolute(&csr_path),
        key_path: Some(absolute(&key_path)),
        names: san_texts(&params.subject_alt_names),
        pin: x509::spki_pin_of_spki(&key.subject_public_key_info()),
    })
}

/// Makes a certificate signing request with the same names as the host
/// certificate `cert`, on the host, for [`sign`] on the admin machine:
/// `out_dir/<name>.csr`, with a new key `out_dir/<name>.key` (0600) of the
/// same type, or signed by the existing key `keep_key` (which must match
/// `cert`) and then no key is written.
pub fn renew(
    cert: &Path,
    out_dir: &Path,
    keep_key: Option<&Path>,
    key_type: Option<KeyType>,
) -> Result<Requested, CertsError> {
    let der = first_cert(cert)?;
    let mut opts = same_names(&der, cert)?;
    if let Some(t) = key_type {
        opts.key_type = t;
    }
    let Some(key_file) = keep_key else {
        return request(out_dir, &opts);
    };

    let stem = opts.name.trim_end_matches('.');
    let csr_path = out_dir.join(format!("{stem}.csr"));
    let params = request_params(&opts)?;
    refuse_existing(&[&csr_path])?;
    let key_pem = fs::read_to_string(key_file).map_err(|source| CertsError::Read {
        path: key_file.to_path_buf(),
        source,
    })?;
    let key = KeyPair::from_pem(&key_pem).map_err(|source| CertsError::Key {
        path: key_file.to_path_buf(),
        source,
    })?;
    let (_, parsed) = X509Certificate::from_der(&der).map_err(|e| CertsError::Parse {
        path: cert.to_path_buf(),
        index: 1,
        what: "certificate",
        source: e.into(),
    })?;
    if key.subject_public_key_info() != parsed.public_key().raw {
        return Err(CertsError::KeyMismatch {
            key: key_file.to_path_buf(),
            cert: cert.to_path_buf(),
        });
    }
    let csr = params.serialize_request(&key).map_err(CertsError::Sign)?;
    let csr_pem = csr.pem().map_err(CertsError::Sign)?;
    create_dir(out_dir, false)?;
    write_new(&csr_path, csr_pem.as_bytes(), 0o644)?;
    Ok(Requested {
        csr_path: absolute(&csr_path),
        key_path: None,
        names: san_texts(&params.subject_alt_names),
        pin: x509::spki_pin_of_spki(&key.subject_public_key_info()),
    })
}

/// The request options that renew the host certificate `der` (read from
/// `path`, named in errors): its names (the common name as the host name,
/// its DNS and IP names), and a key of the same type: Ed25519 for Ed25519,
/// ECDSA P-256 for any other. Refuses a CA certificate and a certificate
/// with no name or with names of another kind, which no CA would renew.
pub fn same_names(der: &[u8], path: &Path) -> Result<RequestOptions, CertsError> {
    let (_, parsed) = X509Certificate::from_der(der).map_err(|e| CertsError::Parse {
        path: path.to_path_buf(),
        index: 1,
        what: "certificate",
        source: e.into(),
    })?;
    let not_renewable = |why| CertsError::NotRenewable {
        path: path.to_path_buf(),
        why,
    };
    if parsed.is_ca() {
        return Err(not_renewable(
            "is a CA certificate; renew makes requests for host certificates",
        ));
    }
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                GeneralName::IPAddress(bytes) => match ip_from_bytes(bytes) {
                    Some(ip) => ips.push(ip),
                    None => return Err(not_renewable("holds an IP name that is not an address")),
                },
                _ => {
                    return Err(not_renewable(
                        "holds a name that is neither a DNS name nor an IP address",
                    ))
                }
            }
        }
    }
    let cn = parsed
        .subject()
        .iter_common_name()
        .find_map(|cn| cn.as_str().ok().map(str::to_owned));
    // The host name is the common name, as `issue` and `request` write it;
    // a certificate without one is named by its first DNS name.
    let name = match cn {
        Some(cn) => cn,
        None if !dns.is_empty() => dns.remove(0),
        None => return Err(not_renewable("names no host (no common name, no DNS name)")),
    };
    let key_type = if x509::CertInfo::parse(der)
        .map(|i| i.key_type == "Ed25519")
        .unwrap_or(false)
    {
        KeyType::Ed25519
    } else {
        KeyType::EcdsaP256
    };
    Ok(RequestOptions {
        name,
        dns,
        ips,
        key_type,
    })
}

/// A new key and a request for `opts`, in memory: for the daemon's renewal
/// and `certs enrol`, which send the request to the CA service themselves.
/// Returns the key, the request (PEM) and the names asked for.
pub fn make_request(opts: &RequestOptions) -> Result<(KeyPair, String, Vec<String>), CertsError> {
    let key = new_key(opts.key_type)?;
    let (csr_pem, names) = request_for_key(opts, &key)?;
    Ok((key, csr_pem, names))
}

/// A new private key of `key_type`.
pub fn new_key(key_type: KeyType) -> Result<KeyPair, CertsError> {
    generate_key(key_type)
}

/// A request for `opts` signed by an existing `key` (its type wins over
/// `opts.key_type`): the request (PEM) and the names asked for.
pub fn request_for_key(
    opts: &RequestOptions,
    key: &KeyPair,
) -> Result<(String, Vec<String>), CertsError> {
    let params = request_params(opts)?;
    let csr = params.serialize_request(key).map_err(CertsError::Sign)?;
    let csr_pem = csr.pem().map_err(CertsError::Sign)?;
    Ok((csr_pem, san_texts(&params.subject_alt_names)))
}

/// Checks a certificate signing request and signs it with the CA in
/// `ca_dir`, writing `out_dir/<name>.pem` (0644; `out_dir` defaults to the
/// request's folder). Before signing: the request's self-signature must
/// verify, it must not ask for a CA, and every name must be an exact DNS
/// name (no wildcard) or an IP address. The certificate carries only those
/// names (the common name first), and the usages and validity the CA sets:
/// serverAuth + clientAuth, not a CA, `days` days.
pub fn sign(
    ca_dir: &Path,
    request_path: &Path,
    out_dir: Option<&Path>,
    days: u32,
) -> Result<Signed, CertsError> {
    check_days(days)?;
    let ca = Ca::load(ca_dir)?;
    let refuse = |problem| CertsError::Request {
        path: request_path.to_path_buf(),
        problem,
    };
    let pems = read_pem(request_path)?;
    if pems.iter().any(|p| p.label.contains("PRIVATE KEY")) {
        return Err(refuse(RequestProblem::HoldsPrivateKey));
    }
    let der = pems
        .into_iter()
        .find(|p| p.label == "CERTIFICATE REQUEST" || p.label == "NEW CERTIFICATE REQUEST")
        .map(|p| p.contents)
        .ok_or_else(|| refuse(RequestProblem::NotFound))?;
    let checked = CheckedRequest::from_der(&der).map_err(refuse)?;
    let out_dir = match out_dir {
        Some(d) => d.to_path_buf(),
        None => request_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
    };
    let (cert_path, _) = host_paths(&out_dir, &checked.name);
    refuse_existing(&[&cert_path])?;
    let lifetime = time::Duration::days(i64::from(days));
    let (pem, der) = checked.sign(&ca, lifetime)?;
    create_dir(&out_dir, false)?;
    write_new(&cert_path, pem.as_bytes(), 0o644)?;
    Ok(Signed {
        cert_path: absolute(&cert_path),
        info: cert_info(&der)?,
    })
}

/// A certificate signing request that passed the checks of [`sign`]: its
/// self-signature verifies, it does not ask for a CA, and each name is an
/// exact DNS name or an IP address. Shared by `sign` and the online CA.
pub struct CheckedRequest {
    /// The common name (or the first DNS name when it has none).
    pub name: String,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    /// The pin of the key the request carries.
    pin: String,
    signing: CertificateSigningRequestParams,
}

impl CheckedRequest {
    /// Checks a DER PKCS#10 request.
    pub fn from_der(der: &[u8]) -> Result<CheckedRequest, RequestProblem> {
        let (_, csr) =
            X509CertificationRequest::from_der(der).map_err(|_| RequestProblem::Invalid)?;
        csr.verify_signature()
            .map_err(|_| RequestProblem::BadSignature)?;

        let pin = x509::spki_pin_of_spki(csr.certification_request_info.subject_pki.raw);
        let mut dns = Vec::new();
        let mut ips = Vec::new();
        for ext in csr.requested_extensions().into_iter().flatten() {
            match ext {
                ParsedExtension::BasicConstraints(bc) if bc.ca => {
                    return Err(RequestProblem::AsksForCa)
                }
                ParsedExtension::SubjectAlternativeName(san) => {
                    for n in &san.general_names {
                        match n {
                            GeneralName::DNSName(d) => dns.push(exact_dns_name(d)?),
                            GeneralName::IPAddress(bytes) => {
                                ips.push(ip_from_bytes(bytes).ok_or(RequestProblem::Invalid)?)
                            }
                            other => {
                                return Err(RequestProblem::UnsupportedName(
                                    general_name_kind(other).to_owned(),
                                ))
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        let cn = csr
            .certification_request_info
            .subject
            .iter_common_name()
            .find_map(|cn| cn.as_str().ok().map(str::to_owned));
        let name = match cn {
            Some(cn) => exact_dns_name(&cn)?,
            None if !dns.is_empty() => dns.remove(0),
            None => return Err(RequestProblem::NoName),
        };
        // rcgen re-parses and re-verifies the request; it is the one that
        // knows which key algorithms it can write into a certificate.
        let signing =
            CertificateSigningRequestParams::from_der(&der.into()).map_err(|e| match e {
                rcgen::Error::InvalidCertificationRequestSignature => RequestProblem::BadSignature,
                rcgen::Error::UnsupportedExtension => RequestProblem::UnsupportedExtension,
                rcgen::Error::UnsupportedSignatureAlgorithm => RequestProblem::KeyAlgorithm,
                _ => RequestProblem::Invalid,
            })?;
        Ok(CheckedRequest {
            name,
            dns,
            ips,
            pin,
            signing,
        })
    }

    /// The pin of the request's key (`sha256/…`).
    pub fn key_pin(&self) -> &str {
        &self.pin
    }

    /// Every name asked for, as certificates' names are compared: DNS names
    /// lowercased without a final dot, IP addresses in their text form.
    pub fn names(&self) -> Vec<String> {
        names_as_compared(&self.name, &self.dns, &self.ips)
    }

    /// Signs with `ca` for `lifetime` (from now; `notBefore` is set back a
    /// little for clock skew): only the checked names, with the usages the
    /// CA decides (serverAuth + clientAuth, not a CA). Returns PEM and DER.
    pub(super) fn sign(
        self,
        ca: &Ca,
        lifetime: time::Duration,
    ) -> Result<(String, Vec<u8>), CertsError> {
        let opts = HostOptions {
            name: self.name,
            dns: self.dns,
            ips: self.ips,
            days: 1,
            key_type: KeyType::default(),
        };
        let mut params = host_params(&opts)?;
        set_lifetime(&mut params, lifetime);
        params.use_authority_key_identifier_extension = true;
        // The request's own usages, CA flag and subject attributes are
        // dropped: the CA decides them; only the names checked are kept.
        let mut signing = self.signing;
        signing.params = params;
        let cert = signing.signed_by(&ca.issuer).map_err(CertsError::Sign)?;
        Ok((cert.pem(), cert.der().to_vec()))
    }
}

/// The parameters of a request: the names of [`host_params`], no serial
/// (a CA chooses it), no wildcard (`sign` would refuse it).
fn request_params(opts: &RequestOptions) -> Result<CertificateParams, CertsError> {
    if let Some(w) = opts.dns.iter().find(|d| d.contains('*')) {
        return Err(CertsError::WildcardRequest(w.clone()));
    }
    let host = HostOptions {
        name: opts.name.clone(),
        dns: opts.dns.clone(),
        ips: opts.ips.clone(),
        days: DEFAULT_HOST_DAYS,
        key_type: opts.key_type,
    };
    let mut params = host_params(&host)?;
    params.serial_number = None;
    Ok(params)
}

/// A host's names as the online CA compares them (a request's with a
/// certificate's or a token's): DNS names lowercased without a final dot,
/// IP addresses in their text form, each once.
pub fn names_as_compared(name: &str, dns: &[String], ips: &[IpAddr]) -> Vec<String> {
    let mut v: Vec<String> = std::iter::once(name)
        .chain(dns.iter().map(String::as_str))
        .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
        .collect();
    v.extend(ips.iter().map(IpAddr::to_string));
    // The host name is usually also the first DNS name.
    let mut seen = std::collections::HashSet::new();
    v.retain(|n| seen.insert(n.clone()));
    v
}

/// A requested DNS name, checked as `sign` wants it: exact, valid.
fn exact_dns_name(name: &str) -> Result<String, RequestProblem> {
    if name.contains('*') {
        return Err(RequestProblem::Wildcard(name.to_owned()));
    }
    let bare = name.trim_end_matches('.');
    check_dns_name(bare, false).map_err(|_| RequestProblem::InvalidName(name.to_owned()))?;
    Ok(bare.to_owned())
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

fn general_name_kind(name: &GeneralName<'_>) -> &'static str {
    match name {
        GeneralName::RFC822Name(_) => "e-mail address",
        GeneralName::URI(_) => "URI",
        GeneralName::DirectoryName(_) => "directory name",
        GeneralName::RegisteredID(_) => "registered ID",
        GeneralName::OtherName(..) => "other name",
        _ => "unknown",
    }
}

/// SANs as `certs show` prints them.
fn san_texts(sans: &[SanType]) -> Vec<String> {
    sans.iter()
        .map(|s| match s {
            SanType::DnsName(d) => format!("DNS:{}", d.as_str()),
            SanType::IpAddress(ip) => format!("IP:{ip}"),
            other => format!("{other:?}"),
        })
        .collect()
}
