//! The running devices: each started on its protocol's driver with a
//! shutdown token and a task tracker of its own, so that one device can be
//! stopped, started or reconfigured while every other keeps polling, on the
//! same connections, without a gap.
//!
//! [`Fleet::apply`] takes the project that runs and the one to run next,
//! and touches only the devices whose document, model or folder changed:
//! removed devices stop (their history and outbox entries stay in the
//! store), changed ones stop and start again, added ones start. A device
//! whose protocol this build has no driver for shows why in the live view.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ferrite_models::Project;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::control::Writers;
use crate::live::Live;
use crate::metrics::Metrics;
use ferrite_core::driver::{DeviceEntry, Driver, DriverContext};
use ferrite_core::reading::{Sample, Status};

/// How long a stopping device's tasks may take before they are left to
/// finish on their own.
pub const STOP_DEVICE: Duration = Duration::from_secs(5);

/// What [`Fleet::apply`] did, by device name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changed {
    /// Devices started.
    pub added: Vec<String>,
    /// Devices stopped and started again with their new configuration.
    pub restarted: Vec<String>,
    /// Devices stopped for good.
    pub removed: Vec<String>,
}

impl Changed {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.restarted.is_empty() && self.removed.is_empty()
    }
}

/// One running device.
struct RunningDevice {
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// What one poll of a device showed ([`Fleet::probe`]).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Probe {
    /// The device's status after the poll: `online`, `offline`, `error`,
    /// or `none` when the driver said nothing in time.
    pub status: String,
    /// Why it is not online, when it is not.
    pub error: Option<String>,
    /// Each readable property, in model order.
    #[schema(value_type = Object)]
    pub values: indexmap::IndexMap<String, ProbedValue>,
    /// How long the probe took, connecting included.
    pub took_ms: u64,
}

/// One property's outcome in a [`Probe`].
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ProbedValue {
    /// The value read, typed by the model.
    #[schema(value_type = Option<Object>)]
    pub value: Option<ferrite_models::Value>,
    /// `good`, `bad` (the device answered something unusable), `stale` (the
    /// read failed) or `none` (no answer in time).
    pub quality: &'static str,
}

/// The running devices.
pub struct Fleet {
    drivers: Vec<Box<dyn Driver>>,
    /// The gateway's context: devices get a copy with their own token and
    /// tracker.
    ctx: DriverContext,
    live: Arc<Live>,
    writers: Arc<Writers>,
    /// Counts device starts for `/metrics`.
    metrics: Arc<Metrics>,
    running: tokio::sync::Mutex<HashMap<String, RunningDevice>>,
}

