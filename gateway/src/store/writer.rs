//! The store writer: the one task that turns driver updates into durable
//! history and then into what the API shows.
//!
//! Per batch (everything queued, up to [`MAX_BATCH`] updates): find the
//! values that moved past their deadband, append them (with the audit
//! entries of the writes whose read-backs are in the batch), fsync, and only then
//! apply the batch to the live view and wake the writers waiting on it. If the
//! store fails (a full disk, say), the batch is kept and retried with backoff;
//! drivers then wait on the bounded queue (backpressure), so readings are
//! delayed, never silently dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ferrite_core::shared::Interner;
use ferrite_models::Project;
use ferrite_models::value::Held;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Change, Stamped, Store};
use crate::backoff::Backoff;
use crate::live::{Live, Sample, Update};
use crate::names::Names;
use crate::running::Running;
use crate::time::{Micros, now};

/// Most updates applied in one batch. Small enough that one commit stays
/// short, so a write waiting for its own commit is not held up long.
pub const MAX_BATCH: usize = 32;

/// How long a batch waits for company before it is committed.
pub const GROUP_WINDOW: Duration = Duration::from_millis(20);

/// What watches updates on their way into the store (the rule engine's
/// feed), injected by the runtime so that the store knows nothing of rules.
/// `observe` runs on the writer's task, before the batch is committed: it
/// must not block.
pub trait Tap: Send + Sync {
    /// Sees one update.
    fn observe(&self, update: &Update);
}

/// Counters the writer keeps, for `/metrics` and benchmarks.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Samples received from drivers.
    pub samples: AtomicU64,
    /// Changes written to history.
    pub changes: AtomicU64,
    /// Batches made durable.
    pub batches: AtomicU64,
    /// Store failures (each retried).
    pub failures: AtomicU64,
    /// Whether the last store attempt failed.
    pub failing: AtomicBool,
    /// The last failure's message, for the status and the event.
    pub last_error: std::sync::Mutex<Option<String>>,
}

/// Per device (by number): its name, its model's deadbands, and per
/// property (by number) the last stored value (names come from [`Names`],
/// which holds them once). Built as updates arrive, so that devices added
/// while running need no set-up here.
struct DeviceTrack {
    name: Arc<str>,
    /// Each property's deadband (an `f64`'s bits) by property number; 0
    /// where the model has none (the same test: any change is stored). One
    /// table for every device whose deadbands are the same, as a model's
    /// devices' are.
    deadbands: Arc<[u64]>,
    /// The last value stored, by property number (16 bytes each).
    last: Vec<Held>,
    /// Good values received, for `/metrics` (see [`Writer::with_metrics`]).
    values: Option<prometheus_client::metrics::counter::Counter>,
}

impl DeviceTrack {
    fn deadband(&self, property: u16) -> f64 {
        self.deadbands
            .get(usize::from(property))
            .map_or(0.0, |bits| f64::from_bits(*bits))
    }
}

/// The writer's state.
pub struct Writer {
    store: Arc<dyn Store>,
    live: Arc<Live>,
    stats: Arc<WriterStats>,
    /// The running project, for deadbands.
    running: Arc<Running>,
    /// The project generation the tracks' deadbands come from.
    generation: u64,
    devices: Vec<Option<DeviceTrack>>,
    /// The devices' deadband tables, held once each.
    deadbands: Interner<[u64]>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// The rule engine's tap: sees each update as it arrives, before the
    /// group commit, so that control does not wait for the fsync.
    feed: Option<Arc<dyn Tap>>,
}

/// The two queues into the writer.
pub struct Queues {
    /// Poll results: the bulk.
    pub updates: mpsc::Receiver<Update>,
    /// Read-backs of writes, which someone is waiting on: served first.
    pub urgent: mpsc::Receiver<Update>,
}

impl Writer {
    /// A writer for the running project's properties, starting from what
    /// the store holds.
    pub fn new(
        store: Arc<dyn Store>,
        live: Arc<Live>,
        running: Arc<Running>,
        stats: Arc<WriterStats>,
    ) -> Self {
        let mut writer = Writer {
            store,
            live,
            stats,
            generation: running.generation(),
            running,
            devices: Vec::new(),
            deadbands: Interner::default(),
            metrics: None,
            feed: None,
        };
        match writer.store.latest_all() {
            Ok(values) => {
                let names = writer.live.names().clone();
                let project = writer.running.project();
                for (device, property, at) in values {
                    writer
                        .live
                        .restore(&device, &property, at.value.clone(), at.ts);
                    let found = names
                        .find(&device)
                        .and_then(|d| Some((d, names.property(d, &property)?)));
                    if let Some((d, p)) = found
                        && let Some((last, _)) = writer.track(&project, d, p)
                    {
                        *last = Held::from(at.value);
                    }
                }
            }
            Err(e) => tracing::error!("cannot read the latest values from the store: {e}"),
        }
        writer
    }

