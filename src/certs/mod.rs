//! `dctunnel certs`: a private CA, host certificates, pinned self-signed keys,
//! certificate inspection and revocation, so that mutual TLS is as easy to set
//! up as a pre-shared key.
//!
//! - [`ca`]: the operations, a library: making a CA, issuing, self-signed
//!   keys for pinning, reading PEM files, revoking;
//! - [`csr`]: requests made on the host, signed on the admin machine;
//! - [`token`]: one-time enrolment tokens for the online CA;
//! - [`enrol`]: a new host's first certificate from the online CA, with a token;
//! - [`online`]: what the online CA (`mode = "ca"`) signs, and what it refuses;
//! - [`cli`]: the `dctunnel certs` subcommands, their arguments and output.
//!
//! File layout (the names are constants of this module):
//!
//! - a CA directory holds `ca.pem` (the CA certificate), `ca.key` (its private
//!   key, mode 0600) and, once something is revoked, `ca.crl` (PEM CRL). The
//!   CRL itself is the revocation state: `revoke` re-parses it, adds a serial
//!   and re-signs it with `ca.key`;
//! - `issue` and `keygen` write `<out>/<name>.pem` and `<out>/<name>.key`;
//! - `request` and `renew`, on the host, write `<out>/<name>.key` and
//!   `<out>/<name>.csr` (a PKCS#10 request); `sign`, on the admin machine,
//!   writes `<out>/<name>.pem` from a request. The key never leaves the host:
//!   only the request travels to the CA and only the certificate comes back.
//! - `enrol`, on a new host, writes `<out>/<name>.key` (made there),
//!   `<out>/<name>.pem` and `<out>/ca.pem`, from the online CA service;
//!
//! Keys are PKCS#8 PEM, created with mode 0600 from the first byte (never
//! chmod-ed afterwards). No command overwrites an existing certificate or key.

use std::io;
use std::path::PathBuf;

pub mod ca;
pub mod cli;
pub mod csr;
pub mod enrol;
pub mod online;
pub mod token;

pub use crate::x509::{spki_pin_of_spki, CertInfo};
pub use ca::{
    cert_info, init_ca, issue, keygen, parse_serial, revoke, show, spki_pin, CaOptions, CrlEntry,
    CrlInfo, HostOptions, KeyType, Reason, RevokeTarget, Revoked, Shown, Written,
};
pub use cli::{
    main, CertsCommand, HostArgs, InitCaArgs, IssueArgs, KeygenArgs, RenewArgs, RequestArgs,
    RevokeArgs, ShowArgs, SignArgs, TokenArgs,
};
pub use csr::{renew, request, sign, RequestOptions, Requested, Signed};

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
    /// `request` was asked for a wildcard name, which `sign` would refuse.
    #[error("{0:?}: a request cannot ask for a wildcard name (certs sign refuses them)")]
    WildcardRequest(String),
    /// `sign` refuses this certificate signing request; nothing was written.
    #[error("{}: {problem}", path.display())]
    Request {
        path: PathBuf,
        problem: RequestProblem,
    },
    /// `renew` cannot make a request from this certificate.
    #[error("{}: {why}", path.display())]
    NotRenewable { path: PathBuf, why: &'static str },
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
    /// `certs token --ttl` out of range.
    #[error(
        "--ttl must be more than 0 and at most 7 days: a token is for an enrolment about to happen"
    )]
    TokenTtl,
    /// `certs enrol` got no certificate.
    #[error(transparent)]
    Enrol(#[from] enrol::EnrolError),
    /// The system random number generator failed.
    #[error("the random number generator failed")]
    Random,
}

/// Why `sign` refuses a certificate signing request.
#[derive(Debug, thiserror::Error)]
pub enum RequestProblem {
    /// No `CERTIFICATE REQUEST` PEM block in the file.
    #[error("no certificate signing request found (expected a PEM block \"CERTIFICATE REQUEST\")")]
    NotFound,
    /// The file also holds a private key: it travelled, and must not have.
    #[error("holds a private key: copy only the .csr file to the CA, the key stays on its host (and this one should be replaced)")]
    HoldsPrivateKey,
    /// The DER does not parse as PKCS#10.
    #[error("not a valid certificate signing request")]
    Invalid,
    /// The self-signature does not verify with the key in the request.
    #[error("its signature does not verify: the request was altered, or not signed by the key it carries")]
    BadSignature,
    /// basicConstraints asks for cA.
    #[error("asks for a CA certificate; sign makes host certificates only")]
    AsksForCa,
    /// A requested DNS name is a wildcard.
    #[error("asks for the wildcard name {0:?}; sign signs exact host names only")]
    Wildcard(String),
    /// A requested DNS name (or the common name) is not a valid DNS name.
    #[error("{0:?} is not a valid DNS name")]
    InvalidName(String),
    /// A requested name is neither a DNS name nor an IP address.
    #[error("asks for a name of another kind ({0}); sign signs DNS names and IP addresses only")]
    UnsupportedName(String),
    /// Neither a common name nor a DNS name.
    #[error("names no host (no common name and no DNS name)")]
    NoName,
    /// An extension other than names, key usages and basic constraints.
    #[error("asks for an extension sign does not know (it understands names, key usages and basic constraints)")]
    UnsupportedExtension,
    /// The key algorithm cannot be written into a certificate by rcgen.
    #[error("uses a key algorithm dctunnel cannot sign for")]
    KeyAlgorithm,
}
