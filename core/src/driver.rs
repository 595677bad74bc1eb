//! The contract between the gateway and its protocol drivers: the
//! [`Driver`] trait, the [`DriverContext`] each runs on, the
//! [`DeviceWriter`] a started device answers writes with, and their typed
//! errors.
//!
//! A driver is made once, when the gateway starts, with the gateway-wide
//! [`DriverContext`] (the output queues to the store writer, the data
//! folder, the counters). The gateway then starts devices on it one at a
//! time, each with a context of its own (its own shutdown token and task
//! tracker), and stops them one at a time, so that a reconfiguration touches
//! only the devices it changes. A driver shares what devices share (a Modbus
//! TCP connection or serial bus, the broker link) and lets go of it in
//! [`Driver::sweep`] once no running device uses it.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ferrite_models::codec::CodecError;
use ferrite_models::value::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::reading::{Sample, Update};

/// What a running driver needs from the gateway. A driver is made with the
/// gateway's; each device starts with one whose `shutdown` and `tasks` are
/// its own.
#[derive(Clone)]
pub struct DriverContext {
    /// Fires when the gateway stops (or, in a device's context, when the
    /// device does).
    pub shutdown: CancellationToken,
    /// Spawn long-running tasks here so that shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Poll results and status changes go here. Bounded: when the store
    /// falls behind, drivers wait rather than drop readings.
    pub output: mpsc::Sender<Update>,
    /// Read-backs of writes go here: the store writer serves them first, so
    /// a write's answer does not queue behind a burst of polls.
    pub urgent: mpsc::Sender<Update>,
    /// The gateway's data folder (the OPC UA driver keeps its PKI there).
    pub data_dir: PathBuf,
    /// Counters the API shows in `/metrics`.
    pub stats: Arc<DriverStats>,
    /// Per-device poll counters and latencies for `/metrics`.
    pub meters: Arc<dyn DriverMeters>,
    /// Where device loops that panicked are counted.
    pub crashes: Arc<Crashes>,
    /// Events a device raises for the events journal (and so the cloud):
    /// data that may be missing after a reconnect, say. Bounded; see
    /// [`DriverContext::raise`].
    pub events: mpsc::Sender<DeviceEvent>,
}

impl DriverContext {
    /// A context of its own, for tests and benchmarks: its output queues
    /// lead nowhere, its counters count for no one, and its events go to
    /// `events`.
    pub fn standalone(events: mpsc::Sender<DeviceEvent>) -> Self {
        DriverContext {
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            output: mpsc::channel(1).0,
            urgent: mpsc::channel(1).0,
            data_dir: std::env::temp_dir(),
            stats: Arc::default(),
            meters: Arc::new(NoMeters),
            crashes: Arc::default(),
            events,
        }
    }

    /// Raises an event for the journal. It never waits: an event that finds
    /// the queue full (a storm of them, a store that takes nothing) is
    /// logged instead, as every event also is.
    pub fn raise(&self, event: DeviceEvent) {
        match event.severity {
            Severity::Info => tracing::info!(device = %event.device, "{}", event.message),
            Severity::Warning | Severity::Critical => {
                tracing::warn!(device = %event.device, "{}", event.message)
            }
        }
        if self.events.try_send(event).is_err() {
            tracing::warn!("the events queue is full: the event above is in the log only");
        }
    }
}

/// How much an event matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// For the record.
    Info,
    /// Someone should look: data may be missing, say.
    Warning,
    /// Someone must act now (an OPC UA event of severity 801 and up).
    Critical,
}

