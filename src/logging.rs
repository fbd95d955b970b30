//! Sets up `tracing` output: human-readable or JSON lines, without our own
//! timestamps under systemd (journald adds them).

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. The level comes from `DCTUNNEL_LOG`
/// (`RUST_LOG` syntax, e.g. `debug` or `dctunnel=debug`), `info` by default.
pub fn init(format: LogFormat) -> Result<(), String> {
    let filter = EnvFilter::try_from_env("DCTUNNEL_LOG")
        .or_else(|_| EnvFilter::try_new("info"))
        .map_err(|e| format!("bad DCTUNNEL_LOG: {e}"))?;
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    // Colours only for a person at a terminal, never in files or journald.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr()) && !under_journald;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .with_target(false);
    let result = match (format, under_journald) {
        (LogFormat::Json, false) => builder.json().try_init(),
        (LogFormat::Json, true) => builder.json().without_time().try_init(),
        (LogFormat::Text, false) => builder.try_init(),
        (LogFormat::Text, true) => builder.without_time().try_init(),
    };
    result.map_err(|e| format!("cannot set up logging: {e}"))
}