    /// Counts each device's good values in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        let project = self.running.project();
        for device in self.devices.iter_mut().flatten() {
            device.values = Some(values_counter(&metrics, &project, &device.name));
        }
        self.metrics = Some(metrics);
        self
    }

    /// The last value stored of device `d`'s property `p`, and its
    /// deadband; the device's track is made on first use.
    fn track(&mut self, project: &Project, d: usize, p: u16) -> Option<(&mut Held, f64)> {
        let Writer {
            devices,
            live,
            metrics,
            deadbands,
            ..
        } = self;
        let names = live.names();
        if devices.len() <= d {
            devices.resize_with(d + 1, || None);
        }
        if devices[d].is_none() {
            let name = names.device_name(d)?;
            let values = metrics.as_ref().map(|m| values_counter(m, project, &name));
            devices[d] = Some(DeviceTrack {
                deadbands: deadbands.share(deadbands_of(project, names, d, &name)),
                name,
                // Sized once: grown one property at a time, the vector
                // would keep up to half again in spare room per device.
                last: Vec::with_capacity(names.property_count(d)),
                values,
            });
        }
        let device = devices[d].as_mut()?;
        let i = usize::from(p);
        if device.last.len() <= i {
            // Only for a property the device has.
            names.property_name(d, p)?;
            device.last.resize_with(i + 1, Held::default);
        }
        let deadband = device.deadband(p);
        Some((&mut device.last[i], deadband))
    }

    /// After a reconfiguration: deadbands and metric labels from the new
    /// project. Last values stay: a device keeps its history.
    fn refresh(&mut self) {
        let generation = self.running.generation();
        if generation == self.generation {
            return;
        }
        self.generation = generation;
        let project = self.running.project();
        let names = self.live.names();
        for (d, device) in self.devices.iter_mut().enumerate() {
            let Some(device) = device else { continue };
            if let Some(metrics) = &self.metrics {
                device.values = Some(values_counter(metrics, &project, &device.name));
            }
            let table = deadbands_of(&project, names, d, &device.name);
            device.deadbands = self.deadbands.share(table);
        }
    }

    /// Shows every update to `feed` (the rule engine's) as it arrives.
    pub fn with_feed(mut self, feed: Arc<dyn Tap>) -> Self {
        self.feed = Some(feed);
        self
    }

    /// Takes an update into the batch, showing it to the rules first.
    fn admit(&self, batch: &mut Vec<Update>, update: Update) {
        if let Some(feed) = &self.feed {
            feed.observe(&update);
        }
        batch.push(update);
    }

    /// Runs until every sender is gone, or `shutdown` fires and the queues
    /// are drained. Everything received is durable when it returns.
    pub async fn run(mut self, mut queues: Queues, shutdown: CancellationToken) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            // Writes someone waits on go first: the biased select prefers
            // them, and they are committed at once, together with any other
            // writes already waiting.
            let (first, urgent) = tokio::select! {
                biased;
                update = queues.urgent.recv() => (update, true),
                update = queues.updates.recv() => (update, false),
                () = shutdown.cancelled() => {
                    (queues.urgent.try_recv().or_else(|_| queues.updates.try_recv()).ok(), false)
                }
            };
            let Some(first) = first else { break };
            self.admit(&mut batch, first);
            if urgent {
                while batch.len() < MAX_BATCH {
                    match queues.urgent.try_recv() {
                        Ok(update) => self.admit(&mut batch, update),
                        Err(_) => break,
                    }
                }
                self.commit(&mut batch, &shutdown).await;
                continue;
            }
            // Group commit: gather what arrives within a short window, so that
            // polls spread over time still share one fsync. A write waiting
            // on its read-back ends the window at once.
            let window = tokio::time::sleep(GROUP_WINDOW);
            tokio::pin!(window);
            while batch.len() < MAX_BATCH {
                tokio::select! {
                    biased;
                    Some(update) = queues.urgent.recv() => {
                        self.admit(&mut batch, update);
                        break;
                    }
                    update = queues.updates.recv() => match update {
                        Some(update) => self.admit(&mut batch, update),
                        None => break,
                    },
                    () = &mut window => break,
                    () = shutdown.cancelled() => break,
                }
            }
            self.commit(&mut batch, &shutdown).await;
        }
        tracing::debug!("store writer stopped");
    }

    async fn commit(&mut self, batch: &mut Vec<Update>, shutdown: &CancellationToken) {
        let changes = Arc::new(self.changes(batch));
        // The audit entries of the writes these read-backs confirm: stamped
        // now, kept in the same commit.
        let ts = now();
        let audit: Arc<Vec<(Micros, Vec<u8>)>> = Arc::new(
            batch
                .iter_mut()
                .flat_map(|u| std::mem::take(&mut u.audit))
                .map(|body| (ts, body))
                .collect(),
        );
        if !changes.is_empty() || !audit.is_empty() {
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
            loop {
                // The batch stays here while the blocking task commits it, so
                // a failure retries it rather than losing it.
                match self.persist(changes.clone(), audit.clone()).await {
                    Ok(()) => {
                        self.stats.failing.store(false, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => {
                        self.stats.failures.fetch_add(1, Ordering::Relaxed);
                        self.stats.failing.store(true, Ordering::Relaxed);
                        *self
                            .stats
                            .last_error
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) =
                            Some(e.to_string());
                        let delay = backoff.next_delay();
                        tracing::error!("store write failed, will retry in {delay:.1?}: {e}");
                        if shutdown.is_cancelled() {
                            tracing::error!(
                                "shutting down with {} changes and {} audit entries not stored",
                                changes.len(),
                                audit.len()
                            );
                            break;
                        }
                        tokio::time::sleep(delay).await;
                    }
                }
            }
            self.stats
                .changes
                .fetch_add(changes.len() as u64, Ordering::Relaxed);
        }
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        for mut update in batch.drain(..) {
            self.live.apply(&update);
            if let Some(ack) = update.applied.take() {
                let _ = ack.send(());
            }
        }
    }

    /// The samples of `batch` that moved past their deadband.
    fn changes(&mut self, batch: &[Update]) -> Vec<Change> {
        self.refresh();
        let project = self.running.project();
        let mut changes = Vec::new();
        for update in batch {
            self.stats
                .samples
                .fetch_add(update.samples.len() as u64, Ordering::Relaxed);
            let mut good = 0;
            for (i, (property, sample)) in update.samples.iter().enumerate() {
                let Sample::Good(value) = sample else {
                    continue;
                };
                good += 1;
                let Some((last, deadband)) = self.track(&project, update.device, *property) else {
                    continue;
                };
                if last.changed_to(value, Some(deadband)) {
                    *last = Held::of(value);
                    let Some((device, name)) =
                        self.live.names().property_name(update.device, *property)
                    else {
                        continue;
                    };
                    changes.push(Change {
                        device,
                        property: name,
                        at: Stamped {
                            ts: update.ts_of(i),
                            value: value.clone(),
                        },
                    });
                }
            }
            if let Some(values) = self
                .devices
                .get(update.device)
                .and_then(|d| d.as_ref()?.values.as_ref())
            {
                values.inc_by(good);
            }
        }
        changes
    }

    async fn persist(
        &self,
        changes: Arc<Vec<Change>>,
        audit: Arc<Vec<(Micros, Vec<u8>)>>,
    ) -> Result<(), super::StoreError> {
        let store = self.store.clone();
        crate::store::blocking::spawn(move || store.commit_with_audit(&changes, &audit))
            .await
            .map_err(|e| super::StoreError::Io(format!("store task failed: {e}")))?
    }
}