impl Severity {
    /// As the journal spells it.
    pub fn key(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// Something that happened to a device, for the events journal.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceEvent {
    /// The device's name.
    pub device: String,
    /// The protocol that raised it (`opcua`, say).
    pub source: &'static str,
    /// How much it matters.
    pub severity: Severity,
    /// What happened, as a stable key (`opcua_data_may_be_missing`).
    pub kind: &'static str,
    /// What happened, in words an operator can act on.
    pub message: String,
    /// What the source said besides, by name (an OPC UA event's time,
    /// type, source and severity, say); empty for most.
    pub details: Vec<(&'static str, Value)>,
}

/// Device loops that panicked, for the logs and for the reconciler, which
/// rolls a configuration back when its devices keep crashing.
#[derive(Debug, Default)]
pub struct Crashes {
    seen: std::sync::Mutex<std::collections::VecDeque<Crash>>,
    notify: tokio::sync::Notify,
}

/// One panic of a device loop.
#[derive(Debug, Clone)]
pub struct Crash {
    /// When.
    pub at: std::time::Instant,
    /// The device.
    pub device: String,
    /// The panic's message.
    pub why: String,
}

impl Crashes {
    /// Most crashes remembered.
    const KEPT: usize = 64;

    /// Records a crash of `device`'s loop.
    pub fn report(&self, device: &str, why: String) {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.len() == Self::KEPT {
            seen.pop_front();
        }
        seen.push_back(Crash {
            at: std::time::Instant::now(),
            device: device.to_string(),
            why,
        });
        drop(seen);
        self.notify.notify_waiters();
    }

    /// The crashes since `since`, oldest first.
    pub fn since(&self, since: std::time::Instant) -> Vec<Crash> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|c| c.at >= since)
            .cloned()
            .collect()
    }

    /// Waits for the next crash.
    pub async fn next(&self) {
        self.notify.notified().await;
    }
}

