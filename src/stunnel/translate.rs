//! Turns a parsed stunnel configuration into dctunnel's TOML: one service per
//! section, and a warning, repeated as a comment at the top of the output, for
//! everything that does not carry over and for every problem of the stunnel
//! file itself.
//!
//! Where the stunnel file leaves a decision that dctunnel will not take
//! silently (a client-mode entrance on every address, a server with pinned
//! peers), the output is written so that `dctunnel check` refuses it until the
//! user decides, with a comment saying what to choose.
//!
//! The part about how a section checked its peer is in `identity`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use super::address::{self, Address, Host, Reach};
use super::options::{self, Treatment};
use super::parse::{Origin, Section, Setting, StunnelConfig};
use super::render::{self, Entry, Table, Value};
use super::secrets::{NoSecrets, PskSecrets};

/// The translated configuration and what did not carry over.
#[derive(Debug, Clone)]
pub struct Translation {
    /// dctunnel's TOML configuration, warnings included as comments.
    pub toml: String,
    /// Everything that did not carry over, problems first.
    pub warnings: Vec<Warning>,
    /// How many services are written enabled (not commented out).
    pub services: usize,
}

/// How much a warning asks of the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    /// The stunnel file is wrong (stunnel would refuse it or misbehave), or
    /// the output needs a decision before dctunnel will run it.
    Problem,
    /// A feature dctunnel does not have: the advice says what to do instead.
    Unsupported,
    /// Dropped or changed with nothing to do, or nothing urgent.
    Note,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Problem => "problem",
            Severity::Unsupported => "unsupported",
            Severity::Note => "note",
        })
    }
}

/// Something of the stunnel file that did not carry over as it was.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Warning {
    /// How much it asks of the user.
    pub severity: Severity,
    /// The line it is about, if one.
    pub origin: Option<Origin>,
    /// The stunnel section it is about, if one.
    pub section: Option<String>,
    /// What did not carry over.
    pub message: String,
    /// What to do instead.
    pub advice: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.severity)?;
        match (&self.origin, &self.section) {
            (Some(origin), Some(section)) => write!(f, "{origin} [{section}]: ")?,
            (Some(origin), None) => write!(f, "{origin}: ")?,
            (None, Some(section)) => write!(f, "[{section}]: ")?,
            (None, None) => {}
        }
        write!(f, "{}", self.message)?;
        if !self.advice.is_empty() {
            write!(f, "; {}", self.advice)?;
        }
        Ok(())
    }
}

/// Translates a parsed stunnel configuration without reading any other file:
/// the identities of pre-shared-key files are not offered. Never fails:
/// whatever cannot be translated is reported in the warnings and commented
/// in the output.
pub fn translate(config: &StunnelConfig) -> Translation {
    translate_with(config, &mut NoSecrets)
}

/// [`translate`], reading the identities (never the keys) of the
/// `PSKsecrets` files through `secrets`, to offer them as the client names
/// of each pre-shared-key server section.
pub fn translate_with(config: &StunnelConfig, secrets: &mut dyn PskSecrets) -> Translation {
    let mut t = Translator {
        config,
        secrets,
        identities: HashMap::new(),
        warnings: Vec::new(),
        seen: HashSet::new(),
        names: HashSet::new(),
        section_names: HashMap::new(),
        muted: false,
    };
    for setting in &config.global {
        t.line(setting, None);
    }
    for section in &config.sections {
        for setting in &section.settings {
            t.line(setting, Some(section));
        }
    }
    t.includes();
    let defaults = t.common(View {
        global: &config.global,
        own: &[],
        section: None,
    });
    if config.sections.is_empty() {
        t.warn(
            Severity::Problem,
            None,
            None,
            "no [section]: stunnel runs such a file in inetd mode, which dctunnel does not have",
            "write one [section] per service, with accept and connect",
        );
    }
    let mut planned = Vec::new();
    for section in &config.sections {
        planned.extend(t.section(section, &defaults));
    }
    t.refuse_shared_listens(&mut planned);
    let toml = t.render(&defaults, &planned);
    let services = planned
        .iter()
        .filter(|p| p.table.disabled.is_none())
        .count();
    let mut warnings = t.warnings;
    warnings.sort_by_key(|w| w.severity);
    Translation {
        toml,
        warnings,
        services,
    }
}

