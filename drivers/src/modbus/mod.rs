//! The Modbus driver (TCP, RTU, and RTU framing over TCP), on tokio-modbus.
//!
//! - `plan`: read coalescing.
//! - `link`: one task per TCP endpoint or serial bus, owning the connection.
//! - `answer_gate`: between tokio-modbus and the wire, lets through only the
//!   answer to the request on it, so a unit's timeout costs its neighbours
//!   nothing.
//! - `discover`: which units answer on a link and what they let a client
//!   read (`ferrite discover modbus`); reads only, over `link`.
//! - here: the per-device pollers, and writes.
//!
//! Each device polls on its own `poll` period. Its reads go to the link its
//! connection belongs to: devices behind one TCP gateway share the socket
//! (by unit id), devices on one RS-485 port share the bus, one request at a
//! time.

pub mod answer_gate;
pub mod discover;
pub mod link;
pub mod plan;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ferrite_models::Value;
use ferrite_models::codec::{self, Encoded};
use ferrite_models::device::{Coalesce, Protocol};
use ferrite_models::model::{ModbusBinding, ValueType};
use ferrite_models::units::Span;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use self::link::{LinkHandle, LinkKey, Op, Reply};
use self::plan::{ReadBlock, plan};
use ferrite_core::driver::{
    BoxFuture, DeviceEntry, DeviceWriter, Driver, DriverContext, DriverError, StartError,
    WriteAudit, Written, show_written,
};
use ferrite_core::reading::{Sample, Status, Update};
use ferrite_core::shared::Interner;
use ferrite_core::time::now;

/// One property as the driver sees it.
#[derive(Debug, Clone, PartialEq)]
struct Point {
    name: Arc<str>,
    /// The property's number (numbered by the gateway, by name).
    index: u16,
    ty: ValueType,
    readable: bool,
    binding: ModbusBinding,
}

// Points are shared by value (`Interner`); a NaN scale, never equal to
// itself, only goes unshared.
impl Eq for Point {}

impl std::hash::Hash for Point {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (
            &self.name,
            self.index,
            self.binding.table,
            self.binding.address,
        )
            .hash(state);
    }
}

/// One Modbus device, ready to poll.
#[derive(Debug)]
struct Device {
    name: Arc<str>,
    /// The device's number (numbered by the gateway, by name).
    index: usize,
    link: LinkKey,
    unit: u8,
    poll: Duration,
    timeout: Duration,
    /// Auto-demotion's period (zero: off).
    demote: Duration,
    /// Shared by every device of the same model (and layout): a thousand
    /// devices of a hundred points hold one table, not a thousand.
    points: Arc<[Point]>,
    blocks: Arc<[ReadBlock]>,
}

/// The Modbus driver: the links (one per TCP endpoint or serial bus) and
/// the devices on them.
pub struct ModbusDriver {
    ctx: DriverContext,
    /// Each link with a token every device on it holds a copy of: a link
    /// whose token nobody else holds has no device left (see `sweep`).
    links: Mutex<HashMap<LinkKey, (LinkHandle, Arc<()>)>>,
    points: Interner<[Point]>,
    blocks: Interner<[ReadBlock]>,
}

impl ModbusDriver {
    /// The driver, on the gateway's context; no links until devices come.
    pub fn new(ctx: DriverContext) -> Self {
        ModbusDriver {
            ctx,
            links: Mutex::new(HashMap::new()),
            points: Interner::default(),
            blocks: Interner::default(),
        }
    }

    /// The link `key`, started if no device had it yet.
    fn link(&self, key: &LinkKey) -> (LinkHandle, Arc<()>) {
        let mut links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        let (handle, users) = links.entry(key.clone()).or_insert_with(|| {
            let handle = link::spawn(key.clone(), &self.ctx.tasks, self.ctx.shutdown.clone());
            (handle, Arc::new(()))
        });
        (handle.clone(), users.clone())
    }
}

