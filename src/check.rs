//! `dctunnel check`: loads a configuration exactly as `run` would, without
//! binding anything, and says what it would run or everything that is wrong.

use std::net::ToSocketAddrs;
use std::path::Path;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use crate::config::{self, Host};

/// How long `check` waits for each host name to resolve.
const RESOLVE_WAIT: Duration = Duration::from_secs(5);

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
                    "  {:<20} {:<6} {} -> {}  sources: {}  peers: {}{}",
                    s.name,
                    d.mode,
                    d.listen,
                    d.connect,
                    d.sources,
                    d.peers,
                    d.warm
                );
            }
            if let Some(r) = &config.renewal {
                crate::outln!(
                    "  renewal: {} from the CA service {} (server name {}) at two thirds of its lifetime{}",
                    r.cert.display(),
                    r.ca_service,
                    r.server_name.to_str(),
                    renewal_due(&r.cert)
                );
            }
            for s in &config.services {
                for target in &s.connect {
                    let Host::Name(name) = &target.host else {
                        continue;
                    };
                    if let Some(why) = unresolved(name, target.port) {
                        // A warning only: names are resolved at each
                        // connection, and DNS may differ where it runs.
                        eprintln!(
                            "warning: {}: service {:?}: connect: {target} {why}",
                            path.display(),
                            s.name
                        );
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dctunnel check: {e}");
            ExitCode::from(2)
        }
    }
}

/// Why `name` does not resolve now, if it does not: the resolver runs on
/// a thread of its own, so that a slow DNS delays `check` by at most
/// [`RESOLVE_WAIT`].
fn unresolved(name: &str, port: u16) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    let query = (name.to_owned(), port);
    std::thread::spawn(move || {
        let found = query.to_socket_addrs().map(|mut a| a.next().is_some());
        let _ = tx.send(found);
    });
    match rx.recv_timeout(RESOLVE_WAIT) {
        Ok(Ok(true)) => None,
        Ok(Ok(false)) => Some("does not resolve now: no address".to_owned()),
        Ok(Err(e)) => Some(format!("does not resolve now: {e}")),
        Err(_) => Some(format!(
            "does not resolve now: no answer within {}s",
            RESOLVE_WAIT.as_secs()
        )),
    }
}

/// `", next on DATE"` for the certificate at `path`, as loading read it.
fn renewal_due(path: &Path) -> String {
    let info = crate::files::read(path, crate::files::PEM_LIMIT)
        .ok()
        .and_then(|bytes| crate::files::pem_blocks(&bytes).ok())
        .and_then(|blocks| {
            blocks
                .into_iter()
                .find(|b| b.label == crate::files::Label::Certificate)
        })
        .and_then(|b| crate::x509::CertInfo::parse(&b.der).ok());
    match info {
        Some(i) => format!(
            ", next on {}",
            crate::x509::human_time(crate::renewal::due(i.not_before, i.not_after))
        ),
        None => String::new(),
    }
}