/// A section's settings as stunnel sees them: its own, then those inherited
/// from before the first section.
#[derive(Clone, Copy)]
pub(super) struct View<'a> {
    global: &'a [Setting],
    own: &'a [Setting],
    section: Option<&'a str>,
}

impl<'a> View<'a> {
    /// The value that applies: the section's last one, else the inherited one.
    pub(super) fn last(&self, name: &str) -> Option<&'a Setting> {
        let find = |list: &'a [Setting]| list.iter().rev().find(|s| s.is(name));
        find(self.own).or_else(|| find(self.global))
    }

    /// The settings of any of `names`, inherited ones first, in file order.
    pub(super) fn in_order<'n>(
        &self,
        names: &'n [&'n str],
    ) -> impl Iterator<Item = &'a Setting> + 'n
    where
        'a: 'n,
    {
        self.global
            .iter()
            .chain(self.own)
            .filter(move |s| names.iter().any(|n| s.is(n)))
    }

    /// All the values of a repeatable option: the section's own if it has
    /// any, else the inherited ones.
    pub(super) fn all(&self, name: &str) -> Vec<&'a Setting> {
        let own: Vec<_> = self.own.iter().filter(|s| s.is(name)).collect();
        if own.is_empty() {
            self.global.iter().filter(|s| s.is(name)).collect()
        } else {
            own
        }
    }

    /// The name of the section seen, empty for the options before the first.
    pub(super) fn section_name(&self) -> String {
        self.section.unwrap_or_default().to_owned()
    }

    /// The section a setting belongs to, `None` if it is inherited (so that a
    /// warning about a global line is given once, not once per section).
    fn section_of(&self, setting: &Setting) -> Option<String> {
        if self.own.iter().any(|s| std::ptr::eq(s, setting)) {
            self.section.map(str::to_owned)
        } else {
            None
        }
    }
}

/// The keys that may go in `[defaults]` as well as in a service, in the
/// order they are written.
#[derive(Debug, Default, Clone)]
pub(super) struct Common {
    fields: Vec<Entry>,
}

impl Common {
    fn set(&mut self, entry: Entry) {
        self.fields.retain(|e| e.key != entry.key);
        self.fields.push(entry);
    }

    pub(super) fn has(&self, key: &str) -> bool {
        self.fields.iter().any(|e| e.key == key)
    }

    /// The entries of `self` whose value differs from `defaults`.
    fn entries(&self, defaults: Option<&Common>) -> Vec<Entry> {
        self.fields
            .iter()
            .filter(|mine| {
                defaults.is_none_or(|d| {
                    !d.fields
                        .iter()
                        .any(|theirs| theirs.key == mine.key && theirs.value == mine.value)
                })
            })
            .cloned()
            .collect()
    }
}

/// Where a service listens, to find two services on the same address.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ListenKey {
    Ip(IpAddr, u16),
    Name(String, u16),
}

impl ListenKey {
    fn conflicts(&self, other: &ListenKey) -> bool {
        match (self, other) {
            (ListenKey::Ip(a, p), ListenKey::Ip(b, q)) => {
                p == q
                    && (a == b
                        || (a.is_ipv4() == b.is_ipv4()
                            && (a.is_unspecified() || b.is_unspecified())))
            }
            (ListenKey::Name(a, p), ListenKey::Name(b, q)) => p == q && a.eq_ignore_ascii_case(b),
            _ => false,
        }
    }
}

/// One service of the output, before rendering.
struct Planned {
    table: Table,
    listen: Option<ListenKey>,
    section: String,
    origin: Origin,
}

