//! `dctunnel certs enrol`: a new host's first certificate from the online CA
//! service, with a one-time token (`dctunnel certs token`). The key is made
//! here and never leaves; the token's secret goes only to the CA service,
//! which this host recognises by the CA key the token pins.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rcgen::PublicKeyData;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore};

use super::ca::{absolute, create_dir, refuse_existing, write_new, write_pair};
use super::csr::{make_request, RequestOptions};
use super::token::Token;
use super::{CertsError, CA_CERT_FILE};
use crate::ca_client::{self, CaError, Post};
use crate::config::{Host, Target};
use crate::x509::{self, CertInfo};

/// What `enrol` needs.
pub struct EnrolOptions {
    pub token: Token,
    /// The CA service, `HOST:PORT`.
    pub ca_service: String,
    /// The name its certificate must prove (default: the host of `ca_service`).
    pub server_name: Option<String>,
    /// The names asked for (they must be among those the token grants).
    pub request: RequestOptions,
    /// Where `<name>.key`, `<name>.pem` and `ca.pem` are written.
    pub out: PathBuf,
}

/// What `enrol` wrote.
#[derive(Debug)]
pub struct Enrolled {
    pub key_path: PathBuf,
    pub cert_path: PathBuf,
    pub ca_path: PathBuf,
    /// `false` when `ca.pem` was already there with this very certificate.
    pub ca_written: bool,
    pub info: CertInfo,
    /// The CA key pin, as the token holds it (`sha256/…`).
    pub ca_pin: String,
}

/// Why enrolment failed (nothing was written).
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    #[error("--token: {0}")]
    Token(super::token::BadToken),
    #[error("--ca-service: {0}")]
    Address(String),
    #[error("--server-name: {0:?} is not a valid DNS name or IP address")]
    ServerName(String),
    #[error("enrolment with the CA service {ca_service} failed: {error}")]
    Ca { ca_service: String, error: CaError },
    #[error("the CA service's answer does not hold the CA certificate the token pins ({0})")]
    NoPinnedCa(String),
    #[error("cannot start: {0}")]
    Runtime(std::io::Error),
}

impl From<super::token::BadToken> for EnrolError {
    fn from(e: super::token::BadToken) -> Self {
        EnrolError::Token(e)
    }
}

