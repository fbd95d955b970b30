//! Sets up `tracing` output: human-readable or JSON lines, without our own
//! timestamps under systemd (journald adds them), at the level named by
//! `DCTUNNEL_LOG` in the words sysadmins use (syslog's, as stunnel's
//! `debug = ...`), refusing anything it does not understand.

use tracing::level_filters::LevelFilter;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// What `DCTUNNEL_LOG` accepts, for messages and `--help`.
pub const ACCEPTED: &str = "a level: emerg, alert, crit, err, warning, notice, info, debug \
(syslog's names, or their numbers 0 to 7), error, warn or trace; or a list of \
TARGET=LEVEL and LEVEL items separated by commas, e.g. \"debug,rustls=debug\"";

/// A value of `DCTUNNEL_LOG` that is not a level.
#[derive(Debug, thiserror::Error)]
#[error("DCTUNNEL_LOG={value:?}: {problem}; expected {ACCEPTED}")]
pub struct LevelError {
    value: String,
    problem: String,
}

/// One level word: syslog's names and numbers with syslog's meaning
/// (`3` is err, `4` warning), and tracing's own names. There is no
/// "notice" in tracing: it shows what info shows.
fn level(word: &str) -> Option<LevelFilter> {
    Some(match word.to_ascii_lowercase().as_str() {
        "0" | "emerg" | "panic" | "1" | "alert" | "2" | "crit" | "3" | "err" | "error" => {
            LevelFilter::ERROR
        }
        "4" | "warning" | "warn" => LevelFilter::WARN,
        "5" | "notice" | "6" | "info" => LevelFilter::INFO,
        "7" | "debug" => LevelFilter::DEBUG,
        "trace" => LevelFilter::TRACE,
        _ => return None,
    })
}

/// The filter for a `DCTUNNEL_LOG` value (`None`: unset, info).
///
/// A bare level applies to dctunnel's own lines; the libraries' (rustls,
/// hyper) stay at warning unless named: their debug lines are internals
/// (with the build machine's file paths), not what an admin asks for.
pub fn filter(value: Option<&str>) -> Result<EnvFilter, LevelError> {
    let value = value.unwrap_or("info").trim();
    let refuse = |problem: String| LevelError {
        value: value.to_owned(),
        problem,
    };
    if value.is_empty() {
        return Err(refuse("empty".into()));
    }
    let mut ours = None;
    let mut directives = Vec::new();
    for item in value.split(',').map(str::trim) {
        match item.split_once('=') {
            None => match level(item) {
                Some(l) => ours = Some(l),
                None => return Err(refuse(format!("{item:?} is not a log level"))),
            },
            Some((target, word)) => {
                let target = target.trim();
                let valid_target = !target.is_empty()
                    && target
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_:-".contains(c));
                if !valid_target {
                    return Err(refuse(format!("{target:?} is not a target name")));
                }
                let Some(l) = level(word.trim()) else {
                    return Err(refuse(format!("{:?} is not a log level", word.trim())));
                };
                directives.push(format!("{target}={l}"));
            }
        }
    }
    let ours = ours.unwrap_or(LevelFilter::INFO);
    let libraries = ours.min(LevelFilter::WARN);
    let mut spec = format!("{libraries},dctunnel={ours}");
    // rustls's warnings (an IP address as SNI, an alert sent) come once
    // per connection without saying which; the connection's own line says
    // what failed, with its service, source and peer.
    if !directives.iter().any(|d| d.starts_with("rustls")) {
        spec.push_str(&format!(",rustls={}", ours.min(LevelFilter::ERROR)));
    }
    for d in directives {
        spec.push(',');
        spec.push_str(&d);
    }
    EnvFilter::try_new(&spec).map_err(|e| refuse(e.to_string()))
}

/// Installs the global subscriber with `filter` (see [`filter`]).
pub fn init(format: LogFormat, filter: EnvFilter) -> Result<(), String> {
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    // Colours only for a person at a terminal, never in files or journald.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr()) && !under_journald;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .with_target(false);
    // JSON lines carry their target (`dctunnel::service`, `rustls::...`),
    // for whoever filters them by machine.
    let result = match (format, under_journald) {
        (LogFormat::Json, false) => builder.with_target(true).json().try_init(),
        (LogFormat::Json, true) => builder.with_target(true).json().without_time().try_init(),
        (LogFormat::Text, false) => builder.try_init(),
        (LogFormat::Text, true) => builder.without_time().try_init(),
    };
    result.map_err(|e| format!("cannot set up logging: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(value: &str) -> String {
        filter(Some(value)).unwrap().to_string()
    }

    #[test]
    fn syslog_names_and_numbers_mean_what_syslog_means() {
        for (v, ours) in [
            ("warning", "warn"),
            ("notice", "info"),
            ("err", "error"),
            ("0", "error"),
            ("3", "error"),
            ("4", "warn"),
            ("5", "info"),
            ("6", "info"),
            ("7", "debug"),
            ("DEBUG", "debug"),
        ] {
            let f = shown(v);
            assert!(f.contains(&format!("dctunnel={ours}")), "{v}: {f}");
        }
    }

    #[test]
    fn libraries_stay_quiet_unless_named() {
        let f = shown("debug");
        assert!(f.contains("dctunnel=debug") && f.contains("warn"), "{f}");
        assert!(f.contains("rustls=error"), "{f}");
        let f = shown("debug,rustls=debug");
        assert!(f.contains("rustls=debug"), "{f}");
        let f = shown("info,dctunnel=debug");
        assert!(
            f.ends_with("dctunnel=debug") || f.contains("dctunnel=debug"),
            "{f}"
        );
    }

    #[test]
    fn anything_else_is_refused_with_what_is_accepted() {
        for v in [
            "verbose",
            "off",
            "",
            "8",
            "-1",
            "dctunnel=loud",
            "a b=debug",
            "=debug",
        ] {
            let e = filter(Some(v)).unwrap_err().to_string();
            assert!(e.starts_with(&format!("DCTUNNEL_LOG={v:?}: ")), "{e}");
            assert!(e.contains("syslog's names"), "{e}");
        }
    }
}
