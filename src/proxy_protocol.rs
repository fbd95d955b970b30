//! The PROXY protocol header (HAProxy's specification, versions 1 and 2)
//! that a server-mode service can send to its backend, so that the backend
//! sees the address of the TLS peer instead of the tunnel's; version 2 also
//! carries the peer's verified identity.

use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

/// Which header to send, per service (`proxy_protocol = "v1"` or `"v2"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Version {
    #[serde(rename = "v1")]
    V1,
    #[serde(rename = "v2")]
    V2,
}

const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const PP2_TYPE_SSL: u8 = 0x20;
const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
const PP2_SUBTYPE_SSL_CN: u8 = 0x22;
const PP2_CLIENT_SSL: u8 = 0x01;
const PP2_CLIENT_CERT_CONN: u8 = 0x02;

/// Both addresses in one family: an IPv4 peer on an IPv6 socket is
/// written as IPv4, and a remaining mix is written as IPv6.
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (src, dst) = (canon(src), canon(dst));
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    if src.is_ipv4() == dst.is_ipv4() {
        (src, dst)
    } else {
        (v6(src), v6(dst))
    }
}

/// The header for a connection from `src` (the TLS peer) accepted on
/// `dst` (our listening address), whose peer proved `identity` over
/// `tls_version` (e.g. "TLSv1.3").
pub fn header(
    version: Version,
    src: SocketAddr,
    dst: SocketAddr,
    identity: &str,
    tls_version: &str,
) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    match version {
        Version::V1 => {
            let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                src.ip(),
                dst.ip(),
                src.port(),
                dst.port()
            )
            .into_bytes()
        }
        Version::V2 => {
            let mut addresses = Vec::with_capacity(36);
            let family = match (src.ip(), dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    addresses.extend_from_slice(&s.octets());
                    addresses.extend_from_slice(&d.octets());
                    0x11
                }
                (s, d) => {
                    let six = |ip: IpAddr| match ip {
                        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                        IpAddr::V6(v6) => v6.octets(),
                    };
                    addresses.extend_from_slice(&six(s));
                    addresses.extend_from_slice(&six(d));
                    0x21
                }
            };
            addresses.extend_from_slice(&src.port().to_be_bytes());
            addresses.extend_from_slice(&dst.port().to_be_bytes());

            // PP2_TYPE_SSL: client flags, verify result (0 = verified),
            // then the TLS version and the peer's name as sub-TLVs.
            let mut ssl = vec![PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN, 0, 0, 0, 0];
            tlv(&mut ssl, PP2_SUBTYPE_SSL_VERSION, tls_version.as_bytes());
            tlv(&mut ssl, PP2_SUBTYPE_SSL_CN, identity.as_bytes());
            let mut tlvs = Vec::new();
            tlv(&mut tlvs, PP2_TYPE_SSL, &ssl);

            let mut out = Vec::with_capacity(16 + addresses.len() + tlvs.len());
            out.extend_from_slice(&V2_SIGNATURE);
            out.push(0x21); // version 2, PROXY command
            out.push(family);
            let len = (addresses.len() + tlvs.len()) as u16;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&addresses);
            out.extend_from_slice(&tlvs);
            out
        }
    }
}

fn tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    // Identities and version strings are short; a longer value is cut
    // rather than corrupting the length field.
    let value = &value[..value.len().min(u16::MAX as usize - 64)];
    out.push(kind);
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_matches_the_specification_examples() {
        assert_eq!(
            header(
                Version::V1,
                a("192.168.0.1:56324"),
                a("192.168.0.11:443"),
                "x",
                "TLSv1.3"
            ),
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
        );
        assert_eq!(
            header(
                Version::V1,
                a("[2001:db8::1]:1000"),
                a("[2001:db8::2]:443"),
                "x",
                "TLSv1.3"
            ),
            b"PROXY TCP6 2001:db8::1 2001:db8::2 1000 443\r\n"
        );
        // An IPv4 peer accepted on an IPv6 wildcard socket stays IPv4.
        assert_eq!(
            header(
                Version::V1,
                a("[::ffff:10.0.0.1]:5"),
                a("[::ffff:10.0.0.2]:6"),
                "x",
                "TLSv1.3"
            ),
            b"PROXY TCP4 10.0.0.1 10.0.0.2 5 6\r\n"
        );
    }

    #[test]
    fn v2_layout() {
        let h = header(
            Version::V2,
            a("10.0.0.1:1234"),
            a("10.0.0.2:443"),
            "off1.example",
            "TLSv1.3",
        );
        assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(h[12], 0x21);
        assert_eq!(h[13], 0x11);
        let len = u16::from_be_bytes([h[14], h[15]]) as usize;
        assert_eq!(h.len(), 16 + len);
        assert_eq!(&h[16..20], &[10, 0, 0, 1]);
        assert_eq!(&h[20..24], &[10, 0, 0, 2]);
        assert_eq!(&h[24..26], &1234u16.to_be_bytes());
        assert_eq!(&h[26..28], &443u16.to_be_bytes());
        // One SSL TLV holding flags, verify = 0, version and CN sub-TLVs.
        assert_eq!(h[28], PP2_TYPE_SSL);
        let ssl_len = u16::from_be_bytes([h[29], h[30]]) as usize;
        let ssl = &h[31..31 + ssl_len];
        assert_eq!(31 + ssl_len, h.len());
        assert_eq!(ssl[0], PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN);
        assert_eq!(&ssl[1..5], &[0, 0, 0, 0]);
        assert_eq!(ssl[5], PP2_SUBTYPE_SSL_VERSION);
        assert_eq!(&ssl[8..15], b"TLSv1.3");
        assert_eq!(ssl[15], PP2_SUBTYPE_SSL_CN);
        assert_eq!(u16::from_be_bytes([ssl[16], ssl[17]]), 12);
        assert_eq!(&ssl[18..], b"off1.example");
    }

    #[test]
    fn v2_ipv6() {
        let h = header(
            Version::V2,
            a("[2001:db8::1]:1"),
            a("[2001:db8::2]:2"),
            "",
            "TLSv1.3",
        );
        assert_eq!(h[13], 0x21);
        assert_eq!(
            &h[16..32],
            &"2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
    }
}
