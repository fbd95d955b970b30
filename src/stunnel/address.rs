//! Reads stunnel's `[HOST:]PORT` addresses (`accept`, `connect`) and writes
//! them the way dctunnel spells them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

/// The host part of a stunnel address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Host {
    /// No host: every IPv4 address for `accept`, localhost for `connect`.
    Omitted,
    /// An IP address literal.
    Ip(IpAddr),
    /// A name to resolve.
    Name(String),
}

/// A stunnel address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Address {
    pub(crate) host: Host,
    pub(crate) port: u16,
}

/// Why a stunnel address cannot be carried over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AddressError {
    /// A Unix socket path: dctunnel carries TCP only.
    UnixSocket,
    /// A port that is neither a number from 1 to 65535 nor a known service name.
    Port(String),
    /// A host part with characters no host name has (often a comment written
    /// after the value, which stunnel does not allow).
    Host(String),
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressError::UnixSocket => write!(f, "a Unix socket path (dctunnel carries TCP only)"),
            AddressError::Port(port) => {
                write!(f, "the port `{port}` is not a number from 1 to 65535")
            }
            AddressError::Host(host) => {
                write!(f, "the host `{host}` is not an IP address or a host name")
            }
        }
    }
}

/// Service names stunnel resolves through /etc/services that tunnels commonly
/// use; anything else must be written as a number.
const SERVICE_PORTS: &[(&str, u16)] = &[
    ("smtp", 25),
    ("http", 80),
    ("pop3", 110),
    ("nntp", 119),
    ("imap", 143),
    ("imap2", 143),
    ("ldap", 389),
    ("https", 443),
    ("submissions", 465),
    ("smtps", 465),
    ("nntps", 563),
    ("submission", 587),
    ("ldaps", 636),
    ("imaps", 993),
    ("pop3s", 995),
    ("mysql", 3306),
    ("postgresql", 5432),
];

impl Address {
    /// Parses stunnel's `[HOST:]PORT`. The host is everything before the last
    /// colon, so `:::16000` is the IPv6 address `::`; the bracketed form
    /// `[::1]:80` is accepted too.
    pub(crate) fn parse(value: &str) -> Result<Address, AddressError> {
        if value.starts_with('/') {
            return Err(AddressError::UnixSocket);
        }
        let (host, port) = match value.rsplit_once(':') {
            Some((host, port)) => (host, port),
            None => ("", value),
        };
        let port = parse_port(port)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let host = if host.is_empty() {
            Host::Omitted
        } else if let Ok(ip) = host.parse::<IpAddr>() {
            Host::Ip(ip)
        } else if is_host_name(host) {
            Host::Name(host.to_owned())
        } else {
            return Err(AddressError::Host(host.to_owned()));
        };
        Ok(Address { host, port })
    }

    /// The address as a dctunnel `connect` target: an omitted host is
    /// localhost, as in stunnel.
    pub(crate) fn connect_target(&self) -> String {
        match &self.host {
            Host::Omitted => format!("localhost:{}", self.port),
            Host::Ip(ip) => socket(*ip, self.port),
            Host::Name(name) => format!("{name}:{}", self.port),
        }
    }

    /// The host part of [`Self::connect_target`], which dctunnel uses as the
    /// default server name.
    pub(crate) fn connect_host(&self) -> String {
        match &self.host {
            Host::Omitted => "localhost".to_owned(),
            Host::Ip(ip) => ip.to_string(),
            Host::Name(name) => name.clone(),
        }
    }
}

/// Which addresses a listener accepts connections on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reach {
    /// Loopback only.
    Loopback,
    /// A private, link-local or shared (carrier-grade NAT) address.
    Private,
    /// Every address of the host, public ones included.
    Wildcard,
    /// A public address.
    Public,
}

