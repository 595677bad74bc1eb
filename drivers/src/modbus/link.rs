//! One task owns each Modbus connection: a TCP socket (shared by every unit
//! behind it, with Modbus TCP or RTU framing) or a serial bus (shared by
//! every device on it).
//!
//! Others hold a cloneable [`LinkHandle`] and send requests over a bounded
//! channel, each with a oneshot for the reply, so one request is on the wire
//! at a time, whatever the number of devices. While the link is down,
//! requests fail at once with the reason, and reconnects follow a capped,
//! jittered exponential backoff, so a dead device costs the others nothing.
//!
//! A unit that does not answer in time costs its neighbours nothing either:
//! the connection stays up, and its [answer gate](super::answer_gate) drops
//! the late answer if one comes. Only [`SILENT_TIMEOUTS`] timeouts in a row
//! with nothing at all heard from the peer in between count as a dead
//! connection, which is then opened afresh.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferrite_models::device::{ModbusRtu, Parity};
use ferrite_models::model::Table;
use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, timeout};
use tokio_modbus::client::{Client, Context};
use tokio_modbus::prelude::{Slave, SlaveContext};
use tokio_modbus::{Request, Response};
use tokio_util::sync::CancellationToken;

use super::answer_gate::{AnswerGate, Framing, Gate};
use ferrite_core::backoff::Backoff;
use ferrite_core::driver::DriverError;

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
    /// A TCP endpoint that speaks RTU framing (a serial device server in
    /// transparent mode): no MBAP header, a CRC on every frame.
    RtuOverTcp {
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
            LinkKey::RtuOverTcp { host, port } => write!(f, "rtu-over-tcp://{host}:{port}"),
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

struct Job {
    unit: u8,
    op: Op,
    timeout: Duration,
    reply: oneshot::Sender<Result<Reply, DriverError>>,
}

/// A handle to a link task.
#[derive(Clone)]
pub struct LinkHandle {
    tx: mpsc::Sender<Job>,
}

impl LinkHandle {
    /// Sends `op` to `unit` and waits for the answer.
    pub async fn call(&self, unit: u8, op: Op, timeout: Duration) -> Result<Reply, DriverError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job {
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
    tasks.spawn(async move {
        let mut rx = rx;
        // A bug that panics must not leave every device on this link
        // answering "stopped" until a restart: log it and carry on.
        loop {
            let attempt = AssertUnwindSafe(run(&key, &mut rx, &shutdown))
                .catch_unwind()
                .await;
            if attempt.is_ok() || shutdown.is_cancelled() {
                break;
            }
            tracing::error!(link = %key, "the link task panicked; restarting it");
        }
    });
    LinkHandle { tx }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

async fn run(key: &LinkKey, rx: &mut mpsc::Receiver<Job>, shutdown: &CancellationToken) {
    let mut link = Link {
        key,
        conn: None,
        backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(30)),
        retry_at: Instant::now(),
        down_reason: String::from("not connected yet"),
    };
    loop {
        let job = tokio::select! {
            () = shutdown.cancelled() => break,
            job = rx.recv() => match job { Some(job) => job, None => break },
        };
        let result = link.serve(&job).await;
        let _ = job.reply.send(result);
    }
    close(&mut link.conn).await;
    tracing::debug!(link = %key, "link stopped");
}

/// Timeouts in a row, with not one frame from the peer in between, after
/// which the connection counts as dead and is opened afresh. Timeouts of one
/// unit while its neighbours answer never add up to this.
pub const SILENT_TIMEOUTS: u32 = 3;

/// An open connection and what its gate has seen.
struct Connection {
    ctx: Context,
    gate: Arc<Gate>,
    /// The gate's frame count at the last timeout.
    frames_at_timeout: u64,
    /// Timeouts in a row with no frame in between.
    silent_timeouts: u32,
}

/// The connection a link task owns, and how it is doing.
struct Link<'a> {
    key: &'a LinkKey,
    conn: Option<Connection>,
    backoff: Backoff,
    /// No reconnect before this, after a failed one.
    retry_at: Instant,
    /// Why the link is down, for the requests that fail meanwhile.
    down_reason: String,
}

impl Link<'_> {
    /// The open connection, connecting first if the backoff allows.
    async fn connection(&mut self) -> Result<&mut Connection, DriverError> {
        if self.conn.is_none() {
            if Instant::now() < self.retry_at {
                return Err(DriverError::Unreachable(self.down_reason.clone()));
            }
            let key = self.key;
            match timeout(CONNECT_TIMEOUT, connect(key)).await {
                Ok(Ok((ctx, gate))) => {
                    tracing::info!(link = %key, "connected");
                    self.backoff.reset();
                    self.conn = Some(Connection {
                        ctx,
                        gate,
                        frames_at_timeout: 0,
                        silent_timeouts: 0,
                    });
                }
                Ok(Err(e)) => self.down_reason = format!("{key}: {e}"),
                Err(_) => {
                    self.down_reason = format!("{key}: connect timed out after {CONNECT_TIMEOUT:?}")
                }
            }
        }
        match self.conn.as_mut() {
            Some(conn) => Ok(conn),
            None => {
                let delay = self.backoff.next_delay();
                tracing::warn!(link = %self.key, "{}; retrying in {delay:.1?}", self.down_reason);
                self.retry_at = Instant::now() + delay;
                Err(DriverError::Unreachable(self.down_reason.clone()))
            }
        }
    }

    /// Performs one job on the wire.
    async fn serve(&mut self, job: &Job) -> Result<Reply, DriverError> {
        let conn = self.connection().await?;
        conn.ctx.set_slave(Slave(job.unit));
        match timeout(job.timeout, perform(&mut conn.ctx, &job.op)).await {
            Ok(Ok(Ok(reply))) => Ok(reply),
            Ok(Ok(Err(refusal))) => Err(DriverError::Refused(refusal.to_string())),
            Ok(Err(e)) => {
                // The transport failed: the connection is gone.
                self.down_reason = format!("{}: {e}", self.key);
                tracing::warn!(link = %self.key, "{}", self.down_reason);
                close(&mut self.conn).await;
                Err(DriverError::Unreachable(self.down_reason.clone()))
            }
            Err(_) => {
                // The gate drops the late answer, if one comes; the
                // connection stays unless the peer has gone quiet altogether.
                conn.gate.abandon();
                let frames = conn.gate.frames();
                if frames == conn.frames_at_timeout {
                    conn.silent_timeouts += 1;
                } else {
                    conn.silent_timeouts = 1;
                    conn.frames_at_timeout = frames;
                }
                if conn.gate.torn() {
                    // The request was cut off half-written (a send that
                    // never drained, or the wait for RTU's gap): what the
                    // peer has seen is unknown.
                    tracing::warn!(link = %self.key, "a request timed out before it was sent whole; reconnecting");
                    close(&mut self.conn).await;
                } else if conn.silent_timeouts >= SILENT_TIMEOUTS {
                    tracing::warn!(
                        link = %self.key,
                        "nothing heard for {SILENT_TIMEOUTS} requests in a row; reconnecting"
                    );
                    // At once: the peer may be fine and the path to it not.
                    close(&mut self.conn).await;
                }
                Err(DriverError::Timeout(job.timeout))
            }
        }
    }
}