/// Runs a device's main loop on its `ctx`: the loop `make` builds is run
/// again after a panic (a bug must not stop the device for good, nor any
/// other), after a growing delay, until the device stops. Each panic is
/// logged and counted in `ctx.crashes`.
pub fn supervise<F, Fut>(ctx: &DriverContext, device: Arc<str>, protocol: &'static str, make: F)
where
    F: Fn(DriverContext) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    use futures_util::FutureExt;
    let ctx = ctx.clone();
    let tasks = ctx.tasks.clone();
    tasks.spawn(async move {
        let mut backoff =
            crate::backoff::Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            let run = std::panic::AssertUnwindSafe(make(ctx.clone()))
                .catch_unwind()
                .await;
            let Err(panic) = run else { break };
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_else(|| "a panic without a message".into());
            let delay = backoff.next_delay();
            tracing::error!(device = %device, "the device's loop panicked ({why}); restarting it in {delay:.1?}");
            ctx.crashes.report(&device, why);
            ctx.meters.panicked(&device, protocol);
            tokio::select! {
                () = ctx.shutdown.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
    });
}

/// Counters shared by the drivers.
#[derive(Debug, Default)]
pub struct DriverStats {
    /// Payloads that did not decode (MQTT, Sparkplug).
    pub malformed_payloads: std::sync::atomic::AtomicU64,
    /// OPC UA data changes that found a session's queue full (the session
    /// then reads every node's current value, so no latest value is lost).
    pub overflowed_changes: std::sync::atomic::AtomicU64,
    /// MQTT messages the embedded broker dropped before the gateway read
    /// them (its log overflowed): the gap in the log's offsets.
    pub mqtt_dropped: std::sync::atomic::AtomicU64,
    /// Of those, by the device whose topic each was published on (a
    /// message for two devices counts for both).
    pub mqtt_dropped_by_device: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// Of those, the ones on no device's topic, or on a topic the broker
    /// no longer told (see `broker::ledger`).
    pub mqtt_dropped_unrouted: std::sync::atomic::AtomicU64,
    /// Microseconds the broker's router was held because the store's queue
    /// was nearly full (back-pressure on MQTT publishers).
    pub mqtt_held_micros: std::sync::atomic::AtomicU64,
    /// Holds of the router that ran out (the store took nothing for a
    /// whole hold) and let a batch through regardless.
    pub mqtt_hold_timeouts: std::sync::atomic::AtomicU64,
}

impl DriverStats {
    /// MQTT messages dropped unread, by device: a copy.
    pub fn mqtt_dropped_by_device(&self) -> std::collections::BTreeMap<String, u64> {
        self.mqtt_dropped_by_device
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// How far a write got when it succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The device confirmed it, and the new reading is visible.
    Confirmed,
    /// The command went out, but the device does not confirm writes (an
    /// MQTT binding without `confirm`).
    Sent,
}

/// Why a device operation failed. "The device refused" and "the link is
/// down" stay apart, because the API answers them differently.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DriverError {
    /// The device answered with an error (a Modbus exception, say).
    #[error("the device refused: {0}")]
    Refused(String),
    /// The device does not let this client do that (OPC UA
    /// Bad_UserAccessDenied, Bad_NotWritable).
    #[error("the device denied access: {0}")]
    Denied(String),
    /// The device, or its declared type, cannot take this value (OPC UA
    /// Bad_OutOfRange, Bad_TypeMismatch, 300 for a Byte node).
    #[error("the device cannot take this value: {0}")]
    Rejected(String),
    /// The device cannot be reached.
    #[error("the device is unreachable: {0}")]
    Unreachable(String),
    /// The device did not answer in time.
    #[error("the device did not answer within {0:?}")]
    Timeout(Duration),
    /// The value cannot be encoded for the device.
    #[error("{0}")]
    Encode(#[from] CodecError),
    /// The driver has stopped.
    #[error("the gateway is shutting down")]
    Stopped,
}

/// A boxed future, for object-safe async methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A write's audit entry (JSON), as the gateway would record it if the
/// device confirms the write, handed to the driver with the write.
///
/// A driver that confirms a write with a read-back takes the entry
/// ([`WriteAudit::take`]) into the read-back's [`Update::audit`], so that
/// the store keeps the entry and the read-back in one commit: one fsync per
/// write, not two. Taken at most once. Whoever called
/// [`DeviceWriter::write`] sees afterwards whether it was taken
/// ([`WriteAudit::is_taken`]) and records the entry itself if not (a write
/// that failed or was only sent, a driver that does not carry it).
#[derive(Debug, Clone, Default)]
pub struct WriteAudit(Arc<std::sync::Mutex<Option<Vec<u8>>>>);

impl WriteAudit {
    /// An entry for the read-back to carry.
    pub fn new(body: Vec<u8>) -> Self {
        WriteAudit(Arc::new(std::sync::Mutex::new(Some(body))))
    }

    /// The entry, the first time; `None` after that (or if there is none).
    pub fn take(&self) -> Option<Vec<u8>> {
        self.slot().take()
    }

    /// Whether a driver has taken the entry.
    pub fn is_taken(&self) -> bool {
        self.slot().is_none()
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Vec<u8>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Writes to one device. The value has already passed the model's checks.
pub trait DeviceWriter: Send + Sync {
    /// Writes `value` to `property` and returns once the device confirmed it
    /// and the new reading is visible, or, for devices that do not confirm,
    /// once the command went out. A driver that confirms with a read-back
    /// hands `audit` on with it (see [`WriteAudit`]).
    fn write<'a>(
        &'a self,
        property: &'a str,
        value: Value,
        audit: WriteAudit,
    ) -> BoxFuture<'a, Result<Written, DriverError>>;

    /// Calls the model's method `method` with `inputs` (already checked
    /// against the model, in declared order) and returns its outputs, in
    /// declared order. Only protocols with methods (OPC UA) answer; the
    /// others refuse.
    fn call<'a>(
        &'a self,
        method: &'a str,
        inputs: Vec<Value>,
    ) -> BoxFuture<'a, Result<Vec<Value>, DriverError>> {
        let _ = inputs;
        Box::pin(async move {
            Err(DriverError::Refused(format!(
                "this device's protocol has no methods, so `{method}` cannot be called"
            )))
        })
    }
}

/// One device of the project as a driver starts it: its number (which
/// [`Update`]s carry), name, file, model, and its properties' numbers.
pub struct DeviceEntry<'a> {
    /// The device's number (the gateway numbers devices by name).
    pub index: usize,
    /// Its name.
    pub name: &'a str,
    /// Its document.
    pub located: &'a ferrite_models::project::Located<ferrite_models::Device>,
    /// Its model.
    pub model: &'a ferrite_models::DeviceModel,
    /// Each model property's number, in model order.
    pub numbers: &'a [u16],
    /// Each model property's name, in model order: the gateway's shared
    /// copies, so that a driver keeping names per point holds pointers, not
    /// strings.
    pub names: &'a [std::sync::Arc<str>],
}

