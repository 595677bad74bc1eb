//! The OPC UA driver, on async-opcua's client.
//!
//! - `connect`: the client (its certificate under `data_dir/pki`, which
//!   server certificates it trusts, its reconnects), endpoint selection,
//!   identity, and one session.
//! - `session`: one task per device that owns its session: it reads each
//!   node's DataType once, subscribes (or polls with batched Reads), marks
//!   values stale while the connection is down, and takes its
//!   subscriptions back when the client has reconnected.
//! - `resume`: how a subscription survives a lost connection
//!   (TransferSubscriptions, Republish of what never arrived, the current
//!   values sent again), and each subscription's callback, which follows
//!   the notifications' sequence numbers.
//! - `methods`: the model's methods, called with the Call service.
//! - `events`: events and alarms (A&C) from the device's notifier, into
//!   the events journal.
//! - `discover`: browses a server and types each variable for a model
//!   (`ferrite discover opcua`), on the same connect.
//! - `status`: OPC UA status codes mapped onto [`DriverError`]s, and so onto
//!   the REST API's errors.
//! - here: the devices as the driver sees them, and writes.
//!
//! Two loops recover: the client's own reconnects a lost connection and,
//! where the server still has the session, keeps it; the session task's
//! outer loop builds a fresh session and subscription when the first
//! connect fails, when the server no longer has the subscriptions (it
//! restarted), or when the session cannot go on.

mod connect;
pub mod discover;
mod events;
mod methods;
mod resume;
mod session;
mod status;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ferrite_models::Value;
use ferrite_models::device::Opcua;
use ferrite_models::model::{UaDataType, ValueType};
use opcua::client::Session;
use opcua::types::{
    AttributeId, DataValue, NodeId, NumericRange, QualifiedName, ReadValueId, TimestampsToReturn,
    WriteValue,
};
use tokio::sync::{mpsc, watch};

use ferrite_core::driver::{
    BoxFuture, DeviceWriter, Driver, DriverContext, DriverError, StartError, WriteAudit, Written,
    show_written_at,
};
use ferrite_core::reading::{Sample, Update};

/// One property as the driver sees it.
#[derive(Debug, Clone)]
struct Point {
    name: Arc<str>,
    /// The property's number (numbered by the gateway, by name).
    index: u16,
    ty: ValueType,
    readable: bool,
    /// The node, or why its id does not parse.
    node: Result<NodeId, String>,
    /// The DataType the model insists on, if any.
    expected: Option<UaDataType>,
    deadband: Option<f64>,
}

/// One OPC UA device.
#[derive(Debug)]
struct Device {
    name: Arc<str>,
    /// The device's number (numbered by the gateway, by name).
    index: usize,
    settings: Opcua,
    /// The device file's folder: relative paths in `settings` start here.
    base: PathBuf,
    poll: Duration,
    timeout: Duration,
    points: Vec<Point>,
    methods: Vec<methods::MethodPoint>,
}

impl Device {
    /// A path from the device file, resolved against its folder.
    fn path(&self, p: &std::path::Path) -> PathBuf {
        self.base.join(p)
    }

    fn sampling(&self) -> Duration {
        self.settings.sampling.map_or(self.poll, |s| s.get())
    }

    /// Every point's sample set to `sample`.
    fn all(&self, sample: &Sample) -> Vec<(u16, Sample)> {
        self.points
            .iter()
            .filter(|p| p.readable)
            .map(|p| (p.index, sample.clone()))
            .collect()
    }
}

/// A live session and what was learned on it, shared with the writer.
#[derive(Clone)]
struct Connected {
    session: Arc<Session>,
    /// Each point's DataType as the server declares it.
    types: Arc<Vec<Option<UaDataType>>>,
}

/// What the writer sees of the session: connected, or why not.
type Link = Result<Connected, String>;

/// The OPC UA driver: a session task per device, each with its own client.
pub struct OpcuaDriver {
    ctx: DriverContext,
    /// Clients are made one at a time: the first creates the gateway's
    /// certificate under `data_dir/pki`, the others find it.
    making: std::sync::Mutex<()>,
}

impl OpcuaDriver {
    /// The driver, on the gateway's context.
    pub fn new(ctx: DriverContext) -> Self {
        OpcuaDriver {
            ctx,
            making: std::sync::Mutex::new(()),
        }
    }
}

