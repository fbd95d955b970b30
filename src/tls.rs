//! Builds the rustls configurations of a service from its files, and checks
//! who the peer is: chain to the CA (with CRLs), key pins, and the
//! service's list of allowed identities.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, CipherSuite, DigitallySignedStruct, DistinguishedName, RootCertStore,
    SupportedCipherSuite,
};

use crate::files;
use crate::x509;

/// The TLS-related settings of one service, as paths and flags.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub crl: Vec<PathBuf>,
    pub peer_pins: Vec<String>,
    pub tls12: bool,
    pub resumption: bool,
}

impl TlsFiles {
    pub fn all_paths(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = [&self.ca, &self.cert, &self.key]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        v.extend(self.crl.iter().cloned());
        v
    }
}

/// A problem with a service's TLS material; `field` is the configuration
/// key to fix.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TlsError {
    pub field: &'static str,
    pub message: String,
}

fn err(field: &'static str, message: impl Into<String>) -> TlsError {
    TlsError {
        field,
        message: message.into(),
    }
}

/// Which peer identities a server-mode service lets in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerPolicy {
    /// `allow_peers = ["*"]`: any certificate the CA signed (or any pinned key).
    Any,
    /// Names matched against the certificate's DNS SANs, or its CN when it
    /// has no SAN. `*.example.org` matches exactly one leading label.
    Names(Vec<String>),
}

impl PeerPolicy {
    pub fn parse(list: &[String]) -> Result<PeerPolicy, String> {
        if list.is_empty() {
            return Err("is empty, which would refuse every peer; list names, or [\"*\"] for any certificate the CA signed".into());
        }
        if list.iter().any(|n| n == "*") {
            if list.len() > 1 {
                return Err("\"*\" accepts every peer, so it cannot be combined with names".into());
            }
            return Ok(PeerPolicy::Any);
        }
        let mut names = Vec::new();
        for n in list {
            let bare = n.strip_prefix("*.").unwrap_or(n);
            if bare.is_empty() || bare.contains('*') || bare.contains(char::is_whitespace) {
                return Err(format!(
                    "{n:?} is not a name; write \"host.example.org\", \"*.example.org\" or \"*\""
                ));
            }
            names.push(n.to_ascii_lowercase());
        }
        Ok(PeerPolicy::Names(names))
    }

    /// Whether a peer presenting `identities` may use the service.
    pub fn allows(&self, identities: &[String]) -> bool {
        match self {
            PeerPolicy::Any => true,
            PeerPolicy::Names(patterns) => patterns.iter().any(|p| {
                identities.iter().any(|id| {
                    let id = id.to_ascii_lowercase();
                    match p.strip_prefix("*.") {
                        Some(suffix) => id
                            .split_once('.')
                            .is_some_and(|(label, rest)| rest == suffix && label != "*"),
                        None => &id == p,
                    }
                })
            }),
        }
    }
}

impl fmt::Display for PeerPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerPolicy::Any => f.write_str("any certificate the CA signed"),
            PeerPolicy::Names(n) => f.write_str(&n.join(", ")),
        }
    }
}

/// The names a certificate proves (see [`x509::identities`]).
pub fn identities(cert: &CertificateDer<'_>) -> Vec<String> {
    x509::identities(cert)
}

/// aws-lc-rs with AES-128-GCM preferred: as strong as needed here and
/// faster than AES-256-GCM, which rustls lists first. Both ends being
/// dctunnel, the client's order decides.
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.sort_by_key(|s| {
        (
            !is_aes_128_gcm(s.suite()),
            !matches!(s, SupportedCipherSuite::Tls13(_)),
        )
    });
    Arc::new(provider)
}

fn is_aes_128_gcm(suite: CipherSuite) -> bool {
    matches!(
        suite,
        CipherSuite::TLS13_AES_128_GCM_SHA256
            | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    )
}

static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

fn versions(tls12: bool) -> &'static [&'static rustls::SupportedProtocolVersion] {
    if tls12 {
        rustls::ALL_VERSIONS
    } else {
        TLS13_ONLY
    }
}