/// Trims history by age and size every minute (or every half `max_age`,
/// if shorter), until `shutdown`.
pub async fn retention(
    store: Arc<dyn Store>,
    max_age: Duration,
    max_bytes: u64,
    shutdown: CancellationToken,
) {
    // Every minute, or more often when history is kept for less than two.
    let period = (max_age / 2).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let before: Micros = now() - i64::try_from(max_age.as_micros()).unwrap_or(i64::MAX);
        let store = store.clone();
        let started = std::time::Instant::now();
        let slack = retention_slack(max_age);
        let pass =
            crate::store::blocking::spawn(move || store.trim_within(before, slack, max_bytes))
                .await;
        tracing::debug!("retention pass: {:?}", started.elapsed());
        match pass {
            Ok(Ok(t)) if t.by_age + t.by_size > 0 => {
                tracing::info!(
                    "retention dropped {} entries by age and {} by size",
                    t.by_age,
                    t.by_size
                );
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!("retention failed: {e}"),
            Err(e) => tracing::error!("retention task failed: {e}"),
        }
    }
}

/// How far past `history_age` history may stay before the retention pass
/// looks at every series' blocks: a hundredth of it, at most an hour. Each
/// such walk reads every series' oldest block and rewrites the ones that
/// straddle the limit, so walking every minute once history reached the
/// limit cost 1.2-1.9 s a pass with 100 000 series (`store_load`'s long
/// run, `HISTORY_AGE_S`); with 7 days kept, it walks once an hour.
pub fn retention_slack(max_age: Duration) -> Micros {
    let slack = (max_age / 100).min(Duration::from_secs(3600));
    i64::try_from(slack.as_micros()).unwrap_or(i64::MAX)
}

