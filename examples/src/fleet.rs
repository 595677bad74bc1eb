//! A fleet of simulated gateways for the control plane's tests and
//! benches: N gateways in one process, each running the real uplink
//! ([`ferrite_sync::uplink`]: Hello, Resume, numbered zstd batches, a
//! window, Acks, desired patches and config bundles) over its own MQTT
//! connection, from an outbox kept in memory.
//!
//! Gateway `PREFIX-0000`'s changes go round its devices and properties
//! (`dev-0`.. × `p0`..); the n-th change of a gateway (its sequence)
//! carries the value n, so a store can be checked for every change, in
//! order, once. Desired patches are taken whole and reported applied;
//! config bundles are reported applied.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferrite_models::Value;
use ferrite_sync::delta::Change;
use ferrite_sync::outbox::{OutboxAccess, OutboxError};
use ferrite_sync::uplink::{self, ConfigHandler, DesiredHandler, UplinkConfig, UplinkStatus};
use ferrite_sync::wire::{ConfigBundle, ConfigReport, DesiredPatch, Reported};
use tokio_util::sync::CancellationToken;

/// How the fleet runs.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// The control plane's broker, `mqtt://HOST:PORT`.
    pub broker: String,
    /// Gateways.
    pub gateways: usize,
    /// Gateway ids are `PREFIX-0000`, `PREFIX-0001`, ...
    pub prefix: String,
    /// Devices per gateway.
    pub devices: usize,
    /// Properties per device.
    pub properties: usize,
    /// Batches are cut this often.
    pub batch_interval: Duration,
    /// A batch unanswered this long starts a new session.
    pub ack_timeout: Duration,
}

impl FleetOptions {
    /// `gateways` gateways on `broker`, 10 devices × 10 properties each,
    /// 1 s batches, 10 s to acknowledge.
    pub fn new(broker: &str, gateways: usize) -> FleetOptions {
        FleetOptions {
            broker: broker.to_string(),
            gateways,
            prefix: "sim".into(),
            devices: 10,
            properties: 10,
            batch_interval: Duration::from_secs(1),
            ack_timeout: Duration::from_secs(10),
        }
    }
}

/// One simulated gateway's outbox, in memory.
#[derive(Default)]
pub struct MemoryOutbox {
    entries: Mutex<BTreeMap<u64, Change>>,
    written: AtomicU64,
    acked: AtomicU64,
    desired: AtomicU64,
    config: AtomicU64,
}

impl MemoryOutbox {
    /// Appends `changes`, numbered on from the last.
    pub fn append(&self, changes: Vec<Change>) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        for change in changes {
            let seq = self.written.fetch_add(1, Ordering::Relaxed) + 1;
            entries.insert(seq, change);
        }
    }

    /// Changes written.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Changes written and not yet acknowledged.
    pub fn backlog(&self) -> u64 {
        self.written()
            .saturating_sub(self.acked.load(Ordering::Relaxed))
    }
}

impl OutboxAccess for MemoryOutbox {
    fn read(&self, from: u64, max: usize) -> Result<Vec<(u64, Change)>, OutboxError> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(entries
            .range(from..)
            .take(max)
            .map(|(s, c)| (*s, c.clone()))
            .collect())
    }
    fn acknowledge(&self, seq: u64) -> Result<(), OutboxError> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let kept = entries.split_off(&(seq + 1));
        *entries = kept;
        self.acked.fetch_max(seq, Ordering::Relaxed);
        Ok(())
    }
    fn acknowledged(&self) -> Result<u64, OutboxError> {
        Ok(self.acked.load(Ordering::Relaxed))
    }
    fn last(&self) -> Result<u64, OutboxError> {
        Ok(self.written())
    }
    fn desired_version(&self) -> Result<u64, OutboxError> {
        Ok(self.desired.load(Ordering::Relaxed))
    }
    fn set_desired_version(&self, version: u64) -> Result<(), OutboxError> {
        self.desired.fetch_max(version, Ordering::Relaxed);
        Ok(())
    }
    fn config_version(&self) -> Result<u64, OutboxError> {
        Ok(self.config.load(Ordering::Relaxed))
    }
    fn set_config_version(&self, version: u64) -> Result<(), OutboxError> {
        self.config.fetch_max(version, Ordering::Relaxed);
        Ok(())
    }
}

/// Takes every desired patch whole.
struct TakeDesired;

impl DesiredHandler for TakeDesired {
    fn apply<'a>(
        &'a self,
        patch: &'a DesiredPatch,
    ) -> Pin<Box<dyn Future<Output = Reported> + Send + 'a>> {
        Box::pin(async move {
            Reported {
                version: patch.version,
                device: patch.device.clone(),
                applied: patch.properties.clone(),
                ..Reported::default()
            }
        })
    }
}

