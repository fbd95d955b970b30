//! The catalogue of stunnel 5 options: which ones the translation carries over,
//! and for the others what the user should do instead.

use super::translate::Severity;

/// What happens to one `option = value` line on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Treatment {
    /// Carried over by the service translation (it reports its own problems).
    Translated,
    /// Harmless with this value (e.g. `libwrap = no`).
    Nothing,
    /// Not carried over.
    Dropped {
        severity: Severity,
        message: String,
        advice: String,
    },
}

const SYSTEMD: &str = "systemd runs dctunnel in the foreground as its own user and confines it: \
                       see the unit systemd/dctunnel@.service";
const LOGGING: &str = "dctunnel logs to standard error, which systemd sends to the journal; \
                       choose the format with --log-format";
const TLS_DEFAULTS: &str =
    "nothing to do: dctunnel uses rustls' defaults (TLS 1.3, modern ciphers); \
                            set tls12 = true only for a peer that cannot speak TLS 1.3";
const ENGINE: &str = "store the certificate and key as PEM files and set cert and key";
const EXEC: &str = "run the program as a service listening on 127.0.0.1 and point connect at it";
const SOURCES: &str = "restrict clients by address with allow_sources";
const OCSP: &str = "publish revocations in a CRL file and list it in crl";
const PROTOCOL: &str = "see the warning about protocol";

/// Options stunnel accepts only before the first section.
const GLOBAL_ONLY: &[&str] = &[
    "chroot",
    "compression",
    "egd",
    "engine",
    "enginectrl",
    "enginedefault",
    "fips",
    "foreground",
    "iconactive",
    "iconerror",
    "iconidle",
    "log",
    "output",
    "pid",
    "rndbytes",
    "rndfile",
    "rndoverwrite",
    "syslog",
    "taskbar",
];

/// Options whose value is a secret, never to be repeated in messages.
const SECRET: &[&str] = &[
    "enginectrl",
    "protocolpassword",
    "ticketkeysecret",
    "ticketmacsecret",
];

/// Whether stunnel accepts `name` only before the first section.
pub(crate) fn is_global_only(name: &str) -> bool {
    GLOBAL_ONLY.iter().any(|g| g.eq_ignore_ascii_case(name))
}

/// `name = value` for messages, with secret values masked.
pub(crate) fn show(name: &str, value: &str) -> String {
    if SECRET.iter().any(|s| s.eq_ignore_ascii_case(name)) {
        format!("{name} = ****")
    } else {
        format!("{name} = {value}")
    }
}

/// Whether a `ciphers` list enables pre-shared-key cipher suites.
pub(crate) fn ciphers_use_psk(list: &str) -> bool {
    list.split([':', ',', ' '])
        .any(|c| !c.starts_with(['!', '-']) && c.to_ascii_uppercase().contains("PSK"))
}