async fn close(conn: &mut Option<Connection>) {
    if let Some(mut conn) = conn.take() {
        let _ = timeout(Duration::from_millis(200), conn.ctx.disconnect()).await;
    }
}

/// The quiet time RTU framing needs between frames on a serial line: 3.5
/// characters of 11 bits at `baud`, and 1.75 ms above 19 200 baud (the
/// Modbus serial line specification, 2.5.1.1).
pub fn rtu_gap(baud: u32) -> Duration {
    if baud > 19_200 || baud == 0 {
        Duration::from_micros(1750)
    } else {
        Duration::from_secs_f64(3.5 * 11.0 / f64::from(baud))
    }
}

async fn tcp_stream(host: &str, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let stream = tokio::net::TcpStream::connect((host, port)).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn connect(key: &LinkKey) -> std::io::Result<(Context, Arc<Gate>)> {
    let gate = Arc::new(Gate::default());
    let ctx = match key {
        LinkKey::Tcp { host, port } => {
            let stream = tcp_stream(host, *port).await?;
            tokio_modbus::client::tcp::attach(AnswerGate::new(stream, Framing::Mbap, gate.clone()))
        }
        LinkKey::RtuOverTcp { host, port } => {
            let stream = tcp_stream(host, *port).await?;
            tokio_modbus::client::rtu::attach(AnswerGate::new(stream, Framing::Rtu, gate.clone()))
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
            let gated = AnswerGate::new(port, Framing::Rtu, gate.clone()).with_gap(rtu_gap(*baud));
            tokio_modbus::client::rtu::attach(gated)
        }
    };
    Ok((ctx, gate))
}

/// What one request came to: the transport failed (outer error), the device
/// refused (inner error), or a reply.
type Outcome = Result<Result<Reply, Refusal>, tokio_modbus::Error>;

/// Why a device's answer is not usable.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// A Modbus exception.
    Exception(tokio_modbus::ExceptionCode),
    /// An answer of the wrong size.
    Malformed(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Exception(e) => write!(f, "{e:?} ({e})"),
            Refusal::Malformed(why) => f.write_str(why),
        }
    }
}

