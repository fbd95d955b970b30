//! What dctunnel reads from an X.509 certificate (names, key pin, validity,
//! serial, key type) and how it writes those facts, for the handshake
//! checks, the metrics and `dctunnel certs` alike.

use std::net::IpAddr;

use base64::Engine as _;
use sha2::{Digest, Sha256};
use time::{OffsetDateTime, UtcOffset};
pub use x509_parser::error::X509Error;
use x509_parser::prelude::{ASN1Time, FromDer, GeneralName, X509Certificate};
use x509_parser::{oid_registry, x509::SubjectPublicKeyInfo};

/// Facts about one certificate, as `certs show` prints them.
#[derive(Clone, Debug)]
pub struct CertInfo {
    /// Subject distinguished name, e.g. `CN=off2.openfoodfacts.org`.
    pub subject: String,
    /// The subject's first common name, if it has one.
    pub common_name: Option<String>,
    /// Subject alternative names, e.g. `DNS:localhost`, `IP:127.0.0.1`.
    pub sans: Vec<String>,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Whether issuer and subject are the same name.
    pub self_signed: bool,
    /// Serial number, as [`hex_serial`] writes it.
    pub serial: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// Key algorithm, e.g. `ECDSA P-256`, `Ed25519`, `RSA 2048`.
    pub key_type: String,
    /// `sha256/<base64>` of the SubjectPublicKeyInfo (see [`spki_pin`]).
    pub pin: String,
    /// basicConstraints cA.
    pub is_ca: bool,
    /// Extended key usages: `serverAuth`, `clientAuth`, ...
    pub extended_key_usage: Vec<String>,
}

impl CertInfo {
    /// Reads the facts of a DER certificate.
    pub fn parse(cert_der: &[u8]) -> Result<CertInfo, X509Error> {
        let cert = parse(cert_der)?;
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for name in &ext.value.general_names {
                sans.push(general_name(name));
            }
        }
        let mut extended_key_usage = Vec::new();
        if let Ok(Some(ext)) = cert.extended_key_usage() {
            let eku = ext.value;
            for (set, name) in [
                (eku.server_auth, "serverAuth"),
                (eku.client_auth, "clientAuth"),
                (eku.any, "any"),
                (eku.code_signing, "codeSigning"),
                (eku.email_protection, "emailProtection"),
                (eku.time_stamping, "timeStamping"),
                (eku.ocsp_signing, "OCSPSigning"),
            ] {
                if set {
                    extended_key_usage.push(name.to_owned());
                }
            }
            extended_key_usage.extend(eku.other.iter().map(|oid| oid.to_id_string()));
        }
        let common_name = cert
            .subject()
            .iter_common_name()
            .find_map(|cn| cn.as_str().ok().map(str::to_owned));
        Ok(CertInfo {
            subject: cert.subject().to_string(),
            common_name,
            sans,
            issuer: cert.issuer().to_string(),
            self_signed: cert.subject().as_raw() == cert.issuer().as_raw(),
            serial: hex_serial(cert.raw_serial()),
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            key_type: key_type_name(cert.public_key()),
            pin: spki_pin_of_spki(cert.public_key().raw),
            is_ca: cert.is_ca(),
            extended_key_usage,
        })
    }

    /// Whole days from `now` to the end of validity, negative once expired.
    pub fn days_left(&self, now: OffsetDateTime) -> i64 {
        (self.not_after - now).whole_seconds().div_euclid(86_400)
    }
}

fn parse(cert_der: &[u8]) -> Result<X509Certificate<'_>, X509Error> {
    X509Certificate::from_der(cert_der)
        .map(|(_, cert)| cert)
        .map_err(Into::into)
}

/// The names a certificate proves: its DNS SANs, or its CN when it has no
/// SAN extension at all. Empty if the certificate does not parse.
pub fn identities(cert_der: &[u8]) -> Vec<String> {
    let Ok(cert) = parse(cert_der) else {
        return Vec::new();
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        return san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect();
    }
    cert.subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect()
}

/// The pin of a certificate: `sha256/` and the base64 of the SHA-256 of its
/// DER SubjectPublicKeyInfo (the form of HPKP and ghostunnel).
pub fn spki_pin(cert_der: &[u8]) -> Result<String, X509Error> {
    Ok(spki_pin_of_spki(parse(cert_der)?.public_key().raw))
}