pub(super) struct Translator<'a> {
    config: &'a StunnelConfig,
    /// Reads the identities of PSKsecrets files.
    pub(super) secrets: &'a mut dyn PskSecrets,
    /// The identities of each PSKsecrets file read so far, or why they are
    /// not known: a file shared by several sections is read once.
    pub(super) identities: HashMap<String, Result<Vec<String>, String>>,
    warnings: Vec<Warning>,
    seen: HashSet<Warning>,
    /// dctunnel service names given so far.
    names: HashSet<String>,
    /// stunnel section names met so far, and where.
    section_names: HashMap<&'a str, &'a Origin>,
    /// Drop warnings while set.
    muted: bool,
}

/// What to do about a client-mode entrance on every or a public address that
/// listened on `port`: the addresses suggested keep that port.
fn client_listen_advice(port: u16) -> String {
    format!(
        "listen on the private address its clients use (e.g. listen = \"10.1.0.113:{port}\", \
         or \"127.0.0.1:{port}\" for clients on this host); only if it must be reachable from every \
         network, set allow_public_listen = true and allow_sources. Until then dctunnel check refuses \
         this service"
    )
}

impl<'a> Translator<'a> {
    pub(super) fn warn(
        &mut self,
        severity: Severity,
        origin: Option<&Origin>,
        section: Option<String>,
        message: impl Into<String>,
        advice: impl Into<String>,
    ) {
        let warning = Warning {
            severity,
            origin: origin.cloned(),
            section,
            message: message.into(),
            advice: advice.into(),
        };
        if !self.muted && self.seen.insert(warning.clone()) {
            self.warnings.push(warning);
        }
    }

    /// A warning about one setting as seen from `view`.
    pub(super) fn warn_at(
        &mut self,
        severity: Severity,
        view: View<'_>,
        setting: &Setting,
        message: impl Into<String>,
        advice: impl Into<String>,
    ) {
        let section = view.section_of(setting);
        self.warn(severity, Some(&setting.origin), section, message, advice);
    }

    /// A warning about a whole section.
    pub(super) fn warn_section(
        &mut self,
        severity: Severity,
        section: &Section,
        message: impl Into<String>,
        advice: impl Into<String>,
    ) {
        self.warn(
            severity,
            Some(&section.origin),
            Some(section.name.clone()),
            message,
            advice,
        );
    }

    /// Warns about one line on its own: options dropped, unknown or misplaced.
    fn line(&mut self, setting: &Setting, section: Option<&Section>) {
        let section_name = section.map(|s| s.name.clone());
        if section.is_some() && options::is_global_only(&setting.name) {
            self.warn(
                Severity::Problem,
                Some(&setting.origin),
                section_name,
                format!(
                    "`{}`: a global option inside a section (stunnel refuses this file)",
                    options::show(&setting.name, &setting.value)
                ),
                "move it before the first section",
            );
            return;
        }
        if let Treatment::Dropped {
            severity,
            message,
            advice,
        } = options::treatment(&setting.name, &setting.value, section.is_some())
        {
            self.warn(
                severity,
                Some(&setting.origin),
                section_name,
                message,
                advice,
            );
        }
    }

    fn includes(&mut self) {
        for include in &self.config.includes {
            if !include.dir.starts_with('/') {
                self.warn(
                    Severity::Note,
                    Some(&include.origin),
                    None,
                    format!("`include = {}`: a relative directory, read here relative to the stunnel file's directory", include.dir),
                    "stunnel reads it relative to its working directory (/ under systemd): check it is the same directory",
                );
            }
            if include.files.is_empty() {
                self.warn(
                    Severity::Note,
                    Some(&include.origin),
                    None,
                    format!("`include = {}`: the directory has no files", include.dir),
                    "nothing to do",
                );
            }
        }
    }

