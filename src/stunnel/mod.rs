//! `dctunnel import-stunnel`: translates a stunnel configuration into
//! dctunnel's TOML, and says what did not carry over and what to do instead.
//!
//! - [`parse`] reads stunnel's syntax as stunnel 5 does (global options,
//!   `[sections]`, `include = DIR`, `;` and `#` comments), pure except for an
//!   [`IncludeResolver`];
//! - [`translate`] maps each section to a `[[service]]` and every option it
//!   cannot carry to a [`Warning`]; `identity` is its part about how the
//!   peer is checked;
//! - `secrets` reads the identities (never the keys) of `PSKsecrets` files,
//!   through a [`PskSecrets`];
//! - [`main`] does the I/O for the command line.

mod address;
mod identity;
mod options;
mod parse;
mod render;
mod secrets;
mod translate;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub use parse::{
    parse, DirIncludes, Include, IncludeResolver, NoIncludes, Origin, ParseError, Section, Setting,
    SourceFile, StunnelConfig, MAX_INCLUDED_FILES, MAX_INCLUDE_DEPTH,
};
pub use secrets::{identities, FileSecrets, NoSecrets, PskSecrets, SecretsError, MAX_SECRETS_SIZE};
pub use translate::{translate, translate_with, Severity, Translation, Warning};

/// Arguments of `dctunnel import-stunnel`.
#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// stunnel configuration file
    pub file: PathBuf,
    /// Write the TOML to this file instead of standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

/// Runs `dctunnel import-stunnel`: the TOML goes to standard output (or
/// `--output`), warnings to standard error. Fails (exit status 1) when the
/// stunnel file cannot be read or parsed, when the output cannot be written,
/// and when no service could be translated (the output, all comments, is
/// still written: it says why); other warnings do not change the exit
/// status.
pub fn main(args: ImportArgs) -> ExitCode {
    let base = args.file.parent().unwrap_or(Path::new("")).to_owned();
    let translation = match load(&args.file) {
        // A secrets file is read relative to the stunnel file, as includes
        // are; one that cannot be read is said in the output, not fatal.
        Ok(config) => translate_with(&config, &mut FileSecrets::new(base)),
        Err(e) => {
            eprintln!("dctunnel: {e}");
            return ExitCode::FAILURE;
        }
    };
    for warning in &translation.warnings {
        eprintln!("dctunnel: {warning}");
    }
    let written = match &args.output {
        Some(path) => std::fs::write(path, &translation.toml)
            .map_err(|e| format!("cannot write {}: {e}", path.display())),
        None => std::io::stdout()
            .lock()
            .write_all(translation.toml.as_bytes())
            .map_err(|e| format!("cannot write the output: {e}")),
    };
    if let Err(e) = written {
        eprintln!("dctunnel: {e}");
        return ExitCode::FAILURE;
    }
    if translation.services == 0 {
        eprintln!(
            "dctunnel: no service could be translated from {}: see the problems above",
            args.file.display()
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Reads and parses `path`, including directories relative to its own.
fn load(path: &Path) -> Result<StunnelConfig, String> {
    let bytes = crate::files::read(path, crate::files::CONFIG_LIMIT)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let base = path.parent().unwrap_or(Path::new(""));
    parse(
        &text,
        &path.display().to_string(),
        &mut DirIncludes::new(base),
    )
    .map_err(|e| chain(&e))
}

/// An error and its causes on one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
