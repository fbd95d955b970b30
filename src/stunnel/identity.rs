//! How a stunnel section checked its peer (`verify*`, `checkHost`,
//! `checkIP`, pre-shared keys, its certificate files), translated to
//! dctunnel's ca, cert and key, `allow_peers`, `server_name` and
//! `peer_pins`, with a warning for every check that does not carry over.

use super::address::Address;
use super::options;
use super::parse::{Section, Setting};
use super::render::{self, Entry, Value};
use super::translate::{Common, Severity, Translator, View};

/// A check on who may connect that a server section made and dctunnel
/// cannot.
#[derive(Debug, Clone)]
pub(super) enum Lost {
    /// Pre-shared keys: the secrets file, and its identities or why they
    /// are not known (`None` when the section names no file).
    Psk {
        file: Option<String>,
        identities: Option<Result<Vec<String>, String>>,
    },
    /// Anything else, said in a phrase.
    Other(String),
}

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

    /// A server section's client checks: `allow_peers` from `checkHost`, or
    /// the comments and warnings that make `dctunnel check` refuse the
    /// service until the user lists its clients. A server section must never
    /// come out letting in more clients than stunnel did.
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
        let lost = self.lost_client_checks(view, psk);
        if !lost.is_empty() {
            trailing.push(self.peers_left_out(section, &lost, &peers));
        } else if !peers.is_empty() {
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
            self.warn_section(
                Severity::Note,
                section,
                "no checkHost: any client certificate signed by the CA is accepted",
                "list the client host names in allow_peers",
            );
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

    /// The checks of a server section on who may connect that dctunnel
    /// cannot make: pre-shared keys (a key per service was the access rule),
    /// hosts.allow (libwrap), IDENT and e-mail addresses.
    fn lost_client_checks(&mut self, view: View<'_>, psk: bool) -> Vec<Lost> {
        let mut lost = Vec::new();
        if psk {
            let file = view.last("PSKsecrets").map(|s| s.value.clone());
            let identities = file.as_deref().map(|f| self.psk_identities(f));
            lost.push(Lost::Psk { file, identities });
        }
        if let Some(s) = view.last("libwrap") {
            if s.value.eq_ignore_ascii_case("yes") {
                let name = view
                    .last("service")
                    .map_or_else(|| view.section_name(), |s| s.value.clone());
                lost.push(Lost::Other(format!(
                    "the client addresses /etc/hosts.allow and /etc/hosts.deny allowed for `{name}` \
                     (libwrap = yes): write them in allow_sources"
                )));
            }
        }
        if let Some(s) = view.last("ident") {
            lost.push(Lost::Other(format!(
                "the clients whose IDENT server answered `{}` (ident)",
                s.value
            )));
        }
        let emails: Vec<&str> = view
            .all("checkEmail")
            .into_iter()
            .map(|s| s.value.as_str())
            .collect();
        if !emails.is_empty() {
            lost.push(Lost::Other(format!(
                "the client certificates carrying the e-mail address {} (checkEmail)",
                emails.join(" or ")
            )));
        }
        lost
    }

    /// The identities of a PSKsecrets file, or why they are not known; read
    /// once per file.
    fn psk_identities(&mut self, file: &str) -> Result<Vec<String>, String> {
        if let Some(known) = self.identities.get(file) {
            return known.clone();
        }
        let read = self.secrets.identities(file).map_err(|e| e.to_string());
        self.identities.insert(file.to_owned(), read.clone());
        read
    }

    /// The comment written instead of allow_peers when stunnel's checks on
    /// who may connect do not carry over, and the warning saying so: the
    /// service stays refused by `dctunnel check` until a person lists the
    /// certificate names of its clients.
    fn peers_left_out(
        &mut self,
        section: &Section,
        lost: &[Lost],
        check_host: &[String],
    ) -> String {
        let mut lines = vec![
            "allow_peers is left out on purpose, so that dctunnel check refuses this service until"
                .to_owned(),
            "you list the certificate names of the hosts that may connect. stunnel let in only:"
                .to_owned(),
        ];
        let mut shown = Vec::new();
        let mut suggested: Option<Vec<String>> =
            (!check_host.is_empty()).then(|| check_host.to_vec());
        for l in lost {
            match l {
                Lost::Psk { file, identities } => {
                    let what = "the holders of this service's pre-shared keys (a key per service)";
                    lines.push(format!("- {what}."));
                    match (file, identities) {
                        (Some(file), Some(Ok(ids))) => {
                            lines.extend([
                                format!("  The identities in {file} (its keys are not read),"),
                                "  one per client host holding this service's key, are below. Issue each of".into(),
                                "  those hosts a certificate (`dctunnel certs issue --name HOST`) and write".into(),
                                "  the names in those certificates, which may differ from the identities:".into(),
                            ]);
                            shown.push(format!(
                                "{what}: the identities in {file} are {}",
                                ids.join(", ")
                            ));
                            suggested.get_or_insert_with(|| ids.clone());
                        }
                        (Some(file), Some(Err(e))) => {
                            lines.extend([
                                format!("  Its identities, one per client host, are in {file},"),
                                format!("  not read here ({e})."),
                                "  Run import-stunnel where that file can be read, or list the hosts yourself:"
                                    .into(),
                            ]);
                            shown.push(format!("{what}: the identities in {file} ({e})"));
                        }
                        _ => shown.push(what.to_owned()),
                    }
                }
                Lost::Other(what) => {
                    lines.push(format!("- {what}."));
                    shown.push(what.clone());
                }
            }
        }
        let list = match suggested {
            Some(names) => names
                .iter()
                .map(|n| render::quote(n))
                .collect::<Vec<_>>()
                .join(", "),
            None => "\"HOST\", ...".to_owned(),
        };
        lines.push(format!("allow_peers = [{list}]"));
        self.warn_section(
            Severity::Problem,
            section,
            format!(
                "allow_peers left out: stunnel let in only {}",
                shown.join("; and ")
            ),
            "issue the client hosts certificates and list their names in allow_peers; \
             dctunnel check refuses this service until then",
        );
        lines.join("\n")
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