/// The device as the Modbus driver runs it.
fn device_of(entry: &DeviceEntry<'_>, driver: &ModbusDriver) -> Option<Device> {
    let d = &entry.located.value;
    type Settings<'a> = (LinkKey, u8, &'a Coalesce, Option<Span>);
    let (link, unit, coalesce, demote): Settings<'_> = if let Some(tcp) = &d.modbus_tcp {
        let key = LinkKey::Tcp {
            host: tcp.host.clone(),
            port: tcp.port,
        };
        (key, tcp.unit, &tcp.coalesce, tcp.demote)
    } else if let Some(tcp) = &d.modbus_rtu_over_tcp {
        let key = LinkKey::RtuOverTcp {
            host: tcp.host.clone(),
            port: tcp.port,
        };
        (key, tcp.unit, &tcp.coalesce, tcp.demote)
    } else if let Some(rtu) = &d.modbus_rtu {
        (LinkKey::rtu(rtu), rtu.unit, &rtu.coalesce, rtu.demote)
    } else {
        return None;
    };
    let points: Vec<Point> = entry
        .properties(|p| p.modbus.as_ref())
        .map(|(index, name, p, b)| Point {
            name: name.clone(),
            index,
            ty: p.ty,
            readable: p.readable(),
            binding: b.clone(),
        })
        .collect();
    let readable: Vec<(usize, &ModbusBinding)> = points
        .iter()
        .enumerate()
        .filter(|(_, p)| p.readable)
        .map(|(i, p)| (i, &p.binding))
        .collect();
    let blocks = plan(&readable, coalesce);
    Some(Device {
        name: Arc::from(entry.name),
        index: entry.index,
        link,
        unit,
        poll: d.poll(),
        timeout: d.timeout(),
        demote: demote.map_or(DEMOTE_FOR, Span::get),
        points: driver.points.share(points.into_boxed_slice()),
        blocks: driver.blocks.share(blocks.into_boxed_slice()),
    })
}

impl Driver for ModbusDriver {
    fn name(&self) -> &'static str {
        "modbus"
    }

    fn serves(&self, device: &ferrite_models::Device) -> bool {
        device.modbus_tcp.is_some()
            || device.modbus_rtu.is_some()
            || device.modbus_rtu_over_tcp.is_some()
    }

    fn start(
        &self,
        entry: &DeviceEntry<'_>,
        ctx: DriverContext,
    ) -> Result<Arc<dyn DeviceWriter>, StartError> {
        let device = device_of(entry, self).ok_or(StartError::WrongProtocol("Modbus"))?;
        let (link, users) = self.link(&device.link);
        let protocol = match device.link {
            LinkKey::Tcp { .. } => Protocol::ModbusTcp,
            LinkKey::RtuOverTcp { .. } => Protocol::ModbusRtuOverTcp,
            LinkKey::Rtu { .. } => Protocol::ModbusRtu,
        };
        let meter = ctx.meters.device(&device.name, protocol.key());
        let device = Arc::new(device);
        tracing::debug!(device = %device.name, link = %device.link, "modbus: polling");
        let (poller, link_of_poller) = (device.clone(), link.clone());
        ferrite_core::driver::supervise(&ctx, device.name.clone(), protocol.key(), move |ctx| {
            poll_loop(
                poller.clone(),
                link_of_poller.clone(),
                meter.clone(),
                ctx.output,
                ctx.shutdown,
                users.clone(),
            )
        });
        Ok(Arc::new(ModbusWriter {
            device,
            link,
            output: ctx.urgent.clone(),
        }))
    }

    fn sweep(&self) {
        let mut links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        // Dropping our handle ends the link task once no writer holds one.
        links.retain(|key, (_, users)| {
            let used = Arc::strong_count(users) > 1;
            if !used {
                tracing::info!(link = %key, "modbus: no device left on this link; closing it");
            }
            used
        });
    }
}

async fn poll_loop(
    device: Arc<Device>,
    link: LinkHandle,
    meter: std::sync::Arc<dyn ferrite_core::driver::PollMeter>,
    output: mpsc::Sender<Update>,
    shutdown: CancellationToken,
    // Held while polling: the link stays while a device uses it.
    _users: Arc<()>,
) {
    // Devices started together poll together. Spreading their start over
    // the period was measured and not kept: the store then commits changes
    // of unrelated series together, and sled spent 1.5-2x the CPU.
    let mut tick = tokio::time::interval(device.poll);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut demotion = Demotion::new(device.demote);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        if demotion.holds() {
            continue;
        }
        super::crash_point(&device.name);
        let started = std::time::Instant::now();
        let (update, timed_out) = poll_once(&device, &link).await;
        demotion.after_poll(&device.name, timed_out);
        let ok = matches!(update.status, Some((Status::Online, _)));
        meter.poll(started.elapsed(), ok);
        let sent = tokio::select! {
            () = shutdown.cancelled() => break,
            sent = output.send(update) => sent,
        };
        if sent.is_err() {
            break;
        }
    }
}