    /// `yes` or `no`, else a problem.
    pub(super) fn yes_no(&mut self, view: View<'_>, setting: &Setting) -> Option<bool> {
        if setting.value.eq_ignore_ascii_case("yes") {
            Some(true)
        } else if setting.value.eq_ignore_ascii_case("no") {
            Some(false)
        } else {
            self.warn_at(
                Severity::Problem,
                view,
                setting,
                format!(
                    "`{} = {}`: stunnel accepts only yes or no",
                    setting.name, setting.value
                ),
                "correct the value",
            );
            None
        }
    }

    /// A file path, with a note when it is relative.
    fn path(&mut self, view: View<'_>, setting: &Setting) -> String {
        if !setting.value.starts_with('/') {
            self.warn_at(
                Severity::Note,
                view,
                setting,
                format!("`{} = {}`: a relative path", setting.name, setting.value),
                "stunnel read it relative to its working directory, dctunnel reads it relative to its \
                 configuration file: write the absolute path",
            );
        }
        setting.value.clone()
    }

    /// A stunnel timeout in seconds, as a dctunnel duration and a comment
    /// saying where it comes from.
    fn seconds(&mut self, view: View<'_>, name: &str) -> Option<(String, String)> {
        let setting = view.last(name)?;
        match setting.value.parse::<u64>() {
            Ok(0) => {
                self.warn_at(
                    Severity::Note,
                    view,
                    setting,
                    format!("`{name} = 0`: a zero timeout is not carried over"),
                    "dctunnel's default applies",
                );
                None
            }
            Ok(secs) if setting.value.bytes().all(|b| b.is_ascii_digit()) => Some((
                duration(secs),
                format!("from stunnel's {} = {secs}", setting.name),
            )),
            _ => {
                self.warn_at(
                    Severity::Problem,
                    view,
                    setting,
                    format!(
                        "`{name} = {}`: not a number of seconds (stunnel refuses this file)",
                        setting.value
                    ),
                    "correct the value",
                );
                None
            }
        }
    }

    /// The keys [`Common`] holds, as `view` sets them.
    fn common(&mut self, view: View<'_>) -> Common {
        let mut common = Common::default();
        // With verifyPeer alone, CAfile holds the peers' own certificates, not
        // a CA: they become peer_pins (see verify_peer), not ca.
        let verify = self.verify(view);
        let pins_only = verify.peer && !verify.chain;
        for (option, key) in [("CAfile", "ca"), ("cert", "cert"), ("key", "key")] {
            if pins_only && key == "ca" {
                continue;
            }
            if let Some(s) = view.last(option) {
                common.set(Entry::new(key, Value::Str(self.path(view, s))));
            }
        }
        if !common.has("key") {
            if let Some(cert) = view.last("cert") {
                common.set(
                    Entry::new("key", Value::Str(cert.value.clone()))
                        .commented("stunnel reads the key from the cert file when key is not set"),
                );
            }
        }
        if let Some(s) = view.last("CRLfile") {
            let path = self.path(view, s);
            common.set(Entry::new("crl", Value::List(vec![path])));
        }
        for (option, key) in [
            ("TIMEOUTconnect", "connect_timeout"),
            ("TIMEOUTbusy", "handshake_timeout"),
            ("TIMEOUTidle", "idle_timeout"),
        ] {
            if let Some((value, comment)) = self.seconds(view, option) {
                common.set(Entry::new(key, Value::Str(value)).commented(comment));
            }
        }
        if let Some(s) = view.last("sessionResume") {
            if self.yes_no(view, s) == Some(false) {
                common.set(
                    Entry::new("tls_resumption", Value::Bool(false))
                        .commented("from stunnel's sessionResume = no"),
                );
            }
        }
        if self.tls12(view) {
            common.set(Entry::new("tls12", Value::Bool(true)).commented(
                "the stunnel file capped TLS at 1.2: remove once both ends run dctunnel (TLS 1.3)",
            ));
        }
        common
    }