/// Builds the configuration of a server-mode service: our certificate, and
/// a client verifier that demands a certificate, checks it against the CA
/// and CRLs and/or the pins, then against `peers`.
pub fn server_config(
    files: &TlsFiles,
    peers: Arc<PeerPolicy>,
    read: &mut Contents,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let (chain, key) = own_identity(files, read)?;
    let trust = Trust::load(files, read)?;
    let webpki = match &trust.roots {
        Some(roots) => Some(
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .with_crls(trust.crls.clone())
                .build()
                .map_err(|e| err("ca", format!("cannot build a verifier: {e}")))?,
        ),
        None => None,
    };
    let verifier = ClientVerifier {
        webpki,
        pins: PinCheck {
            pins: trust.pins,
            algorithms: provider.signature_verification_algorithms,
        },
        peers,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(files.tls12))
        .map_err(|e| err("tls12", e.to_string()))?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(chain, key)
        .map_err(|_| mismatch(files))?;
    if files.resumption {
        config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
            .map_err(|e| err("cert", format!("cannot set up session tickets: {e}")))?;
    } else {
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(Arc::new(config))
}

/// Builds the configuration of the online CA (`mode = "ca"`): our
/// certificate followed by the CA certificate (a host enrolling with a
/// token has only the CA's pin, and must see the CA to check it), and a
/// client certificate that is optional (enrolment has none) but, when
/// given, must chain to the CA. Revocation and names are checked per
/// request by the CA itself, against the current CRL.
pub fn ca_service_config(
    files: &TlsFiles,
    read: &mut Contents,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let (mut chain, key) = own_identity(files, read)?;
    let Some(ca_path) = &files.ca else {
        return Err(err("ca_dir", "the CA certificate is required"));
    };
    let roots = load_roots(ca_path, read)?;
    let ca_der = load_chain(ca_path, read)?;
    for ca in ca_der {
        if !chain.contains(&ca) {
            chain.push(ca);
        }
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| err("ca_dir", format!("cannot build a verifier: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(files.tls12))
        .map_err(|e| err("tls12", e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|_| mismatch(files))?;
    // Each request is a fresh decision; no session to resume.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Builds the configuration of a client-mode service: our certificate for
/// client authentication, and a server verifier (CA and CRLs, and/or pins).
pub fn client_config(
    files: &TlsFiles,
    read: &mut Contents,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = provider();
    let (chain, key) = own_identity(files, read)?;
    let trust = Trust::load(files, read)?;
    let webpki = match &trust.roots {
        Some(roots) => Some(
            WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                .with_crls(trust.crls.clone())
                .build()
                .map_err(|e| err("ca", format!("cannot build a verifier: {e}")))?,
        ),
        None => None,
    };
    let verifier = ServerVerifier {
        webpki,
        pins: PinCheck {
            pins: trust.pins,
            algorithms: provider.signature_verification_algorithms,
        },
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(files.tls12))
        .map_err(|e| err("tls12", e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain, key)
        .map_err(|_| mismatch(files))?;
    config.resumption = if files.resumption {
        rustls::client::Resumption::store(Arc::new(TicketStore::default()))
    } else {
        rustls::client::Resumption::disabled()
    };
    Ok(Arc::new(config))
}

/// Client-side session store that keeps many TLS 1.3 tickets per server.
///
/// rustls' default store keeps 8 tickets per server name, and each ticket
/// is used once: a burst of 50 new connections (a pool filling up) empties
/// it and most handshakes go full (measured: 1,009 of 2,049 with 50 at a
/// time). A client-mode service talks to one server, so keeping a few
/// hundred tickets costs a few hundred kB at most.
#[derive(Debug)]
struct TicketStore {
    /// Key-exchange hints and TLS 1.2 sessions, as rustls keeps them.
    other: rustls::client::ClientSessionMemoryCache,
    tls13: std::sync::Mutex<
        std::collections::HashMap<
            ServerName<'static>,
            std::collections::VecDeque<rustls::client::Tls13ClientSessionValue>,
        >,
    >,
}

const TICKETS_PER_SERVER: usize = 256;

impl Default for TicketStore {
    fn default() -> Self {
        TicketStore {
            other: rustls::client::ClientSessionMemoryCache::new(64),
            tls13: Default::default(),
        }
    }
}

impl TicketStore {
    fn tickets(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::HashMap<
            ServerName<'static>,
            std::collections::VecDeque<rustls::client::Tls13ClientSessionValue>,
        >,
    > {
        // Each operation is one push or pop: a poisoned map is consistent.
        self.tls13.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl rustls::client::ClientSessionStore for TicketStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: rustls::NamedGroup) {
        self.other.set_kx_hint(server_name, group)
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.other.kx_hint(server_name)
    }

    fn set_tls12_session(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.other.set_tls12_session(server_name, value)
    }

    fn tls12_session(
        &self,
        server_name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.other.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.other.remove_tls12_session(server_name)
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        let mut map = self.tickets();
        let queue = map.entry(server_name).or_default();
        if queue.len() >= TICKETS_PER_SERVER {
            queue.pop_front();
        }
        queue.push_back(value);
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        // Newest first: the oldest are the likeliest to have expired.
        self.tickets().get_mut(server_name)?.pop_back()
    }
}

/// Each file a service's TLS settings were built from, with its contents
/// as read: what a reload compares, and what the metrics describe.
pub type Contents = Vec<(PathBuf, Vec<u8>)>;

/// The most certificates a `cert` file may hold (this host's and its
/// intermediates): the whole chain goes to every peer in each handshake.
pub const MAX_CHAIN_CERTS: usize = 10;
/// The most bytes (DER) the certificates of a `cert` file may add up to.
pub const MAX_CHAIN_BYTES: usize = 64 * 1024;

struct Trust {
    roots: Option<Arc<RootCertStore>>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    pins: Vec<String>,
}

impl Trust {
    fn load(files: &TlsFiles, read: &mut Contents) -> Result<Trust, TlsError> {
        let roots = match &files.ca {
            None => None,
            Some(path) => Some(Arc::new(load_roots(path, read)?)),
        };
        let mut crls = Vec::new();
        for path in &files.crl {
            crls.extend(load_crls(path, read)?);
        }
        if !crls.is_empty() && roots.is_none() {
            return Err(err(
                "crl",
                "needs ca: revocation lists apply to certificates checked against a CA",
            ));
        }
        let pins = check_pins(&files.peer_pins)?;
        Ok(Trust { roots, crls, pins })
    }
}

/// Checks `peer_pins`: each `sha256/` and the base64 of 32 bytes.
pub fn check_pins(peer_pins: &[String]) -> Result<Vec<String>, TlsError> {
    let mut pins = Vec::new();
    for pin in peer_pins {
        let Some(b64) = pin.strip_prefix("sha256/") else {
            return Err(err(
                "peer_pins",
                format!("{pin:?} must start with \"sha256/\" (see `dctunnel certs show`)"),
            ));
        };
        match base64::engine::general_purpose::STANDARD.decode(b64) {
            Ok(d) if d.len() == 32 => pins.push(pin.clone()),
            _ => {
                return Err(err(
                    "peer_pins",
                    format!("{pin:?} is not sha256/ and 44 characters of base64"),
                ))
            }
        }
    }
    Ok(pins)
}

/// Reads the PEM blocks of `path` for `field`, recording its contents in
/// `read`. Every message names the file and what is wrong, never what it
/// holds: it may be a private key.
fn read_pem(
    field: &'static str,
    path: &Path,
    limit: u64,
    read: &mut Contents,
) -> Result<(Vec<files::Block>, u32), TlsError> {
    let (bytes, mode) = files::read_with_mode(path, limit)
        .map_err(|e| err(field, format!("{}: {e}", path.display())))?;
    let blocks = files::pem_blocks(&bytes);
    read.push((path.to_owned(), bytes));
    let blocks = blocks.map_err(|e| err(field, format!("{}: {e}", path.display())))?;
    Ok((blocks, mode))
}

/// Refuses a file holding a private key that group or others can read.
fn check_private(field: &'static str, path: &Path, mode: u32) -> Result<(), TlsError> {
    let mode = mode & 0o777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    Err(err(
        field,
        format!(
            "{} is readable by group or others (mode {mode:04o}); a private key must be private: \
             chmod 600 {}",
            path.display(),
            path.display()
        ),
    ))
}

/// The certificates of a `ca` file: CERTIFICATE blocks only (a CA file is
/// copied to every host, so a private key in it is refused).
pub fn load_roots(path: &Path, read: &mut Contents) -> Result<RootCertStore, TlsError> {
    let (blocks, _) = read_pem("ca", path, files::PEM_LIMIT, read)?;
    let mut store = RootCertStore::empty();
    for block in blocks {
        let at = block.place(path);
        match block.label {
            files::Label::Certificate => {}
            label if label.is_private_key() => {
                return Err(err(
                    "ca",
                    format!(
                        "{at} is a private key; a CA file is copied to every host and must hold \
                         certificates only"
                    ),
                ))
            }
            _ => return Err(err("ca", format!("{at} is not a CERTIFICATE"))),
        }
        store
            .add(CertificateDer::from(block.der))
            .map_err(|e| err("ca", format!("{at} is not a usable CA certificate: {e}")))?;
    }
    Ok(store)
}

/// The revocation lists of a `crl` file: X509 CRL blocks only.
pub fn load_crls(
    path: &Path,
    read: &mut Contents,
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let (blocks, _) = read_pem("crl", path, files::CRL_LIMIT, read)?;
    blocks
        .into_iter()
        .map(|block| match block.label {
            files::Label::Crl => Ok(CertificateRevocationListDer::from(block.der)),
            label => Err(err(
                "crl",
                format!(
                    "{}: the {label} block of line {} is not an X509 CRL",
                    path.display(),
                    block.line
                ),
            )),
        })
        .collect()
}

/// This host's certificate chain from a `cert` file: its certificate
/// first, then intermediates, at most [`MAX_CHAIN_CERTS`] and
/// [`MAX_CHAIN_BYTES`]. A private key beside them (a combined file) is
/// skipped, and then the file must be private too.
pub fn load_chain(
    path: &Path,
    read: &mut Contents,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let (blocks, mode) = read_pem("cert", path, files::PEM_LIMIT, read)?;
    let mut chain = Vec::new();
    let mut bytes = 0;
    for block in blocks {
        let at = block.place(path);
        match block.label {
            files::Label::Certificate => {}
            label if label.is_private_key() => {
                check_private("cert", path, mode)?;
                continue;
            }
            files::Label::EcParameters => continue,
            _ => return Err(err("cert", format!("{at} is not a CERTIFICATE"))),
        }
        if x509::CertInfo::parse(&block.der).is_err() {
            return Err(err("cert", format!("{at} is not an X.509 certificate")));
        }
        bytes += block.der.len();
        chain.push(CertificateDer::from(block.der));
    }
    let Some(first) = chain.first() else {
        return Err(err(
            "cert",
            format!("{}: holds no CERTIFICATE block", path.display()),
        ));
    };
    if let Some(problem) = x509::validity_problem(first) {
        return Err(err("cert", format!("{}: {problem}", path.display())));
    }
    if chain.len() > MAX_CHAIN_CERTS || bytes > MAX_CHAIN_BYTES {
        return Err(err(
            "cert",
            format!(
                "{}: holds {} certificates, {} KiB; the chain is sent to every peer, and may \
                 hold at most {MAX_CHAIN_CERTS} certificates and {} KiB: this host's \
                 certificate and its intermediates, not the CA bundle",
                path.display(),
                chain.len(),
                bytes.div_ceil(1024),
                MAX_CHAIN_BYTES / 1024
            ),
        ));
    }
    Ok(chain)
}

/// This host's private key from a `key` file: exactly one private key
/// block, unencrypted, that the crypto provider can use; the file must not
/// be readable by group or others. A certificate beside it (a combined
/// file) is skipped.
pub fn load_key(path: &Path, read: &mut Contents) -> Result<PrivateKeyDer<'static>, TlsError> {
    let (blocks, mode) = read_pem("key", path, files::PEM_LIMIT, read)?;
    check_private("key", path, mode)?;
    let mut key = None;
    for block in blocks {
        let at = block.place(path);
        let der = match block.label {
            files::Label::PrivateKey => PrivateKeyDer::Pkcs8(block.der.into()),
            files::Label::RsaPrivateKey => PrivateKeyDer::Pkcs1(block.der.into()),
            files::Label::EcPrivateKey => PrivateKeyDer::Sec1(block.der.into()),
            files::Label::Certificate | files::Label::EcParameters => continue,
            files::Label::EncryptedPrivateKey => {
                return Err(err(
                    "key",
                    format!(
                        "{at} is encrypted; dctunnel needs the key unencrypted (and the file \
                         private): `openssl pkey -in FILE -out NEW`"
                    ),
                ))
            }
            _ => return Err(err("key", format!("{at} is not a private key"))),
        };
        if key.is_some() {
            return Err(err(
                "key",
                format!("{at} is a second private key; a key file holds one"),
            ));
        }
        // The provider's error is not shown: only that the key is unusable.
        if rustls::crypto::aws_lc_rs::default_provider()
            .key_provider
            .load_private_key(der.clone_key())
            .is_err()
        {
            return Err(err(
                "key",
                format!(
                    "{at} is not a usable private key (damaged, or of a type dctunnel cannot \
                     use: ECDSA P-256/P-384, Ed25519 and RSA are)"
                ),
            ));
        }
        key = Some(der);
    }
    key.ok_or_else(|| {
        err(
            "key",
            format!(
                "{}: holds no private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block); \
                 is it the certificate file?",
                path.display()
            ),
        )
    })
}

/// The key and certificate were each read fine, and rustls refuses them
/// together: they are not a pair (its error is not shown, it adds nothing).
fn mismatch(files: &TlsFiles) -> TlsError {
    let name = |p: &Option<PathBuf>| {
        p.as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    err(
        "key",
        format!(
            "{} does not match the certificate {}",
            name(&files.key),
            name(&files.cert)
        ),
    )
}

/// Loads our certificate chain and private key.
fn own_identity(
    files: &TlsFiles,
    read: &mut Contents,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let (Some(cert_path), Some(key_path)) = (&files.cert, &files.key) else {
        return Err(err("cert", "cert and key are both required"));
    };
    let chain = load_chain(cert_path, read)?;
    let key = load_key(key_path, read)?;
    Ok((chain, key))
}

/// The reason a verifier gives when the peer's certificate is valid but its
/// identity is not one the service accepts.
pub const IDENTITY_REFUSED: CertificateError = CertificateError::ApplicationVerificationFailure;

/// A peer's key that is not one of `peer_pins`: carried inside rustls's
/// error (as `CertificateError::Other`) to the connection's log line.
#[derive(Debug, thiserror::Error)]
#[error("peer key not in peer_pins (its pin is {pin})")]
pub struct PinMismatch {
    pub pin: String,
}

/// The pin mismatch inside a handshake error, if that is what it is.
pub fn pin_mismatch(e: &rustls::Error) -> Option<&PinMismatch> {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            other.0.downcast_ref::<PinMismatch>()
        }
        _ => None,
    }
}

/// What a fatal alert from the remote (the TLS server a client-mode
/// service connects to) most likely says it refused, for the log line of
/// the client side. The remote's own log has the certain answer.
pub fn refusal_hint(alert: rustls::AlertDescription) -> Option<&'static str> {
    use rustls::AlertDescription as A;
    Some(match alert {
        A::AccessDenied => "the remote refused this host's identity (not in its allow_peers)",
        A::CertificateUnknown => {
            "the remote refused this host's certificate (its key is not in the remote's \
             peer_pins, or the certificate is unacceptable there)"
        }
        A::UnknownCA => {
            "the remote does not trust the CA that signed this host's certificate (or cannot \
             check its revocation)"
        }
        A::BadCertificate | A::UnsupportedCertificate => {
            "the remote refused this host's certificate as invalid"
        }
        A::CertificateExpired => {
            "the remote says this host's certificate has expired or is not yet valid"
        }
        A::CertificateRevoked => "the remote says this host's certificate is revoked",
        A::CertificateRequired => "the remote requires a client certificate and got none",
        A::ProtocolVersion => "no TLS version in common with the remote (see tls12)",
        A::HandshakeFailure | A::InsufficientSecurity => {
            "the remote found nothing in common with this host (TLS version, cipher suite, or \
             a certificate where it expects a pre-shared key)"
        }
        _ => return None,
    })
}

/// The server name of a TLS ClientHello when it is an IP address, which
/// RFC 6066 forbids and stunnel sends anyway. `hello` is the start of the
/// stream, possibly cut short: what is missing counts as no such name.
pub fn ip_sni(hello: &[u8]) -> Option<std::net::IpAddr> {
    /// Splits `n` bytes off the front.
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (b.get(..n)?, b.get(n..)?);
        *b = rest;
        Some(head)
    }
    fn u8_len(b: &mut &[u8]) -> Option<usize> {
        take(b, 1).map(|v| usize::from(v[0]))
    }
    fn u16_len(b: &mut &[u8]) -> Option<usize> {
        take(b, 2).map(|v| usize::from(u16::from_be_bytes([v[0], v[1]])))
    }
    let mut b = hello;
    // Record header: handshake (22), version, length.
    if take(&mut b, 5)?[0] != 22 {
        return None;
    }
    // Handshake header: ClientHello (1), 24-bit length.
    if take(&mut b, 4)?[0] != 1 {
        return None;
    }
    take(&mut b, 2 + 32)?; // version, random
    let n = u8_len(&mut b)?; // session id
    take(&mut b, n)?;
    let n = u16_len(&mut b)?; // cipher suites
    take(&mut b, n)?;
    let n = u8_len(&mut b)?; // compression methods
    take(&mut b, n)?;
    u16_len(&mut b)?; // extensions' total length
    loop {
        let kind = u16_len(&mut b)?;
        let n = u16_len(&mut b)?;
        let mut ext = take(&mut b, n)?;
        if kind != 0 {
            continue;
        }
        // server_name: list length, then name type 0 (host_name) and name.
        u16_len(&mut ext)?;
        if u8_len(&mut ext)? != 0 {
            return None;
        }
        let n = u16_len(&mut ext)?;
        let name = std::str::from_utf8(take(&mut ext, n)?).ok()?;
        return name.parse().ok();
    }
}

/// What both directions check besides the chain: the key pins (and, with
/// no CA to check them, the dates) and the handshake signatures. Signatures
/// are always checked with the provider's algorithms, so a peer that shows a
/// pinned certificate without its key cannot finish.
struct PinCheck {
    pins: Vec<String>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinCheck {
    /// `chain_checked`: a CA verifier has already checked the chain, and
    /// with it the dates.
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        chain_checked: bool,
    ) -> Result<(), rustls::Error> {
        if self.pins.is_empty() {
            return Ok(());
        }
        let pin = x509::spki_pin(end_entity).map_err(|_| CertificateError::BadEncoding)?;
        if !self.pins.contains(&pin) {
            // Not `UnknownIssuer`: the log would then speak of a CA where
            // there is none, and hide the pin the operator needs to see.
            let mismatch = PinMismatch { pin };
            return Err(CertificateError::Other(rustls::OtherError(Arc::new(mismatch))).into());
        }
        if !chain_checked {
            if let Some(problem) = x509::validity_problem(end_entity) {
                tracing::debug!(%problem, "pinned certificate refused");
                return Err(CertificateError::Expired.into());
            }
        }
        Ok(())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl fmt::Debug for PinCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinCheck")
            .field("pins", &self.pins)
            .finish()
    }
}

/// Records who the peer claims to be in the connection's span, so that a
/// rejection log line shows the presented identity.
fn record_peer(end_entity: &CertificateDer<'_>) -> Vec<String> {
    let ids = identities(end_entity);
    tracing::Span::current().record("peer", tracing::field::display(ids.join(",")));
    ids
}

/// Logs a revoked peer certificate with its serial (as `certs show` and
/// `certs revoke` print it): rustls's error names no certificate.
fn log_revoked(e: &rustls::Error, end_entity: &CertificateDer<'_>) {
    if *e == rustls::Error::InvalidCertificate(CertificateError::Revoked) {
        let serial = x509::CertInfo::parse(end_entity)
            .map(|i| i.serial)
            .unwrap_or_default();
        tracing::info!(%serial, "peer certificate is revoked");
    }
}

/// Verifies the clients of a server-mode service: chain through webpki when
/// a CA is configured, key pin when pins are, then the identity list.
struct ClientVerifier {
    webpki: Option<Arc<dyn ClientCertVerifier>>,
    pins: PinCheck,
    peers: Arc<PeerPolicy>,
}

impl fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientVerifier")
            .field("pins", &self.pins.pins)
            .field("peers", &self.peers)
            .finish()
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No CA names in the certificate request: they would tell anyone who
    /// sends a ClientHello which CA the tunnels trust, and a tunnel end
    /// has one certificate to send anyway (rustls, OpenSSL and so stunnel
    /// and haproxy send it without hints).
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ids = record_peer(end_entity);
        if let Some(v) = &self.webpki {
            v.verify_client_cert(end_entity, intermediates, now)
                .inspect_err(|e| log_revoked(e, end_entity))?;
        }
        self.pins.check(end_entity, self.webpki.is_some())?;
        if !self.peers.allows(&ids) {
            return Err(IDENTITY_REFUSED.into());
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.pins.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.pins.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.pins.supported_verify_schemes()
    }
}

/// Verifies the server a client-mode service connects to: chain through
/// webpki when a CA is configured, key pin when pins are. Any identity the
/// CA signed is accepted; the server name is checked by webpki.
struct ServerVerifier {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    pins: PinCheck,
}

impl fmt::Debug for ServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerVerifier")
            .field("pins", &self.pins.pins)
            .finish()
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        record_peer(end_entity);
        if let Some(v) = &self.webpki {
            v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .inspect_err(|e| log_revoked(e, end_entity))?;
        }
        self.pins.check(end_entity, self.webpki.is_some())?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.pins.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.pins.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.pins.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn peer_policy() {
        let p = PeerPolicy::parse(&names(&[
            "ovh-stunnel-client.openfoodfacts.org",
            "*.ovh.example",
        ]))
        .unwrap();
        assert!(p.allows(&names(&["OVH-stunnel-client.openfoodfacts.org"])));
        assert!(p.allows(&names(&["other", "a.ovh.example"])));
        assert!(!p.allows(&names(&["a.b.ovh.example"])));
        assert!(!p.allows(&names(&["ovh.example"])));
        assert!(!p.allows(&names(&["*.ovh.example"])));
        assert!(!p.allows(&names(&["off1.openfoodfacts.org"])));
        assert!(!p.allows(&[]));
        assert_eq!(PeerPolicy::parse(&names(&["*"])).unwrap(), PeerPolicy::Any);
        assert!(PeerPolicy::parse(&[]).is_err());
        assert!(PeerPolicy::parse(&names(&["*", "a"])).is_err());
        assert!(PeerPolicy::parse(&names(&["a.*.b"])).is_err());
    }

    /// A ClientHello record with these extensions (type, body).
    fn client_hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut exts = Vec::new();
        for (kind, body) in extensions {
            exts.extend(kind.to_be_bytes());
            exts.extend((body.len() as u16).to_be_bytes());
            exts.extend(body);
        }
        let mut hs = vec![3, 3];
        hs.extend([7; 32]); // random
        hs.extend([4, 1, 2, 3, 4]); // session id
        hs.extend([0, 2, 0x13, 0x01]); // one cipher suite
        hs.extend([1, 0]); // null compression
        hs.extend((exts.len() as u16).to_be_bytes());
        hs.extend(exts);
        let mut msg = vec![1, 0];
        msg.extend((hs.len() as u16).to_be_bytes());
        msg.extend(hs);
        let mut record = vec![22, 3, 1];
        record.extend((msg.len() as u16).to_be_bytes());
        record.extend(msg);
        record
    }

    fn sni(name: &str) -> (u16, Vec<u8>) {
        let mut body = ((name.len() + 3) as u16).to_be_bytes().to_vec();
        body.push(0);
        body.extend((name.len() as u16).to_be_bytes());
        body.extend(name.as_bytes());
        (0, body)
    }

    #[test]
    fn an_ip_address_sent_as_server_name_is_found() {
        let other = (10, vec![0, 2, 0, 29]); // supported_groups
        let hello = client_hello(&[other.clone(), sni("10.99.0.3")]);
        assert_eq!(ip_sni(&hello), Some("10.99.0.3".parse().unwrap()));
        let hello = client_hello(&[sni("2a06:c484:5::102")]);
        assert_eq!(ip_sni(&hello), Some("2a06:c484:5::102".parse().unwrap()));
        // A name, no server_name at all, something else, or cut short.
        assert_eq!(
            ip_sni(&client_hello(&[sni("off2.openfoodfacts.org")])),
            None
        );
        assert_eq!(ip_sni(&client_hello(&[other])), None);
        assert_eq!(ip_sni(b"EHLO example.org\r\n"), None);
        let hello = client_hello(&[sni("10.99.0.3")]);
        for cut in 0..hello.len() {
            assert_eq!(ip_sni(&hello[..cut]), None, "{cut}");
        }
    }

    #[test]
    fn aes_128_gcm_and_tls13_come_first() {
        let suites: Vec<String> = provider()
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert_eq!(suites[0], "TLS13_AES_128_GCM_SHA256", "{suites:?}");
        // The order the names alone give: AES-128-GCM first, then TLS 1.3.
        let mut by_name = suites.clone();
        by_name.sort_by_key(|n| (!n.contains("AES_128_GCM"), !n.starts_with("TLS13")));
        assert_eq!(suites, by_name);
    }
}