/// The pin of a DER SubjectPublicKeyInfo; see [`spki_pin`].
pub fn spki_pin_of_spki(spki_der: &[u8]) -> String {
    pin_text(&Sha256::digest(spki_der).into())
}

/// A SHA-256 key digest written as a pin: `sha256/` and its base64.
pub fn pin_text(digest: &[u8; 32]) -> String {
    format!(
        "sha256/{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// `Some(reason)` if the certificate is expired, not yet valid, or does
/// not parse.
pub fn validity_problem(cert_der: &[u8]) -> Option<String> {
    let cert = match parse(cert_der) {
        Ok(c) => c,
        Err(e) => return Some(format!("certificate does not parse: {e}")),
    };
    let validity = cert.validity();
    let now = ASN1Time::now();
    if now > validity.not_after {
        return Some(format!("certificate expired on {}", validity.not_after));
    }
    if now < validity.not_before {
        return Some(format!(
            "certificate is not valid before {}",
            validity.not_before
        ));
    }
    None
}

/// A serial number's bytes without the leading zeros of its DER encoding.
pub fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// Colon-separated lowercase hex without leading zero bytes, as
/// `certs show` prints and `revoke --serial` accepts.
pub fn hex_serial(bytes: &[u8]) -> String {
    let bytes = strip_zeros(bytes);
    if bytes.is_empty() {
        return "00".to_owned();
    }
    let parts: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

/// `2035-05-30T10:00:00Z`: RFC 3339 in UTC, whole seconds.
pub fn rfc3339(t: OffsetDateTime) -> String {
    let (date, time) = utc_parts(t);
    format!("{date}T{time}Z")
}

/// `2035-05-30 10:00:00 UTC`: the same instant as [`rfc3339`], for people.
pub fn human_time(t: OffsetDateTime) -> String {
    let (date, time) = utc_parts(t);
    format!("{date} {time} UTC")
}

/// `YYYY-MM-DD` and `hh:mm:ss` in UTC (fractions of a second dropped:
/// certificates carry none).
fn utc_parts(t: OffsetDateTime) -> (String, String) {
    let t = t.to_offset(UtcOffset::UTC);
    (
        format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day()),
        format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second()),
    )
}

fn key_type_name(spki: &SubjectPublicKeyInfo<'_>) -> String {
    let alg = &spki.algorithm.algorithm;
    if *alg == oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        match curve {
            Some(c) if c == oid_registry::OID_EC_P256 => "ECDSA P-256".to_owned(),
            Some(c) if c == oid_registry::OID_NIST_EC_P384 => "ECDSA P-384".to_owned(),
            Some(c) if c == oid_registry::OID_NIST_EC_P521 => "ECDSA P-521".to_owned(),
            Some(c) => format!("ECDSA (curve {})", c.to_id_string()),
            None => "ECDSA".to_owned(),
        }
    } else if *alg == oid_registry::OID_SIG_ED25519 {
        "Ed25519".to_owned()
    } else if *alg == oid_registry::OID_PKCS1_RSAENCRYPTION {
        match spki.parsed() {
            Ok(key) => format!("RSA {}", key.key_size()),
            Err(_) => "RSA".to_owned(),
        }
    } else {
        format!("unknown ({})", alg.to_id_string())
    }
}

fn general_name(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::DNSName(d) => format!("DNS:{d}"),
        GeneralName::IPAddress(bytes) => match ip_from_bytes(bytes) {
            Some(ip) => format!("IP:{ip}"),
            None => format!("IP:<{} bytes>", bytes.len()),
        },
        GeneralName::RFC822Name(m) => format!("email:{m}"),
        GeneralName::URI(u) => format!("URI:{u}"),
        other => other.to_string(),
    }
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Some(IpAddr::from(v4));
    }
    <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_colon_hex_without_leading_zeros() {
        assert_eq!(hex_serial(&[0x00, 0x4a, 0x00, 0xff, 0x01]), "4a:00:ff:01");
        assert_eq!(hex_serial(&[0x00]), "00");
        assert_eq!(hex_serial(&[]), "00");
    }

    #[test]
    fn times_are_written_in_utc_whole_seconds() {
        let t = OffsetDateTime::from_unix_timestamp(2_063_786_400)
            .unwrap()
            .to_offset(UtcOffset::from_hms(2, 0, 0).unwrap());
        assert_eq!(rfc3339(t), "2035-05-26T10:00:00Z");
        assert_eq!(human_time(t), "2035-05-26 10:00:00 UTC");
    }
}