/// The device as the OPC UA driver runs it.
fn device_of(entry: &ferrite_core::driver::DeviceEntry<'_>) -> Option<Device> {
    let d = &entry.located.value;
    let settings = d.opcua.as_ref()?;
    let points = entry
        .properties(|p| p.opcua.as_ref())
        .map(|(index, name, p, b)| Point {
            name: name.clone(),
            index,
            ty: p.ty,
            readable: p.readable(),
            node: NodeId::from_str(&b.node.0)
                .map_err(|_| format!("cannot parse NodeId `{}`", b.node)),
            expected: b.datatype,
            deadband: p.deadband.filter(|_| p.ty.is_numeric()),
        })
        .collect();
    Some(Device {
        name: Arc::from(entry.name),
        index: entry.index,
        settings: settings.clone(),
        base: entry
            .located
            .file
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default(),
        poll: d.poll(),
        timeout: d.timeout(),
        points,
        methods: methods::methods_of(entry.model),
    })
}

impl Driver for OpcuaDriver {
    fn name(&self) -> &'static str {
        "opcua"
    }

    fn serves(&self, device: &ferrite_models::Device) -> bool {
        device.opcua.is_some()
    }

    fn start(
        &self,
        entry: &ferrite_core::driver::DeviceEntry<'_>,
        ctx: DriverContext,
    ) -> Result<Arc<dyn DeviceWriter>, StartError> {
        let device = Arc::new(device_of(entry).ok_or(StartError::WrongProtocol("OPC UA"))?);
        let shared_pki = self.ctx.data_dir.join("pki");
        let (link, seen) = watch::channel(Err("not connected yet".to_string()));
        let link = Arc::new(link);
        let making = &self.making;
        let (client, pki) = {
            let _one = making
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match connect::pki_for(&device, &shared_pki) {
                Ok(pki) => (connect::client(&device, &pki), pki),
                Err(e) => (Err(e), shared_pki),
            }
        };
        let (session_device, session_pki) = (device.clone(), pki.clone());
        // The client is made once; a restarted session task builds its own
        // (a panic may have left the first one half-used).
        let first = std::sync::Mutex::new(Some(client));
        let protocol = ferrite_models::device::Protocol::Opcua.key();
        ferrite_core::driver::supervise(&ctx, device.name.clone(), protocol, move |ctx| {
            let client = first
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
                .unwrap_or_else(|| connect::client(&session_device, &session_pki));
            session::run(
                session_device.clone(),
                client,
                session_pki.clone(),
                link.clone(),
                ctx,
            )
        });
        Ok(Arc::new(OpcuaWriter {
            device,
            link: seen,
            output: ctx.urgent.clone(),
            input_types: methods::InputTypes::default(),
        }))
    }
}

/// The time a value is stamped with under `policy`: when it changed at the
/// source, when the server saw it, or `now` (when the gateway received it;
/// also when the server gave no time). Never later than `now`: a clock
/// running ahead would otherwise stamp values in the future, and the live
/// view keeps a property's newest value, so it would hide the next ones.
fn stamp(
    policy: ferrite_models::device::OpcuaTimestamps,
    dv: &DataValue,
    now: ferrite_core::time::Micros,
) -> ferrite_core::time::Micros {
    use ferrite_models::device::OpcuaTimestamps;
    let micros = |t: &Option<opcua::types::DateTime>| {
        t.as_ref()
            .filter(|t| !t.is_null())
            .map(|t| t.as_chrono().timestamp_micros())
    };
    let at = match policy {
        OpcuaTimestamps::Source => {
            micros(&dv.source_timestamp).or_else(|| micros(&dv.server_timestamp))
        }
        OpcuaTimestamps::Server => {
            micros(&dv.server_timestamp).or_else(|| micros(&dv.source_timestamp))
        }
        OpcuaTimestamps::Gateway => None,
    };
    at.map_or(now, |t| t.min(now))
}

/// Reads the Value attribute of `nodes`.
fn read_values(nodes: &[&NodeId]) -> Vec<ReadValueId> {
    read_attribute(nodes, AttributeId::Value)
}

fn read_attribute(nodes: &[&NodeId], attribute: AttributeId) -> Vec<ReadValueId> {
    nodes.iter().map(|id| read_id(id, attribute)).collect()
}

