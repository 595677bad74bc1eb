//! Connecting to an MQTT broker: `mqtt://HOST:PORT` or `mqtts://HOST:PORT`,
//! optionally with a username and password, a CA file and a client
//! certificate. Both ends of the uplink use it.
//!
//! TLS is rustls on ring, built here rather than through rumqttc's default
//! provider (aws-lc, large and slow to build).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{LastWill, MqttOptions, QoS, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a link cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The URL is not `mqtt(s)://HOST:PORT` (the message names it).
    #[error("{0}")]
    Url(String),
    /// A file could not be read.
    #[error("{0}: {1}")]
    File(PathBuf, std::io::Error),
    /// The certificates or key do not parse, or rustls refuses them.
    #[error("TLS: {0}")]
    Tls(String),
}

/// Where and how to connect.
#[derive(Debug, Clone, Default)]
pub struct LinkOptions {
    /// `mqtt://HOST:PORT` or `mqtts://HOST:PORT`.
    pub broker: String,
    /// The MQTT client id.
    pub client_id: String,
    /// Username, with the file holding the password.
    pub login: Option<(String, Option<PathBuf>)>,
    /// CA certificates (PEM) for `mqtts://`; the system's roots without.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain and key (PEM), for `mqtts://`.
    pub client_auth: Option<(PathBuf, PathBuf)>,
    /// Retained will: (topic, payload).
    pub will: Option<(String, Vec<u8>)>,
}

pub use ferrite_models::config::BrokerUrl;

impl LinkOptions {
    /// rumqttc's options: clean session, keep-alive 10 s, QoS 1 in flight
    /// up to 100, packets up to 16 MiB.
    pub fn mqtt_options(&self) -> Result<MqttOptions, LinkError> {
        let url = BrokerUrl::parse(&self.broker).map_err(LinkError::Url)?;
        let mut options = MqttOptions::new(&self.client_id, &url.host, url.port);
        options
            .set_keep_alive(Duration::from_secs(10))
            .set_clean_session(true)
            .set_inflight(100)
            .set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
        if let Some((user, password_file)) = &self.login {
            let password = match password_file {
                Some(path) => std::fs::read_to_string(path)
                    .map_err(|e| LinkError::File(path.clone(), e))?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
                None => String::new(),
            };
            options.set_credentials(user, password);
        }
        if let Some((topic, payload)) = &self.will {
            options.set_last_will(LastWill::new(
                topic,
                payload.clone(),
                QoS::AtLeastOnce,
                true,
            ));
        }
        if url.tls {
            options.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(
                self.tls_config()?,
            ))));
        }
        Ok(options)
    }

    fn tls_config(&self) -> Result<rustls::ClientConfig, LinkError> {
        let tls = |e: &dyn std::fmt::Display| LinkError::Tls(e.to_string());
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_file {
            Some(path) => {
                for cert in read_certs(path)? {
                    roots.add(cert).map_err(|e| tls(&e))?;
                }
            }
            None => {
                // The system's roots (SSL_CERT_FILE / SSL_CERT_DIR, else the
                // platform's bundle), by the crate rumqttc itself uses.
                let found = rustls_native_certs::load_native_certs().certs;
                if found.is_empty() {
                    return Err(LinkError::Tls(
                        "no ca_file given and no system CA certificates found".into(),
                    ));
                }
                for cert in found {
                    // A system root rustls cannot use is skipped, as browsers do.
                    let _ = roots.add(cert);
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls(&e))?
            .with_root_certificates(roots);
        match &self.client_auth {
            Some((cert, key)) => builder
                .with_client_auth_cert(read_certs(cert)?, read_private_key(key)?)
                .map_err(|e| tls(&e)),
            None => Ok(builder.with_no_client_auth()),
        }
    }
}

/// The PEM certificates in `path`; at least one. (The API's HTTPS reads its
/// chain with this too.)
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, LinkError> {
    let bytes = std::fs::read(path).map_err(|e| LinkError::File(path.to_path_buf(), e))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| LinkError::Tls(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(LinkError::Tls(format!(
            "{}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

/// The PEM private key (PKCS#8, PKCS#1 or SEC1) in `path`.
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, LinkError> {
    let bytes = std::fs::read(path).map_err(|e| LinkError::File(path.to_path_buf(), e))?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| LinkError::Tls(format!("{}: {e}", path.display())))
}

/// Waits (up to 5 s) until an embedded rumqttd serves `addr`, so that its
/// owner counts as started only once clients can connect; false if it never
/// answered. The probe is a real MQTT 3.1.1 CONNECT (as the first configured
/// user), so rumqttd sees a well-behaved client rather than logging a broken
/// one.
pub async fn wait_until_serving(addr: SocketAddr, login: Option<&(String, String)>) -> bool {
    if addr.port() == 0 {
        return true;
    }
    let mut target = addr;
    if target.ip().is_unspecified() {
        target.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let connect = connect_packet(login);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        let answered = tokio::time::timeout(Duration::from_millis(500), probe(target, &connect));
        if matches!(answered.await, Ok(Ok(()))) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// One CONNECT and its CONNACK.
async fn probe(addr: SocketAddr, connect: &[u8]) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(connect).await?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await?;
    // No DISCONNECT: rumqttd handles a DISCONNECT and the socket's close as
    // two disconnections and logs the second at ERROR. Closing the socket
    // alone ends the session quietly (the probe sets no will).
    if connack[0] == 0x20 && connack[3] == 0 {
        Ok(())
    } else {
        Err(std::io::Error::other("the broker refused the probe"))
    }
}

/// An MQTT 3.1.1 CONNECT packet (clean session, keep-alive 5 s).
fn connect_packet(login: Option<&(String, String)>) -> Vec<u8> {
    let field = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend_from_slice(&u16::try_from(bytes.len()).unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    // Variable header: protocol name, level 4, flags, keep-alive.
    let mut body = Vec::new();
    field(&mut body, b"MQTT");
    let flags = if login.is_some() {
        0b1100_0010
    } else {
        0b0000_0010
    };
    body.extend_from_slice(&[4, flags, 0, 5]);
    field(&mut body, b"ferrite-probe");
    if let Some((user, password)) = login {
        field(&mut body, user.as_bytes());
        field(&mut body, password.as_bytes());
    }
    // Fixed header: type, then the remaining length as a varint.
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend_from_slice(&body);
    packet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_parse_and_bad_ones_say_why() {
        assert_eq!(
            BrokerUrl::parse("mqtt://127.0.0.1:1884").expect("url"),
            BrokerUrl {
                tls: false,
                host: "127.0.0.1".into(),
                port: 1884
            }
        );
        let v6 = BrokerUrl::parse("mqtts://[::1]:8883").expect("url");
        assert!(v6.tls);
        assert_eq!(v6.host, "::1");
        for bad in ["http://x:1", "mqtt://x", "mqtt://:1", "mqtt://x:99999"] {
            let e = BrokerUrl::parse(bad).expect_err(bad);
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn a_missing_ca_file_is_an_error_not_a_panic() {
        let options = LinkOptions {
            broker: "mqtts://localhost:8883".into(),
            client_id: "t".into(),
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..LinkOptions::default()
        };
        let e = options.mqtt_options().expect_err("no file");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }
}