/// Timeouts in a row after which a device is demoted.
pub const DEMOTE_AFTER: u32 = 3;
/// How long a demoted device goes unpolled between probes, unless its
/// `demote` key says otherwise.
pub const DEMOTE_FOR: Duration = Duration::from_secs(10);

/// Auto-demotion, as SCADA drivers do it: a device that timed out
/// [`DEMOTE_AFTER`] polls in a row is polled only once per its `demote`
/// period ([`DEMOTE_FOR`] by default) until it answers again. Every request
/// to it holds the shared link for the whole timeout, which its neighbours
/// would otherwise wait out each cycle. Writes to it are still tried.
#[derive(Debug)]
struct Demotion {
    period: Duration,
    timeouts: u32,
    until: Option<tokio::time::Instant>,
}

impl Demotion {
    fn new(period: Duration) -> Self {
        Demotion {
            period,
            timeouts: 0,
            until: None,
        }
    }

    /// True while this poll is to be left out.
    fn holds(&self) -> bool {
        self.until
            .is_some_and(|until| tokio::time::Instant::now() < until)
    }

    fn after_poll(&mut self, device: &str, timed_out: bool) {
        if !timed_out {
            if self.until.take().is_some() {
                tracing::info!(device, "modbus: answers again; polled at its period");
            }
            self.timeouts = 0;
            return;
        }
        self.timeouts = self.timeouts.saturating_add(1);
        if self.timeouts >= DEMOTE_AFTER && !self.period.is_zero() {
            if self.until.is_none() {
                tracing::warn!(
                    device,
                    "modbus: {DEMOTE_AFTER} timeouts in a row; probed once per {:?} until it answers",
                    self.period
                );
            }
            self.until = Some(tokio::time::Instant::now() + self.period);
        }
    }
}

impl Device {
    /// The same sample for every property a block reads.
    fn all_of<'a>(
        &'a self,
        block: &'a ReadBlock,
        sample: Sample,
    ) -> impl Iterator<Item = (u16, Sample)> + 'a {
        block
            .items
            .iter()
            .map(move |(i, _)| (self.points[*i].index, sample.clone()))
    }
}

/// Reads every block once and reports what came back, and whether the
/// device let a request time out.
async fn poll_once(device: &Device, link: &LinkHandle) -> (Update, bool) {
    let ts = now();
    let mut samples = Vec::with_capacity(device.points.len());
    let mut status = Status::Online;
    let mut error = None;
    let mut seen = false;
    let mut link_down = false;
    let mut timed_out = false;
    for block in device.blocks.iter() {
        if link_down {
            samples.extend(device.all_of(block, Sample::Stale));
            continue;
        }
        let op = Op::Read {
            table: block.table,
            start: block.start,
            count: block.count,
        };
        match link.call(device.unit, op, device.timeout).await {
            Ok(reply) => {
                seen = true;
                for (i, offset) in &block.items {
                    let point = &device.points[*i];
                    let sample = match decode(point, &reply, usize::from(*offset)) {
                        Ok(v) => Sample::Good(v),
                        Err(e) => {
                            status = Status::Error;
                            error = Some(format!("{}: {e}", point.name));
                            Sample::Bad
                        }
                    };
                    samples.push((point.index, sample));
                }
            }
            Err(DriverError::Refused(why)) => {
                seen = true;
                status = Status::Error;
                error = Some(format!(
                    "{} {}..{}: {why}",
                    block.table,
                    block.start,
                    block.start + block.count - 1
                ));
                samples.extend(device.all_of(block, Sample::Bad));
            }
            Err(e) => {
                timed_out |= matches!(e, DriverError::Timeout(_));
                status = Status::Offline;
                error = Some(e.to_string());
                link_down = true;
                samples.extend(device.all_of(block, Sample::Stale));
            }
        }
    }
    let update = Update {
        device: device.index,
        ts,
        status: Some((status, error)),
        seen,
        samples,
        stamps: Vec::new(),
        applied: None,
        audit: Vec::new(),
    };
    (update, timed_out)
}

