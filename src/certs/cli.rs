//! `dctunnel certs` on the command line: the subcommands, their arguments,
//! and what they print (text, configuration lines, `show --json`).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;
use time::OffsetDateTime;

use super::ca::{
    absolute, cert_info, init_ca, issue, keygen, parse_serial, read_ca_not_after, revoke, show,
    CaOptions, HostOptions, KeyType, Reason, RevokeTarget, Shown, Written,
};
use super::csr::{renew, request, sign, RequestOptions, Requested};
use super::{CertsError, CA_CERT_FILE, DEFAULT_CA_DAYS, DEFAULT_CA_NAME, DEFAULT_HOST_DAYS};
use crate::config::quote;
use crate::x509::{human_time, rfc3339};

/// Certificate, key and revocation commands.
#[derive(clap::Subcommand, Debug)]
pub enum CertsCommand {
    /// Create a private certificate authority: DIR/ca.pem and DIR/ca.key (0600).
    InitCa(InitCaArgs),
    /// On the host: make its key OUT/NAME.key (0600) and a certificate
    /// signing request OUT/NAME.csr for `sign`. Only the request travels.
    Request(RequestArgs),
    /// On the admin machine: check a certificate signing request and sign it
    /// with the CA, writing NAME.pem; prints what it signed.
    Sign(SignArgs),
    /// On the host: a new key and request with the same names as an existing
    /// certificate, for `sign` (or a request signed by the kept key).
    Renew(RenewArgs),
    /// Issue a host certificate signed by the CA, key included, good for both
    /// TLS server and client: OUT/NAME.pem and OUT/NAME.key (0600). For tests
    /// and throwaway setups: the key is made where the CA is.
    Issue(IssueArgs),
    /// Create a self-signed certificate and key for pinning, and print its pin.
    Keygen(KeygenArgs),
    /// Show subject, names, issuer, validity, key type and pin of the
    /// certificates (and CRLs) in PEM files.
    Show(ShowArgs),
    /// Add a certificate's serial to the CA's revocation list DIR/ca.crl
    /// (created if missing) and re-sign it.
    Revoke(RevokeArgs),
    /// Where the online CA runs: make a one-time enrolment token for a new
    /// host, bound to the names it may ask for and pinning the CA. Prints
    /// the token alone on stdout (what it grants goes to stderr).
    Token(TokenArgs),
    /// On a new host: make its key, and get its first certificate from the
    /// online CA service with a one-time token from `certs token`. Writes
    /// OUT/NAME.key (0600), OUT/NAME.pem and OUT/ca.pem; overwrites nothing.
    Enrol(EnrolArgs),
}

/// Arguments of `dctunnel certs enrol`.
#[derive(clap::Args, Debug)]
pub struct EnrolArgs {
    /// The token `dctunnel certs token` printed (or set DCTUNNEL_TOKEN,
    /// which keeps it off the command line).
    #[arg(
        long,
        env = "DCTUNNEL_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: SecretArg,
    /// The CA service, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub ca_service: String,
    /// The name the CA service's certificate must prove (default: the
    /// host of --ca-service).
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    /// Host name: the common name and the first DNS subject alternative name.
    #[arg(long)]
    pub name: String,
    /// Extra DNS names (repeatable, or comma-separated); the token must grant them.
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    pub dns: Vec<String>,
    /// IP addresses (repeatable, or comma-separated); the token must grant them.
    #[arg(long, value_name = "ADDR", value_delimiter = ',')]
    pub ip: Vec<IpAddr>,
    /// Key algorithm.
    #[arg(long, value_enum, default_value_t = KeyType::EcdsaP256)]
    pub key_type: KeyType,
    /// Output directory for NAME.key, NAME.pem and ca.pem (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// A secret given on the command line: never shown by Debug, and parsed
/// only later, so that clap's own error cannot quote it.
#[derive(Clone)]
pub struct SecretArg(pub String);

impl std::str::FromStr for SecretArg {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(SecretArg(s.to_owned()))
    }
}