/// A Read of `attribute` of `node`.
fn read_id(node: &NodeId, attribute: AttributeId) -> ReadValueId {
    ReadValueId {
        node_id: node.clone(),
        attribute_id: attribute as u32,
        index_range: NumericRange::None,
        data_encoding: QualifiedName::null(),
    }
}

/// What a DataValue from the server means for a point.
fn sample_of(point: &Point, dv: &DataValue) -> Result<Value, String> {
    let status = dv.status();
    if status.is_bad() {
        return Err(format!("{}: {status}", point.name));
    }
    let Some(variant) = &dv.value else {
        return Err(format!("{}: no value", point.name));
    };
    ferrite_models::ua::from_variant(variant, point.ty).map_err(|e| format!("{}: {e}", point.name))
}

/// Writes for one OPC UA device.
struct OpcuaWriter {
    device: Arc<Device>,
    link: watch::Receiver<Link>,
    output: mpsc::Sender<Update>,
    input_types: methods::InputTypes,
}

impl OpcuaWriter {
    /// Writes and reads back; returns the property's index and what the
    /// server now holds.
    async fn write_value(
        &self,
        property: &str,
        value: Value,
    ) -> Result<(u16, Sample, ferrite_core::time::Micros), DriverError> {
        let device = &self.device;
        let Some((i, point)) = device
            .points
            .iter()
            .enumerate()
            .find(|(_, p)| &*p.name == property)
        else {
            return Err(DriverError::Refused(format!(
                "no OPC UA binding for `{property}`"
            )));
        };
        let node = point
            .node
            .as_ref()
            .map_err(|e| DriverError::Refused(e.clone()))?;
        let connected = self
            .link
            .borrow()
            .clone()
            .map_err(DriverError::Unreachable)?;
        let Some(datatype) = connected.types.get(i).copied().flatten().or(point.expected) else {
            return Err(DriverError::Refused(format!(
                "the DataType of {node} is not one Ferrite can write"
            )));
        };
        let variant =
            ferrite_models::ua::to_variant(&value, datatype).map_err(DriverError::Rejected)?;
        let write = WriteValue {
            node_id: node.clone(),
            attribute_id: AttributeId::Value as u32,
            index_range: NumericRange::None,
            value: DataValue::value_only(variant),
        };
        let session = &connected.session;
        let results = status::within(device.timeout, session.write(&[write])).await?;
        match results.first() {
            Some(code) if code.is_good() => {}
            Some(code) => return Err(status::error(*code)),
            None => return Err(DriverError::Refused("empty write response".into())),
        }
        if !point.readable {
            return Ok((point.index, Sample::Good(value), ferrite_core::time::now()));
        }
        // Read the value back, so the API shows what the server holds,
        // stamped as the subscription's values are (one clock for both).
        let read = read_values(&[node]);
        let values = status::within(
            device.timeout,
            session.read(&read, TimestampsToReturn::Both, 0.0),
        )
        .await?;
        let now = ferrite_core::time::now();
        let ts = values
            .first()
            .map_or(now, |dv| stamp(device.settings.timestamps, dv, now));
        let sample = values.first().map_or(Sample::Bad, |dv| {
            sample_of(point, dv).map_or(Sample::Bad, Sample::Good)
        });
        Ok((point.index, sample, ts))
    }
}

impl DeviceWriter for OpcuaWriter {
    fn write<'a>(
        &'a self,
        property: &'a str,
        value: Value,
        audit: WriteAudit,
    ) -> BoxFuture<'a, Result<Written, DriverError>> {
        Box::pin(async move {
            let (index, sample, ts) = self.write_value(property, value).await?;
            show_written_at(&self.output, self.device.index, index, sample, ts, &audit).await
        })
    }

    fn call<'a>(
        &'a self,
        method: &'a str,
        inputs: Vec<Value>,
    ) -> BoxFuture<'a, Result<Vec<Value>, DriverError>> {
        Box::pin(async move {
            let connected = self
                .link
                .borrow()
                .clone()
                .map_err(DriverError::Unreachable)?;
            let device = &self.device;
            methods::call(
                &device.methods,
                &self.input_types,
                &connected.session,
                device.timeout,
                method,
                inputs,
            )
            .await
        })
    }
}