/// What happens to the setting `name = value`, written in a section when
/// `in_section`, before the first one otherwise.
pub(crate) fn treatment(name: &str, value: &str, in_section: bool) -> Treatment {
    let shown = show(name, value);
    let lower = name.to_ascii_lowercase();
    let yes = value.eq_ignore_ascii_case("yes");
    let dropped = |severity, what: &str, advice: &str| Treatment::Dropped {
        severity,
        message: format!("`{shown}`: {what}"),
        advice: advice.to_owned(),
    };
    use Severity::{Note, Unsupported};
    match lower.as_str() {
        "accept" | "connect" | "client" | "cafile" | "cert" | "key" | "crlfile" | "verify"
        | "verifychain" | "verifypeer" | "checkhost" | "checkip" | "timeoutbusy"
        | "timeoutconnect" | "timeoutidle" | "sni" | "pskidentity" | "psksecrets"
        | "sslversion" | "sslversionmax" | "sslversionmin" => Treatment::Translated,
        "ciphers" if ciphers_use_psk(value) => Treatment::Translated,
        "sessionresume" => Treatment::Translated,

        "setuid" | "setgid" if in_section => dropped(
            Note,
            "sets the owner of a Unix socket, and dctunnel listens on TCP only",
            "nothing to do",
        ),
        "setuid" | "setgid" | "chroot" => dropped(Unsupported, "not carried over", SYSTEMD),
        "pid" | "foreground" => dropped(Note, "not needed", SYSTEMD),
        "debug" => debug(&shown, value),
        "output" | "syslog" | "log" | "logid" | "service" => {
            dropped(Note, "logging is set differently", LOGGING)
        }
        "engine" | "enginectrl" | "enginedefault" | "engineid" | "enginenum" | "caengine" => {
            dropped(Unsupported, "cryptographic engines are not supported", ENGINE)
        }
        "compression" => dropped(Note, "TLS compression is unsafe and not supported", "nothing to do"),
        "fips" | "egd" | "rndbytes" | "rndfile" | "rndoverwrite" => dropped(
            Note,
            "not configurable",
            "nothing to do: dctunnel uses the system's random number generator and rustls' own checks",
        ),
        "iconactive" | "iconerror" | "iconidle" | "taskbar" => {
            dropped(Note, "a Windows option", "nothing to do")
        }
        "ciphers" | "ciphersuites" | "curves" | "options" | "securitylevel" | "config"
        | "renegotiation" | "sessioncachesize" | "sessioncachetimeout" | "sessiond" | "ticketkeysecret" | "ticketmacsecret" => {
            dropped(Note, "TLS tuning is not configurable", TLS_DEFAULTS)
        }
        "socket" | "reset" | "stack" => dropped(Note, "not configurable", "nothing to do"),
        "capath" => dropped(
            Unsupported,
            "a directory of hashed CA certificates is not supported",
            "concatenate the CA certificates into one PEM file and set ca",
        ),
        "crlpath" => dropped(
            Unsupported,
            "a directory of hashed CRLs is not supported",
            "concatenate the CRLs into one PEM file and list it in crl",
        ),
        "checkemail" => dropped(
            Unsupported,
            "e-mail addresses in certificates are not checked",
            "check host names instead: allow_peers in server mode, server_name in client mode",
        ),
        // Only used with exec: the section reports it (see translate).
        "retry" => Treatment::Translated,
        "exec" | "execargs" | "pty" => {
            dropped(Unsupported, "starting a program per connection is not supported", EXEC)
        }
        "ident" => dropped(Unsupported, "IDENT checks are not supported", SOURCES),
        "libwrap" if !yes => Treatment::Nothing,
        "libwrap" => dropped(
            Unsupported,
            "/etc/hosts.allow and /etc/hosts.deny are not consulted",
            SOURCES,
        ),
        "local" => dropped(
            Unsupported,
            "the source address of outgoing connections is not configurable",
            "let the kernel choose it from the routing table",
        ),
        "ocsp" | "ocspaia" | "ocspflag" | "ocspnonce" => {
            dropped(Unsupported, "OCSP is not supported", OCSP)
        }
        "protocol" => protocol(&shown, value),
        "protocolauthentication" | "protocoldomain" | "protocolheader" | "protocolhost"
        | "protocolpassword" | "protocolusername" => {
            dropped(Note, "only used with protocol", PROTOCOL)
        }
        "redirect" => dropped(
            Unsupported,
            "redirecting clients that fail authentication is not supported",
            "nothing to do: such connections are refused",
        ),
        "transparent" if value.eq_ignore_ascii_case("none") || value.eq_ignore_ascii_case("no") => {
            Treatment::Nothing
        }
        "transparent" => dropped(
            Unsupported,
            "transparent proxying is not supported",
            "the backend sees dctunnel's address, not the client's: filter clients at the tunnel with allow_sources",
        ),
        "timeoutclose" => dropped(
            Note,
            "the wait for the peer's close_notify is not configurable",
            "nothing to do: dctunnel closes each direction under its own deadline",
        ),
        "failover" if value.eq_ignore_ascii_case("prio") => Treatment::Nothing,
        "failover" => dropped(
            Note,
            "round-robin between connect addresses is not supported",
            "dctunnel tries the connect addresses in the order written; put the preferred one first",
        ),
        "delay" if !yes => Treatment::Nothing,
        "delay" => dropped(
            Note,
            "not needed",
            "nothing to do: dctunnel resolves connect host names when it connects",
        ),
        "requirecert" if yes => Treatment::Nothing,
        "requirecert" => dropped(
            Note,
            "dctunnel always requires the peer's certificate",
            "issue a certificate for every client host with `dctunnel certs issue`",
        ),
        _ => Treatment::Dropped {
            severity: Severity::Problem,
            message: format!("`{shown}`: unknown option (stunnel refuses this file)"),
            advice: "correct its spelling or remove it".into(),
        },
    }
}

