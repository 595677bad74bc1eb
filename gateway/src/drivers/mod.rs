//! Protocol drivers, each in its own folder behind the one [`Driver`] trait.
//!
//! A driver is built from the validated project, then started with a
//! [`DriverContext`] (the shutdown token, the task tracker, the output queue
//! to the store writer). It returns one [`DeviceWriter`] per device, which the
//! API (and later the rules and the twin) use to write.
//!
//! Adding a protocol means adding a folder and one line in [`build_all`].

#[cfg(feature = "modbus")]
pub mod modbus;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "opcua")]
pub mod opcua;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ferrite_models::Project;
use ferrite_models::codec::CodecError;
use ferrite_models::value::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::live::Update;

/// What a running driver needs from the gateway.
#[derive(Clone)]
pub struct DriverContext {
    /// Fires when the gateway stops.
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
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The embedded broker's link, for the MQTT driver to take.
    #[cfg(feature = "mqtt")]
    pub broker: Arc<std::sync::Mutex<Option<crate::broker::BrokerLink>>>,
}

/// Counters shared by the drivers.
#[derive(Debug, Default)]
pub struct DriverStats {
    /// Payloads that did not decode (MQTT, Sparkplug).
    pub malformed_payloads: std::sync::atomic::AtomicU64,
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

/// Writes to one device. The value has already passed the model's checks.
pub trait DeviceWriter: Send + Sync {
    /// Writes `value` to `property` and returns once the device confirmed it
    /// and the new reading is visible, or, for devices that do not confirm,
    /// once the command went out.
    fn write<'a>(
        &'a self,
        property: &'a str,
        value: Value,
    ) -> BoxFuture<'a, Result<Written, DriverError>>;
}

#[cfg(any(feature = "modbus", feature = "opcua", feature = "mqtt"))]
/// One device of the project as a driver starts from: its index (which
/// [`Update`]s carry), name, file and model.
pub(crate) struct DeviceEntry<'a> {
    pub index: usize,
    pub name: &'a str,
    pub located: &'a ferrite_models::project::Located<ferrite_models::Device>,
    pub model: &'a ferrite_models::DeviceModel,
}

#[cfg(any(feature = "modbus", feature = "opcua", feature = "mqtt"))]
impl DeviceEntry<'_> {
    /// The model's properties with their index, for those that `binding`
    /// picks a binding of.
    pub fn properties<'b, B: 'b>(
        &'b self,
        binding: impl Fn(&'b ferrite_models::Property) -> Option<&'b B> + 'b,
    ) -> impl Iterator<Item = (u16, &'b str, &'b ferrite_models::Property, &'b B)> + 'b {
        self.model
            .properties
            .iter()
            .enumerate()
            .filter_map(move |(i, (name, p))| {
                let b = binding(p)?;
                Some((u16::try_from(i).unwrap_or(u16::MAX), name.as_str(), p, b))
            })
    }
}

#[cfg(any(feature = "modbus", feature = "opcua", feature = "mqtt"))]
/// Every device of the project whose model is known.
pub(crate) fn devices(project: &Project) -> impl Iterator<Item = DeviceEntry<'_>> {
    project
        .devices
        .iter()
        .enumerate()
        .filter_map(|(index, (name, located))| {
            let model = project.models.get(&located.value.model)?;
            Some(DeviceEntry {
                index,
                name,
                located,
                model: &model.value,
            })
        })
}

#[cfg(any(feature = "modbus", feature = "opcua"))]
/// Sends the read-back of a write on the urgent queue, and waits until it is
/// stored and visible, so that the API's answer shows it.
pub(crate) async fn show_written(
    urgent: &mpsc::Sender<Update>,
    device: usize,
    property: u16,
    sample: crate::live::Sample,
) -> Result<Written, DriverError> {
    let (applied, visible) = tokio::sync::oneshot::channel();
    let update = Update {
        device,
        ts: crate::time::now(),
        status: None,
        seen: true,
        samples: vec![(property, sample)],
        applied: Some(applied),
    };
    urgent
        .send(update)
        .await
        .map_err(|_| DriverError::Stopped)?;
    visible.await.map_err(|_| DriverError::Stopped)?;
    Ok(Written::Confirmed)
}

/// A protocol driver.
pub trait Driver: Send {
    /// Its name, for logs.
    fn name(&self) -> &'static str;
    /// Starts polling or subscribing; returns a writer per device it serves.
    fn start(self: Box<Self>, ctx: DriverContext) -> HashMap<String, Arc<dyn DeviceWriter>>;
}

/// Builds a protocol's driver if the project has devices for it.
type Builder = fn(&Project) -> Option<Box<dyn Driver>>;

/// Every driver the project needs.
pub fn build_all(project: &Project) -> Vec<Box<dyn Driver>> {
    let builders: &[Builder] = &[
        #[cfg(feature = "modbus")]
        |p| modbus::ModbusDriver::build(p).map(|d| Box::new(d) as Box<dyn Driver>),
        #[cfg(feature = "opcua")]
        |p| opcua::OpcuaDriver::build(p).map(|d| Box::new(d) as Box<dyn Driver>),
        #[cfg(feature = "mqtt")]
        |p| mqtt::MqttDriver::build(p).map(|d| Box::new(d) as Box<dyn Driver>),
    ];
    builders.iter().filter_map(|build| build(project)).collect()
}