impl std::fmt::Debug for SecretArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretArg(..)")
    }
}

/// Arguments of `dctunnel certs token`.
#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    /// CA directory of the online CA service (its `ca_dir`): the token is
    /// recorded in DIR/tokens/.
    #[arg(long, value_name = "DIR")]
    pub ca: PathBuf,
    /// Host name the token grants: the common name and first DNS name.
    #[arg(long)]
    pub name: String,
    /// Extra DNS names it grants (repeatable, or comma-separated).
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    pub dns: Vec<String>,
    /// IP addresses it grants (repeatable, or comma-separated).
    #[arg(long, value_name = "ADDR", value_delimiter = ',')]
    pub ip: Vec<IpAddr>,
    /// How long the token can be used ("15m", "1h"; at most 7 days).
    #[arg(long, default_value = "15m")]
    pub ttl: String,
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

/// Arguments of `dctunnel certs request`.
#[derive(clap::Args, Debug)]
pub struct RequestArgs {
    /// Host name: the common name and the first DNS subject alternative name.
    #[arg(long)]
    pub name: String,
    /// Extra DNS names (repeatable, or comma-separated). No wildcards.
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    pub dns: Vec<String>,
    /// IP addresses (repeatable, or comma-separated).
    #[arg(long, value_name = "ADDR", value_delimiter = ',')]
    pub ip: Vec<IpAddr>,
    /// Key algorithm.
    #[arg(long, value_enum, default_value_t = KeyType::EcdsaP256)]
    pub key_type: KeyType,
    /// Output directory for NAME.key and NAME.csr (created if missing).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub out: PathBuf,
}

