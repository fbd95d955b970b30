//! `dctunnel check`: loads a configuration exactly as `run` would, without
//! binding anything, and says what it would run or everything that is wrong.

use std::path::Path;
use std::process::ExitCode;

use crate::config;

/// Exits 0 when the configuration would run, and 2, as `run` and `status`
/// do, when it is missing or invalid.
pub fn main(path: &Path) -> ExitCode {
    match config::load(path) {
        Ok(config) => {
            crate::outln!(
                "{}: OK, {} service(s)",
                path.display(),
                config.services.len()
            );
            for s in &config.services {
                let d = config::describe(s);
                crate::outln!(
                    "  {:<20} {:<6} {} -> {}  sources: {}  peers: {}",
                    s.name,
                    d.mode,
                    d.listen,
                    d.connect,
                    d.sources,
                    d.peers
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dctunnel check: {e}");
            ExitCode::from(2)
        }
    }
}