/// Classifies a listen address.
pub(crate) fn reach(ip: IpAddr) -> Reach {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_unspecified() {
                Reach::Wildcard
            } else if v4.is_loopback() {
                Reach::Loopback
            } else if v4.is_private() || v4.is_link_local() || (a == 100 && (64..128).contains(&b))
            {
                Reach::Private
            } else {
                Reach::Public
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return reach(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            if v6.is_unspecified() {
                Reach::Wildcard
            } else if v6.is_loopback() {
                Reach::Loopback
            } else if first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfe80 {
                Reach::Private
            } else {
                Reach::Public
            }
        }
    }
}

/// `ip:port`, with brackets around IPv6 addresses.
pub(crate) fn socket(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// The IPv4 wildcard, what stunnel binds for a bare port.
pub(crate) const ANY_V4: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

fn parse_port(port: &str) -> Result<u16, AddressError> {
    if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
        return match port.parse::<u16>() {
            Ok(0) | Err(_) => Err(AddressError::Port(port.to_owned())),
            Ok(n) => Ok(n),
        };
    }
    SERVICE_PORTS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(port))
        .map(|&(_, n)| n)
        .ok_or_else(|| AddressError::Port(port.to_owned()))
}

fn is_host_name(host: &str) -> bool {
    host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(value: &str) -> Address {
        Address::parse(value).unwrap()
    }

    #[test]
    fn reads_every_stunnel_form() {
        assert_eq!(
            addr("27017"),
            Address {
                host: Host::Omitted,
                port: 27017
            }
        );
        assert_eq!(addr(":27017").host, Host::Omitted);
        assert_eq!(
            addr("10.1.0.113:27017").host,
            Host::Ip("10.1.0.113".parse().unwrap())
        );
        let any_v6 = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
        assert_eq!(
            addr(":::16000"),
            Address {
                host: Host::Ip(any_v6),
                port: 16000
            }
        );
        assert_eq!(addr("::1:80").host, Host::Ip("::1".parse().unwrap()));
        assert_eq!(addr("[::1]:80").host, Host::Ip("::1".parse().unwrap()));
        assert_eq!(
            addr("proxy2.openfoodfacts.org:27017").host,
            Host::Name("proxy2.openfoodfacts.org".into())
        );
        assert_eq!(addr("mail.example.org:smtp").port, 25);
    }

    #[test]
    fn refuses_what_dctunnel_cannot_carry() {
        assert_eq!(
            Address::parse("/run/app.sock"),
            Err(AddressError::UnixSocket)
        );
        assert_eq!(Address::parse("0"), Err(AddressError::Port("0".into())));
        assert_eq!(
            Address::parse("70000"),
            Err(AddressError::Port("70000".into()))
        );
        assert_eq!(
            Address::parse("host:"),
            Err(AddressError::Port(String::new()))
        );
        assert_eq!(
            Address::parse("27017 ; mongo"),
            Err(AddressError::Port("27017 ; mongo".into()))
        );
        assert_eq!(
            Address::parse("a b:25"),
            Err(AddressError::Host("a b".into()))
        );
    }

    #[test]
    fn writes_dctunnel_spellings() {
        assert_eq!(addr("27017").connect_target(), "localhost:27017");
        assert_eq!(addr(":::16000").connect_target(), "[::]:16000");
        assert_eq!(addr("db:1").connect_host(), "db");
    }

    #[test]
    fn classifies_listen_addresses() {
        let r = |s: &str| reach(s.parse().unwrap());
        assert_eq!(r("0.0.0.0"), Reach::Wildcard);
        assert_eq!(r("::"), Reach::Wildcard);
        assert_eq!(r("127.0.0.1"), Reach::Loopback);
        assert_eq!(r("::1"), Reach::Loopback);
        assert_eq!(r("10.1.0.113"), Reach::Private);
        assert_eq!(r("192.168.1.2"), Reach::Private);
        assert_eq!(r("fd00::1"), Reach::Private);
        assert_eq!(r("213.36.253.206"), Reach::Public);
        assert_eq!(r("2001:41d0::1"), Reach::Public);
        assert_eq!(r("::ffff:10.0.0.1"), Reach::Private);
    }
}