/// Takes every config bundle.
struct TakeBundles;

impl ConfigHandler for TakeBundles {
    fn apply<'a>(
        &'a self,
        bundle: &'a ConfigBundle,
    ) -> Pin<Box<dyn Future<Output = ConfigReport> + Send + 'a>> {
        Box::pin(async move {
            ConfigReport {
                version: bundle.version,
                applied: true,
                changed: true,
                ..ConfigReport::default()
            }
        })
    }
}

/// One gateway of the fleet.
pub struct SimGateway {
    /// Its id.
    pub id: String,
    /// Its outbox.
    pub outbox: Arc<MemoryOutbox>,
    /// Its uplink's state.
    pub status: Arc<UplinkStatus>,
}

/// A running fleet.
pub struct Fleet {
    /// The gateways, in id order.
    pub gateways: Vec<SimGateway>,
    options: FleetOptions,
    shutdown: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Fleet {
    /// Starts every gateway's uplink (connections are made gradually by
    /// rumqttc; nothing waits for them here).
    pub fn start(options: FleetOptions) -> Fleet {
        let shutdown = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        let mut gateways = Vec::new();
        for i in 0..options.gateways {
            let id = format!("{}-{i:04}", options.prefix);
            let outbox = Arc::new(MemoryOutbox::default());
            let status = Arc::new(UplinkStatus::default());
            let mut config = UplinkConfig::new(&id, &options.broker);
            config.batch_interval = options.batch_interval;
            config.ack_timeout = options.ack_timeout;
            tasks.spawn(uplink::run(
                config,
                outbox.clone(),
                Arc::new(TakeDesired),
                Some(Arc::new(TakeBundles)),
                status.clone(),
                shutdown.clone(),
            ));
            gateways.push(SimGateway { id, outbox, status });
        }
        Fleet {
            gateways,
            options,
            shutdown,
            tasks,
        }
    }

    /// Appends `per_gateway` changes to every gateway's outbox, time
    /// stamped now, going round its devices and properties.
    pub fn write(&self, per_gateway: usize) {
        let ts_ms = now_ms();
        let series = (self.options.devices * self.options.properties).max(1);
        for gateway in &self.gateways {
            let first = gateway.outbox.written() + 1;
            let changes = (0..per_gateway as u64)
                .map(|i| {
                    let seq = first + i;
                    let k = (seq as usize - 1) % series;
                    Change {
                        device: format!("dev-{}", k / self.options.properties.max(1)),
                        property: format!("p{}", k % self.options.properties.max(1)),
                        ts_ms,
                        value: Value::Float(seq as f64),
                    }
                })
                .collect();
            gateway.outbox.append(changes);
        }
    }

    /// Writes `rate` changes per second per gateway, in 100 ms steps, for
    /// `duration`.
    pub async fn write_for(&self, rate: usize, duration: Duration) {
        let step = Duration::from_millis(100);
        let mut every = tokio::time::interval(step);
        let started = tokio::time::Instant::now();
        let mut carried = 0.0;
        while started.elapsed() < duration {
            every.tick().await;
            carried += rate as f64 / 10.0;
            let now = carried.floor();
            carried -= now;
            if now > 0.0 {
                self.write(now as usize);
            }
        }
    }

    /// Changes written by every gateway and not yet acknowledged.
    pub fn backlog(&self) -> u64 {
        self.gateways.iter().map(|g| g.outbox.backlog()).sum()
    }

    /// Changes written by every gateway.
    pub fn written(&self) -> u64 {
        self.gateways.iter().map(|g| g.outbox.written()).sum()
    }

    /// Waits until every change is acknowledged, or `within` passes;
    /// returns whether it was.
    pub async fn drained(&self, within: Duration) -> bool {
        let until = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < until {
            if self.backlog() == 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.backlog() == 0
    }

    /// Stops every uplink.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_outbox_numbers_reads_and_trims_like_the_real_one() {
        let outbox = MemoryOutbox::default();
        let change = |n: f64| Change {
            device: "d".into(),
            property: "p".into(),
            ts_ms: 0,
            value: Value::Float(n),
        };
        outbox.append(vec![change(1.0), change(2.0), change(3.0)]);
        assert_eq!(outbox.last().ok(), Some(3));
        let read = outbox.read(2, 10).unwrap_or_default();
        assert_eq!(read.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![2, 3]);
        assert!(outbox.acknowledge(2).is_ok());
        assert_eq!(outbox.backlog(), 1);
        assert_eq!(outbox.read(1, 10).unwrap_or_default().len(), 1);
        assert!(outbox.set_desired_version(4).is_ok());
        assert!(outbox.set_desired_version(2).is_ok());
        assert_eq!(outbox.desired_version().ok(), Some(4), "never goes back");
    }
}