/// Whether `error` is a device's refusal with exception `code` (what
/// [`LinkHandle::call`] makes of a [`Refusal::Exception`]).
pub fn refused_with(error: &DriverError, code: tokio_modbus::ExceptionCode) -> bool {
    matches!(error, DriverError::Refused(text) if text.starts_with(&format!("{code:?} (")))
}

/// Sends one request with `Client::call` and checks the answer's size here:
/// tokio-modbus's convenience readers only `debug_assert!` it (and so panic
/// in debug builds on a short answer, and pass it on in release builds).
async fn call(
    ctx: &mut Context,
    request: Request<'_>,
) -> Result<Result<Response, Refusal>, tokio_modbus::Error> {
    Ok(ctx.call(request).await?.map_err(Refusal::Exception))
}

fn exact<T>(items: Vec<T>, count: u16, bits: bool) -> Result<Vec<T>, Refusal> {
    ferrite_models::codec::answered(items, count, bits)
        .map_err(|e| Refusal::Malformed(e.to_string()))
}

async fn perform(ctx: &mut Context, op: &Op) -> Outcome {
    let unexpected = |r: Response| Ok(Err(Refusal::Malformed(format!("unexpected answer {r:?}"))));
    match op {
        Op::Read {
            table,
            start,
            count,
        } => {
            let request = match table {
                Table::Coil => Request::ReadCoils(*start, *count),
                Table::Discrete => Request::ReadDiscreteInputs(*start, *count),
                Table::Input => Request::ReadInputRegisters(*start, *count),
                Table::Holding => Request::ReadHoldingRegisters(*start, *count),
            };
            Ok(match call(ctx, request).await? {
                Ok(Response::ReadCoils(bits) | Response::ReadDiscreteInputs(bits)) => {
                    exact(bits, *count, true).map(Reply::Bits)
                }
                Ok(Response::ReadInputRegisters(words) | Response::ReadHoldingRegisters(words)) => {
                    exact(words, *count, false).map(Reply::Registers)
                }
                Ok(other) => return unexpected(other),
                Err(e) => Err(e),
            })
        }
        Op::WriteCoil { address, on } => {
            done(call(ctx, Request::WriteSingleCoil(*address, *on)).await?)
        }
        Op::WriteRegisters { address, values } if values.len() == 1 => {
            done(call(ctx, Request::WriteSingleRegister(*address, values[0])).await?)
        }
        Op::WriteRegisters { address, values } => done(
            call(
                ctx,
                Request::WriteMultipleRegisters(*address, values.into()),
            )
            .await?,
        ),
        Op::WriteBit { address, bit, on } => {
            let current = match call(ctx, Request::ReadHoldingRegisters(*address, 1)).await? {
                Ok(Response::ReadHoldingRegisters(words)) => match exact(words, 1, false) {
                    Ok(words) => words[0],
                    Err(e) => return Ok(Err(e)),
                },
                Ok(other) => return unexpected(other),
                Err(e) => return Ok(Err(e)),
            };
            let mask = 1u16 << bit;
            let next = if *on { current | mask } else { current & !mask };
            done(call(ctx, Request::WriteSingleRegister(*address, next)).await?)
        }
    }
}

fn done(answer: Result<Response, Refusal>) -> Outcome {
    Ok(answer.map(|_| Reply::Done))
}