    /// Whether the stunnel file capped TLS at 1.2.
    fn tls12(&mut self, view: View<'_>) -> bool {
        let Some(setting) = view.in_order(&["sslVersionMax", "sslVersion"]).last() else {
            return false;
        };
        match setting.value.to_ascii_lowercase().as_str() {
            "all" | "tlsv1.3" => false,
            "tlsv1.2" => {
                self.warn_at(
                    Severity::Note,
                    view,
                    setting,
                    format!("`{} = {}`: TLS capped at 1.2", setting.name, setting.value),
                    "tls12 = true keeps talking to such a peer; remove it once both ends run dctunnel, which speaks TLS 1.3",
                );
                true
            }
            "tlsv1.1" | "tlsv1" | "sslv3" | "sslv2" => {
                self.warn_at(
                    Severity::Problem,
                    view,
                    setting,
                    format!(
                        "`{} = {}`: dctunnel speaks TLS 1.2 and 1.3 only",
                        setting.name, setting.value
                    ),
                    "upgrade the peer, or run dctunnel at both ends",
                );
                false
            }
            _ => {
                self.warn_at(
                    Severity::Problem,
                    view,
                    setting,
                    format!(
                        "`{} = {}`: unknown TLS version (stunnel refuses this file)",
                        setting.name, setting.value
                    ),
                    "correct the value",
                );
                false
            }
        }
    }

    /// A dctunnel service name for `section`, unique in the output.
    fn name_for(&mut self, section: &'a Section) -> String {
        let clean: String = section
            .name
            .trim()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let clean = if clean.is_empty() {
            "service".to_owned()
        } else {
            clean
        };
        if clean != section.name {
            self.warn_section(
                Severity::Note,
                section,
                format!("the section name is written `{clean}`"),
                "dctunnel names are letters, digits, '-', '_' and '.'",
            );
        }
        let name = self.unique(&clean);
        if let Some(first) = self.section_names.get(section.name.as_str()) {
            let first = first.to_string();
            self.warn_section(
                Severity::Problem,
                section,
                format!(
                    "a second section named [{}] (the first is at {first})",
                    section.name
                ),
                format!("this one is named `{name}` here: give it a name of its own"),
            );
        } else {
            self.section_names.insert(&section.name, &section.origin);
        }
        name
    }

    fn unique(&mut self, base: &str) -> String {
        let mut name = base.to_owned();
        let mut n = 2u64;
        while self.names.contains(&name) {
            name = format!("{base}-{n}");
            n += 1;
        }
        self.names.insert(name.clone());
        name
    }

