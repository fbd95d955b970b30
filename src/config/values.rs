//! The values written in the file, parsed: durations, source networks,
//! connect targets, `${VAR}` in file names, and which listen addresses are
//! public.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

use super::{Host, Target};

impl Target {
    pub fn parse(s: &str) -> Result<Target, String> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err(format!("{s:?}: port 0 is not a destination"));
            }
            return Ok(Target {
                host: Host::Ip(addr.ip()),
                port: addr.port(),
            });
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} has no port; write HOST:PORT"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{s:?}: {port:?} is not a port number"))?;
        if port == 0 {
            return Err(format!("{s:?}: port 0 is not a destination"));
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Target {
                host: Host::Ip(ip),
                port,
            });
        }
        let valid_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if host.is_empty() || host.len() > 253 || !host.split('.').all(valid_label) {
            return Err(format!("{host:?} is neither an IP address nor a DNS name"));
        }
        Ok(Target {
            host: Host::Name(host.to_ascii_lowercase()),
            port,
        })
    }
}

/// Replaces every `${VAR}` by the environment variable (for systemd's
/// `${CREDENTIALS_DIRECTORY}`).
pub(super) fn expand_env(value: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("{value:?}: unclosed \"${{\""))?;
        let var = &after[..end];
        let val = std::env::var(var).map_err(|_| {
            if var == "CREDENTIALS_DIRECTORY" {
                format!(
                    "{value:?}: CREDENTIALS_DIRECTORY is not set: systemd sets it for a unit with \
                     LoadCredential=; run by hand, set it to the folder of the files"
                )
            } else {
                format!("{value:?}: environment variable {var} is not set")
            }
        })?;
        out.push_str(&val);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses `"10s"`, `"5m"`, `"1h"`, `"500ms"`, `"1d"`, or sums like `"1m30s"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!("{s:?} is not a duration; write a number and a unit: \"500ms\", \"10s\", \"5m\", \"1h\", \"1d\"")
    };
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86400)),
            _ => return Err(bad()),
        };
        total = total.saturating_add(unit);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

pub(super) fn parse_source(s: &str) -> Result<IpNet, String> {
    let net = parse_net(s)?;
    // An IPv4 client on a dual-stack listener is matched as the IPv4
    // address it is, so an entry in the mapped form would match nobody.
    if let IpNet::V6(v6) = net {
        if let (Some(v4), true) = (v6.addr().to_ipv4_mapped(), v6.prefix_len() >= 96) {
            let v4 = IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).unwrap_or(net);
            return Err(format!(
                "{s:?} is an IPv4 source written as IPv6; IPv4 clients are matched by their \
                 IPv4 address, even on an IPv6 listener: write \"{v4}\""
            ));
        }
    }
    Ok(net)
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        if net != net.trunc() {
            return Err(format!(
                "{s:?} has host bits set; did you mean {}?",
                net.trunc()
            ));
        }
        return Ok(net);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(format!(
        "{s:?} is not an address or a CIDR network such as \"10.1.0.0/16\" or \"2a06:c484:5::/48\""
    ))
}

/// True for wildcard addresses and for addresses reachable from the public
/// internet: anything but loopback, private (RFC 1918, shared CGNAT space,
/// IPv6 unique local) and link-local.
pub fn is_public_or_wildcard(ip: IpAddr) -> bool {
    if ip.is_unspecified() {
        return true;
    }
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            let cgnat = a == 100 && (64..128).contains(&b);
            !(v4.is_loopback() || v4.is_private() || v4.is_link_local() || cgnat)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            let unique_local = first & 0xfe00 == 0xfc00;
            let link_local = first & 0xffc0 == 0xfe80;
            !(v6.is_loopback() || unique_local || link_local)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "10", "s", "10 s", "-1s", "1.5s", "10x"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn targets() {
        let t = Target::parse("proxy2.openfoodfacts.org:27017").unwrap();
        assert_eq!(t.host, Host::Name("proxy2.openfoodfacts.org".into()));
        assert_eq!(t.port, 27017);
        let t = Target::parse("[2a06:c484:5::1]:16000").unwrap();
        assert_eq!(t.host, Host::Ip("2a06:c484:5::1".parse().unwrap()));
        assert_eq!(t.to_string(), "[2a06:c484:5::1]:16000");
        assert!(Target::parse("no-port").is_err());
        assert!(Target::parse("host:99999").is_err());
        assert!(Target::parse("localhost:0").is_err());
        assert!(Target::parse("127.0.0.1:0").is_err());
        assert!(Target::parse("[::1]:0").is_err());
        assert!(Target::parse("bad_name!:80").is_err());
    }

    #[test]
    fn public_addresses() {
        for public in [
            "0.0.0.0",
            "::",
            "213.36.253.206",
            "2a06:c484:5::1",
            "8.8.8.8",
        ] {
            assert!(is_public_or_wildcard(public.parse().unwrap()), "{public}");
        }
        for private in [
            "127.0.0.1",
            "10.1.0.113",
            "192.168.1.1",
            "172.16.0.1",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(
                !is_public_or_wildcard(private.parse().unwrap()),
                "{private}"
            );
        }
    }

    #[test]
    fn sources() {
        assert!(parse_source("10.1.0.0/16").is_ok());
        assert!(parse_source("10.1.0.1/16").is_err());
        assert_eq!(
            parse_source("127.0.0.1").unwrap(),
            "127.0.0.1/32".parse::<IpNet>().unwrap()
        );
        assert!(parse_source("2a06:c484:5::/48").is_ok());
        assert!(parse_source("nonsense").is_err());
        let e = parse_source("::ffff:10.99.0.3/128").unwrap_err();
        assert!(e.contains("write \"10.99.0.3/32\""), "{e}");
        let e = parse_source("::ffff:10.99.0.0/120").unwrap_err();
        assert!(e.contains("write \"10.99.0.0/24\""), "{e}");
        let e = parse_source("::ffff:10.99.0.3").unwrap_err();
        assert!(e.contains("write \"10.99.0.3/32\""), "{e}");
        assert!(parse_source("::/0").is_ok());
    }

    #[test]
    fn env_expansion() {
        std::env::set_var("DCTUNNEL_TEST_DIR", "/run/creds");
        assert_eq!(
            expand_env("${DCTUNNEL_TEST_DIR}/off2.key").unwrap(),
            "/run/creds/off2.key"
        );
        assert!(expand_env("${DCTUNNEL_SURELY_UNSET_VAR}/k").is_err());
        assert!(expand_env("${unclosed").is_err());
    }
}
