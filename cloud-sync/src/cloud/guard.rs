//! The embedded broker's guard: the MQTT listener gateways connect to,
//! in front of rumqttd, which itself listens on loopback only and takes
//! nobody but the guard and the control plane (a login made fresh at each
//! start and never written anywhere).
//!
//! rumqttd 0.20 can check a login (its `external_auth`) but has no topic
//! ACLs, so the guard reads every packet a client sends:
//! - CONNECT: MQTT 3.1.1 only; the login must be an enrolled gateway's
//!   ([`Gateways::authenticate`]), its client id `ferrite-GW` (so no one can
//!   take over another's session), and its will on one of its own topics.
//!   Refused with CONNACK 1 (protocol), 2 (client id), 4 (login) or 5
//!   (will), then closed. Passed on with the guard's own login.
//! - PUBLISH: only on `ferrite/v1/gw/GW/up/...`
//!   ([`topics::gateway_may_publish`]).
//! - SUBSCRIBE: only `ferrite/v1/gw/GW/down/...` and the cloud's status
//!   ([`topics::gateway_may_subscribe`]).
//!
//! A packet against these rules ends the connection at once (as EMQX's
//! `deny_action = disconnect` does): nothing of it reaches the broker, and
//! the refusal is logged and counted. Packets go to the broker as the
//! client sent them, byte for byte; what the broker sends back is copied
//! untouched.
//!
//! With no `[[gateways]]` configured the guard takes any login, as the
//! embedded broker always did, and the control plane serves loopback only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::{self, Protocol};
use rumqttc::{Connect, Login, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::gateways::Gateways;
use crate::topics;

/// Largest packet a client may send once logged in (the broker's own limit
/// is lower).
const MAX_PACKET: usize = 16 * 1024 * 1024;

/// Largest CONNECT: what a stranger can make the guard hold before it
/// knows who they are.
const MAX_CONNECT: usize = 64 * 1024;

/// Connections at once; further ones wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 10_000;

/// How long a new connection has to send its CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// CONNACK return codes of MQTT 3.1.1.
mod connack {
    pub const BAD_PROTOCOL: u8 = 1;
    pub const BAD_CLIENT_ID: u8 = 2;
    pub const BAD_LOGIN: u8 = 4;
    pub const NOT_AUTHORIZED: u8 = 5;
}

/// What the guard refused since start, for `/api/v1/stats`.
#[derive(Debug, Default)]
pub struct GuardStats {
    /// Connections refused at CONNECT (login, client id, will, protocol).
    pub refused_logins: AtomicU64,
    /// Connections closed for a PUBLISH or SUBSCRIBE outside their topics.
    pub refused_packets: AtomicU64,
}

/// The guard's settings.
pub struct Guard {
    /// Who may log in.
    pub gateways: Arc<Gateways>,
    /// rumqttd's loopback listener.
    pub upstream: SocketAddr,
    /// The login rumqttd takes.
    pub login: Login,
    /// Refusals.
    pub stats: Arc<GuardStats>,
}

/// Who is on a connection.
enum Client {
    /// An enrolled gateway: its own topics only.
    Gateway(String),
    /// No gateways are configured: anyone, anything (loopback only).
    Open,
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("malformed MQTT: {0:?}")]
    Malformed(mqttbytes::Error),
    #[error("no CONNECT within {0:?}")]
    Slow(Duration),
    #[error("the first packet is not a CONNECT")]
    NotConnect,
    #[error("refused at CONNECT: {0}")]
    Login(String),
    #[error("{0}")]
    Packet(String),
}

