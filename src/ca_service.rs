//! The online CA's side of a connection (`mode = "ca"`): after the TLS
//! handshake, HTTP/1.1 requests `POST /v1/renew` (mutual TLS with the
//! host's current certificate) and `POST /v1/enrol` (a one-time token in
//! `Authorization: Bearer`), each answered with the new certificate and
//! the CA certificate (PEM), or a status and a one-line reason.
//!
//! What is signed, and what is refused, is decided in
//! [`crate::certs::online`]; this file speaks HTTP, logs each decision
//! with the service, the source and the peer, and counts it in the
//! authority's [`Answers`](crate::certs::online::Answers).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tracing::{info, warn};

use crate::certs::online::{Asked, Authority, Issued, Refusal, MAX_REQUEST};
use crate::tls::PeerPolicy;

/// The media type of the answer: the new certificate, then the CA's.
pub const CHAIN_TYPE: &str = "application/pem-certificate-chain";
/// The longest a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest one connection lasts.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Who is asking, as the handshake showed it.
struct Asker {
    service: String,
    source: SocketAddr,
    /// The certificate the client presented, if any (DER).
    cert: Option<Vec<u8>>,
    /// Its names, for the log and `allow_peers`.
    ids: Vec<String>,
    peers: Arc<PeerPolicy>,
    authority: Arc<Authority>,
}

/// Serves the requests of one connection, then returns.
pub async fn serve<S>(
    stream: S,
    service: &str,
    source: SocketAddr,
    peers: Arc<PeerPolicy>,
    authority: Arc<Authority>,
    cert: Option<Vec<u8>>,
    ids: Vec<String>,
) -> Result<(), hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let asker = Arc::new(Asker {
        service: service.to_owned(),
        source,
        cert,
        ids,
        peers,
        authority,
    });
    let answer = hyper::service::service_fn(move |req| {
        let asker = asker.clone();
        async move { Ok::<_, Infallible>(answer(req, &asker).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), answer);
    match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
        Ok(r) => r,
        Err(_) => Ok(()),
    }
}

type Reply = Response<Full<Bytes>>;

async fn answer(req: Request<Incoming>, asker: &Asker) -> Reply {
    let asked = match (req.method(), req.uri().path()) {
        (&Method::POST, "/v1/renew") => Asked::Renewal,
        (&Method::POST, "/v1/enrol") => Asked::Enrolment,
        (_, "/v1/renew" | "/v1/enrol") => return text(StatusCode::METHOD_NOT_ALLOWED, "use POST"),
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                "unknown path: this is a dctunnel CA service (POST /v1/renew, POST /v1/enrol)",
            )
        }
    };
    // Counted for the metrics: every answer to a renewal or an enrolment
    // (not a wrong path or method, which asked for neither).
    let reply = decide(req, asker, asked).await;
    asker
        .authority
        .answers()
        .count(asked, reply.status().as_u16());
    reply
}

/// The answer to a renewal or an enrolment, logged.
async fn decide(req: Request<Incoming>, asker: &Asker, asked: Asked) -> Reply {
    let renew = asked == Asked::Renewal;
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    let what = asked.as_str();
    let decision = match (renew, &asker.cert, token) {
        (true, None, _) => Err(Refusal::Unauthorized(
            "renewal needs the host's current certificate (mutual TLS)".into(),
        )),
        (true, Some(_), _) if !asker.peers.allows(&asker.ids) => Err(Refusal::Forbidden(
            "this certificate's names are not in the CA service's allow_peers".into(),
        )),
        (false, _, None) => Err(Refusal::Unauthorized(
            "enrolment needs a token (Authorization: Bearer TOKEN)".into(),
        )),
        (_, cert, token) => match body(req).await {
            Err(reply) => return reply,
            Ok(body) => {
                let authority = asker.authority.clone();
                let cert = cert.clone();
                // Signing and the CA's files: off the connection threads.
                tokio::task::spawn_blocking(move || match cert.filter(|_| renew) {
                    Some(cert) => authority.renew(&cert, &body),
                    None => authority.enrol(token.as_deref().unwrap_or_default(), &body),
                })
                .await
                .unwrap_or_else(|_| Err(Refusal::Unavailable("the CA failed".into())))
            }
        },
    };
    let peer = asker.ids.join(",");
    match decision {
        Ok(Issued {
            chain_pem,
            info,
            names,
            authorised_by,
        }) => {
            info!(service = %asker.service, source = %asker.source, peer,
                serial = %info.serial, names = %names.join(","),
                not_after = %crate::x509::rfc3339(info.not_after), %authorised_by,
                "online CA: certificate issued ({what})");
            let mut reply = Response::new(Full::new(Bytes::from(chain_pem)));
            reply
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(CHAIN_TYPE));
            reply
        }
        Err(refusal) => {
            warn!(service = %asker.service, source = %asker.source, peer,
                status = refusal.status(), reason = %refusal,
                "online CA: {what} refused");
            let status =
                StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            text(status, &refusal.to_string())
        }
    }
}

/// The request body, at most [`MAX_REQUEST`] bytes.
async fn body(req: Request<Incoming>) -> Result<Vec<u8>, Reply> {
    match Limited::new(req.into_body(), MAX_REQUEST).collect().await {
        Ok(b) => Ok(b.to_bytes().to_vec()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request is larger than 64 KiB",
        )),
        Err(_) => Err(text(
            StatusCode::BAD_REQUEST,
            "the request body could not be read",
        )),
    }
}

fn text(status: StatusCode, message: &str) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(format!("{message}\n"))));
    *reply.status_mut() = status;
    reply.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    reply
}
