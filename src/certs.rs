//! `dctunnel certs`: a private CA, host certificates, pinned self-signed keys,
//! certificate inspection and revocation, so that mutual TLS is as easy to set
//! up as a pre-shared key.
//!
//! File layout (the names are constants of this module):
//!
//! - a CA directory holds `ca.pem` (the CA certificate), `ca.key` (its private
//!   key, mode 0600) and, once something is revoked, `ca.crl` (PEM CRL). The
//!   CRL itself is the revocation state: `revoke` re-parses it, adds a serial
//!   and re-signs it with `ca.key`;
//! - `issue` and `keygen` write `<out>/<name>.pem` and `<out>/<name>.key`.
//!
//! Keys are PKCS#8 PEM, created with mode 0600 from the first byte (never
//! chmod-ed afterwards). No command overwrites an existing certificate or key.

use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PublicKeyData, RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime, UtcOffset};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry;
use x509_parser::pem::Pem;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

/// File name of the CA certificate inside a CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside a CA directory (mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";
/// File name of the CA's certificate revocation list (PEM) inside a CA directory.
pub const CA_CRL_FILE: &str = "ca.crl";
/// Default common name of a new CA.
pub const DEFAULT_CA_NAME: &str = "dctunnel CA";
/// Default validity of a CA certificate, in days.
pub const DEFAULT_CA_DAYS: u32 = 3650;
/// Default validity of host and self-signed certificates, in days.
pub const DEFAULT_HOST_DAYS: u32 = 365;
/// Longest validity accepted, in days (100 years).
pub const MAX_DAYS: u32 = 36_500;

/// How far back `notBefore` is set, so that a host whose clock is a little
/// behind the issuing machine's accepts a certificate issued a moment ago.
const BACKDATE: Duration = Duration::hours(1);

