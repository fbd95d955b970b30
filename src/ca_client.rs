//! Talking to the online CA service (`mode = "ca"`) from a host: one POST
//! of a certificate request over TLS 1.3 and HTTP/1.1, every phase under a
//! deadline, the answer bounded; and the check of what it sent back (the
//! new certificate holds our new key and exactly the names asked for).
//! Used by the daemon's renewal ([`crate::renewal`]) and by
//! `dctunnel certs enrol`.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::config::{Host, Target};
use crate::files;
use crate::x509;

/// How long a TCP connection to one address of the CA service may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the whole exchange may take, from the first connection
/// attempt to the last byte of the answer.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read: a certificate and the CA certificate.
const MAX_ANSWER: usize = 64 * 1024;
/// The most characters of a refusal's reason quoted in a message.
const MAX_REASON: usize = 200;

/// Why a request to the CA service got no certificate. Each message is
/// whole (what went wrong included), so none has a `source()`.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot resolve {target}: {error}")]
    Resolve {
        target: String,
        error: std::io::Error,
    },
    #[error("cannot connect to {addr}: {error}")]
    Connect {
        addr: SocketAddr,
        error: std::io::Error,
    },
    /// The TLS handshake failed (the CA service refused our certificate,
    /// or we refused its).
    #[error("TLS with {addr}: {error}")]
    Tls {
        addr: SocketAddr,
        error: std::io::Error,
    },
    /// The HTTP exchange failed: with TLS 1.3, a client certificate the CA
    /// service refuses shows here, as an alert on the first read.
    #[error("HTTP exchange with {addr}: {reason}")]
    Http { addr: SocketAddr, reason: String },
    #[error("no answer within {}s", EXCHANGE_TIMEOUT.as_secs())]
    Timeout,
    /// The CA service answered, and not with a certificate.
    #[error("the CA service answered {status}: {reason}")]
    Refused { status: Status, reason: String },
    /// The CA service answered 200 with something unusable.
    #[error("the CA service's answer is unusable: {0}")]
    BadAnswer(String),
}

/// An HTTP status as its status line shows it: `403 Forbidden`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub StatusCode);

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.as_u16())?;
        if let Some(reason) = self.0.canonical_reason() {
            write!(f, " {reason}")?;
        }
        Ok(())
    }
}

/// A request to send to the CA service.
pub struct Post<'a> {
    pub ca_service: &'a Target,
    pub server_name: &'a ServerName<'static>,
    pub tls: Arc<rustls::ClientConfig>,
    /// `/v1/renew` or `/v1/enrol`.
    pub path: &'static str,
    /// `Authorization: Bearer` (enrolment), never logged.
    pub bearer: Option<String>,
    /// The certificate request, PEM.
    pub csr_pem: String,
}

/// What the CA service issued, checked.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The new certificate, PEM (this block only).
    pub cert_pem: String,
    /// The certificates that followed it (the CA certificate), PEM.
    pub chain_pem: String,
    /// The certificates that followed it, DER.
    pub chain: Vec<CertificateDer<'static>>,
    pub info: x509::CertInfo,
}

/// Sends `post` and returns the certificate the CA service issued, after
/// checking that it holds `spki` (our new key) and exactly `names` (as
/// `certs show` writes them: `DNS:…`, `IP:…`).
pub async fn request(post: Post<'_>, spki: &[u8], names: &[String]) -> Result<Issued, CaError> {
    let body = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(&post))
        .await
        .map_err(|_| CaError::Timeout)??;
    check(&body, spki, names)
}

/// Connects to the first address of the CA service that answers, and sends
/// the request; returns the body of a 200 answer.
async fn exchange(post: &Post<'_>) -> Result<Bytes, CaError> {
    let addrs: Vec<SocketAddr> = match &post.ca_service.host {
        Host::Ip(ip) => vec![SocketAddr::new(*ip, post.ca_service.port)],
        Host::Name(name) => tokio::net::lookup_host((name.as_str(), post.ca_service.port))
            .await
            .map_err(|error| CaError::Resolve {
                target: post.ca_service.to_string(),
                error,
            })?
            .collect(),
    };
    let mut last = None;
    let mut connected = None;
    for addr in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => {
                connected = Some((addr, tcp));
                break;
            }
            Ok(Err(error)) => last = Some(CaError::Connect { addr, error }),
            Err(_) => {
                last = Some(CaError::Connect {
                    addr,
                    error: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
                    ),
                })
            }
        }
    }
    let Some((addr, tcp)) = connected else {
        return Err(last.unwrap_or_else(|| CaError::Resolve {
            target: post.ca_service.to_string(),
            error: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
        }));
    };
    let tls = tokio_rustls::TlsConnector::from(post.tls.clone())
        .connect(post.server_name.clone(), tcp)
        .await
        .map_err(|error| CaError::Tls { addr, error })?;
    let http = |e: hyper::Error| CaError::Http {
        addr,
        reason: chain(&e),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(http)?;
    // The connection is driven beside the request; dropped with it.
    let driver = AbortOnDrop(tokio::spawn(conn));
    let mut builder = Request::post(post.path)
        .header(hyper::header::HOST, post.server_name.to_str().as_ref())
        .header(hyper::header::CONTENT_TYPE, "application/pkcs10")
        .header(hyper::header::CONNECTION, "close");
    if let Some(token) = &post.bearer {
        builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = builder
        .body(Full::new(Bytes::from(post.csr_pem.clone())))
        .map_err(|e| CaError::BadAnswer(format!("cannot build the request: {e}")))?;
    let response = sender.send_request(request).await.map_err(http)?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| CaError::Http {
            addr,
            reason: format!("reading the answer: {e}"),
        })?
        .to_bytes();
    drop(driver);
    if status != StatusCode::OK {
        return Err(CaError::Refused {
            status: Status(status),
            reason: one_line(&body),
        });
    }
    Ok(body)
}