/// syslog's level names, by number (stunnel's `debug` takes either).
const LEVELS: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

/// `debug = [FACILITY.]LEVEL`: the same level is chosen in dctunnel with the
/// DCTUNNEL_LOG environment variable, which takes syslog's names and numbers.
fn debug(shown: &str, value: &str) -> Treatment {
    let level = value.rsplit_once('.').map_or(value, |(_, level)| level);
    let lower = level.to_ascii_lowercase();
    let known = LEVELS.contains(&lower.as_str())
        || matches!(
            lower.as_str(),
            "0" | "1" | "2" | "3" | "4" | "5" | "6" | "7"
        );
    if !known {
        return Treatment::Dropped {
            severity: Severity::Problem,
            message: format!("`{shown}`: unknown level (stunnel refuses this file)"),
            advice: "use a syslog level: emerg, alert, crit, err, warning, notice, info, debug or 0 to 7".into(),
        };
    }
    Treatment::Dropped {
        severity: Severity::Note,
        message: format!("`{shown}`: the log level is set differently"),
        advice: format!(
            "run dctunnel with DCTUNNEL_LOG={lower} for the same level (in its systemd unit: \
             `systemctl edit dctunnel@NAME`, then [Service] Environment=DCTUNNEL_LOG={lower}); \
             logs go to standard error, which systemd sends to the journal"
        ),
    }
}

fn protocol(shown: &str, value: &str) -> Treatment {
    let advice = match value.to_ascii_lowercase().as_str() {
        "smtp" | "imap" | "pop3" | "nntp" | "ldap" | "pgsql" | "cifs" => {
            "run dctunnel at both ends of the tunnel: TLS then starts with the connection and no STARTTLS exchange is needed"
        }
        "proxy" => "the backend sees dctunnel's address, not the client's: filter clients at the tunnel with allow_sources",
        _ => "dctunnel forwards to one fixed address: keep stunnel or a proxy for this service",
    };
    Treatment::Dropped {
        severity: Severity::Unsupported,
        message: format!("`{shown}`: protocol negotiation is not supported (dctunnel speaks TLS from the first byte)"),
        advice: advice.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_case_insensitive() {
        assert_eq!(treatment("CAfile", "/x", true), Treatment::Translated);
        assert_eq!(treatment("TIMEOUTidle", "1", true), Treatment::Translated);
        assert!(is_global_only("Foreground"));
        assert!(!is_global_only("setuid"));
    }

    #[test]
    fn unknown_options_are_problems() {
        let Treatment::Dropped {
            severity, message, ..
        } = treatment("acept", "25", true)
        else {
            panic!("not dropped")
        };
        assert_eq!(severity, Severity::Problem);
        assert_eq!(
            message,
            "`acept = 25`: unknown option (stunnel refuses this file)"
        );
    }

    #[test]
    fn secrets_are_not_repeated() {
        let Treatment::Dropped { message, .. } = treatment("engineCtrl", "PIN:123456", false)
        else {
            panic!("not dropped")
        };
        assert!(!message.contains("123456"), "{message}");
    }

    #[test]
    fn psk_cipher_lists_are_recognised() {
        assert!(ciphers_use_psk("PSK"));
        assert!(ciphers_use_psk("ECDHE-PSK-CHACHA20-POLY1305:HIGH"));
        assert!(!ciphers_use_psk("HIGH:!aNULL:!SSLv2:!DH:!kDHEPSK"));
    }

    #[test]
    fn harmless_values_say_nothing() {
        assert_eq!(treatment("libwrap", "no", true), Treatment::Nothing);
        assert_eq!(treatment("failover", "prio", true), Treatment::Nothing);
        assert!(matches!(
            treatment("failover", "rr", true),
            Treatment::Dropped { .. }
        ));
    }
}
