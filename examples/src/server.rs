//! Modbus servers over [`Endpoint`]s: TCP listeners (Modbus TCP, or RTU
//! framing over TCP) and RTU slaves on pty pairs. Each can be stopped, which
//! drops every connection, and started again on the same address.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_modbus::server::rtu::Server as RtuServer;
use tokio_modbus::server::rtu_over_tcp;
use tokio_modbus::server::tcp::Server as TcpServer;
use tokio_util::sync::CancellationToken;

use crate::bank::{Endpoint, Service};

/// How a [`TcpSim`] frames requests and answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpFraming {
    /// Modbus TCP (MBAP header).
    Mbap,
    /// RTU frames with their CRC over the socket, as a serial device server
    /// in transparent mode passes them.
    Rtu,
}

/// A Modbus TCP server.
pub struct TcpSim {
    /// The bound address.
    pub addr: SocketAddr,
    /// What it serves.
    pub endpoint: Arc<Endpoint>,
    /// Its framing.
    pub framing: TcpFraming,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl TcpSim {
    /// Serves `endpoint` on `addr` (port 0 picks a free port) as Modbus TCP.
    pub async fn start(addr: SocketAddr, endpoint: Arc<Endpoint>) -> io::Result<TcpSim> {
        TcpSim::start_framed(addr, endpoint, TcpFraming::Mbap).await
    }

    /// Serves `endpoint` on `addr` with `framing`. Each connection accepted
    /// counts in [`Endpoint::connections`].
    pub async fn start_framed(
        addr: SocketAddr,
        endpoint: Arc<Endpoint>,
        framing: TcpFraming,
    ) -> io::Result<TcpSim> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let service = Service::new(endpoint.clone());
        let token = stop.clone();
        let counted = endpoint.clone();
        let task = tokio::spawn(async move {
            // Both servers take the same callback: count the connection and
            // serve it with the endpoint's service.
            let on_connected = |stream, _addr| {
                counted.connected();
                let service = service.clone();
                async move { Ok(Some((service, stream))) }
            };
            let on_error = |e| tracing::debug!("sim connection ended: {e}");
            let abort = async move { token.cancelled().await };
            let served = match framing {
                TcpFraming::Mbap => {
                    TcpServer::new(listener)
                        .serve_until(&on_connected, on_error, abort)
                        .await
                }
                TcpFraming::Rtu => {
                    rtu_over_tcp::Server::new(listener)
                        .serve_until(&on_connected, on_error, abort)
                        .await
                }
            };
            if let Err(e) = served {
                tracing::warn!("sim server failed: {e}");
            }
        });
        Ok(TcpSim {
            addr,
            endpoint,
            framing,
            stop,
            task,
        })
    }

    /// Stops listening and drops every open connection.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }

    /// Stops, then listens again on the same address: every client loses its
    /// connection and must reconnect.
    pub async fn restart(self) -> io::Result<TcpSim> {
        let (addr, endpoint, framing) = (self.addr, self.endpoint.clone(), self.framing);
        self.stop().await;
        TcpSim::start_framed(addr, endpoint, framing).await
    }
}

/// A Modbus RTU slave on one end of a pseudo-terminal pair. The gateway
/// opens the other end, at [`RtuSim::path`].
pub struct RtuSim {
    /// The terminal the gateway should open.
    pub path: PathBuf,
    /// What it serves.
    pub endpoint: Arc<Endpoint>,
    link: Option<PathBuf>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl RtuSim {
    /// Creates a pty pair and serves `endpoint` on it. With `link`, also
    /// creates a symlink there to the terminal, so a device config can name a
    /// stable path such as `/tmp/ferrite-rtu0`.
    pub fn start(endpoint: Arc<Endpoint>, link: Option<&Path>) -> io::Result<RtuSim> {
        let (master, slave) = tokio_serial::SerialStream::pair().map_err(io::Error::other)?;
        let path = PathBuf::from(
            tokio_serial::SerialPort::name(&slave)
                .ok_or_else(|| io::Error::other("the pty has no name"))?,
        );
        if let Some(link) = link {
            if link.symlink_metadata().is_ok() {
                std::fs::remove_file(link)?;
            }
            std::os::unix::fs::symlink(&path, link)?;
        }
        let stop = CancellationToken::new();
        let token = stop.clone();
        let service = Service::new(endpoint.clone());
        let task = tokio::spawn(async move {
            // Holding the slave end open keeps the master readable while the
            // gateway reconnects.
            let _slave = slave;
            let server = RtuServer::new(master);
            let abort = async move { token.cancelled().await };
            if let Err(e) = server.serve_until(service, abort).await {
                tracing::warn!("sim RTU slave failed: {e}");
            }
        });
        Ok(RtuSim {
            path,
            endpoint,
            link: link.map(Path::to_path_buf),
            stop,
            task,
        })
    }

    /// Stops serving and removes the symlink.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
        if let Some(link) = self.link {
            let _ = std::fs::remove_file(link);
        }
    }
}
