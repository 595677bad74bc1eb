//! The local store: the latest value of each property and a history of its
//! changes past the deadband; the rules' events and the audit log of writes
//! (two [`Log`]s); and each rule's state, so that a restart resumes it.
//!
//! - [`Store`]: the small storage interface the rest of the gateway sees.
//! - [`sled_store`]: its implementation, one per process: each group commit
//!   one append and one sync to a commit log, which is also the sync outbox,
//!   and each series' history in compressed blocks in block files of its
//!   own, with sled for names, cuts and metadata:
//!   - [`commit_log`]: the log's segment files and frames;
//!   - `segment_files`: numbered segment files, appended whole or not at
//!     all (the log's and the blocks');
//!   - [`record`]: a commit record's encoding;
//!   - [`chunk`]: a series' points, compressed (times as delta of deltas,
//!     floats XORed with the one before);
//!   - [`blocks`]: history at rest, per series, in non-overlapping blocks
//!     appended to segment files, indexed in memory;
//!   - [`dictionary`]: series ids and names, each name held once;
//!   - [`migrate`]: data dirs of the older layout, converted at open.
//! - [`writer`]: the one task that writes: it batches driver updates, makes
//!   them durable, and only then shows them in the live view.
//! - [`health`]: events when store writes start failing and recover.
//! - [`blocking`]: the threads every blocking store call runs on, apart from
//!   tokio's shared pool (where host-name lookups can pile up).

pub mod blocking;
pub mod blocks;
pub mod chunk;
pub mod commit_log;
pub mod dictionary;
pub mod health;
pub mod migrate;
pub mod record;
mod segment_files;
pub mod sled_store;
pub mod writer;

use std::sync::Arc;

use ferrite_models::Value;

use crate::time::Micros;

pub use sled_store::{Backlogs, Layout, Reader, SledStore};

/// Store failures. A full disk shows here as `Io`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled or the file system failed.
    #[error("store I/O failed: {0}")]
    Io(String),
    /// A record could not be decoded (a corrupt or foreign record).
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Io(e.to_string())
    }
}

/// A value and when it was read.
#[derive(Debug, Clone, PartialEq)]
pub struct Stamped {
    /// When.
    pub ts: Micros,
    /// What.
    pub value: Value,
}

/// One change to record: a new value past the deadband.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Device name (the writer hands on the name table's own `Arc`s, so a
    /// change costs no copy of its names).
    pub device: Arc<str>,
    /// Property name.
    pub property: Arc<str>,
    /// The new value and its time.
    pub at: Stamped,
}

/// What retention removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trimmed {
    /// History entries removed for age.
    pub by_age: u64,
    /// History entries removed for size.
    pub by_size: u64,
}

/// An append-only journal, newest entries kept within a count and an age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Log {
    /// Events raised by rules.
    Events,
    /// Every write by a rule or a user.
    Audit,
}

impl Log {
    /// The sled tree's name.
    pub fn tree(self) -> &'static str {
        match self {
            Log::Events => "events",
            Log::Audit => "audit",
        }
    }
}

/// One journal entry: its sequence number (increasing, also across
/// restarts), its time, and its body (JSON, as the rules module wrote it).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Sequence number.
    pub seq: u64,
    /// When it was written.
    pub ts: Micros,
    /// The body.
    pub body: Vec<u8>,
}

/// The sync outbox, as `/api/v1/sync` and `/metrics` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxState {
    /// Changes waiting for the control plane.
    pub backlog: u64,
    /// The bytes they take.
    pub bytes: u64,
    /// Changes dropped over the disk budget.
    pub dropped: u64,
}

/// Which end of a time range a limited history query keeps. The answer is in
/// time order either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The first `limit` entries from `since` on.
    Oldest,
    /// The last `limit` entries up to `until`.
    Newest,
}

/// The storage interface.
pub trait Store: Send + Sync + 'static {
    /// Records changes durably (fsync): each becomes the latest value of its
    /// property and an entry in its history. Readers never see a change
    /// before it is durable, so nothing the API showed can be lost to a
    /// crash.
    fn commit(&self, changes: &[Change]) -> Result<(), StoreError> {
        self.commit_with_audit(changes, &[])
    }
    /// [`Store::commit`], with `audit` entries `(ts, body)` appended to
    /// [`Log::Audit`] in the same commit (one fsync for both): a write's
    /// read-back and its audit entry are durable together.
    fn commit_with_audit(
        &self,
        changes: &[Change],
        audit: &[(Micros, Vec<u8>)],
    ) -> Result<(), StoreError>;
    /// Every property's latest value, for start-up.
    fn latest_all(&self) -> Result<Vec<(String, String, Stamped)>, StoreError>;
    /// History of one property between `since` and `until` (inclusive), in
    /// time order: at most `limit` entries, taken from the range's `end`.
    fn history(
        &self,
        device: &str,
        property: &str,
        since: Micros,
        until: Micros,
        limit: usize,
        end: End,
    ) -> Result<Vec<Stamped>, StoreError>;
    /// Drops history older than `before`; then, while the history held
    /// ([`Store::history_bytes`]) is over `max_bytes`, what ends first.
    fn trim(&self, before: Micros, max_bytes: u64) -> Result<Trimmed, StoreError> {
        self.trim_within(before, 0, max_bytes)
    }
    /// [`Store::trim`], but history less than `slack` older than `before`
    /// may be left for a later pass: the store need not look at every
    /// series' history each time `before` moves on.
    fn trim_within(
        &self,
        before: Micros,
        slack: Micros,
        max_bytes: u64,
    ) -> Result<Trimmed, StoreError>;

    /// Appends `(ts, body)` entries to `log` durably, in order; returns their
    /// sequence numbers.
    fn append(&self, log: Log, entries: &[(Micros, Vec<u8>)]) -> Result<Vec<u64>, StoreError>;
    /// Entries of `log` with a sequence number below `before`, newest first,
    /// that `keep` accepts, at most `limit`.
    fn recent(
        &self,
        log: Log,
        before: u64,
        limit: usize,
        keep: &dyn Fn(&Entry) -> bool,
    ) -> Result<Vec<Entry>, StoreError>;
    /// Drops entries of `log` older than `before`, then the oldest until at
    /// most `max_entries` are left. Returns how many went.
    fn trim_log(&self, log: Log, before: Micros, max_entries: usize) -> Result<u64, StoreError>;

    /// The sync outbox's state, when `[cloud]` is configured.
    fn outbox(&self) -> Option<OutboxState> {
        None
    }

    /// Bytes the store takes on disk, if it is open.
    fn size_on_disk(&self) -> Option<u64> {
        None
    }

    /// Bytes of history held (what `trim`'s `max_bytes` is held to), once
    /// known.
    fn history_bytes(&self) -> Option<u64> {
        None
    }

    /// Where the store's data is, if it can tell.
    fn layout(&self) -> Option<Layout> {
        None
    }

    /// Saves an applied configuration (`body`, JSON) as `version`, durably,
    /// keeping the newest `keep` versions.
    fn save_config_version(&self, version: u64, body: &[u8], keep: usize)
    -> Result<(), StoreError>;
    /// The saved configurations, oldest first.
    fn config_versions(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;

    /// Every saved rule state, by rule name.
    fn rule_states(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Saves (or, with `None`, forgets) rule states durably.
    fn save_rule_states(&self, states: &[(String, Option<Vec<u8>>)]) -> Result<(), StoreError>;
}
