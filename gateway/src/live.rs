//! The live view: each device's status and latest readings, as the API
//! shows them.
//!
//! Only the store writer updates it, and only after the values it carries are
//! durable, so nothing the API has shown can be lost to a crash.

use std::sync::{Arc, RwLock};

use ferrite_models::{Project, Value};
use indexmap::IndexMap;

use crate::names::Names;
pub use ferrite_core::reading::{Quality, Sample, Status, Update};
use ferrite_core::time::Micros;

impl DeviceState {
    /// The state without its readings.
    pub fn summary(&self, id: &str) -> DeviceSummary {
        DeviceSummary {
            id: id.to_string(),
            model: self.model.clone(),
            protocol: self.protocol,
            status: self.status,
            last_seen: self.last_seen,
            error: self.error.clone(),
        }
    }
}

/// One property's latest reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The value, if one was ever read.
    pub value: Option<Value>,
    /// Its quality.
    pub quality: Quality,
    /// When it was read (or last confirmed).
    pub ts: Option<Micros>,
}

/// What [`Live::reading`] did not find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// No such device.
    Device,
    /// The device has no such property.
    Property,
}

/// A device's live state.
#[derive(Debug, Clone)]
pub struct DeviceState {
    /// Model name.
    pub model: String,
    /// Protocol key, such as `modbus-tcp`.
    pub protocol: &'static str,
    /// Current status.
    pub status: Status,
    /// When the device last answered.
    pub last_seen: Option<Micros>,
    /// Why it is offline or in error.
    pub error: Option<String>,
    /// Latest reading per property, in model order.
    /// The keys are [`Names`]' own, shared by every device of a model.
    pub readings: IndexMap<Arc<str>, Reading>,
}

/// A device's status without its readings.
#[derive(Debug, Clone)]
pub struct DeviceSummary {
    /// Device name.
    pub id: String,
    /// Model name.
    pub model: String,
    /// Protocol key.
    pub protocol: &'static str,
    /// Status.
    pub status: Status,
    /// When it last answered.
    pub last_seen: Option<Micros>,
    /// Why it is offline or in error.
    pub error: Option<String>,
}

/// All devices' live state, by device number ([`Names`]), so that the hot
/// path (an update per poll) does no name lookups.
#[derive(Debug)]
pub struct Live {
    names: Arc<Names>,
    /// By device number; `None` for a number whose device is not configured
    /// (any more).
    devices: RwLock<Vec<Option<LiveDevice>>>,
    /// Bumped after every applied update, for the live stream to wait on.
    version: tokio::sync::watch::Sender<u64>,
}

/// One configured device.
#[derive(Debug, Clone)]
struct LiveDevice {
    name: String,
    state: DeviceState,
    /// Property number → its position in `state.readings` (the model's
    /// order); `None` for a number the model no longer has.
    /// (`u16`: a model has at most 65 536 properties, the numbers' range.)
    positions: Vec<Option<u16>>,
}

impl Live {
    /// An empty view over `names`; devices come with [`Live::install`].
    pub fn new(names: Arc<Names>) -> Arc<Self> {
        Arc::new(Live {
            names,
            devices: RwLock::new(Vec::new()),
            version: tokio::sync::watch::Sender::new(0),
        })
    }

    /// A view with every device of `project`, offline with no readings yet.
    pub fn of(project: &Project, names: Arc<Names>) -> Arc<Self> {
        let live = Live::new(names);
        for name in project.devices.keys() {
            live.install(project, name);
        }
        live
    }

    /// The device numbers.
    pub fn names(&self) -> &Arc<Names> {
        &self.names
    }