/// Enrols: checks that no file would be overwritten, makes the key and
/// the request, sends them with the token to the CA service (which must
/// prove the CA key the token pins), then writes the key (0600), the
/// certificate and the CA certificate.
pub fn enrol(opts: &EnrolOptions) -> Result<Enrolled, CertsError> {
    let ca_service = Target::parse(&opts.ca_service).map_err(EnrolError::Address)?;
    let server_name = match (&opts.server_name, &ca_service.host) {
        (Some(n), _) => n.clone(),
        (None, Host::Ip(ip)) => ip.to_string(),
        (None, Host::Name(n)) => n.clone(),
    };
    let server_name = ServerName::try_from(server_name.clone())
        .map_err(|_| EnrolError::ServerName(server_name))?;
    let stem = opts.request.name.trim_end_matches('.');
    let key_path = opts.out.join(format!("{stem}.key"));
    let cert_path = opts.out.join(format!("{stem}.pem"));
    let ca_path = opts.out.join(CA_CERT_FILE);
    // Before the token is spent: nothing is overwritten.
    refuse_existing(&[&key_path, &cert_path])?;
    let existing_ca = std::fs::read(&ca_path).ok();
    if existing_ca.is_none() {
        refuse_existing(&[&ca_path])?;
    }

    let (key, csr_pem, names) = make_request(&opts.request)?;
    let ca_pin = opts.token.ca_pin_text();
    let tls = pinned_client(opts.token.ca_pin());
    let post = Post {
        ca_service: &ca_service,
        server_name: &server_name,
        tls,
        path: "/v1/enrol",
        bearer: Some(opts.token.to_string()),
        csr_pem,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(EnrolError::Runtime)?;
    let issued = runtime
        .block_on(ca_client::request(
            post,
            &key.subject_public_key_info(),
            &names,
        ))
        .map_err(|error| EnrolError::Ca {
            ca_service: ca_service.to_string(),
            error,
        })?;
    let ca = issued
        .chain
        .iter()
        .find(|c| x509::spki_pin(c).ok().as_deref() == Some(ca_pin.as_str()))
        .ok_or_else(|| EnrolError::NoPinnedCa(ca_pin.clone()))?;
    let ca_pem = pem_of(ca);

    create_dir(&opts.out, false)?;
    let ca_written = match existing_ca {
        Some(bytes) if same_certificate(&bytes, ca) => false,
        Some(_) => return Err(CertsError::Exists(ca_path)),
        None => {
            write_new(&ca_path, ca_pem.as_bytes(), 0o644)?;
            true
        }
    };
    if let Err(e) = write_pair(
        &cert_path,
        &key_path,
        &issued.cert_pem,
        &key.serialize_pem(),
    ) {
        if ca_written {
            let _ = std::fs::remove_file(&ca_path);
        }
        return Err(e);
    }
    Ok(Enrolled {
        key_path: absolute(&key_path),
        cert_path: absolute(&cert_path),
        ca_path: absolute(&ca_path),
        ca_written,
        info: issued.info,
        ca_pin,
    })
}

/// Whether the PEM `bytes` hold exactly the certificate `der`.
fn same_certificate(bytes: &[u8], der: &CertificateDer<'_>) -> bool {
    match crate::files::pem_blocks(bytes) {
        Ok(blocks) => {
            blocks.len() == 1
                && blocks[0].label == crate::files::Label::Certificate
                && blocks[0].der == der.as_ref()
        }
        Err(_) => false,
    }
}

fn pem_of(der: &CertificateDer<'_>) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// TLS 1.3 client settings that accept the CA service only if it proves
/// the pinned CA key (see [`PinnedCa`]); no client certificate.
pub fn pinned_client(pin: [u8; 32]) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = PinnedCa {
        pin: x509::pin_text(&pin),
        provider: provider.clone(),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        // TLS 1.3 is in every provider: the list cannot be refused.
        .expect("TLS 1.3 is supported")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Arc::new(config)
}

/// The CA service's certificate is accepted if the chain it presents holds
/// a certificate whose key is the one the token pins, and its own
/// certificate verifies against that one (webpki: signature, dates, usage,
/// and the server name). The pin replaces a CA file the new host does not
/// have yet.
struct PinnedCa {
    /// `sha256/…` of the CA certificate's SubjectPublicKeyInfo.
    pin: String,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for PinnedCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedCa").field("pin", &self.pin).finish()
    }
}

/// The chain the CA service presented holds no certificate with the
/// pinned key: it is not the CA the token was made for.
#[derive(thiserror::Error)]
#[error("the CA service did not present the CA the token pins ({pin})")]
pub struct NotPinned {
    pub pin: String,
}

/// As Display: rustls shows the error inside its own with Debug.
impl fmt::Debug for NotPinned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned = intermediates
            .iter()
            .position(|c| x509::spki_pin(c).ok().as_deref() == Some(self.pin.as_str()));
        let Some(i) = pinned else {
            let e = NotPinned {
                pin: self.pin.clone(),
            };
            return Err(CertificateError::Other(rustls::OtherError(Arc::new(e))).into());
        };
        let mut roots = RootCertStore::empty();
        roots
            .add(intermediates[i].clone().into_owned())
            .map_err(|_| CertificateError::BadEncoding)?;
        let others: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, c)| c.clone())
            .collect();
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?
            .verify_server_cert(end_entity, &others, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    use sha2::{Digest, Sha256};

    fn ca(name: &str) -> (Issuer<'static, KeyPair>, CertificateDer<'static>, [u8; 32]) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let pin: [u8; 32] = Sha256::digest(key.subject_public_key_info()).into();
        (Issuer::new(params, key), cert.der().clone(), pin)
    }

    fn leaf(issuer: &Issuer<'static, KeyPair>, name: &str) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.signed_by(&key, issuer).unwrap().der().clone()
    }

    fn verify(
        pin: [u8; 32],
        leaf: &CertificateDer<'_>,
        chain: &[CertificateDer<'_>],
        name: &str,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let v = PinnedCa {
            pin: x509::pin_text(&pin),
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        };
        let name = ServerName::try_from(name.to_owned()).unwrap();
        v.verify_server_cert(leaf, chain, &name, &[], UnixTime::now())
    }

    /// The token's pin must be in the chain AND the server's certificate
    /// must verify against it for the name: a pinned CA certificate sent
    /// beside a certificate from another CA is refused, and so is a
    /// certificate of the right CA for another name.
    #[test]
    fn the_ca_service_must_prove_the_pinned_ca() {
        let (ca_a, ca_a_der, pin_a) = ca("A");
        let (ca_b, ca_b_der, pin_b) = ca("B");
        let served = leaf(&ca_a, "ca.test");
        assert!(verify(pin_a, &served, std::slice::from_ref(&ca_a_der), "ca.test").is_ok());

        let e = verify(pin_b, &served, std::slice::from_ref(&ca_a_der), "ca.test").unwrap_err();
        assert!(
            e.to_string()
                .contains("did not present the CA the token pins"),
            "{e}"
        );
        // The pinned CA shown, and a certificate it did not sign.
        let impostor = leaf(&ca_b, "ca.test");
        assert!(verify(pin_a, &impostor, std::slice::from_ref(&ca_a_der), "ca.test").is_err());
        assert!(verify(pin_b, &impostor, std::slice::from_ref(&ca_b_der), "ca.test").is_ok());
        // The right CA, the wrong name.
        assert!(verify(
            pin_a,
            &served,
            std::slice::from_ref(&ca_a_der),
            "other.test"
        )
        .is_err());
        // No chain at all.
        assert!(verify(pin_a, &served, &[], "ca.test").is_err());
    }
}
