//! One task owns each Modbus connection: a TCP socket (shared by every unit
//! behind it) or a serial bus (shared by every device on it).
//!
//! Others hold a cloneable [`LinkHandle`] and send requests over a bounded
//! channel, each with a oneshot for the reply, so one request is on the wire
//! at a time, whatever the number of devices. While the link is down,
//! requests fail at once with the reason, and reconnects follow a capped,
//! jittered exponential backoff, so a dead device costs the others nothing.

use std::path::PathBuf;
use std::time::Duration;

use ferrite_models::device::{ModbusRtu, Parity};
use ferrite_models::model::Table;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, timeout};
use tokio_modbus::client::{Client, Context, Reader, Writer};
use tokio_modbus::prelude::{Slave, SlaveContext};
use tokio_util::sync::CancellationToken;

use crate::drivers::{Backoff, DriverError};

/// Where a link goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LinkKey {
    /// A TCP endpoint.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
    /// A serial port with its line settings.
    Rtu {
        /// The device path.
        path: PathBuf,
        /// Baud rate.
        baud: u32,
        /// Parity.
        parity: Parity,
        /// Data bits.
        data_bits: u8,
        /// Stop bits.
        stop_bits: u8,
    },
}

impl LinkKey {
    /// The key of an RTU device's bus.
    pub fn rtu(r: &ModbusRtu) -> Self {
        LinkKey::Rtu {
            path: r.port.clone(),
            baud: r.baud,
            parity: r.parity,
            data_bits: r.data_bits,
            stop_bits: r.stop_bits,
        }
    }
}

impl std::fmt::Display for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkKey::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            LinkKey::Rtu { path, baud, .. } => write!(f, "rtu://{}@{baud}", path.display()),
        }
    }
}

/// What to do on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Read `count` registers or bits from `start`.
    Read {
        /// Table.
        table: Table,
        /// First address.
        start: u16,
        /// How many.
        count: u16,
    },
    /// FC 05.
    WriteCoil {
        /// Address.
        address: u16,
        /// State.
        on: bool,
    },
    /// FC 06 for one register, FC 16 for more.
    WriteRegisters {
        /// First address.
        address: u16,
        /// Values.
        values: Vec<u16>,
    },
    /// Read a holding register, change one bit, write it back, with nothing
    /// else on the link in between.
    WriteBit {
        /// Address.
        address: u16,
        /// Bit 0..15.
        bit: u8,
        /// State.
        on: bool,
    },
}

/// What came back.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Register values.
    Registers(Vec<u16>),
    /// Coil or discrete input states.
    Bits(Vec<bool>),
    /// A write was confirmed.
    Done,
}

struct Request {
    unit: u8,
    op: Op,
    timeout: Duration,
    reply: oneshot::Sender<Result<Reply, DriverError>>,
}

/// A handle to a link task.
#[derive(Clone)]
pub struct LinkHandle {
    tx: mpsc::Sender<Request>,
}

impl LinkHandle {
    /// Sends `op` to `unit` and waits for the answer.
    pub async fn call(&self, unit: u8, op: Op, timeout: Duration) -> Result<Reply, DriverError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request {
                unit,
                op,
                timeout,
                reply,
            })
            .await
            .map_err(|_| DriverError::Stopped)?;
        rx.await.map_err(|_| DriverError::Stopped)?
    }
}