/// Device number `d`'s deadbands (`f64` bits) by property number.
fn deadbands_of(project: &Project, names: &Names, d: usize, device: &str) -> Box<[u64]> {
    (0..names.property_count(d))
        .map(|p| {
            u16::try_from(p)
                .ok()
                .and_then(|p| names.property_name(d, p))
                .map_or(0.0, |(_, name)| deadband(project, device, &name))
                .to_bits()
        })
        .collect()
}

/// The model's deadband of `device.property` in `project`.
fn deadband(project: &Project, device: &str, property: &str) -> f64 {
    project
        .property(device, property)
        .and_then(|p| p.deadband)
        .unwrap_or(0.0)
}

/// The `/metrics` counter of `device`'s good values.
fn values_counter(
    metrics: &crate::metrics::Metrics,
    project: &Project,
    device: &str,
) -> prometheus_client::metrics::counter::Counter {
    let protocol = project
        .devices
        .get(device)
        .and_then(|d| d.value.protocol())
        .map_or("none", |p| p.key());
    metrics.values_of(device, protocol)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::tests::update;
    use crate::names::tests::project;
    use crate::store::SledStore;
    use ferrite_models::Value;

    fn model(deadband: f64) -> String {
        format!(
            "kind: DeviceModel\nname: m\nproperties:\n  t: {{ type: float, deadband: {deadband} }}\n  u: {{ type: int }}\n"
        )
    }

    const DEVICES: [&str; 2] = [
        "kind: Device\nname: d1\nmodel: m\nmqtt: {}\n",
        "kind: Device\nname: d2\nmodel: m\nmqtt: {}\n",
    ];

    #[test]
    fn changes_past_the_deadband_are_kept_and_a_new_deadband_applies_after_a_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).expect("store"));
        let first = project(&[&model(1.0), DEVICES[0], DEVICES[1]]);
        let names = Names::of(&first);
        let live = Live::of(&first, names.clone());
        let running = Running::new(first);
        let mut writer = Writer::new(store, live, running.clone(), Arc::default());
        let (d1, d2) = (names.find("d1").expect("d1"), names.find("d2").expect("d2"));
        let (t, u) = (
            names.property(d1, "t").expect("t"),
            names.property(d1, "u").expect("u"),
        );
        let kept = |writer: &mut Writer, device, property, value| {
            let changes = writer.changes(&[update(device, vec![(property, Sample::Good(value))])]);
            changes
                .iter()
                .map(|c| c.at.value.clone())
                .collect::<Vec<_>>()
        };
        let f = Value::Float;
        assert_eq!(kept(&mut writer, d1, t, f(10.0)), [f(10.0)], "the first");
        assert!(kept(&mut writer, d1, t, f(10.5)).is_empty(), "within 1.0");
        assert_eq!(kept(&mut writer, d1, t, f(11.2)), [f(11.2)], "past 1.0");
        assert_eq!(kept(&mut writer, d1, u, Value::Int(1)), [Value::Int(1)]);
        assert!(
            kept(&mut writer, d1, u, Value::Int(1)).is_empty(),
            "the same"
        );
        assert_eq!(
            kept(&mut writer, d1, u, Value::Int(2)),
            [Value::Int(2)],
            "no deadband"
        );
        // Each device has its own last values; d2's first is kept.
        assert_eq!(kept(&mut writer, d2, t, f(10.5)), [f(10.5)]);
        // One deadband table for the model's two devices.
        let table = |writer: &Writer, d: usize| {
            writer.devices[d].as_ref().expect("track").deadbands.clone()
        };
        assert!(Arc::ptr_eq(&table(&writer, d1), &table(&writer, d2)));

        // A reload sets t's deadband to 5: 11.2 → 13.0 is now within it.
        running.replace(project(&[&model(5.0), DEVICES[0], DEVICES[1]]));
        assert!(kept(&mut writer, d1, t, f(13.0)).is_empty(), "within 5.0");
        assert_eq!(kept(&mut writer, d1, t, f(16.3)), [f(16.3)], "past 5.0");
        assert!(Arc::ptr_eq(&table(&writer, d1), &table(&writer, d2)));
    }
}