impl DeviceEntry<'_> {
    /// The model's properties with their number, for those that `binding`
    /// picks a binding of.
    pub fn properties<'b, B: 'b>(
        &'b self,
        binding: impl Fn(&'b ferrite_models::Property) -> Option<&'b B> + 'b,
    ) -> impl Iterator<
        Item = (
            u16,
            &'b std::sync::Arc<str>,
            &'b ferrite_models::Property,
            &'b B,
        ),
    > + 'b {
        self.model
            .properties
            .values()
            .zip(self.numbers)
            .zip(self.names)
            .filter_map(move |((p, number), name)| {
                let b = binding(p)?;
                Some((*number, name, p, b))
            })
    }
}

/// Sends the read-back of a write on the urgent queue, with the write's
/// audit entry, and waits until both are stored and the value is visible, so
/// that the API's answer shows it.
pub async fn show_written(
    urgent: &mpsc::Sender<Update>,
    device: usize,
    property: u16,
    sample: Sample,
    audit: &WriteAudit,
) -> Result<Written, DriverError> {
    show_written_at(urgent, device, property, sample, crate::time::now(), audit).await
}

/// [`show_written`], with the read-back stamped `ts` (the device's own
/// time of the value, where the driver keeps that).
pub async fn show_written_at(
    urgent: &mpsc::Sender<Update>,
    device: usize,
    property: u16,
    sample: Sample,
    ts: crate::time::Micros,
    audit: &WriteAudit,
) -> Result<Written, DriverError> {
    let (applied, visible) = tokio::sync::oneshot::channel();
    let update = Update {
        device,
        ts,
        status: None,
        seen: true,
        samples: vec![(property, sample)],
        stamps: Vec::new(),
        applied: Some(applied),
        audit: audit.take().into_iter().collect(),
    };
    urgent
        .send(update)
        .await
        .map_err(|_| DriverError::Stopped)?;
    visible.await.map_err(|_| DriverError::Stopped)?;
    Ok(Written::Confirmed)
}

/// A protocol driver.
pub trait Driver: Send + Sync {
    /// Its name, for logs.
    fn name(&self) -> &'static str;
    /// Whether `device` speaks this driver's protocol.
    fn serves(&self, device: &ferrite_models::Device) -> bool;
    /// Starts polling or subscribing to one device, with its own `ctx`
    /// (tasks go on `ctx.tasks` and stop when `ctx.shutdown` fires);
    /// returns its writer, or why it cannot run.
    fn start(
        &self,
        device: &DeviceEntry<'_>,
        ctx: DriverContext,
    ) -> Result<Arc<dyn DeviceWriter>, StartError>;
    /// Lets go of shared connections that no running device uses any more.
    fn sweep(&self) {}
}

/// Why a driver cannot start a device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// The device speaks another protocol (the gateway asks the driver that
    /// [`Driver::serves`] it, so this is a bug).
    #[error("not a {0} device")]
    WrongProtocol(&'static str),
    /// Something the device needs is not configured (an MQTT device without
    /// the embedded broker).
    #[error("{0}")]
    Missing(&'static str),
}

/// Where drivers count polls and panics (the gateway's `/metrics`). A trait,
/// so that the drivers need not know the metrics library.
pub trait DriverMeters: Send + Sync {
    /// The meter one device's polls are counted with.
    fn device(&self, device: &str, protocol: &str) -> Arc<dyn PollMeter>;
    /// Counts a panic of `device`'s loop.
    fn panicked(&self, device: &str, protocol: &str);
}

/// One device's poll counter.
pub trait PollMeter: Send + Sync {
    /// Counts a poll that took `took`; `ok` unless the device failed to
    /// answer, or answered with an error.
    fn poll(&self, took: Duration, ok: bool);
}

/// Meters that count nothing, for tests and benchmarks.
#[derive(Debug, Default)]
pub struct NoMeters;

impl DriverMeters for NoMeters {
    fn device(&self, _: &str, _: &str) -> Arc<dyn PollMeter> {
        Arc::new(NoMeters)
    }
    fn panicked(&self, _: &str, _: &str) {}
}

impl PollMeter for NoMeters {
    fn poll(&self, _: Duration, _: bool) {}
}
