//! What a server-mode port tells a scanner that has no certificate: its own
//! certificate (TLS needs it) and a request for the client's, without the
//! names of the CAs it trusts.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::io::AsyncReadExt;

/// Sends no certificate, and records the CA names the server hinted at.
#[derive(Debug, Default)]
struct Recorder {
    asked: Mutex<Option<Vec<Vec<u8>>>>,
}

impl ResolvesClientCert for Recorder {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        _: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        *self.asked.lock().unwrap() = Some(root_hint_subjects.iter().map(|s| s.to_vec()).collect());
        None
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_request_names_no_ca() {
    let t = tunnel(echo_backend().await, TunnelOpts::default()).await;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&t.pki.ca_pem).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let recorder = Arc::new(Recorder::default());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_cert_resolver(recorder.clone());
    let tcp = tokio::net::TcpStream::connect(t.tls_port).await.unwrap();
    let sni = rustls::pki_types::ServerName::try_from(SERVER).unwrap();
    // TLS 1.3: the client's side of the handshake completes; the refusal
    // of the missing certificate arrives on the first read.
    if let Ok(mut tls) = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(sni, tcp)
        .await
    {
        let mut buf = [0u8; 1];
        let _ = tls.read(&mut buf).await;
    }
    let asked = recorder.asked.lock().unwrap().clone();
    let hints = asked.expect("the server did not ask for a client certificate");
    assert!(hints.is_empty(), "the server named {} CA(s)", hints.len());
}
