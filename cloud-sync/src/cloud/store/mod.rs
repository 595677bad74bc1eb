//! The control plane's store: one trait, two engines.
//!
//! - [`sled`] (the default, `data_dir`): one process, one file; a batch is
//!   one atomic `sled::Batch`, flushed before the Ack.
//! - [`postgres`] (`store = "postgres://..."`): any number of replicas on
//!   one database; a batch is one transaction that moves the gateway's last
//!   change from the value the replica expects to the batch's end (compare
//!   and set), so a batch is applied once whichever replica applies it.
//!
//! Calls block (sled does I/O, the PostgreSQL store waits for its
//! database): the control plane makes them through [`blocking`].

pub mod postgres;
pub mod sled;

use std::collections::BTreeMap;
use std::sync::Arc;

use ferrite_models::Value;

use crate::delta::Change;
use crate::wire::{ConfigBundle, ConfigDocument, ConfigReport, DesiredPatch, Reported};

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum CloudStoreError {
    /// sled failed (a full disk, say).
    #[error("the control plane's store failed: {0}")]
    Io(#[from] ::sled::Error),
    /// PostgreSQL failed or cannot be reached.
    #[error("the control plane's database: {0}")]
    Database(String),
    /// An entry does not decode.
    #[error("corrupt entry in the control plane's store: {0}")]
    Corrupt(String),
    /// The gateway's last applied change is not the one the batch continues
    /// from: another replica applied something first. Nothing was written.
    #[error("the gateway's store ends at change {last_change}, not where the batch continues")]
    Conflict {
        /// Where the store ends.
        last_change: u64,
    },
}

/// A store result.
pub type Result<T> = std::result::Result<T, CloudStoreError>;

pub(crate) fn corrupt(what: &str) -> CloudStoreError {
    CloudStoreError::Corrupt(what.to_string())
}

/// One change as stored: where it sits in the gateway's order.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// The gateway's change sequence (see `apply`).
    pub seq: u64,
    /// When it was read, ms since the epoch.
    pub ts_ms: i64,
    /// The value.
    pub value: Value,
}

/// Desired value of one property.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// The patch version that set it.
    pub version: u64,
    /// The value.
    pub value: Value,
}

/// A device's twin as stored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Twin {
    /// Latest values, by property.
    pub reported: BTreeMap<String, Stored>,
    /// Desired values, by property.
    pub desired: BTreeMap<String, Desired>,
    /// The gateway's last report on a patch for this device.
    pub last_report: Option<Reported>,
}

/// What the store knows of one gateway.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GatewayRecord {
    /// Its id.
    pub id: String,
    /// The last change applied.
    pub last_change: u64,
    /// Changes it dropped over its outbox budget, as it told.
    pub lost_at_edge: u64,
    /// Its newest outbox sequence, as its last batch told.
    pub outbox_last: u64,
    /// When a batch of it was last applied, ms since the epoch.
    pub last_applied_ms: Option<i64>,
    /// Its labels (groups), `key → value`.
    pub labels: BTreeMap<String, String>,
    /// The last desired version handed out.
    pub desired_version: u64,
    /// The last desired version it says it applied.
    pub applied_version: u64,
    /// The newest config bundle version sent to it (0: none).
    pub config_version: u64,
    /// Its newest report on a bundle: (version, applied).
    pub config_reported: Option<(u64, bool)>,
}

/// Events kept per gateway, at most (the oldest go first).
pub const EVENTS_KEPT: usize = 10_000;

/// One entry of a gateway's events journal, as the control plane keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayEvent {
    /// The gateway journal's sequence.
    pub seq: u64,
    /// When it was raised, ms since the epoch.
    pub ts_ms: i64,
    /// The entry, as the gateway's `GET /api/v1/events` shows it.
    pub body: serde_json::Value,
}

/// A batch to apply: what the gateway's session decided is new.
#[derive(Debug, Clone, Copy)]
pub struct NewChanges<'a> {
    /// The gateway.
    pub gateway: &'a str,
    /// The last change the store must hold now (the batch continues it).
    pub continues_after: u64,
    /// The sequence of the first change.
    pub first_seq: u64,
    /// The changes, in the decoded order.
    pub changes: &'a [Change],
    /// The batch's last change (>= first_seq + len - 1 when some were
    /// dropped at the edge before it).
    pub last_change: u64,
    /// Changes dropped at the edge before this batch.
    pub dropped: u64,
    /// The gateway's newest outbox sequence, as the batch tells.
    pub outbox_last: u64,
}