/// Starts the task that owns `key`'s connection.
pub fn spawn(
    key: LinkKey,
    tasks: &tokio_util::task::TaskTracker,
    shutdown: CancellationToken,
) -> LinkHandle {
    // Room for every device's poll plus a few writes; senders wait when full.
    let (tx, rx) = mpsc::channel(256);
    tasks.spawn(run(key, rx, shutdown));
    LinkHandle { tx }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

async fn run(key: LinkKey, mut rx: mpsc::Receiver<Request>, shutdown: CancellationToken) {
    let mut conn: Option<Context> = None;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let mut retry_at = Instant::now();
    let mut down_reason = String::from("not connected yet");
    loop {
        let req = tokio::select! {
            () = shutdown.cancelled() => break,
            req = rx.recv() => match req { Some(r) => r, None => break },
        };
        if conn.is_none() {
            if Instant::now() < retry_at {
                let _ = req
                    .reply
                    .send(Err(DriverError::Unreachable(down_reason.clone())));
                continue;
            }
            match timeout(CONNECT_TIMEOUT, connect(&key)).await {
                Ok(Ok(ctx)) => {
                    tracing::info!(link = %key, "connected");
                    backoff.reset();
                    conn = Some(ctx);
                }
                Ok(Err(e)) => down_reason = format!("{key}: {e}"),
                Err(_) => {
                    down_reason = format!("{key}: connect timed out after {CONNECT_TIMEOUT:?}")
                }
            }
            if conn.is_none() {
                let delay = backoff.next_delay();
                tracing::warn!(link = %key, "{down_reason}; retrying in {delay:.1?}");
                retry_at = Instant::now() + delay;
                let _ = req
                    .reply
                    .send(Err(DriverError::Unreachable(down_reason.clone())));
                continue;
            }
        }
        let Some(ctx) = conn.as_mut() else { continue };
        ctx.set_slave(Slave(req.unit));
        let result = match timeout(req.timeout, perform(ctx, &req.op)).await {
            Ok(Ok(Ok(reply))) => Ok(reply),
            Ok(Ok(Err(exception))) => {
                Err(DriverError::Refused(format!("{exception:?} ({exception})")))
            }
            Ok(Err(e)) => {
                // The transport failed: the connection is gone.
                down_reason = format!("{key}: {e}");
                tracing::warn!(link = %key, "{down_reason}");
                close(&mut conn).await;
                Err(DriverError::Unreachable(down_reason.clone()))
            }
            Err(_) => {
                // A late answer would confuse the next request, so start over
                // with a fresh connection (at once: the peer may be fine).
                close(&mut conn).await;
                Err(DriverError::Timeout(req.timeout))
            }
        };
        let _ = req.reply.send(result);
    }
    close(&mut conn).await;
    tracing::debug!(link = %key, "link stopped");
}

async fn close(conn: &mut Option<Context>) {
    if let Some(mut ctx) = conn.take() {
        let _ = timeout(Duration::from_millis(200), ctx.disconnect()).await;
    }
}

async fn connect(key: &LinkKey) -> std::io::Result<Context> {
    match key {
        LinkKey::Tcp { host, port } => {
            let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
            stream.set_nodelay(true)?;
            Ok(tokio_modbus::client::tcp::attach(stream))
        }
        LinkKey::Rtu {
            path,
            baud,
            parity,
            data_bits,
            stop_bits,
        } => {
            use tokio_serial::SerialPortBuilderExt;
            let port = tokio_serial::new(path.to_string_lossy(), *baud)
                .parity(match parity {
                    Parity::None => tokio_serial::Parity::None,
                    Parity::Even => tokio_serial::Parity::Even,
                    Parity::Odd => tokio_serial::Parity::Odd,
                })
                .data_bits(if *data_bits == 7 {
                    tokio_serial::DataBits::Seven
                } else {
                    tokio_serial::DataBits::Eight
                })
                .stop_bits(if *stop_bits == 2 {
                    tokio_serial::StopBits::Two
                } else {
                    tokio_serial::StopBits::One
                })
                .open_native_async()
                .map_err(std::io::Error::other)?;
            Ok(tokio_modbus::client::rtu::attach(port))
        }
    }
}

type Outcome = Result<Result<Reply, tokio_modbus::ExceptionCode>, tokio_modbus::Error>;

async fn perform(ctx: &mut Context, op: &Op) -> Outcome {
    Ok(match op {
        Op::Read {
            table,
            start,
            count,
        } => match table {
            Table::Coil => ctx.read_coils(*start, *count).await?.map(Reply::Bits),
            Table::Discrete => ctx
                .read_discrete_inputs(*start, *count)
                .await?
                .map(Reply::Bits),
            Table::Input => ctx
                .read_input_registers(*start, *count)
                .await?
                .map(Reply::Registers),
            Table::Holding => ctx
                .read_holding_registers(*start, *count)
                .await?
                .map(Reply::Registers),
        },
        Op::WriteCoil { address, on } => ctx
            .write_single_coil(*address, *on)
            .await?
            .map(|()| Reply::Done),
        Op::WriteRegisters { address, values } if values.len() == 1 => ctx
            .write_single_register(*address, values[0])
            .await?
            .map(|()| Reply::Done),
        Op::WriteRegisters { address, values } => ctx
            .write_multiple_registers(*address, values)
            .await?
            .map(|()| Reply::Done),
        Op::WriteBit { address, bit, on } => {
            let current = match ctx.read_holding_registers(*address, 1).await? {
                Ok(regs) => regs.first().copied().unwrap_or(0),
                Err(e) => return Ok(Err(e)),
            };
            let mask = 1u16 << bit;
            let next = if *on { current | mask } else { current & !mask };
            ctx.write_single_register(*address, next)
                .await?
                .map(|()| Reply::Done)
        }
    })
}
