//! The `dctunnel` binary: parses the command line, sets up logging and hands
//! over to the library.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use dctunnel::logging::LogFormat;

/// Carries plaintext TCP services between hosts inside mutual TLS.
#[derive(Parser, Debug)]
#[command(name = "dctunnel", version, about)]
struct Cli {
    /// Log format: human-readable text, or one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run every service of the configuration file.
    ///
    /// SIGHUP (or `dctunnel reload`) re-reads the file and applies it, or
    /// keeps the running configuration if the new one is invalid. SIGTERM
    /// or SIGINT stops accepting and lets open connections finish for up to
    /// `[daemon] shutdown_timeout`; a second one closes them at once.
    ///
    /// Log level: DCTUNNEL_LOG, in syslog's words (emerg, alert, crit, err,
    /// warning, notice, info, debug) or numbers (0-7); info by default;
    /// e.g. DCTUNNEL_LOG=warning, or DCTUNNEL_LOG=debug,rustls=debug.
    Run {
        /// The configuration file.
        #[arg(long, short, default_value = dctunnel::config::DEFAULT_PATH)]
        config: PathBuf,
        /// A Unix socket on which the daemon takes `dctunnel reload` and
        /// answers with its verdict (created 0600; root and the daemon's
        /// user only).
        #[arg(long, env = "DCTUNNEL_CONTROL")]
        control: Option<PathBuf>,
    },
    /// Ask the running daemon to re-read its configuration and wait for its
    /// verdict: exit 0 when the new file is in force, 1 with the reason when
    /// it was refused (the old one keeps running).
    Reload(dctunnel::control::ReloadArgs),
    /// Load and validate the configuration (files, certificates, rules)
    /// without binding any port.
    Check {
        /// The configuration file.
        #[arg(long, short, default_value = dctunnel::config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Create CAs, host certificates and pinned keys; show certificates.
    #[command(subcommand)]
    Certs(dctunnel::certs::CertsCommand),
    /// Translate a stunnel configuration into dctunnel's TOML.
    ImportStunnel(dctunnel::stunnel::ImportArgs),
    /// Show the running daemon's services, counters and certificates
    /// (asks the [admin] endpoint of the configuration).
    Status(dctunnel::status::StatusArgs),
    /// Write the man pages and shell completions into a directory
    /// (used by scripts/build-deb.sh).
    #[command(hide = true)]
    GenerateAssets {
        /// The directory; created if missing.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, control } => {
            let value = match std::env::var("DCTUNNEL_LOG") {
                Ok(v) => Some(v),
                Err(std::env::VarError::NotPresent) => None,
                Err(std::env::VarError::NotUnicode(v)) => Some(v.to_string_lossy().into_owned()),
            };
            let filter = match dctunnel::logging::filter(value.as_deref()) {
                Ok(f) => f,
                Err(e) => {
                    // Refused before anything runs: never run silent.
                    eprintln!("dctunnel: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Err(e) = dctunnel::logging::init(cli.log_format, filter) {
                eprintln!("dctunnel: {e}");
                return ExitCode::FAILURE;
            }
            dctunnel::process::main(&config, control.as_deref())
        }
        Command::Reload(args) => dctunnel::control::main(args),
        Command::Check { config } => dctunnel::check::main(&config),
        Command::Certs(cmd) => dctunnel::certs::main(cmd),
        Command::ImportStunnel(args) => dctunnel::stunnel::main(args),
        Command::Status(mut args) => {
            args.json |= cli.log_format == LogFormat::Json;
            dctunnel::status::main(args)
        }
        Command::GenerateAssets { out } => dctunnel::assets::main(Cli::command(), &out),
    }
}