/// The control plane's store. Every write is durable when the call
/// returns.
pub trait Store: Send + Sync + 'static {
    /// Which engine, for logs and `/api/v1/stats`.
    fn engine(&self) -> &'static str;

    /// Records who changed what, durably, before the change is answered.
    fn record_audit(&self, entry: &serde_json::Value) -> Result<()>;
    /// The newest `limit` audit entries, oldest first.
    fn audit(&self, limit: usize) -> Result<Vec<serde_json::Value>>;

    /// Every gateway known, by id.
    fn gateways(&self) -> Result<Vec<GatewayRecord>>;
    /// One gateway, if it ever said Hello.
    fn gateway(&self, gateway: &str) -> Result<Option<GatewayRecord>>;
    /// Records a gateway that said Hello, if new.
    fn know(&self, gateway: &str) -> Result<()>;
    /// Sets a gateway's labels (all of them).
    fn set_labels(&self, gateway: &str, labels: &BTreeMap<String, String>) -> Result<()>;

    /// Applies a batch, atomically and durably, if the store still ends at
    /// `continues_after`; [`CloudStoreError::Conflict`] otherwise, with
    /// nothing written.
    fn apply(&self, batch: NewChanges<'_>) -> Result<()>;
    /// Changes of one property after `after`, in order, at most `limit`.
    fn history(
        &self,
        gateway: &str,
        device: &str,
        property: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Stored>>;
    /// Devices of `gateway` that reported anything or have desired state.
    fn devices(&self, gateway: &str) -> Result<Vec<String>>;
    /// The twin of one device.
    fn twin(&self, gateway: &str, device: &str) -> Result<Twin>;

    /// Records a desired patch for one device: the next version of its
    /// gateway, durably. Returns the patch to send.
    fn put_desired(
        &self,
        gateway: &str,
        device: &str,
        properties: &BTreeMap<String, Value>,
    ) -> Result<DesiredPatch>;
    /// Patches of `gateway` after `version`, in order.
    fn patches_after(&self, gateway: &str, version: u64) -> Result<Vec<DesiredPatch>>;
    /// `gateway` has applied everything up to `version` (never goes back).
    fn set_applied_version(&self, gateway: &str, version: u64) -> Result<()>;
    /// Keeps the gateway's report on a patch.
    fn record_report(&self, gateway: &str, report: &Reported) -> Result<()>;

    /// Records `documents` as `gateway`'s configuration, the next bundle
    /// version, durably. Returns the bundle to send.
    fn put_bundle(&self, gateway: &str, documents: Vec<ConfigDocument>) -> Result<ConfigBundle>;
    /// `gateway`'s newest bundle, if one was ever put.
    fn bundle(&self, gateway: &str) -> Result<Option<ConfigBundle>>;
    /// Keeps the gateway's report on a bundle (the newest wins).
    fn record_config_report(&self, gateway: &str, report: &ConfigReport) -> Result<()>;
    /// The gateway's newest report on a bundle.
    fn config_report(&self, gateway: &str) -> Result<Option<ConfigReport>>;

    /// Keeps `events` of `gateway`, durably, each (gateway, seq) once (a
    /// resent one changes nothing), and only the newest [`EVENTS_KEPT`].
    fn put_events(&self, gateway: &str, events: &[GatewayEvent]) -> Result<()>;
    /// The newest `limit` events of `gateway`, newest first.
    fn events(&self, gateway: &str, limit: usize) -> Result<Vec<GatewayEvent>>;

    /// Records a rollout (a patch or bundle sent to a group); returns its
    /// id.
    fn put_rollout(&self, rollout: &serde_json::Value) -> Result<u64>;
    /// One rollout, as recorded.
    fn rollout(&self, id: u64) -> Result<Option<serde_json::Value>>;
    /// The newest `limit` rollouts, newest first, with their ids.
    fn rollouts(&self, limit: usize) -> Result<Vec<(u64, serde_json::Value)>>;

    /// Stamps replica `me` alive; returns the replicas alive, sorted. One
    /// process owns a sled store: only `me`.
    fn replicas(&self, me: &str) -> Result<Vec<String>> {
        Ok(vec![me.to_string()])
    }
    /// Replica `me` is leaving (its gateways go to the others now).
    fn leave(&self, _me: &str) -> Result<()> {
        Ok(())
    }

    /// The last applied change of `gateway` (0 if none).
    fn last_change(&self, gateway: &str) -> Result<u64> {
        Ok(self.gateway(gateway)?.map_or(0, |g| g.last_change))
    }
    /// Whether `gateway` has ever said Hello.
    fn knows(&self, gateway: &str) -> Result<bool> {
        Ok(self.gateway(gateway)?.is_some())
    }
    /// The last desired version `gateway` applied, as it said.
    fn applied_version(&self, gateway: &str) -> Result<u64> {
        Ok(self.gateway(gateway)?.map_or(0, |g| g.applied_version))
    }
    /// The last desired version handed out for `gateway`.
    fn desired_version(&self, gateway: &str) -> Result<u64> {
        Ok(self.gateway(gateway)?.map_or(0, |g| g.desired_version))
    }
}

/// Runs a blocking store call off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CloudStoreError::Corrupt(format!("store task failed: {e}")))?
}

/// Opens the PostgreSQL store at `url` (`password` overrides the URL's).
pub async fn open_postgres(
    url: &str,
    password: Option<&str>,
    history_days: Option<u32>,
) -> Result<Arc<dyn Store>> {
    Ok(Arc::new(
        postgres::PgStore::connect(url, password, history_days).await?,
    ))
}

/// Opens (or creates) the sled store in `dir`.
pub async fn open_sled(dir: &std::path::Path) -> Result<Arc<dyn Store>> {
    let dir = dir.to_path_buf();
    let store = tokio::task::spawn_blocking(move || sled::SledStore::open(&dir))
        .await
        .map_err(|e| CloudStoreError::Corrupt(format!("store task failed: {e}")))??;
    Ok(Arc::new(store))
}

/// The latest change of each property among `changes` (the last one of
/// each, in order), with its sequence.
pub(crate) fn latest_per_property(
    first_seq: u64,
    changes: &[Change],
) -> BTreeMap<(&str, &str), (u64, &Change)> {
    let mut out = BTreeMap::new();
    for (i, change) in changes.iter().enumerate() {
        let seq = first_seq + i as u64;
        let key = (change.device.as_str(), change.property.as_str());
        match out.get(&key) {
            Some((s, _)) if *s > seq => {}
            _ => {
                out.insert(key, (seq, change));
            }
        }
    }
    out
}