    /// The addresses of a repeatable address option, or `None` after
    /// reporting a bad one.
    fn addresses(&mut self, view: View<'a>, name: &str) -> Option<Vec<(&'a Setting, Address)>> {
        let mut out = Vec::new();
        let mut ok = true;
        for setting in view.all(name) {
            match Address::parse(&setting.value) {
                Ok(addr) => out.push((setting, addr)),
                Err(e) => {
                    let hint = if setting.value.contains([';', '#']) {
                        " (stunnel has no comments after a value)"
                    } else {
                        ""
                    };
                    self.warn_at(
                        Severity::Problem,
                        view,
                        setting,
                        format!("`{} = {}`: {e}{hint}", setting.name, setting.value),
                        "correct the address; this service is not enabled until then",
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    /// Translates one section into one service per `accept` address.
    fn section(&mut self, section: &'a Section, defaults: &Common) -> Vec<Planned> {
        let view = View {
            global: &self.config.global,
            own: &section.settings,
            section: Some(&section.name),
        };
        let base = self.name_for(section);
        let mut disabled: Option<String> = None;

        let client = match view.last("client") {
            None => false,
            Some(s) => self.yes_no(view, s).unwrap_or_else(|| {
                disabled = Some("stunnel's client option is neither yes nor no".into());
                false
            }),
        };
        if !client {
            if let Some(s) = view.last("sni") {
                self.warn_at(
                    Severity::Unsupported,
                    view,
                    s,
                    format!("`sni = {}`: name-based virtual services sharing a listener are not supported", s.value),
                    "give this service a listen address of its own",
                );
                disabled.get_or_insert_with(|| "it shared another section's listener (sni)".into());
            }
        }

        self.retry(view);
        let connects = self.addresses(view, "connect");
        let accepts = self.addresses(view, "accept");
        match &connects {
            None => {
                disabled.get_or_insert_with(|| "its connect address is not valid".into());
            }
            Some(list) if list.is_empty() => {
                if view.last("exec").is_some() {
                    disabled.get_or_insert_with(|| {
                        "it starts a program (exec) instead of connecting".into()
                    });
                } else {
                    self.warn_section(
                        Severity::Problem,
                        section,
                        "no connect (stunnel refuses a section without both accept and connect)",
                        "add connect; this service is not enabled until then",
                    );
                    disabled.get_or_insert_with(|| "it has no connect".into());
                }
            }
            Some(_) => {}
        }
        let accepts = match accepts {
            None => {
                disabled.get_or_insert_with(|| "its accept address is not valid".into());
                Vec::new()
            }
            Some(list) if list.is_empty() => {
                if disabled.is_none() {
                    self.warn_section(
                        Severity::Problem,
                        section,
                        "no accept (stunnel refuses a section without both accept and connect)",
                        "add accept; this service is not enabled until then",
                    );
                }
                disabled.get_or_insert_with(|| "it has no accept".into());
                Vec::new()
            }
            Some(list) => list,
        };
        let connects = connects.unwrap_or_default();

        let common = self.common(view);
        let verify = self.verify(view);
        let psk = self.psk(view, section, client);
        let mut comments = vec![format!(
            "stunnel section [{}] ({})",
            section.name, section.origin
        )];
        let mut trailing = Vec::new();
        if psk {
            comments.push(if client {
                "It used pre-shared keys: set ca, cert and key (see the warnings at the top)."
                    .into()
            } else {
                "It used pre-shared keys: set ca, cert and key (see the warnings at the top),\n\
                 and allow_peers (see below)."
                    .into()
            });
            trailing.push("to set before use: ca, cert, key (see the warnings at the top)".into());
        } else if disabled.is_none() {
            self.require_files(section, &common, client, &mut trailing);
        }
        // A service left disabled gets no advice about its peers: it must be
        // fixed and imported again first.
        self.muted = disabled.is_some();
        let (identity, identity_trailing) = if client {
            self.client_identity(view, section, verify, psk, &connects)
        } else {
            self.server_identity(view, section, verify, psk)
        };
        self.muted = false;
        trailing.extend(identity_trailing);

        let mut shared = Vec::new();
        if connects.len() == 1 {
            shared.push(Entry::new(
                "connect",
                Value::Str(connects[0].1.connect_target()),
            ));
        } else if !connects.is_empty() {
            shared.push(
                Entry::new(
                    "connect",
                    Value::List(connects.iter().map(|(_, a)| a.connect_target()).collect()),
                )
                .commented("tried in order"),
            );
        }
        shared.extend(common.entries(Some(defaults)));
        shared.extend(identity);

        let mut planned = Vec::new();
        let listens: Vec<Option<(&Setting, Address)>> = if accepts.is_empty() {
            vec![None]
        } else {
            accepts.into_iter().map(Some).collect()
        };
        let several = listens.len() > 1;
        for (i, accept) in listens.into_iter().enumerate() {
            let name = if i == 0 {
                base.clone()
            } else {
                self.unique(&base)
            };
            let mut entries = vec![
                Entry::new("name", Value::Str(name)),
                Entry::new(
                    "mode",
                    Value::Str(if client { "client" } else { "server" }.into()),
                ),
            ];
            let mut key = None;
            if let Some((setting, addr)) = accept {
                let (mut entry, listen_key) = self.listen(view, setting, &addr, client);
                if several {
                    entry.comments.insert(
                        0,
                        format!(
                            "stunnel section [{}] accepted on several addresses: one service each",
                            section.name
                        ),
                    );
                }
                entries.push(entry);
                key = Some(listen_key);
            }
            entries.extend(shared.iter().cloned());
            planned.push(Planned {
                table: Table {
                    comments: comments.clone(),
                    entries,
                    trailing: trailing.clone(),
                    disabled: disabled.clone(),
                },
                listen: key,
                section: section.name.clone(),
                origin: section.origin.clone(),
            });
        }
        planned
    }

    /// `retry` restarts the program of an exec section; without exec stunnel
    /// ignores it, and with exec the section is disabled for the exec.
    fn retry(&mut self, view: View<'_>) {
        let Some(setting) = view.last("retry") else {
            return;
        };
        if self.yes_no(view, setting) == Some(true) && view.last("exec").is_none() {
            self.warn_at(
                Severity::Note,
                view,
                setting,
                "`retry = yes`: only used with exec (it starts the program again), so stunnel ignored it here",
                "nothing to do",
            );
        }
    }

    /// The `listen` entry for one `accept` address.
    fn listen(
        &mut self,
        view: View<'_>,
        setting: &Setting,
        addr: &Address,
        client: bool,
    ) -> (Entry, ListenKey) {
        let shown = format!("{} = {}", setting.name, setting.value);
        let ip = match &addr.host {
            Host::Omitted => address::ANY_V4,
            Host::Ip(ip) => *ip,
            Host::Name(name) if name.eq_ignore_ascii_case("localhost") => {
                self.warn_at(
                    Severity::Note,
                    view,
                    setting,
                    format!("`{shown}`: written as 127.0.0.1"),
                    format!(
                        "nothing to do, or listen = \"[::1]:{}\" for IPv6",
                        addr.port
                    ),
                );
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            }
            Host::Name(name) => {
                self.warn_at(
                    Severity::Problem,
                    view,
                    setting,
                    format!("`{shown}`: listen takes an IP address, and stunnel resolved `{name}` when it started"),
                    "write the address it resolves to",
                );
                let listen = format!("{name}:{}", addr.port);
                return (
                    Entry::new("listen", Value::Str(listen)),
                    ListenKey::Name(name.clone(), addr.port),
                );
            }
        };
        let listen = address::socket(ip, addr.port);
        let key = ListenKey::Ip(ip, addr.port);
        let bare = addr.host == Host::Omitted;
        let mut entry = Entry::new("listen", Value::Str(listen.clone()));
        match (address::reach(ip), client) {
            (Reach::Wildcard, true) => {
                let what = if bare {
                    format!("`{shown}` (a port alone) listens on every address")
                } else {
                    format!("`{shown}` listens on every address")
                };
                self.warn_at(
                    Severity::Problem,
                    view,
                    setting,
                    format!("{what} in a client-mode section: anyone who reaches this host can use the tunnel"),
                    client_listen_advice(addr.port),
                );
                entry = entry.commented(format!(
                    "CHOOSE AN ADDRESS. stunnel's {what},\n\
                     and this is a client-mode (plaintext) entrance: anyone who reaches this host\n\
                     could use the tunnel. Listen on the private address its clients use,\n\
                     e.g. \"10.1.0.113:{port}\", or \"127.0.0.1:{port}\" for clients on this host.\n\
                     Only if it must be reachable from every network, add\n\
                     allow_public_listen = true and allow_sources = [...].\n\
                     Until then `dctunnel check` refuses this service.",
                    port = addr.port
                ));
            }
            (Reach::Public, true) => {
                self.warn_at(
                    Severity::Problem,
                    view,
                    setting,
                    format!("`{shown}`: a client-mode section listens on a public address: anyone who reaches it can use the tunnel"),
                    client_listen_advice(addr.port),
                );
                entry = entry.commented(
                    "CHOOSE AN ADDRESS: a client-mode (plaintext) entrance on a public address:\n\
                     anyone who reaches it could use the tunnel. Listen on a private address, or add\n\
                     allow_public_listen = true and allow_sources = [...].\n\
                     Until then `dctunnel check` refuses this service.",
                );
            }
            (Reach::Wildcard, false) if bare => {
                self.warn_at(
                    Severity::Note,
                    view,
                    setting,
                    format!("`{shown}` (a port alone) listens on every IPv4 address"),
                    format!("dctunnel listens on {listen} likewise: restrict clients with allow_sources, or listen on one address"),
                );
                entry = entry.commented(format!(
                    "stunnel's `{shown}` (a port alone) listened on every address, and so does this:\n\
                     restrict clients with allow_sources = [\"203.0.113.7/32\", ...] or choose one address."
                ));
            }
            (Reach::Wildcard, false) => {
                entry = entry
                    .commented("every address: consider allow_sources = [\"203.0.113.7/32\", ...]");
            }
            _ => {}
        }
        (entry, key)
    }

    /// Disables every service that listens where an earlier one does: stunnel
    /// could not have bound both.
    fn refuse_shared_listens(&mut self, planned: &mut [Planned]) {
        for i in 0..planned.len() {
            if planned[i].table.disabled.is_some() {
                continue;
            }
            let Some(key) = planned[i].listen.clone() else {
                continue;
            };
            let earlier = planned[..i].iter().find(|p| {
                p.table.disabled.is_none() && p.listen.as_ref().is_some_and(|k| k.conflicts(&key))
            });
            if let Some(earlier) = earlier {
                let message = format!(
                    "listens where section [{}] ({}) does: stunnel cannot bind both",
                    earlier.section, earlier.origin
                );
                let section = planned[i].section.clone();
                let origin = planned[i].origin.clone();
                self.warn(
                    Severity::Problem,
                    Some(&origin),
                    Some(section),
                    message.clone(),
                    "give one of them another address or port; this one is written commented out",
                );
                planned[i].table.disabled = Some(message);
            }
        }
    }

    fn render(&self, defaults: &Common, planned: &[Planned]) -> String {
        let mut out = String::new();
        let included: usize = self.config.includes.iter().map(|i| i.files.len()).sum();
        render::comment(
            &mut out,
            "",
            &format!(
                "dctunnel configuration translated by `dctunnel import-stunnel` from {}",
                self.config.source
            ),
        );
        if included > 0 {
            render::comment(
                &mut out,
                "",
                &format!("and the {included} file(s) it includes."),
            );
        }
        render::comment(
            &mut out,
            "",
            "Read the comments, then test it with: dctunnel check --config THIS_FILE",
        );
        if !self.warnings.is_empty() {
            render::comment(&mut out, "", "");
            render::comment(&mut out, "", "Not carried over, and what to do instead:");
            let mut sorted: Vec<&Warning> = self.warnings.iter().collect();
            sorted.sort_by_key(|w| w.severity);
            for w in sorted {
                render::comment(&mut out, "", &format!("- {w}"));
            }
        }
        let defaults = defaults.entries(None);
        if !defaults.is_empty() {
            out.push('\n');
            render::comment(
                &mut out,
                "",
                "From the options before the first stunnel section, which every section inherits.",
            );
            out.push_str("[defaults]\n");
            render::entries(&mut out, "", &defaults);
        }
        if !planned.iter().any(|p| p.table.disabled.is_none()) {
            out.push('\n');
            render::comment(
                &mut out,
                "",
                "No service could be translated: see the problems above.",
            );
        }
        for p in planned {
            out.push('\n');
            render::service(&mut out, &p.table);
        }
        out
    }
}

/// Seconds as a dctunnel duration.
fn duration(secs: u64) -> String {
    if secs % 3600 == 0 {
        format!("{}h", secs / 3600)
    } else if secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}
