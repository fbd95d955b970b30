//! What `check` prints and the start-up log says about a service: its
//! mode, addresses, sources and how its peer is checked, each a value that
//! displays as a short phrase.

use std::fmt;
use std::net::SocketAddr;

use ipnet::IpNet;
use rustls::pki_types::ServerName;

use super::{Mode, Role, Service, Target};
use crate::tls::PeerPolicy;

/// A short summary of a service.
#[derive(Debug, Clone, Copy)]
pub struct Summary<'a> {
    pub mode: Mode,
    pub listen: SocketAddr,
    pub connect: Targets<'a>,
    pub sources: Sources<'a>,
    pub peers: Peers<'a>,
}

/// The summary of `service`.
pub fn describe(service: &Service) -> Summary<'_> {
    let check = match &service.role {
        Role::Server { peers, .. } | Role::Ca { peers, .. } => PeerCheck::Clients(peers),
        Role::Client { server_name, .. } => PeerCheck::Server(server_name),
    };
    Summary {
        mode: service.mode(),
        listen: service.listen,
        connect: Targets(&service.connect),
        sources: Sources(&service.allow_sources),
        peers: Peers {
            check,
            pins: service.files.peer_pins.len(),
            ca: service.files.ca.is_some(),
        },
    }
}

/// Where a service connects: `"10.1.0.102:27017, 10.1.0.103:27017"`.
#[derive(Debug, Clone, Copy)]
pub struct Targets<'a>(pub &'a [Target]);

impl fmt::Display for Targets<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            // Only the online CA connects nowhere: it answers itself.
            return f.write_str("(signs certificates)");
        }
        list(f, self.0)
    }
}

/// Who may connect: `"any source"` or the networks.
#[derive(Debug, Clone, Copy)]
pub struct Sources<'a>(pub &'a [IpNet]);

impl fmt::Display for Sources<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("any source")
        } else {
            list(f, self.0)
        }
    }
}

/// What the certificate of the other side must show.
#[derive(Debug, Clone, Copy)]
pub enum PeerCheck<'a> {
    /// Server mode: the client certificate names accepted.
    Clients(&'a PeerPolicy),
    /// Client mode: the name the server must prove.
    Server(&'a ServerName<'static>),
}

/// How a service checks the other side: certificate, pinned keys, or both.
#[derive(Debug, Clone, Copy)]
pub struct Peers<'a> {
    pub check: PeerCheck<'a>,
    /// How many keys are pinned (`peer_pins`).
    pub pins: usize,
    /// Whether a CA verifies the chain.
    pub ca: bool,
}

impl fmt::Display for Peers<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pinned = Pinned(self.pins);
        // Without a CA only the pin is checked: no chain, and in client
        // mode no server name either.
        match (self.pins, self.ca, self.check) {
            (0, _, check) => write!(f, "{check}"),
            (_, false, PeerCheck::Server(_)) => write!(f, "server must hold {pinned}"),
            (_, false, PeerCheck::Clients(PeerPolicy::Any)) => write!(f, "{pinned}"),
            (_, _, check) => write!(f, "{check}, with {pinned}"),
        }
    }
}

impl fmt::Display for PeerCheck<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerCheck::Clients(policy) => write!(f, "{policy}"),
            PeerCheck::Server(name) => write!(f, "server must prove {}", name.to_str()),
        }
    }
}

/// `"a pinned key (2 pins)"`.
struct Pinned(usize);

impl fmt::Display for Pinned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        write!(f, "a pinned key ({n} pin{})", if n == 1 { "" } else { "s" })
    }
}

fn list<T: fmt::Display>(f: &mut fmt::Formatter<'_>, items: &[T]) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{item}")?;
    }
    Ok(())
}