/// Aborts a spawned task when dropped (a timeout drops the exchange).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An error and its sources on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// The first line of a refusal's text, printable characters only, cut at
/// [`MAX_REASON`] characters: it goes into a log line.
fn one_line(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line = text.lines().next().unwrap_or("").trim();
    let mut out: String = line
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_REASON)
        .collect();
    if line.chars().count() > MAX_REASON {
        out.push('…');
    }
    if out.is_empty() {
        out.push_str("(no reason given)");
    }
    out
}

/// Checks a 200 answer: PEM certificates, the first holding `spki` and
/// exactly `names`, valid now, for a host (not a CA).
fn check(body: &[u8], spki: &[u8], names: &[String]) -> Result<Issued, CaError> {
    let bad = |m: String| CaError::BadAnswer(m);
    let blocks = files::pem_blocks(body).map_err(|e| bad(format!("not PEM: {e}")))?;
    let mut certs = Vec::new();
    for block in blocks {
        match block.label {
            files::Label::Certificate => certs.push(CertificateDer::from(block.der)),
            other => return Err(bad(format!("holds a {other} block, not certificates"))),
        }
    }
    let mut certs = certs.into_iter();
    let Some(leaf) = certs.next() else {
        return Err(bad("holds no certificate".to_owned()));
    };
    let info = x509::CertInfo::parse(&leaf).map_err(|_| bad("not a certificate".to_owned()))?;
    if info.pin != x509::spki_pin_of_spki(spki) {
        return Err(bad(format!(
            "the certificate (serial {}) is not for the key this host just made",
            info.serial
        )));
    }
    if info.is_ca {
        return Err(bad(format!(
            "the certificate (serial {}) is a CA",
            info.serial
        )));
    }
    let mut got = info.sans.clone();
    let mut asked = names.to_vec();
    got.sort();
    asked.sort();
    if got != asked {
        return Err(bad(format!(
            "the certificate (serial {}) names {}, not the names asked for ({})",
            info.serial,
            info.sans.join(", "),
            names.join(", ")
        )));
    }
    if let Some(problem) = x509::validity_problem(&leaf) {
        return Err(bad(format!(
            "the certificate (serial {}): {problem}",
            info.serial
        )));
    }
    let chain: Vec<CertificateDer<'static>> = certs.collect();
    let cert_pem = pem("CERTIFICATE", &leaf);
    let chain_pem = chain.iter().map(|c| pem("CERTIFICATE", c)).collect();
    Ok(Issued {
        cert_pem,
        chain_pem,
        chain,
        info,
    })
}

/// A PEM block, 64 characters a line.
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_reason_is_one_short_printable_line() {
        assert_eq!(one_line(b"names not held\r\nsecond"), "names not held");
        assert_eq!(one_line(b""), "(no reason given)");
        assert_eq!(one_line(b"a\x1b[31mb"), "a[31mb");
        let long = "x".repeat(500);
        let cut = one_line(long.as_bytes());
        assert_eq!(cut.chars().count(), MAX_REASON + 1);
        assert_eq!(
            Status(StatusCode::FORBIDDEN).to_string(),
            "403 Forbidden".to_owned()
        );
    }

    /// The answer must carry our key and exactly our names.
    #[test]
    fn an_answer_for_another_key_or_other_names_is_refused() {
        let key = rcgen::KeyPair::generate().unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["a.test".to_owned(), "b.test".to_owned()]).unwrap();
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(1);
        let cert = params.self_signed(&key).unwrap();
        let body = format!("{}{}", cert.pem(), cert.pem());
        let names = vec!["DNS:a.test".to_owned(), "DNS:b.test".to_owned()];
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        let ok = check(body.as_bytes(), &spki, &names).unwrap();
        assert_eq!(ok.chain.len(), 1);
        assert_eq!(ok.cert_pem, cert.pem().replace("\r\n", "\n"));

        let other_spki = rcgen::PublicKeyData::subject_public_key_info(&other);
        let e = check(body.as_bytes(), &other_spki, &names).unwrap_err();
        assert!(e.to_string().contains("not for the key"), "{e}");
        let e = check(body.as_bytes(), &spki, &names[..1]).unwrap_err();
        assert!(e.to_string().contains("not the names asked for"), "{e}");
        let e = check(
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            &spki,
            &names,
        )
        .unwrap_err();
        assert!(e.to_string().contains("not certificates"), "{e}");
    }
}