/// Arguments of `dctunnel certs sign`.
#[derive(clap::Args, Debug)]
pub struct SignArgs {
    /// CA directory (holding ca.pem and ca.key).
    #[arg(long, value_name = "DIR")]
    pub ca: PathBuf,
    /// The certificate signing request (PEM), as `certs request` wrote it.
    #[arg(value_name = "REQUEST")]
    pub request: PathBuf,
    /// Validity in days.
    #[arg(long, default_value_t = DEFAULT_HOST_DAYS)]
    pub days: u32,
    /// Directory for NAME.pem (default: the request's directory).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Arguments of `dctunnel certs renew`.
#[derive(clap::Args, Debug)]
pub struct RenewArgs {
    /// The host's current certificate: the request asks for its names.
    #[arg(long, value_name = "FILE")]
    pub cert: PathBuf,
    /// Sign the request with this existing key (it must match --cert)
    /// instead of making a new one; then no key is written.
    #[arg(long, value_name = "KEY")]
    pub keep_key: Option<PathBuf>,
    /// Key algorithm of the new key (default: that of the current one).
    #[arg(long, value_enum, conflicts_with = "keep_key")]
    pub key_type: Option<KeyType>,
    /// Output directory for NAME.key and NAME.csr (created if missing).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub out: PathBuf,
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

/// Runs a `dctunnel certs` command, printing errors as
/// `dctunnel certs: <error>: <cause>...` on stderr.
pub fn main(cmd: CertsCommand) -> ExitCode {
    let result = match cmd {
        CertsCommand::InitCa(args) => run_init_ca(args),
        CertsCommand::Request(args) => run_request(args),
        CertsCommand::Sign(args) => run_sign(args),
        CertsCommand::Renew(args) => run_renew(args),
        CertsCommand::Issue(args) => run_issue(args),
        CertsCommand::Keygen(args) => run_keygen(args),
        CertsCommand::Show(args) => run_show(args),
        CertsCommand::Revoke(args) => run_revoke(args),
        CertsCommand::Token(args) => run_token(args),
        CertsCommand::Enrol(args) => run_enrol(args),
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

fn run_token(args: TokenArgs) -> Result<(), CertsError> {
    let ttl = crate::config::parse_duration(&args.ttl)
        .ok()
        .and_then(|d| time::Duration::try_from(d).ok())
        .ok_or(CertsError::TokenTtl)?;
    let grant = super::token::Grant {
        name: args.name,
        dns: args.dns,
        ips: args.ip,
    };
    let made = super::token::make(&args.ca, &grant, ttl)?;
    eprintln!(
        "one-time enrolment token {} for {}, usable until {}; recorded in {}",
        made.token.id(),
        grant.names().join(", "),
        human_time(made.expires),
        display_path(&made.record)
    );
    eprintln!(
        "it pins the CA key {}; on the new host: dctunnel certs enrol --token TOKEN --ca-service HOST:PORT --name {} --out DIR",
        made.token.ca_pin_text(),
        grant.name
    );
    crate::outln!("{}", made.token);
    Ok(())
}

fn run_enrol(args: EnrolArgs) -> Result<(), CertsError> {
    let token =
        super::token::Token::parse(&args.token.0).map_err(super::enrol::EnrolError::from)?;
    let opts = super::enrol::EnrolOptions {
        token,
        ca_service: args.ca_service,
        server_name: args.server_name,
        request: RequestOptions {
            name: args.name,
            dns: args.dns,
            ips: args.ip,
            key_type: args.key_type,
        },
        out: args.out,
    };
    let e = super::enrol::enrol(&opts)?;
    let info = &e.info;
    crate::outln!(
        "enrolled with the CA service {} (it proved the CA key the token pins: {})",
        opts.ca_service,
        e.ca_pin
    );
    crate::outln!(
        "wrote {} (private key, mode 0600: made here, it never left this host)",
        display_path(&e.key_path)
    );
    crate::outln!(
        "wrote {} (certificate, mode 0644)",
        display_path(&e.cert_path)
    );
    if e.ca_written {
        crate::outln!(
            "wrote {} (CA certificate, mode 0644)",
            display_path(&e.ca_path)
        );
    } else {
        crate::outln!(
            "kept {} (already this CA certificate)",
            display_path(&e.ca_path)
        );
    }
    crate::outln!("names: {}", info.sans.join(", "));
    crate::outln!("serial: {}", info.serial);
    crate::outln!("not after: {}", human_time(info.not_after));
    crate::outln!("pin: {}", info.pin);
    crate::outln!("CA pin: {}", e.ca_pin);
    crate::outln!();
    crate::outln!("Next: use them in the services, and let the daemon renew the certificate:");
    crate::outln!("  [renewal]");
    crate::outln!("  ca_service = {}", quote(&opts.ca_service));
    if let Some(name) = &opts.server_name {
        crate::outln!("  server_name = {}", quote(name));
    }
    crate::outln!("  cert = {}", quote(&e.cert_path.display().to_string()));
    crate::outln!("  key = {}", quote(&e.key_path.display().to_string()));
    crate::outln!("  ca = {}", quote(&e.ca_path.display().to_string()));
    Ok(())
}

fn run_init_ca(args: InitCaArgs) -> Result<(), CertsError> {
    let opts = CaOptions {
        name: args.name,
        days: args.days,
        key_type: args.key_type,
    };
    let w = init_ca(&args.dir, &opts)?;
    crate::outln!(
        "wrote {} (CA certificate \"{}\", valid until {})",
        display_path(&w.cert_path),
        opts.name,
        human_time(w.not_after)
    );
    crate::outln!(
        "wrote {} (CA private key, mode 0600: keep it off the tunnel hosts)",
        display_path(&w.key_path)
    );
    crate::outln!();
    crate::outln!("Next: issue one certificate per host, for example");
    crate::outln!(
        "  dctunnel certs issue --ca {} --name off2.openfoodfacts.org --out hosts/",
        display_path(&absolute(&args.dir))
    );
    Ok(())
}

fn run_request(args: RequestArgs) -> Result<(), CertsError> {
    let opts = RequestOptions {
        name: args.name,
        dns: args.dns,
        ips: args.ip,
        key_type: args.key_type,
    };
    let r = request(&args.out, &opts)?;
    print_requested(&r);
    Ok(())
}

fn run_renew(args: RenewArgs) -> Result<(), CertsError> {
    let r = renew(
        &args.cert,
        &args.out,
        args.keep_key.as_deref(),
        args.key_type,
    )?;
    crate::outln!("same names as {}", display_path(&absolute(&args.cert)));
    print_requested(&r);
    Ok(())
}

fn print_requested(r: &Requested) {
    match &r.key_path {
        Some(key) => crate::outln!(
            "wrote {} (private key, mode 0600: it stays on this host)",
            display_path(key)
        ),
        None => crate::outln!("kept the existing private key (no key written)"),
    }
    crate::outln!(
        "wrote {} (certificate signing request)",
        display_path(&r.csr_path)
    );
    crate::outln!("names: {}", r.names.join(", "));
    crate::outln!("pin: {}", r.pin);
    let file = r
        .csr_path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    crate::outln!();
    crate::outln!("Next: copy only {file} to the machine that holds the CA, and there run");
    crate::outln!("  dctunnel certs sign --ca CA_DIR {file}");
    crate::outln!("check that it prints the pin above, then copy back the certificate it writes.");
}

fn run_sign(args: SignArgs) -> Result<(), CertsError> {
    let s = sign(&args.ca, &args.request, args.out.as_deref(), args.days)?;
    let info = &s.info;
    crate::outln!(
        "signed {} with the CA in {}",
        display_path(&absolute(&args.request)),
        display_path(&absolute(&args.ca))
    );
    crate::outln!("subject: {}", info.subject);
    crate::outln!("names: {}", info.sans.join(", "));
    crate::outln!("serial: {}", info.serial);
    crate::outln!("not before: {}", human_time(info.not_before));
    crate::outln!("not after: {}", human_time(info.not_after));
    crate::outln!("key: {}", info.key_type);
    crate::outln!("pin: {}", info.pin);
    crate::outln!("usage: {}", info.extended_key_usage.join(", "));
    crate::outln!(
        "wrote {} (certificate, mode 0644)",
        display_path(&s.cert_path)
    );
    if let Ok(ca) = read_ca_not_after(&args.ca) {
        if ca < info.not_after {
            eprintln!(
                "note: the CA expires on {}, before this certificate",
                human_time(ca)
            );
        }
    }
    crate::outln!();
    crate::outln!(
        "Copy back to the host only this certificate (and {} if it does not have it yet).",
        display_path(&absolute(&args.ca.join(CA_CERT_FILE)))
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
    crate::outln!();
    crate::outln!(
        "Configuration lines for {} (paths on this machine: adjust them if you copy the files):",
        opts.name
    );
    crate::outln!("ca = {}", quote(&display_path(&ca_cert)));
    crate::outln!("cert = {}", quote(&display_path(&w.cert_path)));
    crate::outln!("key = {}", quote(&display_path(&w.key_path)));
    Ok(())
}

fn run_keygen(args: KeygenArgs) -> Result<(), CertsError> {
    let (opts, out) = args.host.into_options();
    let w = keygen(&out, &opts)?;
    print_written(&w, "self-signed certificate")?;
    crate::outln!();
    crate::outln!("On {} itself:", opts.name);
    crate::outln!("cert = {}", quote(&display_path(&w.cert_path)));
    crate::outln!("key = {}", quote(&display_path(&w.key_path)));
    crate::outln!("On its peers, to accept it:");
    crate::outln!("peer_pins = [{}]", quote(&w.pin));
    Ok(())
}

fn print_written(w: &Written, what: &str) -> Result<(), CertsError> {
    let info = cert_info(&w.cert_der)?;
    crate::outln!(
        "wrote {} ({what}, valid until {})",
        display_path(&w.cert_path),
        human_time(w.not_after)
    );
    crate::outln!(
        "wrote {} (private key, mode 0600)",
        display_path(&w.key_path)
    );
    crate::outln!("names: {}", info.sans.join(", "));
    crate::outln!("serial: {}", w.serial);
    crate::outln!("pin: {}", w.pin);
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
    crate::out!("{out}");
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
        crate::outln!(
            "revoked serial {}; wrote {} ({} revoked in total)",
            r.serial,
            display_path(&r.crl_path),
            r.total
        );
        crate::outln!("Copy the CRL to every host that verifies this CA, then reload dctunnel.");
    } else {
        crate::outln!(
            "serial {} is already in {} ({} revoked in total); nothing changed",
            r.serial,
            display_path(&r.crl_path),
            r.total
        );
    }
    Ok(())
}

fn display_path(path: &Path) -> String {
    path.display().to_string()
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

/// One object of `certs show --json`: where it was found, then the facts.
#[derive(Serialize)]
struct JsonItem<'a> {
    file: String,
    index: usize,
    #[serde(flatten)]
    facts: JsonFacts<'a>,
}

/// The facts of a certificate or CRL, tagged `"kind"`; times in RFC 3339.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum JsonFacts<'a> {
    Certificate {
        subject: &'a str,
        sans: &'a [String],
        issuer: &'a str,
        self_signed: bool,
        serial: &'a str,
        not_before: String,
        not_after: String,
        days_left: i64,
        expired: bool,
        key_type: &'a str,
        pin: &'a str,
        is_ca: bool,
        extended_key_usage: &'a [String],
    },
    Crl {
        issuer: &'a str,
        this_update: String,
        next_update: Option<String>,
        revoked: Vec<JsonRevoked<'a>>,
    },
}

#[derive(Serialize)]
struct JsonRevoked<'a> {
    serial: &'a str,
    revoked_at: String,
    reason: Option<&'a str>,
}

impl<'a> JsonFacts<'a> {
    fn new(item: &'a Shown, now: OffsetDateTime) -> Self {
        match item {
            Shown::Certificate(c) => JsonFacts::Certificate {
                subject: &c.subject,
                sans: &c.sans,
                issuer: &c.issuer,
                self_signed: c.self_signed,
                serial: &c.serial,
                not_before: rfc3339(c.not_before),
                not_after: rfc3339(c.not_after),
                days_left: c.days_left(now),
                expired: now > c.not_after,
                key_type: &c.key_type,
                pin: &c.pin,
                is_ca: c.is_ca,
                extended_key_usage: &c.extended_key_usage,
            },
            Shown::Crl(crl) => JsonFacts::Crl {
                issuer: &crl.issuer,
                this_update: rfc3339(crl.this_update),
                next_update: crl.next_update.map(rfc3339),
                revoked: crl
                    .revoked
                    .iter()
                    .map(|e| JsonRevoked {
                        serial: &e.serial,
                        revoked_at: rfc3339(e.revoked_at),
                        reason: e.reason.as_deref(),
                    })
                    .collect(),
            },
        }
    }
}

/// A JSON array, one object per certificate or CRL, ending in a newline.
fn show_json(all: &[(PathBuf, Vec<Shown>)], now: OffsetDateTime) -> String {
    let items: Vec<JsonItem<'_>> = all
        .iter()
        .flat_map(|(file, items)| {
            items.iter().enumerate().map(move |(i, item)| JsonItem {
                file: file.display().to_string(),
                index: i + 1,
                facts: JsonFacts::new(item, now),
            })
        })
        .collect();
    // Strings, numbers, booleans and structs with string keys: serializing
    // them into a String cannot fail.
    let mut json = serde_json::to_string_pretty(&items).unwrap_or_default();
    json.push('\n');
    json
}