impl Fleet {
    /// A fleet on `drivers`, which were made on `ctx` (the gateway's).
    pub fn new(
        drivers: Vec<Box<dyn Driver>>,
        ctx: DriverContext,
        live: Arc<Live>,
        writers: Arc<Writers>,
        metrics: Arc<Metrics>,
    ) -> Fleet {
        Fleet {
            drivers,
            ctx,
            live,
            writers,
            metrics,
            running: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Starts every device of `project`.
    pub async fn start_all(&self, project: &Project) {
        let mut running = self.running.lock().await;
        for name in project.devices.keys() {
            self.live.install(project, name);
            self.start(project, name, &mut running);
        }
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for name in project.devices.keys() {
            if let Some(driver) = self.driver_of(project, name) {
                *counts.entry(driver.name()).or_default() += 1;
            }
        }
        for (driver, n) in counts {
            tracing::info!("{driver}: {n} device(s)");
        }
    }

    /// Moves from `old` to `new`, touching only the devices that changed.
    pub async fn apply(&self, old: &Project, new: &Project) -> Changed {
        let changed = diff(old, new);
        let mut running = self.running.lock().await;
        let stopping: Vec<&String> = changed.removed.iter().chain(&changed.restarted).collect();
        self.stop(&stopping, &mut running).await;
        for name in &changed.removed {
            self.live.remove(name);
        }
        for name in changed.restarted.iter().chain(&changed.added) {
            self.live.install(new, name);
            self.start(new, name, &mut running);
        }
        for driver in &self.drivers {
            driver.sweep();
        }
        changed
    }

    /// Polls device `name` of `project` once through its driver, without
    /// running it: a context of its own whose updates come here, not to the
    /// store, until every readable property has a sample or `wait` has
    /// passed; then the device is stopped. Nothing is stored or written.
    pub async fn probe(
        &self,
        project: &Project,
        name: &str,
        wait: Duration,
    ) -> Result<Probe, String> {
        let located = project
            .devices
            .get(name)
            .ok_or_else(|| format!("no device `{name}`"))?;
        let model = project
            .models
            .get(&located.value.model)
            .ok_or_else(|| format!("no model `{}`", located.value.model))?;
        let driver = self
            .driver_of(project, name)
            .ok_or_else(|| "no driver in this build serves its protocol".to_string())?;
        if driver.name() == "mqtt" {
            return Err("an MQTT device publishes by itself: there is nothing to poll; save it and watch its values".into());
        }
        let properties: Vec<(&String, bool)> = model
            .value
            .properties
            .iter()
            .map(|(n, p)| (n, p.readable()))
            .collect();
        let names: Vec<Arc<str>> = properties
            .iter()
            .map(|(n, _)| Arc::from(n.as_str()))
            .collect();
        let numbers: Vec<u16> = (0..properties.len())
            .map(|i| u16::try_from(i).unwrap_or(u16::MAX))
            .collect();
        let entry = DeviceEntry {
            index: usize::MAX,
            name,
            located,
            model: &model.value,
            numbers: &numbers,
            names: &names,
        };
        let (output, mut updates) = tokio::sync::mpsc::channel(64);
        let stop = self.ctx.shutdown.child_token();
        let tasks = TaskTracker::new();
        let ctx = DriverContext {
            shutdown: stop.clone(),
            tasks: tasks.clone(),
            output: output.clone(),
            urgent: output,
            stats: Arc::default(),
            meters: Arc::new(ferrite_core::driver::NoMeters),
            ..self.ctx.clone()
        };
        let started = std::time::Instant::now();
        driver.start(&entry, ctx).map_err(|e| e.to_string())?;
        let mut samples: Vec<Option<Sample>> = vec![None; properties.len()];
        let mut status = None;
        let deadline = tokio::time::Instant::now() + wait;
        while samples.iter().zip(&properties).any(|(s, (_, readable))| {
            *readable && !matches!(s, Some(Sample::Good(_) | Sample::Bad))
        }) {
            match tokio::time::timeout_at(deadline, updates.recv()).await {
                Ok(Some(update)) => {
                    // A poll that failed as a whole ends the probe: that is
                    // its answer.
                    let failed =
                        matches!(&update.status, Some((Status::Offline | Status::Error, _)));
                    if update.status.is_some() {
                        status = update.status;
                    }
                    for (number, sample) in update.samples {
                        if let Some(slot) = samples.get_mut(usize::from(number)) {
                            *slot = Some(sample);
                        }
                    }
                    if failed && !update.seen {
                        break;
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        stop.cancel();
        tasks.close();
        let _ = tokio::time::timeout(STOP_DEVICE, tasks.wait()).await;
        driver.sweep();
        let values = properties
            .iter()
            .zip(samples)
            .filter(|((_, readable), _)| *readable)
            .map(|((name, _), sample)| {
                let (value, quality) = match sample {
                    Some(Sample::Good(v)) => (Some(v), "good"),
                    Some(Sample::Bad) => (None, "bad"),
                    Some(Sample::Stale) => (None, "stale"),
                    None => (None, "none"),
                };
                ((*name).clone(), ProbedValue { value, quality })
            })
            .collect();
        let (status, error) = match status {
            Some((s, why)) => (format!("{s:?}").to_lowercase(), why),
            None => ("none".into(), Some(format!("no answer within {wait:?}"))),
        };
        Ok(Probe {
            status,
            error,
            values,
            took_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    }

    fn driver_of(&self, project: &Project, name: &str) -> Option<&dyn Driver> {
        let device = &project.devices.get(name)?.value;
        self.drivers
            .iter()
            .find(|d| d.serves(device))
            .map(AsRef::as_ref)
    }

    fn start(&self, project: &Project, name: &str, running: &mut HashMap<String, RunningDevice>) {
        let Some(located) = project.devices.get(name) else {
            return;
        };
        let device = &located.value;
        let Some(driver) = self.driver_of(project, name) else {
            let protocol = device.protocol().map_or("its protocol", |p| p.key());
            self.live
                .unserved(name, format!("no {protocol} driver in this build"));
            return;
        };
        let Some(model) = project.models.get(&device.model) else {
            return;
        };
        let layout = self.live.names().layout(project, name);
        let entry = DeviceEntry {
            index: layout.device,
            name,
            located,
            model: &model.value,
            numbers: &layout.properties,
            names: &layout.names,
        };
        let stop = self.ctx.shutdown.child_token();
        let tasks = TaskTracker::new();
        let ctx = DriverContext {
            shutdown: stop.clone(),
            tasks: tasks.clone(),
            ..self.ctx.clone()
        };
        let protocol = device.protocol().map_or("none", |p| p.key());
        self.metrics.started(name, protocol);
        match driver.start(&entry, ctx) {
            Ok(writer) => self.writers.insert(name, writer),
            Err(why) => {
                tracing::error!(device = name, "cannot start: {why}");
                self.live.unserved(name, why.to_string());
            }
        }
        tasks.close();
        // The gateway's stop waits for every device's tasks.
        let done = tasks.clone();
        self.ctx.tasks.spawn(async move { done.wait().await });
        running.insert(name.to_string(), RunningDevice { stop, tasks });
    }

    /// Stops `names` together: all are told at once, then waited for (a
    /// device in the middle of a slow poll finishes that poll first).
    async fn stop(&self, names: &[&String], running: &mut HashMap<String, RunningDevice>) {
        let mut stopping = Vec::new();
        for name in names {
            self.writers.remove(name);
            if let Some(device) = running.remove(name.as_str()) {
                device.stop.cancel();
                stopping.push((name.as_str(), device.tasks));
            }
        }
        let all = futures_util::future::join_all(stopping.iter().map(|(_, tasks)| tasks.wait()));
        if tokio::time::timeout(STOP_DEVICE, all).await.is_err() {
            for (name, tasks) in &stopping {
                if !tasks.is_empty() {
                    tracing::warn!(
                        device = name,
                        "its tasks did not stop within {STOP_DEVICE:?}; they finish on their own"
                    );
                }
            }
        }
    }
}

/// Which devices `new` adds, changes or removes against `old`. A device
/// changes when its document, its model or its file's folder (which its
/// relative paths start from) does.
pub fn diff(old: &Project, new: &Project) -> Changed {
    fn spec<'a>(
        project: &'a Project,
        name: &str,
    ) -> Option<(
        &'a ferrite_models::Device,
        Option<&'a ferrite_models::DeviceModel>,
        Option<std::path::PathBuf>,
    )> {
        let located = project.devices.get(name)?;
        let model = project.models.get(&located.value.model).map(|m| &m.value);
        Some((
            &located.value,
            model,
            located.file.parent().map(|p| p.to_path_buf()),
        ))
    }
    let names: BTreeSet<&String> = old.devices.keys().chain(new.devices.keys()).collect();
    let mut changed = Changed::default();
    for name in names {
        match (spec(old, name), spec(new, name)) {
            (Some(_), None) => changed.removed.push(name.clone()),
            (None, Some(_)) => changed.added.push(name.clone()),
            (Some(a), Some(b)) if a != b => changed.restarted.push(name.clone()),
            _ => {}
        }
    }
    changed
}
