//! `GET /healthz` from the outside: what `ferrite health` and
//! `ferrite-cloud health` run, so that a container image built `FROM
//! scratch` (no curl, no shell) can have a `HEALTHCHECK`. Feature `serve`.
//!
//! The probe speaks HTTP/1.1 through hyper's client. Over HTTPS it trusts
//! exactly the certificate the API serves (the probe reads the same
//! config): the probe runs beside the server, so it pins that certificate
//! instead of asking for a CA and a host name the certificate may not carry.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Why the probe found the server unhealthy.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Nothing listens there, or the connection broke.
    #[error("cannot connect to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    /// The API's certificate did not load, or the handshake failed.
    #[error("HTTPS to {0}: {1}")]
    Tls(SocketAddr, String),
    /// Not an HTTP answer.
    #[error("GET /healthz on {0}: {1}")]
    Http(SocketAddr, hyper::Error),
    /// An answer other than 200.
    #[error("GET /healthz on {0} answered {1}")]
    Status(SocketAddr, StatusCode),
    /// No answer in time.
    #[error("GET /healthz on {0}: no answer within {1:?}")]
    Timeout(SocketAddr, Duration),
}

/// Where a server's API is, as its config says.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    /// The address to connect to: the listen address, with an unspecified
    /// IP (`0.0.0.0`, `[::]`) taken as loopback.
    pub addr: SocketAddr,
    /// HTTPS with this certificate (PEM, the server's own chain).
    pub certificate: Option<std::path::PathBuf>,
}

impl ProbeTarget {
    /// The target for an API listening on `listen`.
    pub fn new(listen: SocketAddr, certificate: Option<&Path>) -> ProbeTarget {
        let mut addr = listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        ProbeTarget {
            addr,
            certificate: certificate.map(Path::to_path_buf),
        }
    }
}

/// `GET /healthz` on `target`: `Ok` on 200 within `timeout`.
pub async fn probe_health(target: &ProbeTarget, timeout: Duration) -> Result<(), ProbeError> {
    let addr = target.addr;
    tokio::time::timeout(timeout, probe(target))
        .await
        .map_err(|_| ProbeError::Timeout(addr, timeout))?
}

async fn probe(target: &ProbeTarget) -> Result<(), ProbeError> {
    let addr = target.addr;
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| ProbeError::Connect(addr, e))?;
    match &target.certificate {
        None => get_healthz(addr, stream).await,
        Some(certificate) => {
            let tls_error = |e: &dyn std::fmt::Display| ProbeError::Tls(addr, e.to_string());
            let chain = crate::link::read_certs(certificate).map_err(|e| tls_error(&e))?;
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let verifier = Arc::new(PinnedCertificate {
                pinned: chain[0].clone().into_owned(),
                provider: provider.clone(),
            });
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| tls_error(&e))?
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth();
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let name = ServerName::IpAddress(addr.ip().into());
            let stream = connector
                .connect(name, stream)
                .await
                .map_err(|e| tls_error(&e))?;
            get_healthz(addr, stream).await
        }
    }
}

async fn get_healthz<S>(addr: SocketAddr, stream: S) -> Result<(), ProbeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http = |e| ProbeError::Http(addr, e);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    let connection = tokio::spawn(connection);
    let request = hyper::Request::get("/healthz")
        .header(hyper::header::HOST, addr.to_string())
        .body(String::new())
        .expect("a GET with a fixed path and a socket address as host is a valid request");
    let response = sender.send_request(request).await.map_err(http)?;
    connection.abort();
    match response.status() {
        StatusCode::OK => Ok(()),
        status => Err(ProbeError::Status(addr, status)),
    }
}

/// Trusts one certificate, the one the probed server is configured with;
/// the handshake's signatures are still checked.
#[derive(Debug)]
struct PinnedCertificate {
    pinned: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.pinned.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the server's certificate is not the one in its config".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_listen_address_is_probed_on_loopback() {
        let v4 = ProbeTarget::new("0.0.0.0:8080".parse().expect("test setup"), None);
        assert_eq!(v4.addr, "127.0.0.1:8080".parse().expect("test setup"));
        let v6 = ProbeTarget::new("[::]:8090".parse().expect("test setup"), None);
        assert_eq!(v6.addr, "[::1]:8090".parse().expect("test setup"));
        let given = ProbeTarget::new("10.1.2.3:80".parse().expect("test setup"), None);
        assert_eq!(given.addr, "10.1.2.3:80".parse().expect("test setup"));
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("test setup");
        let addr = listener.local_addr().expect("test setup");
        drop(listener);
        let err = probe_health(&ProbeTarget::new(addr, None), Duration::from_secs(2))
            .await
            .expect_err("the probe must fail");
        assert!(matches!(err, ProbeError::Connect(..)), "{err}");
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("test setup");
        let addr = listener.local_addr().expect("test setup");
        let _held = tokio::spawn(async move {
            let (_socket, _) = listener.accept().await.expect("test setup");
            std::future::pending::<()>().await
        });
        let err = probe_health(&ProbeTarget::new(addr, None), Duration::from_millis(300))
            .await
            .expect_err("the probe must fail");
        assert!(matches!(err, ProbeError::Timeout(..)), "{err}");
    }
}