/// Everything that can go wrong in `dctunnel certs`.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// A target file exists; nothing was written.
    #[error("{} already exists, refusing to overwrite it", .0.display())]
    Exists(PathBuf),
    /// A file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A directory could not be created.
    #[error("cannot create directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A PEM file is malformed.
    #[error("{}: invalid PEM", path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: x509_parser::error::PEMError,
    },
    /// A file holds no certificate (or, for `show`, nothing it can show).
    #[error("{}: no certificate found", .0.display())]
    NoCertificate(PathBuf),
    /// A certificate or CRL in a file cannot be parsed.
    #[error("{}: block {index} is not a valid {what}", path.display())]
    Parse {
        path: PathBuf,
        /// 1-based position of the PEM block in the file.
        index: usize,
        what: &'static str,
        #[source]
        source: x509_parser::error::X509Error,
    },
    /// DER given to [`spki_pin`] or [`cert_info`] is not a certificate.
    #[error("not a valid X.509 certificate")]
    InvalidDer(#[source] x509_parser::error::X509Error),
    /// A private key file cannot be used.
    #[error("{}: not a usable private key", path.display())]
    Key {
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    /// The CA key and certificate do not belong together.
    #[error("{} does not match the public key of {}", key.display(), cert.display())]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    /// The CA certificate is not a CA.
    #[error("{} is not a CA certificate (basicConstraints cA is not set)", .0.display())]
    NotCa(PathBuf),
    /// The certificate to revoke was not issued by this CA.
    #[error("{} was not issued by the CA in {} (its issuer is {issuer})", cert.display(), ca_dir.display())]
    NotIssuedByCa {
        cert: PathBuf,
        ca_dir: PathBuf,
        issuer: String,
    },
    /// The existing CRL belongs to another CA.
    #[error("{} was not issued by the CA in the same directory (its issuer is {issuer})", path.display())]
    ForeignCrl { path: PathBuf, issuer: String },
    /// A host name is not a valid DNS name.
    #[error("{0:?} is not a valid DNS name")]
    InvalidName(String),
    /// A serial number given on the command line is not hexadecimal.
    #[error("{0:?} is not a serial number (expected hexadecimal, colons allowed)")]
    InvalidSerial(String),
    /// `revoke` was given neither a certificate nor a serial.
    #[error("give the certificate to revoke, or --serial")]
    NoRevokeTarget,
    /// A validity period is out of range.
    #[error("--days must be between 1 and {MAX_DAYS}, not {0}")]
    Days(u32),
    /// rcgen refused to build or sign a certificate or CRL.
    #[error("cannot sign")]
    Sign(#[source] rcgen::Error),
    /// The system random number generator failed.
    #[error("the random number generator failed")]
    Random,
}

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

/// Certificate, key and revocation commands.
#[derive(clap::Subcommand, Debug)]
pub enum CertsCommand {
    /// Create a private certificate authority: DIR/ca.pem and DIR/ca.key (0600).
    InitCa(InitCaArgs),
    /// Issue a host certificate signed by the CA, good for both TLS server and
    /// client: OUT/NAME.pem and OUT/NAME.key (0600).
    Issue(IssueArgs),
    /// Create a self-signed certificate and key for pinning, and print its pin.
    Keygen(KeygenArgs),
    /// Show subject, names, issuer, validity, key type and pin of the
    /// certificates (and CRLs) in PEM files.
    Show(ShowArgs),
    /// Add a certificate's serial to the CA's revocation list DIR/ca.crl
    /// (created if missing) and re-sign it.
    Revoke(RevokeArgs),
}

/// Arguments of `dctunnel certs init-ca`.
#[derive(clap::Args, Debug)]
pub struct InitCaArgs {
    /// Directory for ca.pem and ca.key (created with mode 0700 if missing).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Common name of the CA.
    #[arg(long, default_value = DEFAULT_CA_NAME)]
    pub name: String,
    /// Validity in days.
    #[arg(long, default_value_t = DEFAULT_CA_DAYS)]
    pub days: u32,
    /// Key algorithm.
    #[arg(long, value_enum, default_value_t = KeyType::EcdsaP256)]
    pub key_type: KeyType,
}

/// Arguments of `dctunnel certs issue`.
#[derive(clap::Args, Debug)]
pub struct IssueArgs {
    /// CA directory (holding ca.pem and ca.key).
    #[arg(long, value_name = "DIR")]
    pub ca: PathBuf,
    #[command(flatten)]
    pub host: HostArgs,
}

/// Arguments of `dctunnel certs keygen`.
#[derive(clap::Args, Debug)]
pub struct KeygenArgs {
    #[command(flatten)]
    pub host: HostArgs,
}

/// What `issue` and `keygen` both take: the host's names, validity, key
/// type and where to write.
#[derive(clap::Args, Debug)]
pub struct HostArgs {
    /// Host name: the common name and the first DNS subject alternative name.
    #[arg(long)]
    pub name: String,
    /// Extra DNS names (repeatable, or comma-separated). `*.` wildcards allowed.
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    pub dns: Vec<String>,
    /// IP addresses (repeatable, or comma-separated).
    #[arg(long, value_name = "ADDR", value_delimiter = ',')]
    pub ip: Vec<IpAddr>,
    /// Validity in days.
    #[arg(long, default_value_t = DEFAULT_HOST_DAYS)]
    pub days: u32,
    /// Key algorithm.
    #[arg(long, value_enum, default_value_t = KeyType::EcdsaP256)]
    pub key_type: KeyType,
    /// Output directory (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

impl HostArgs {
    /// The library options, and the output directory.
    fn into_options(self) -> (HostOptions, PathBuf) {
        let opts = HostOptions {
            name: self.name,
            dns: self.dns,
            ips: self.ip,
            days: self.days,
            key_type: self.key_type,
        };
        (opts, self.out)
    }
}

/// Arguments of `dctunnel certs show`.
#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    /// PEM files holding certificates (several per file allowed) or CRLs.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Print a JSON array (one object per certificate or CRL) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `dctunnel certs revoke`.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["cert", "serial"])))]
pub struct RevokeArgs {
    /// CA directory (holding ca.pem, ca.key and ca.crl).
    #[arg(long, value_name = "DIR")]
    pub ca: PathBuf,
    /// The certificate to revoke (PEM; the first certificate of the file).
    #[arg(value_name = "CERT")]
    pub cert: Option<PathBuf>,
    /// Revoke by serial number instead (hex, as `certs show` prints it).
    #[arg(long, value_name = "HEX")]
    pub serial: Option<String>,
    /// Reason recorded in the CRL.
    #[arg(long, value_enum)]
    pub reason: Option<Reason>,
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

/// Facts about one certificate, as `certs show` prints them.
#[derive(Clone, Debug)]
pub struct CertInfo {
    /// Subject distinguished name, e.g. `CN=off2.openfoodfacts.org`.
    pub subject: String,
    /// Subject alternative names, e.g. `DNS:localhost`, `IP:127.0.0.1`.
    pub sans: Vec<String>,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Whether issuer and subject are the same name.
    pub self_signed: bool,
    /// Serial number, colon-separated hex.
    pub serial: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// Key algorithm, e.g. `ECDSA P-256`, `Ed25519`, `RSA 2048`.
    pub key_type: String,
    /// `sha256/<base64>` of the SubjectPublicKeyInfo.
    pub pin: String,
    /// basicConstraints cA.
    pub is_ca: bool,
    /// Extended key usages: `serverAuth`, `clientAuth`, ...
    pub extended_key_usage: Vec<String>,
}

impl CertInfo {
    /// Whole days from `now` to the end of validity, negative once expired.
    pub fn days_left(&self, now: OffsetDateTime) -> i64 {
        (self.not_after - now).whole_seconds().div_euclid(86_400)
    }
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

/// Runs a `dctunnel certs` command, printing errors as
/// `dctunnel certs: <error>: <cause>...` on stderr.
pub fn main(cmd: CertsCommand) -> ExitCode {
    let result = match cmd {
        CertsCommand::InitCa(args) => run_init_ca(args),
        CertsCommand::Issue(args) => run_issue(args),
        CertsCommand::Keygen(args) => run_keygen(args),
        CertsCommand::Show(args) => run_show(args),
        CertsCommand::Revoke(args) => run_revoke(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                let _ = write!(msg, ": {s}");
                source = s.source();
            }
            eprintln!("dctunnel certs: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run_init_ca(args: InitCaArgs) -> Result<(), CertsError> {
    let opts = CaOptions {
        name: args.name,
        days: args.days,
        key_type: args.key_type,
    };
    let w = init_ca(&args.dir, &opts)?;
    println!(
        "wrote {} (CA certificate \"{}\", valid until {})",
        display_path(&w.cert_path),
        opts.name,
        human_time(w.not_after)
    );
    println!(
        "wrote {} (CA private key, mode 0600: keep it off the tunnel hosts)",
        display_path(&w.key_path)
    );
    println!();
    println!("Next: issue one certificate per host, for example");
    println!(
        "  dctunnel certs issue --ca {} --name off2.openfoodfacts.org --out hosts/",
        display_path(&absolute(&args.dir))
    );
    Ok(())
}

fn run_issue(args: IssueArgs) -> Result<(), CertsError> {
    let (opts, out) = args.host.into_options();
    let w = issue(&args.ca, &out, &opts)?;
    let ca_cert = absolute(&args.ca.join(CA_CERT_FILE));
    print_written(&w, "certificate")?;
    if let Ok(ca) = read_ca_not_after(&args.ca) {
        if ca < w.not_after {
            eprintln!(
                "note: the CA expires on {}, before this certificate",
                human_time(ca)
            );
        }
    }
    println!();
    println!(
        "Configuration lines for {} (paths on this machine: adjust them if you copy the files):",
        opts.name
    );
    println!("ca = {}", quoted(&display_path(&ca_cert)));
    println!("cert = {}", quoted(&display_path(&w.cert_path)));
    println!("key = {}", quoted(&display_path(&w.key_path)));
    Ok(())
}

fn run_keygen(args: KeygenArgs) -> Result<(), CertsError> {
    let (opts, out) = args.host.into_options();
    let w = keygen(&out, &opts)?;
    print_written(&w, "self-signed certificate")?;
    println!();
    println!("On {} itself:", opts.name);
    println!("cert = {}", quoted(&display_path(&w.cert_path)));
    println!("key = {}", quoted(&display_path(&w.key_path)));
    println!("On its peers, to accept it:");
    println!("peer_pins = [{}]", quoted(&w.pin));
    Ok(())
}

fn print_written(w: &Written, what: &str) -> Result<(), CertsError> {
    let info = cert_info(&w.cert_der)?;
    println!(
        "wrote {} ({what}, valid until {})",
        display_path(&w.cert_path),
        human_time(w.not_after)
    );
    println!(
        "wrote {} (private key, mode 0600)",
        display_path(&w.key_path)
    );
    println!("names: {}", info.sans.join(", "));
    println!("serial: {}", w.serial);
    println!("pin: {}", w.pin);
    Ok(())
}

fn run_show(args: ShowArgs) -> Result<(), CertsError> {
    let now = OffsetDateTime::now_utc();
    let mut all = Vec::new();
    for file in &args.files {
        let items = show(file)?;
        all.push((file.clone(), items));
    }
    let mut out = String::new();
    if args.json {
        out = show_json(&all, now);
    } else {
        for (file, items) in &all {
            for (i, item) in items.iter().enumerate() {
                if !out.is_empty() {
                    out.push('\n');
                }
                show_text(&mut out, file, i + 1, items.len(), item, now);
            }
        }
    }
    print!("{out}");
    Ok(())
}

fn run_revoke(args: RevokeArgs) -> Result<(), CertsError> {
    let target = match (args.cert, args.serial) {
        (Some(cert), _) => RevokeTarget::Cert(cert),
        (None, Some(s)) => RevokeTarget::Serial(parse_serial(&s)?),
        // clap's required ArgGroup rules this out; say what is missing anyway.
        (None, None) => return Err(CertsError::NoRevokeTarget),
    };
    let r = revoke(&args.ca, &target, args.reason)?;
    if r.newly_revoked {
        println!(
            "revoked serial {}; wrote {} ({} revoked in total)",
            r.serial,
            display_path(&r.crl_path),
            r.total
        );
        println!("Copy the CRL to every host that verifies this CA, then reload dctunnel.");
    } else {
        println!(
            "serial {} is already in {} ({} revoked in total); nothing changed",
            r.serial,
            display_path(&r.crl_path),
            r.total
        );
    }
    Ok(())
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

/// The pin of a certificate: `sha256/` and the base64 of the SHA-256 of its
/// DER SubjectPublicKeyInfo (the form of HPKP and ghostunnel).
pub fn spki_pin(cert_der: &[u8]) -> Result<String, CertsError> {
    let (_, cert) =
        X509Certificate::from_der(cert_der).map_err(|e| CertsError::InvalidDer(e.into()))?;
    Ok(spki_pin_of_spki(cert.public_key().raw))
}

/// The pin of a DER SubjectPublicKeyInfo; see [`spki_pin`].
pub fn spki_pin_of_spki(spki_der: &[u8]) -> String {
    let digest = Sha256::digest(spki_der);
    format!(
        "sha256/{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// Reads what `certs show` prints from a DER certificate.
pub fn cert_info(cert_der: &[u8]) -> Result<CertInfo, CertsError> {
    let (_, cert) =
        X509Certificate::from_der(cert_der).map_err(|e| CertsError::InvalidDer(e.into()))?;
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            sans.push(general_name(name));
        }
    }
    let mut extended_key_usage = Vec::new();
    if let Ok(Some(ext)) = cert.extended_key_usage() {
        let eku = ext.value;
        for (set, name) in [
            (eku.server_auth, "serverAuth"),
            (eku.client_auth, "clientAuth"),
            (eku.any, "any"),
            (eku.code_signing, "codeSigning"),
            (eku.email_protection, "emailProtection"),
            (eku.time_stamping, "timeStamping"),
            (eku.ocsp_signing, "OCSPSigning"),
        ] {
            if set {
                extended_key_usage.push(name.to_owned());
            }
        }
        extended_key_usage.extend(eku.other.iter().map(|oid| oid.to_id_string()));
    }
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        sans,
        issuer: cert.issuer().to_string(),
        self_signed: cert.subject().as_raw() == cert.issuer().as_raw(),
        serial: hex_serial(cert.raw_serial()),
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        key_type: key_type_name(cert.public_key()),
        pin: spki_pin_of_spki(cert.public_key().raw),
        is_ca: cert.is_ca(),
        extended_key_usage,
    })
}

/// The loaded CA: what signing and revoking need.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    subject_raw: Vec<u8>,
    ski: Option<Vec<u8>>,
    not_after: OffsetDateTime,
}

impl Ca {
    fn load(dir: &Path) -> Result<Ca, CertsError> {
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

fn read_ca_not_after(dir: &Path) -> Result<OffsetDateTime, CertsError> {
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

fn host_params(opts: &HostOptions) -> Result<CertificateParams, CertsError> {
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

fn dns_san(name: &str) -> Result<SanType, CertsError> {
    let ia5 = name
        .try_into()
        .map_err(|_| CertsError::InvalidName(name.to_owned()))?;
    Ok(SanType::DnsName(ia5))
}

/// Host names become file names and SANs: only letters, digits, `-`, `_` and
/// dots, as a verifier would accept them. `*.` is allowed for extra SANs.
fn check_dns_name(name: &str, allow_wildcard: bool) -> Result<(), CertsError> {
    let bare = match name.strip_prefix("*.") {
        Some(rest) if allow_wildcard => rest,
        _ => name,
    };
    rustls::pki_types::DnsName::try_from(bare)
        .map(|_| ())
        .map_err(|_| CertsError::InvalidName(name.to_owned()))
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

fn set_validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    // Whole seconds: certificates carry no fractions, and this keeps
    // `days_left` exact right after issuing.
    let now = now.replace_nanosecond(0).unwrap_or(now);
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::days(i64::from(days));
}

fn check_days(days: u32) -> Result<(), CertsError> {
    if days == 0 || days > MAX_DAYS {
        return Err(CertsError::Days(days));
    }
    Ok(())
}

fn generate_key(key_type: KeyType) -> Result<KeyPair, CertsError> {
    let alg = match key_type {
        KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyType::Ed25519 => &rcgen::PKCS_ED25519,
    };
    KeyPair::generate_for(alg).map_err(CertsError::Sign)
}

/// 16 random bytes, first bit clear (positive) and second bit set (so the
/// DER INTEGER is exactly 16 bytes long): 126 random bits.
fn random_serial() -> Result<SerialNumber, CertsError> {
    let mut bytes = [0u8; 16];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| CertsError::Random)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn host_paths(out_dir: &Path, name: &str) -> (PathBuf, PathBuf) {
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

fn refuse_existing(paths: &[&Path]) -> Result<(), CertsError> {
    for p in paths {
        // symlink_metadata: a dangling symlink is also "something there".
        if fs::symlink_metadata(p).is_ok() {
            return Err(CertsError::Exists(p.to_path_buf()));
        }
    }
    Ok(())
}

fn create_dir(dir: &Path, private: bool) -> Result<(), CertsError> {
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
fn write_pair(
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
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertsError> {
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

fn read_pem(path: &Path) -> Result<Vec<Pem>, CertsError> {
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

fn first_cert(path: &Path) -> Result<Vec<u8>, CertsError> {
    read_pem(path)?
        .into_iter()
        .find(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .ok_or_else(|| CertsError::NoCertificate(path.to_path_buf()))
}

fn key_type_name(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> String {
    let alg = &spki.algorithm.algorithm;
    if *alg == oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        match curve {
            Some(c) if c == oid_registry::OID_EC_P256 => "ECDSA P-256".to_owned(),
            Some(c) if c == oid_registry::OID_NIST_EC_P384 => "ECDSA P-384".to_owned(),
            Some(c) if c == oid_registry::OID_NIST_EC_P521 => "ECDSA P-521".to_owned(),
            Some(c) => format!("ECDSA (curve {})", c.to_id_string()),
            None => "ECDSA".to_owned(),
        }
    } else if *alg == oid_registry::OID_SIG_ED25519 {
        "Ed25519".to_owned()
    } else if *alg == oid_registry::OID_PKCS1_RSAENCRYPTION {
        match spki.parsed() {
            Ok(key) => format!("RSA {}", key.key_size()),
            Err(_) => "RSA".to_owned(),
        }
    } else {
        format!("unknown ({})", alg.to_id_string())
    }
}

fn general_name(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::DNSName(d) => format!("DNS:{d}"),
        GeneralName::IPAddress(bytes) => match ip_from_bytes(bytes) {
            Some(ip) => format!("IP:{ip}"),
            None => format!("IP:<{} bytes>", bytes.len()),
        },
        GeneralName::RFC822Name(m) => format!("email:{m}"),
        GeneralName::URI(u) => format!("URI:{u}"),
        other => other.to_string(),
    }
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Some(IpAddr::from(v4));
    }
    <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from)
}

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// Colon-separated lowercase hex without leading zero bytes, as
/// `certs show` prints and `revoke --serial` accepts.
fn hex_serial(bytes: &[u8]) -> String {
    let bytes = strip_zeros(bytes);
    if bytes.is_empty() {
        return "00".to_owned();
    }
    let parts: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
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

fn absolute(path: &Path) -> PathBuf {
    fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

fn display_path(path: &Path) -> String {
    path.display().to_string()
}

fn utc(t: OffsetDateTime) -> OffsetDateTime {
    t.to_offset(UtcOffset::UTC)
}

/// `2035-05-30 10:00:00 UTC`.
fn human_time(t: OffsetDateTime) -> String {
    let t = utc(t);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// `2035-05-30T10:00:00Z`.
fn rfc3339(t: OffsetDateTime) -> String {
    let t = utc(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn days_left_text(days: i64, not_before: OffsetDateTime, now: OffsetDateTime) -> String {
    if now < not_before {
        format!("{days} (not valid yet)")
    } else if days < 0 {
        format!("{days} (EXPIRED)")
    } else if days < 30 {
        format!("{days} (renew soon)")
    } else {
        days.to_string()
    }
}

fn show_text(
    out: &mut String,
    file: &Path,
    index: usize,
    count: usize,
    item: &Shown,
    now: OffsetDateTime,
) {
    let kind = match item {
        Shown::Certificate(_) => "certificate",
        Shown::Crl(_) => "CRL",
    };
    let _ = writeln!(out, "{} ({kind} {index} of {count})", file.display());
    let mut row = |key: &str, value: &str| {
        let _ = writeln!(out, "  {key:<12} {value}");
    };
    match item {
        Shown::Certificate(c) => {
            row("subject", &c.subject);
            row(
                "names",
                &if c.sans.is_empty() {
                    "(none)".to_owned()
                } else {
                    c.sans.join(", ")
                },
            );
            row(
                "issuer",
                &if c.self_signed {
                    format!("{} (self-signed)", c.issuer)
                } else {
                    c.issuer.clone()
                },
            );
            row("serial", &c.serial);
            row("not before", &human_time(c.not_before));
            row("not after", &human_time(c.not_after));
            row(
                "days left",
                &days_left_text(c.days_left(now), c.not_before, now),
            );
            row("key", &c.key_type);
            row("pin", &c.pin);
            row("CA", if c.is_ca { "yes" } else { "no" });
            row(
                "usage",
                &if c.extended_key_usage.is_empty() {
                    "(any)".to_owned()
                } else {
                    c.extended_key_usage.join(", ")
                },
            );
        }
        Shown::Crl(crl) => {
            row("issuer", &crl.issuer);
            row("this update", &human_time(crl.this_update));
            row(
                "next update",
                &crl.next_update
                    .map_or_else(|| "(none)".to_owned(), human_time),
            );
            row("revoked", &crl.revoked.len().to_string());
            for e in &crl.revoked {
                let reason = e
                    .reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default();
                row(
                    "",
                    &format!("{} at {}{reason}", e.serial, human_time(e.revoked_at)),
                );
            }
        }
    }
}

/// JSON without a serializer dependency: the schema is small and flat.
fn show_json(all: &[(PathBuf, Vec<Shown>)], now: OffsetDateTime) -> String {
    let mut objects = Vec::new();
    for (file, items) in all {
        for (i, item) in items.iter().enumerate() {
            let mut o = vec![
                ("file", quoted(&file.display().to_string())),
                ("index", (i + 1).to_string()),
            ];
            match item {
                Shown::Certificate(c) => {
                    let days = c.days_left(now);
                    o.extend([
                        ("kind", quoted("certificate")),
                        ("subject", quoted(&c.subject)),
                        ("sans", json_array(&c.sans)),
                        ("issuer", quoted(&c.issuer)),
                        ("self_signed", c.self_signed.to_string()),
                        ("serial", quoted(&c.serial)),
                        ("not_before", quoted(&rfc3339(c.not_before))),
                        ("not_after", quoted(&rfc3339(c.not_after))),
                        ("days_left", days.to_string()),
                        ("expired", (now > c.not_after).to_string()),
                        ("key_type", quoted(&c.key_type)),
                        ("pin", quoted(&c.pin)),
                        ("is_ca", c.is_ca.to_string()),
                        ("extended_key_usage", json_array(&c.extended_key_usage)),
                    ]);
                }
                Shown::Crl(crl) => {
                    let revoked: Vec<String> = crl
                        .revoked
                        .iter()
                        .map(|e| {
                            format!(
                                "{{\"serial\": {}, \"revoked_at\": {}, \"reason\": {}}}",
                                quoted(&e.serial),
                                quoted(&rfc3339(e.revoked_at)),
                                e.reason
                                    .as_deref()
                                    .map_or_else(|| "null".to_owned(), quoted)
                            )
                        })
                        .collect();
                    o.extend([
                        ("kind", quoted("crl")),
                        ("issuer", quoted(&crl.issuer)),
                        ("this_update", quoted(&rfc3339(crl.this_update))),
                        (
                            "next_update",
                            crl.next_update
                                .map_or_else(|| "null".to_owned(), |t| quoted(&rfc3339(t))),
                        ),
                        ("revoked", format!("[{}]", revoked.join(", "))),
                    ]);
                }
            }
            let fields: Vec<String> = o
                .into_iter()
                .map(|(k, v)| format!("    {}: {v}", quoted(k)))
                .collect();
            objects.push(format!("  {{\n{}\n  }}", fields.join(",\n")));
        }
    }
    format!("[\n{}\n]\n", objects.join(",\n"))
}

fn json_array(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| quoted(s)).collect();
    format!("[{}]", quoted.join(", "))
}

/// A JSON string literal, which is also a valid TOML basic string.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
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
    fn quoted_escapes_json_specials() {
        assert_eq!(quoted("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
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