impl Guard {
    /// Accepts connections on `listener` until the process ends.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (socket, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("the broker guard cannot accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let guard = self.clone();
            tokio::spawn(async move {
                let _slot = slot;
                match guard.connection(socket).await {
                    Ok(()) | Err(Refused::Io(_)) => {}
                    Err(e @ (Refused::Login(_) | Refused::NotConnect)) => {
                        guard.stats.refused_logins.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("broker guard: {peer}: {e}");
                    }
                    Err(e @ Refused::Packet(_)) => {
                        guard.stats.refused_packets.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("broker guard: {peer}: {e}; disconnected");
                    }
                    Err(e) => tracing::info!("broker guard: {peer}: {e}"),
                }
            });
        }
    }

    async fn connection(&self, mut socket: TcpStream) -> Result<(), Refused> {
        socket.set_nodelay(true)?;
        let mut buffer = BytesMut::with_capacity(4096);
        let first = next_packet(&mut socket, &mut buffer, MAX_CONNECT);
        let first = tokio::time::timeout(CONNECT_TIMEOUT, first)
            .await
            .map_err(|_| Refused::Slow(CONNECT_TIMEOUT))??;
        let Packet::Connect(connect) = first.packet else {
            return Err(Refused::NotConnect);
        };
        let client = match self.admit(&connect) {
            Ok(client) => client,
            Err((code, why)) => {
                // CONNACK: no session present, the return code.
                socket.write_all(&[0x20, 0x02, 0x00, code]).await?;
                let _ = socket.shutdown().await;
                return Err(Refused::Login(why));
            }
        };
        let mut upstream = TcpStream::connect(self.upstream).await?;
        upstream.set_nodelay(true)?;
        let mut with_our_login = connect;
        with_our_login.login = Some(self.login.clone());
        let mut out = BytesMut::new();
        Packet::Connect(with_our_login)
            .write(&mut out, MAX_PACKET)
            .map_err(Refused::Malformed)?;
        upstream.write_all(&out).await?;
        let (mut from_broker, mut to_broker) = upstream.into_split();
        let (mut from_client, mut to_client) = socket.into_split();
        let downward = async {
            tokio::io::copy(&mut from_broker, &mut to_client).await?;
            Ok::<(), Refused>(())
        };
        let upward = async {
            loop {
                let next = next_packet(&mut from_client, &mut buffer, MAX_PACKET).await?;
                if let Client::Gateway(gateway) = &client {
                    check(gateway, &next.packet)?;
                }
                to_broker.write_all(&next.frame).await?;
            }
        };
        // Whichever side ends first ends the connection.
        tokio::select! {
            r = downward => r,
            r = upward => r,
        }
    }

    /// Who a CONNECT is, or the CONNACK code and why not.
    fn admit(&self, connect: &Connect) -> Result<Client, (u8, String)> {
        if connect.protocol != Protocol::V4 {
            return Err((connack::BAD_PROTOCOL, "MQTT 3.1.1 only".into()));
        }
        if !self.gateways.enforcing() {
            return Ok(Client::Open);
        }
        let Some(login) = &connect.login else {
            return Err((connack::BAD_LOGIN, "no login".into()));
        };
        let Some(gateway) = self.gateways.authenticate(&login.username, &login.password) else {
            return Err((
                connack::BAD_LOGIN,
                format!("`{}`: unknown gateway or wrong secret", login.username),
            ));
        };
        let expected = format!("ferrite-{gateway}");
        if connect.client_id != expected {
            return Err((
                connack::BAD_CLIENT_ID,
                format!(
                    "gateway `{gateway}` must use client id `{expected}`, not `{}`",
                    connect.client_id
                ),
            ));
        }
        if let Some(will) = &connect.last_will
            && !topics::gateway_may_publish(&gateway, &will.topic)
        {
            return Err((
                connack::NOT_AUTHORIZED,
                format!("gateway `{gateway}`: a will on `{}`", will.topic),
            ));
        }
        Ok(Client::Gateway(gateway))
    }
}

/// Whether `gateway` may send `packet`.
fn check(gateway: &str, packet: &Packet) -> Result<(), Refused> {
    match packet {
        Packet::Publish(publish) if !topics::gateway_may_publish(gateway, &publish.topic) => {
            Err(Refused::Packet(format!(
                "gateway `{gateway}` published on `{}`",
                publish.topic
            )))
        }
        Packet::Subscribe(subscribe) => {
            match subscribe
                .filters
                .iter()
                .find(|f| !topics::gateway_may_subscribe(gateway, &f.path))
            {
                Some(f) => Err(Refused::Packet(format!(
                    "gateway `{gateway}` subscribed to `{}`",
                    f.path
                ))),
                None => Ok(()),
            }
        }
        Packet::Connect(_) => Err(Refused::Packet(format!(
            "gateway `{gateway}` sent a second CONNECT"
        ))),
        _ => Ok(()),
    }
}

/// A packet and the bytes it came as.
struct Framed {
    packet: Packet,
    frame: BytesMut,
}

/// Reads the next whole packet, at most `max` bytes, from `socket`,
/// buffering in `buffer`.
async fn next_packet(
    socket: &mut (impl AsyncReadExt + Unpin),
    buffer: &mut BytesMut,
    max: usize,
) -> Result<Framed, Refused> {
    loop {
        match mqttbytes::check(buffer.iter(), max) {
            Ok(header) => {
                let frame = buffer.split_to(header.frame_length());
                let packet = Packet::read(&mut frame.clone(), max).map_err(Refused::Malformed)?;
                return Ok(Framed { packet, frame });
            }
            Err(mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => return Err(Refused::Malformed(e)),
        }
        if socket.read_buf(buffer).await? == 0 {
            return Err(Refused::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::{Publish, QoS, Subscribe};

    #[test]
    fn packets_outside_a_gateways_topics_are_refused() {
        let own = Packet::Publish(Publish::new(
            "ferrite/v1/gw/a/up/batch",
            QoS::AtLeastOnce,
            "x",
        ));
        assert!(check("a", &own).is_ok());
        let forged = Packet::Publish(Publish::new(
            "ferrite/v1/gw/a/down/ack",
            QoS::AtLeastOnce,
            "x",
        ));
        assert!(check("a", &forged).is_err());
        let other = Packet::Publish(Publish::new(
            "ferrite/v1/gw/b/up/batch",
            QoS::AtLeastOnce,
            "x",
        ));
        assert!(check("a", &other).is_err());
        let mine = Packet::Subscribe(Subscribe::new("ferrite/v1/gw/a/down/#", QoS::AtLeastOnce));
        assert!(check("a", &mine).is_ok());
        let theirs = Packet::Subscribe(Subscribe::new("ferrite/v1/gw/+/down/#", QoS::AtLeastOnce));
        assert!(check("a", &theirs).is_err());
        assert!(check("a", &Packet::PingReq).is_ok());
    }
}
