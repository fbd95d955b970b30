//! How a stunnel section checked its peer (`verify*`, `checkHost`,
//! `checkIP`, pre-shared keys, its certificate files), translated to
//! dctunnel's ca, cert and key, `allow_peers`, `server_name` and
//! `peer_pins`, with a warning for every check that does not carry over.

use super::address::Address;
use super::options;
use super::parse::{Section, Setting};
use super::render::{Entry, Value};
use super::translate::{Common, Severity, Translator, View};

/// What the user must verify a peer with.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Verify {
    pub chain: bool,
    pub peer: bool,
}

impl Translator<'_> {
    /// The peer checks `verify`, `verifyChain` and `verifyPeer` ask for,
    /// applied in file order as stunnel does (each overrides the others).
    pub(super) fn verify(&mut self, view: View<'_>) -> Verify {
        let mut v = Verify::default();
        for s in view.in_order(&["verify", "verifyChain", "verifyPeer"]) {
            if s.is("verify") {
                match s.value.as_str() {
                    "0" | "1" | "none" => (v.chain, v.peer) = (false, false),
                    "2" => (v.chain, v.peer) = (true, false),
                    "3" => (v.chain, v.peer) = (true, true),
                    "4" => (v.chain, v.peer) = (false, true),
                    _ => self.warn_at(
                        Severity::Problem,
                        view,
                        s,
                        format!("`{} = {}`: stunnel accepts only 0 to 4", s.name, s.value),
                        "use verifyChain = yes and checkHost instead",
                    ),
                }
            } else if let Some(yes) = self.yes_no(view, s) {
                if s.is("verifyChain") {
                    v.chain = yes;
                } else {
                    v.peer = yes;
                }
            }
        }
        v
    }

    /// Reports a pre-shared-key service, once per service.
    pub(super) fn psk(&mut self, view: View<'_>, section: &Section, client: bool) -> bool {
        let used: Vec<&Setting> = [
            view.last("PSKsecrets"),
            view.last("PSKidentity"),
            view.last("ciphers")
                .filter(|s| options::ciphers_use_psk(&s.value)),
        ]
        .into_iter()
        .flatten()
        .collect();
        let Some(first) = used.first() else {
            return false;
        };
        let shown: Vec<String> = used
            .iter()
            .map(|s| format!("{} = {}", s.name, s.value))
            .collect();
        let then = if client {
            "then set ca, cert and key, and server_name to the name in the server's certificate"
        } else {
            "then set ca, cert and key, and list the client host names in allow_peers"
        };
        self.warn(
            Severity::Unsupported,
            Some(&first.origin),
            Some(section.name.clone()),
            format!("authenticates with pre-shared keys ({})", shown.join(", ")),
            format!(
                "dctunnel authenticates with certificates: create a CA with `dctunnel certs init-ca` and issue \
                 one certificate per host with `dctunnel certs issue --name HOST` (one identity per host, e.g. one \
                 per identity of the PSKsecrets file), or pin keys (`dctunnel certs keygen`, then peer_pins); {then}"
            ),
        );
        true
    }

    /// Reports missing certificate files, which dctunnel always needs.
    pub(super) fn require_files(
        &mut self,
        section: &Section,
        common: &Common,
        client: bool,
        trailing: &mut Vec<String>,
    ) {
        let mut missing = Vec::new();
        if !common.has("cert") {
            missing.push("cert");
            missing.push("key");
            if client {
                self.warn_section(
                    Severity::Unsupported,
                    section,
                    "stunnel presented no client certificate (no cert)",
                    "dctunnel always presents one: issue a certificate for this host with `dctunnel certs issue` and set cert and key",
                );
            } else {
                self.warn_section(
                    Severity::Problem,
                    section,
                    "no cert (stunnel refuses a server-mode section without one)",
                    "set cert and key",
                );
            }
        }
        if !common.has("ca") {
            missing.insert(0, "ca");
            self.warn_section(
                Severity::Unsupported,
                section,
                "no CAfile: nothing to verify the peer's certificate with",
                "set ca to the CA that signs the peers' certificates (see `dctunnel certs init-ca`)",
            );
        }
        if !missing.is_empty() {
            trailing.push(format!(
                "to set before use: {} (see the warnings at the top)",
                missing.join(", ")
            ));
        }
    }

    /// Reports `verifyPeer`, which trusted exactly the peer certificates
    /// stored in CAfile, and returns the comment line to fill peer_pins from.
    pub(super) fn verify_peer(&mut self, view: View<'_>, section: &Section, whose: &str) -> String {
        let file = view.last("CAfile").map_or("CAfile", |s| s.value.as_str());
        let message = format!(
            "`verifyPeer = yes`: stunnel trusted exactly the {whose} certificates stored in CAfile"
        );
        let advice = format!(
            "pin their keys instead: `dctunnel certs show {file}` prints the pins; list them in peer_pins"
        );
        let line = format!(
            "peer_pins = [\"sha256/...\"]   # the pins `dctunnel certs show {file}` prints"
        );
        match view.in_order(&["verify", "verifyPeer"]).last() {
            Some(s) => self.warn_at(Severity::Unsupported, view, s, message, advice),
            None => self.warn_section(Severity::Unsupported, section, message, advice),
        }
        line
    }

    pub(super) fn server_identity(
        &mut self,
        view: View<'_>,
        section: &Section,
        verify: Verify,
        psk: bool,
    ) -> (Vec<Entry>, Vec<String>) {
        let peers: Vec<String> = view
            .all("checkHost")
            .into_iter()
            .map(|s| s.value.clone())
            .collect();
        let ips = view.all("checkIP");
        for ip in &ips {
            self.warn_at(
                Severity::Unsupported,
                view,
                ip,
                format!(
                    "`checkIP = {}`: dctunnel identifies clients by the names in their certificates, not by IP address",
                    ip.value
                ),
                "list the client's certificate name in allow_peers",
            );
        }
        let mut entries = Vec::new();
        let mut trailing = Vec::new();
        if verify.peer {
            trailing.push(self.verify_peer(view, section, "client"));
        }
        if !peers.is_empty() {
            entries.push(Entry::new("allow_peers", Value::List(peers)));
        } else if verify.peer {
            trailing.push(
                "dctunnel check refuses this service until peer_pins or allow_peers is set".into(),
            );
        } else if !ips.is_empty() {
            let ips: Vec<&str> = ips.iter().map(|s| s.value.as_str()).collect();
            trailing.push(format!(
                "allow_peers = [\"...\"]   # the certificate names of the clients checkIP named: {}\n\
                 dctunnel check refuses this service until allow_peers is set",
                ips.join(", ")
            ));
        } else {
            if !psk {
                self.warn_section(
                    Severity::Note,
                    section,
                    "no checkHost: any client certificate signed by the CA is accepted",
                    "list the client host names in allow_peers",
                );
            }
            entries.push(Entry::new("allow_peers", Value::List(vec!["*".into()])).commented(
                "stunnel did not check the client's name (no checkHost): any certificate signed by ca\n\
                 is accepted. Listing the client host names is better, e.g. [\"ovh1.example.org\"].",
            ));
        }
        if !verify.chain && !verify.peer && !psk {
            self.warn_section(
                Severity::Unsupported,
                section,
                "stunnel did not ask clients for a certificate (no verifyChain)",
                "dctunnel requires one signed by ca: issue a certificate for every client host with `dctunnel certs issue`",
            );
        }
        (entries, trailing)
    }

    pub(super) fn client_identity(
        &mut self,
        view: View<'_>,
        section: &Section,
        verify: Verify,
        psk: bool,
        connects: &[(&Setting, Address)],
    ) -> (Vec<Entry>, Vec<String>) {
        let names: Vec<&Setting> = view
            .all("checkHost")
            .into_iter()
            .chain(view.all("checkIP"))
            .collect();
        let sni = view.last("sni");
        let checked = names.first().map(|s| s.value.clone());
        if names.len() > 1 {
            let dropped: Vec<&str> = names[1..].iter().map(|s| s.value.as_str()).collect();
            self.warn_at(
                Severity::Unsupported,
                view,
                names[1],
                "several server names accepted (checkHost, checkIP): dctunnel checks one, server_name",
                format!("keep the name the server's certificate carries; dropped here: {}", dropped.join(", ")),
            );
        }
        let server_name = match (&checked, sni) {
            (Some(name), _) => Some(name.clone()),
            (None, Some(s)) if !s.value.is_empty() => Some(s.value.clone()),
            _ => None,
        };
        if let Some(s) = sni {
            if s.value.is_empty() {
                self.warn_at(
                    Severity::Note,
                    view,
                    s,
                    "`sni =`: stunnel sent no server name",
                    "nothing to do: dctunnel sends server_name (by default the host of connect)",
                );
            } else if checked.as_deref().is_some_and(|c| c != s.value) {
                self.warn_at(
                    Severity::Note,
                    view,
                    s,
                    format!(
                        "`sni = {}` differs from the name checked (checkHost)",
                        s.value
                    ),
                    "dctunnel sends and checks the same name, server_name: here the checked one",
                );
            }
        }
        let host = server_name
            .clone()
            .or_else(|| connects.first().map(|(_, a)| a.connect_host()))
            .unwrap_or_default();
        if checked.is_none() && verify.chain && !psk {
            self.warn_section(
                Severity::Note,
                section,
                "no checkHost: stunnel accepted any server certificate signed by the CA",
                format!("dctunnel also checks that the certificate names `{host}`: make sure it does, or set server_name"),
            );
        }
        if !verify.chain && !verify.peer && !psk {
            self.warn_section(
                Severity::Unsupported,
                section,
                "stunnel did not verify the server's certificate (no verifyChain)",
                format!("dctunnel always does, against ca and the name `{host}`: make sure the server's certificate is signed by ca and names it"),
            );
        }
        let mut trailing = Vec::new();
        if verify.peer {
            trailing.push(self.verify_peer(view, section, "server"));
        }
        let entries = server_name
            .map(|n| vec![Entry::new("server_name", Value::Str(n))])
            .unwrap_or_default();
        (entries, trailing)
    }
}