    /// Shows `device` as `project` configures it. A new device starts
    /// offline with no readings; a reconfigured one keeps its status and
    /// the readings of the properties its model still has.
    pub fn install(&self, project: &Project, device: &str) {
        let Some(located) = project.devices.get(device) else {
            return;
        };
        let layout = self.names.layout(project, device);
        let d = &located.value;
        let mut devices = self.write();
        if devices.len() <= layout.device {
            devices.resize(layout.device + 1, None);
        }
        let old = devices[layout.device].take();
        let mut readings = IndexMap::with_capacity(layout.names.len());
        for p in &layout.names {
            let kept = old.as_ref().and_then(|o| o.state.readings.get(p)).cloned();
            readings.insert(p.clone(), kept.unwrap_or(EMPTY));
        }
        let slots = layout
            .properties
            .iter()
            .max()
            .map_or(0, |n| usize::from(*n) + 1);
        let mut positions = vec![None; slots];
        for (position, number) in layout.properties.iter().enumerate() {
            positions[usize::from(*number)] = u16::try_from(position).ok();
        }
        let (status, last_seen, error) = match &old {
            Some(o) => (o.state.status, o.state.last_seen, o.state.error.clone()),
            None => (Status::Offline, None, Some("not polled yet".into())),
        };
        devices[layout.device] = Some(LiveDevice {
            name: device.to_string(),
            state: DeviceState {
                model: d.model.clone(),
                protocol: d.protocol().map_or("none", |p| p.key()),
                status,
                last_seen,
                error,
                readings,
            },
            positions,
        });
        drop(devices);
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Stops showing `device` (removed from the configuration).
    pub fn remove(&self, device: &str) {
        let Some(i) = self.names.find(device) else {
            return;
        };
        if let Some(slot) = self.write().get_mut(i) {
            *slot = None;
        }
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// A receiver that sees a new version after each applied update.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Calls `visit` with every device's name and state, in number order,
    /// under the read lock (nothing is copied; keep `visit` short).
    pub fn for_each(&self, mut visit: impl FnMut(&str, &DeviceState)) {
        let devices = self.read();
        for entry in devices.iter().flatten() {
            visit(&entry.name, &entry.state);
        }
    }

    /// A configured device's number, as [`Update::device`] carries it.
    pub fn index(&self, name: &str) -> Option<usize> {
        let i = self.names.find(name)?;
        self.read().get(i)?.as_ref().map(|_| i)
    }

    /// Marks a device that no driver serves in this build, so that the API
    /// says why it stays offline.
    pub fn unserved(&self, name: &str, why: String) {
        self.with_device(name, |state| state.error = Some(why));
    }

    fn with_device(&self, name: &str, change: impl FnOnce(&mut DeviceState)) {
        let Some(i) = self.names.find(name) else {
            return;
        };
        if let Some(Some(entry)) = self.write().get_mut(i) {
            change(&mut entry.state);
        }
    }

    /// A copy of one device's state.
    pub fn device(&self, name: &str) -> Option<DeviceState> {
        let i = self.names.find(name)?;
        Some(self.read().get(i)?.as_ref()?.state.clone())
    }

    /// One property's reading, without copying the device's others: what a
    /// GET of a property and the old value of a write need.
    pub fn reading(&self, device: &str, property: &str) -> Result<Reading, Missing> {
        let i = self.names.find(device).ok_or(Missing::Device)?;
        let devices = self.read();
        let entry = devices
            .get(i)
            .and_then(Option::as_ref)
            .ok_or(Missing::Device)?;
        entry
            .state
            .readings
            .get(property)
            .cloned()
            .ok_or(Missing::Property)
    }

    /// Every device's status, without its readings, sorted by name: what the
    /// device list needs, without copying every reading.
    pub fn summaries(&self) -> Vec<DeviceSummary> {
        let devices = self.read();
        let mut all: Vec<DeviceSummary> = devices
            .iter()
            .flatten()
            .map(|e| e.state.summary(&e.name))
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Restores a value from the store at start-up, marked stale until the
    /// device is read again.
    pub fn restore(&self, device: &str, property: &str, value: Value, ts: Micros) {
        self.with_device(device, |state| {
            if let Some(reading) = state.readings.get_mut(property) {
                *reading = Reading {
                    value: Some(value),
                    quality: Quality::Stale,
                    ts: Some(ts),
                };
            }
        });
    }

    /// Applies one driver update.
    pub fn apply(&self, update: &Update) {
        self.apply_quietly(update);
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn apply_quietly(&self, update: &Update) {
        let mut devices = self.write();
        // A device removed since its driver sent this: nothing to show.
        let Some(Some(entry)) = devices.get_mut(update.device) else {
            return;
        };
        let state = &mut entry.state;
        if let Some((status, error)) = &update.status {
            state.status = *status;
            state.error.clone_from(error);
        }
        if update.seen {
            state.last_seen = Some(update.ts);
        }
        for (i, (property, sample)) in update.samples.iter().enumerate() {
            let Some(Some(position)) = entry.positions.get(usize::from(*property)) else {
                continue;
            };
            let Some((_, reading)) = state.readings.get_index_mut(usize::from(*position)) else {
                continue;
            };
            let ts = update.ts_of(i);
            // A write's read-back can overtake an older poll on its way
            // here; the older value must not win.
            if reading.ts.is_some_and(|t| t > ts) {
                continue;
            }
            match sample {
                Sample::Good(v) => {
                    *reading = Reading {
                        value: Some(v.clone()),
                        quality: Quality::Good,
                        ts: Some(ts),
                    }
                }
                Sample::Stale => reading.quality = Quality::Stale,
                Sample::Bad => {
                    reading.quality = Quality::Bad;
                    reading.ts = Some(ts);
                }
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Option<LiveDevice>>> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.devices
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Option<LiveDevice>>> {
        self.devices
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A property never read.
const EMPTY: Reading = Reading {
    value: None,
    quality: Quality::Bad,
    ts: None,
};