fn decode(point: &Point, reply: &Reply, offset: usize) -> Result<Value, String> {
    match reply {
        Reply::Bits(bits) => bits
            .get(offset)
            .map(|on| codec::decode_bit(*on))
            .ok_or_else(|| "short reply".to_string()),
        Reply::Registers(regs) => {
            let regs = regs.get(offset..).unwrap_or_default();
            codec::decode_registers(&point.binding, point.ty, regs).map_err(|e| e.to_string())
        }
        Reply::Done => Err("unexpected reply".to_string()),
    }
}

/// Writes for one Modbus device.
struct ModbusWriter {
    device: Arc<Device>,
    link: LinkHandle,
    output: mpsc::Sender<Update>,
}

impl DeviceWriter for ModbusWriter {
    fn write<'a>(
        &'a self,
        property: &'a str,
        value: Value,
        audit: WriteAudit,
    ) -> BoxFuture<'a, Result<Written, DriverError>> {
        Box::pin(async move {
            let device = &self.device;
            let Some(point) = device.points.iter().find(|p| &*p.name == property) else {
                return Err(DriverError::Refused(format!(
                    "no Modbus binding for `{property}`"
                )));
            };
            let b = &point.binding;
            let op = match codec::encode(b, &value)? {
                Encoded::Coil(on) => Op::WriteCoil {
                    address: b.address,
                    on,
                },
                Encoded::Registers(values) => Op::WriteRegisters {
                    address: b.address,
                    values,
                },
                Encoded::Bit { bit, on } => Op::WriteBit {
                    address: b.address,
                    bit,
                    on,
                },
            };
            self.link.call(device.unit, op, device.timeout).await?;
            // Read the property back, so the API shows what the device holds
            // (it may round or clamp), and wait until that is visible.
            let op = Op::Read {
                table: b.table,
                start: b.address,
                count: u16::try_from(b.width()).unwrap_or(1),
            };
            let sample = match self.link.call(device.unit, op, device.timeout).await {
                Ok(reply) => decode(point, &reply, 0).map_or(Sample::Bad, Sample::Good),
                // Write-only properties may not be readable; the device
                // confirmed the write, so show what was written.
                Err(DriverError::Refused(_)) => Sample::Good(value),
                Err(e) => return Err(e),
            };
            show_written(&self.output, device.index, point.index, sample, &audit).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{entry, project, properties};

    const PLANT: &str = r#"kind: DeviceModel
name: meter
properties:
  power: { type: float, modbus: { table: holding, address: 0, format: f32 } }
  energy: { type: float, modbus: { table: input, address: 10, format: u32, scale: 0.1 } }
---
kind: DeviceModel
name: pump
properties:
  power: { type: float, modbus: { table: holding, address: 2, format: f32 } }
---
kind: Device
name: m1
model: meter
modbus-tcp: { host: 127.0.0.1, port: 5020, unit: 1 }
---
kind: Device
name: m2
model: meter
modbus-tcp: { host: 127.0.0.1, port: 5021, unit: 7 }
---
kind: Device
name: p1
model: pump
modbus-tcp: { host: 127.0.0.1, port: 5020, unit: 2 }
"#;

    #[test]
    fn devices_of_one_model_share_their_points_and_read_plan() {
        let project = project(PLANT);
        let driver = ModbusDriver::new(DriverContext::standalone(mpsc::channel(1).0));
        let (meters, pumps) = (properties(&project, "meter"), properties(&project, "pump"));
        let device = |index, name, properties| {
            device_of(&entry(&project, index, name, properties), &driver).expect("modbus")
        };
        let (m1, m2, p1) = (
            device(0, "m1", &meters),
            device(1, "m2", &meters),
            device(2, "p1", &pumps),
        );
        assert!(Arc::ptr_eq(&m1.points, &m2.points));
        assert!(Arc::ptr_eq(&m1.blocks, &m2.blocks));
        assert_eq!(
            (m1.unit, m2.unit),
            (1, 7),
            "the device's own settings stay its own"
        );
        assert_eq!(m1.points.len(), 2);
        assert_eq!(m1.blocks.len(), 2, "two tables, two reads");
        assert!(!Arc::ptr_eq(&m1.points, &p1.points));
        assert_eq!(&*p1.points[0].name, "power");
        assert_eq!(p1.points[0].binding.address, 2);
    }
}
