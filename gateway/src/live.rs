//! The live view: each device's status and latest readings, as the API
//! shows them.
//!
//! Only the store writer updates it, and only after the values it carries are
//! durable, so nothing the API has shown can be lost to a crash.

use std::sync::{Arc, RwLock};

use ferrite_models::{Project, Value};
use indexmap::{IndexMap, IndexSet};
use serde::Serialize;

use crate::time::Micros;

/// How much a reading can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    /// Read in the last poll.
    Good,
    /// The last read failed; this is the last good value.
    Stale,
    /// The device answered, but the value could not be read or decoded.
    Bad,
}

/// Device status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Answering.
    Online,
    /// Not reachable, or not answering in time.
    Offline,
    /// Answering with errors (Modbus exceptions, undecodable values).
    Error,
}

impl DeviceState {
    /// The state without its readings.
    pub fn summary(&self, id: &str) -> Summary {
        Summary {
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
    pub readings: IndexMap<String, Reading>,
}

/// A device's status without its readings.
#[derive(Debug, Clone)]
pub struct Summary {
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

/// What a driver learned about one property in one cycle.
#[derive(Debug, Clone, PartialEq)]
pub enum Sample {
    /// A fresh value.
    Good(Value),
    /// The read failed; keep the last value, marked stale.
    Stale,
    /// The device answered but the value is unusable.
    Bad,
}

/// All devices' live state, indexed by the device's position in the
/// project, so that the hot path (an update per poll) does no name lookups.
#[derive(Debug)]
pub struct Live {
    /// Device names; a name's position is the device's index.
    names: IndexSet<String>,
    devices: RwLock<Vec<DeviceState>>,
    /// Bumped after every applied update, for the live stream to wait on.
    version: tokio::sync::watch::Sender<u64>,
}

impl Live {
    /// One entry per device of `project`, offline with no readings yet.
    pub fn new(project: &Project) -> Arc<Self> {
        let mut devices = Vec::with_capacity(project.devices.len());
        for device in project.devices.values() {
            let d = &device.value;
            let readings = project
                .models
                .get(&d.model)
                .map(|m| {
                    m.value
                        .properties
                        .keys()
                        .map(|p| {
                            let empty = Reading {
                                value: None,
                                quality: Quality::Bad,
                                ts: None,
                            };
                            (p.clone(), empty)
                        })
                        .collect()
                })
                .unwrap_or_default();
            devices.push(DeviceState {
                model: d.model.clone(),
                protocol: d.protocol().map_or("none", |p| p.key()),
                status: Status::Offline,
                last_seen: None,
                error: Some("not polled yet".into()),
                readings,
            });
        }
        Arc::new(Live {
            names: project.devices.keys().cloned().collect(),
            devices: RwLock::new(devices),
            version: tokio::sync::watch::Sender::new(0),
        })
    }

    /// A receiver that sees a new version after each applied update.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Calls `visit` with every device's name and state, in project order,
    /// under the read lock (nothing is copied; keep `visit` short).
    pub fn for_each(&self, mut visit: impl FnMut(&str, &DeviceState)) {
        let devices = self.read();
        for (name, state) in self.names.iter().zip(devices.iter()) {
            visit(name, state);
        }
    }

    /// A device's index, as [`Update::device`] carries it.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.get_index_of(name)
    }

    /// Marks a device that no driver serves in this build, so that the API
    /// says why it stays offline.
    pub fn unserved(&self, name: &str, why: String) {
        let Some(i) = self.index(name) else { return };
        if let Some(state) = self.write().get_mut(i) {
            state.error = Some(why);
        }
    }

    /// A copy of one device's state.
    pub fn device(&self, name: &str) -> Option<DeviceState> {
        let i = self.index(name)?;
        self.read().get(i).cloned()
    }

    /// Every device's status, without its readings, sorted by name: what the
    /// device list needs, without copying every reading.
    pub fn summaries(&self) -> Vec<Summary> {
        let devices = self.read();
        let mut all: Vec<Summary> = self
            .names
            .iter()
            .zip(devices.iter())
            .map(|(name, d)| d.summary(name))
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Restores a value from the store at start-up, marked stale until the
    /// device is read again.
    pub fn restore(&self, device: &str, property: &str, value: Value, ts: Micros) {
        let Some(i) = self.index(device) else { return };
        let mut devices = self.write();
        if let Some(reading) = devices
            .get_mut(i)
            .and_then(|d| d.readings.get_mut(property))
        {
            *reading = Reading {
                value: Some(value),
                quality: Quality::Stale,
                ts: Some(ts),
            };
        }
    }

    /// Applies one driver update.
    pub fn apply(&self, update: &Update) {
        self.apply_quietly(update);
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn apply_quietly(&self, update: &Update) {
        let mut devices = self.write();
        let Some(state) = devices.get_mut(update.device) else {
            return;
        };
        if let Some((status, error)) = &update.status {
            state.status = *status;
            state.error.clone_from(error);
        }
        if update.seen {
            state.last_seen = Some(update.ts);
        }
        for (property, sample) in &update.samples {
            let Some((_, reading)) = state.readings.get_index_mut(usize::from(*property)) else {
                continue;
            };
            // A write's read-back can overtake an older poll on its way
            // here; the older value must not win.
            if reading.ts.is_some_and(|t| t > update.ts) {
                continue;
            }
            match sample {
                Sample::Good(v) => {
                    *reading = Reading {
                        value: Some(v.clone()),
                        quality: Quality::Good,
                        ts: Some(update.ts),
                    }
                }
                Sample::Stale => reading.quality = Quality::Stale,
                Sample::Bad => {
                    reading.quality = Quality::Bad;
                    reading.ts = Some(update.ts);
                }
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<DeviceState>> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.devices
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<DeviceState>> {
        self.devices
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What a driver reports after a poll cycle or a write.
#[derive(Debug)]
pub struct Update {
    /// The device's index in the project (see [`Live::index`]).
    pub device: usize,
    /// When the values were read.
    pub ts: Micros,
    /// New status, if it should change.
    pub status: Option<(Status, Option<String>)>,
    /// Whether the device answered at all.
    pub seen: bool,
    /// Per-property results, by the property's index in its model.
    pub samples: Vec<(u16, Sample)>,
    /// Signalled once the update is durable and visible.
    pub applied: Option<tokio::sync::oneshot::Sender<()>>,
}
