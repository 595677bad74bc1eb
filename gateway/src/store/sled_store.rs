//! [`Store`] on sled and a commit log, laid out for time series: one append
//! and one sync per commit.
//!
//! Beside sled, in files of its own:
//! - the [commit log](super::commit_log): one append and one sync per group
//!   commit, holding its commit records ([`record`]), each under the
//!   sequence number of its first change (every change has one, rising
//!   across restarts), the names of series seen for the first time and the
//!   audit entries of the writes it confirms. It is the write-ahead log of
//!   everything below that a commit changes, and, with `[cloud]`, the
//!   outbox itself.
//! - the [blocks](super::blocks): each series' history in compressed
//!   blocks, appended to block files with an index in memory; synced by the
//!   retention pass before sled's flush, which goes before the commit log
//!   lets go of the records they hold.
//!
//! sled's trees (what a commit writes to them is flushed by the retention
//! pass, before the commit log lets go of the frames that carry it; a crash
//! before that replays them from the log):
//! - `names`: the series' names, in pages of 256 ids ([`dictionary`]);
//!   `cuts`: series id → the last sequence in its blocks, as the store
//!   before the block files kept it (read at open; the block frames carry
//!   the cuts now).
//! - `outbox_meta`: the next sequence; with `[cloud]` the last acknowledged
//!   one, the outbox's floor, and the twin's and the config's versions; with
//!   `[north]` the northbound's own acknowledged sequence and floor; the
//!   blocks' retention mark (`blocks_gone_before`).
//! - `events`, `audit` (the [`Log`]s): sequence number (BE) → ts (BE) +
//!   body. The numbers are the store's own ([`Inner::next_entry`]): at open,
//!   past every entry in either tree, in the commit log, and the mark a trim
//!   leaves (`journal_next`). Not sled's `generate_id`: sled 0.34 does not
//!   make its counter durable before handing out the ids it covers, so after
//!   a crash with no flush since the start the same ids came again, a new
//!   audit entry took an old one's key, and the old one was gone.
//! - `rule_state`: rule name → its state (JSON);
//! - `config`: version (BE) → an applied configuration (JSON: its files,
//!   hash and source), the newest few.
//!
//! A series' newest points wait in its head, in memory (a [`Chunk`]), until
//! [`CUT_POINTS`] of them are cut into a block in the commit that completes
//! them. A restart rebuilds the heads from the log records after each
//! series' cut. A record goes once each of its points is in a block and,
//! for each [`Reader`] of the log (`[cloud]`'s uplink, `[north]`'s
//! publisher), acknowledged or dropped over that reader's budget; the
//! minute's retention pass cuts heads that hold back more than
//! [`LOG_TAIL_BYTES`] of log, syncs the blocks (the `fdatasync` outside the
//! store's lock), flushes sled, and deletes the log's segments whose
//! records have all gone (`outbox_meta`'s `collected` says where that
//! stands, so that a reopen skips the records of a segment that stayed).
//!
//! sled can fail to re-acquire its file lock when a `Db` is reopened right
//! after a drop (sled #1234), so the gateway opens exactly one per process
//! and shares it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use ferrite_sync::outbox::{ACKED, CONFIG, DESIRED, META_TREE, NEXT, OutboxError, meta_u64};

use super::blocks::{Blocks, CUT_POINTS, Point};
use super::chunk::{self, Chunk};
use super::commit_log::{At, CommitLog, Frame, Replayed};
use super::dictionary::{self, Dictionary};
use super::{Change, End, Entry, Log, Stamped, Store, StoreError, Trimmed, migrate, record};
use crate::time::Micros;

/// Log bytes the heads may hold back from being dropped; past it, the
/// retention pass cuts the heads of the oldest records (small blocks for
/// series that change rarely, instead of an ever longer log).
pub const LOG_TAIL_BYTES: u64 = 16 * 1024 * 1024;

/// The sled-backed store.
///
/// After a failed commit (a full disk, say) sled keeps failing: it remembers
/// the I/O error. So the store then drops its handles and reopens the
/// database on the next write, which recovers everything flushed so far;
/// the writer retries the failed batch, so nothing is lost.
///
/// A failed commit's record may have reached the disk, and a reopen makes it
/// visible. Whoever reopens (often the journal, before the writer's retry)
/// therefore looks for it first, under the same lock, and writes it if it is
/// missing; the writer's retry then finds the commit done. A commit is one
/// append to the commit log, so it is on disk whole or not at all.
pub struct SledStore {
    dir: PathBuf,
    cache_bytes: u64,
    /// Each reader's budget in bytes, for the readers configured.
    budgets: Backlogs,
    /// Each reader's changes dropped over its budget before the last reopen.
    outbox_dropped: [std::sync::atomic::AtomicU64; 2],
    /// The last commit, if it failed (see [`Unfinished`]).
    unfinished: Mutex<Unfinished>,
    /// The same for appends to the events and the audit log.
    append_failed: [std::sync::atomic::AtomicBool; 2],
    /// The series the next pass's merges begin at: a pass that has read
    /// `merge_pass_bytes` ([`MERGE_PASS_BYTES`]) leaves the rest to the next.
    merge_from: std::sync::atomic::AtomicU32,
    merge_pass_bytes: u64,
    /// The most bytes of blocks a pass moves to compact segments
    /// ([`COMPACT_PASS_BYTES`]); the next pass goes on with the segments
    /// left sparse.
    compact_pass_bytes: u64,
    /// Held for writing from the first insert to the fsync, and for reading
    /// by queries, so that a query never sees what a crash could still take
    /// away. `None` between a failure and the reopen.
    inner: RwLock<Option<Inner>>,
}

/// The open database.
struct Inner {
    db: sled::Db,
    names_tree: sled::Tree,
    /// The last page of names, as on disk, and whether it has changed
    /// since it was written.
    names_page: Vec<u8>,
    names_dirty: bool,
    log: CommitLog,
    cuts: sled::Tree,
    meta: sled::Tree,
    blocks: Blocks,
    events: sled::Tree,
    audit: sled::Tree,
    rule_state: sled::Tree,
    /// Applied configuration versions (see `crate::reconcile`).
    config: sled::Tree,
    /// Series ids by name, and names by id.
    names: Dictionary,
    /// Each series' points not yet in a block, by id.
    /// By series id, inline (a box each cost 24 bytes more per series);
    /// an empty chunk is no head.
    heads: Vec<Head>,
    /// The sequence number of the next change.
    next_seq: u64,
    /// The number of the next journal entry (events and audit share them):
    /// past every entry on disk, so that no entry takes another's key.
    next_entry: u64,
    /// The log's records, by first sequence.
    records: BTreeMap<u64, RecordInfo>,
    /// Where each reader of the log stands (by [`Reader`]), if configured.
    cursors: [Option<Mutex<Cursor>>; 2],
}

/// Who reads the log as an outbox, each from a cursor of its own: a record
/// stays until every configured reader has it (or has dropped it over its
/// budget).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// The uplink to the control plane (`[cloud]`).
    Cloud = 0,
    /// The northbound publisher to an external broker (`[north]`).
    North = 1,
}

impl Reader {
    const ALL: [Reader; 2] = [Reader::Cloud, Reader::North];

    /// The meta keys of its last acknowledged sequence and of its floor.
    fn keys(self) -> (&'static [u8], &'static [u8]) {
        match self {
            Reader::Cloud => (ACKED, FLOOR),
            Reader::North => (b"north_acked", b"north_floor"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Reader::Cloud => "the outbox (no [cloud], or the store is reopening)",
            Reader::North => "the northbound backlog (no [north], or the store is reopening)",
        }
    }
}

/// The byte budget of each reader of the log; `None`: that reader is not
/// configured, and the log does not wait for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlogs {
    /// `[cloud] outbox_mib`, in bytes.
    pub cloud: Option<u64>,
    /// `[north] backlog_mib`, in bytes.
    pub north: Option<u64>,
}

impl Backlogs {
    /// Only the cloud's outbox, of `budget` bytes.
    pub fn cloud(budget: u64) -> Backlogs {
        Backlogs {
            cloud: Some(budget),
            north: None,
        }
    }

    fn of(&self, reader: Reader) -> Option<u64> {
        match reader {
            Reader::Cloud => self.cloud,
            Reader::North => self.north,
        }
    }
}

/// A series' newest points, and the sequences of the first and last.
#[derive(Default)]
struct Head {
    chunk: Chunk,
    first_seq: u64,
    last_seq: u64,
}

/// A commit record, as the store keeps count of it.
#[derive(Debug, Clone, Copy)]
struct RecordInfo {
    count: u32,
    bytes: u64,
    /// Where its frame is in the commit log.
    at: At,
}

impl RecordInfo {
    fn last(&self, first: u64) -> u64 {
        first + u64::from(self.count) - 1
    }
}

/// The outbox's state: what is owed to the control plane is every change
/// from [`Cursor::owed_from`] on.
#[derive(Debug)]
struct Cursor {
    reader: Reader,
    budget: u64,
    acked: u64,
    /// Changes below it were dropped over the budget.
    floor: u64,
    /// Bytes of the records that hold owed changes.
    owed_bytes: u64,
    dropped: u64,
}

impl Cursor {
    fn owed_from(&self) -> u64 {
        (self.acked + 1).max(self.floor)
    }
}

/// What a record costs beyond its value, as the outbox's budget counts it:
/// its frame's header and first sequence (17 bytes) and the store's index
/// entry. Without
/// it, a budget of small records (a change or two per commit) would hold
/// millions of them.
const RECORD_OVERHEAD: u64 = 64;

/// Changes per commit record, at most: the uplink reads the log a record at
/// a time. (When the records were sled values, this also kept sled's
/// rewrites of the leaf they went to small.)
const RECORD_POINTS: usize = 32;

/// The outbox's floor, in the meta tree beside ferrite-sync's keys.
const FLOOR: &[u8] = b"floor";

/// The sequence below which the log's records are gone (collected: cut
/// into blocks, and every reader has them), in the meta tree. The commit
/// log deletes whole segments only, so a reopen skips the records of the
/// last segments that were collected already.
const COLLECTED: &[u8] = b"collected";

/// The blocks' retention mark ([`Blocks::open`]): blocks that end before it
/// have gone.
const GONE_BEFORE: &[u8] = b"blocks_gone_before";

/// [`Inner::next_entry`] as a trim of the journal left it, in the meta tree:
/// the trim may take the newest entries too, and a number must not come
/// again after that. Written before the trim's removals, so a removal that
/// survives a crash has its mark with it.
const JOURNAL_NEXT: &[u8] = b"journal_next";

impl SledStore {
    /// Opens (or creates) the store in `dir`, with the config's default cache.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let cache_mib = ferrite_models::config::StoreSection::default().cache_mib;
        Self::open_with_cache(dir, cache_mib * 1024 * 1024)
    }

    /// Opens (or creates) the store in `dir` with a page cache of
    /// `cache_bytes`.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        Self::open_with(dir, cache_bytes, Backlogs::default())
    }

    /// Opens the store; for each reader `budgets` configures, committed
    /// changes also wait for it (the log is its outbox), up to that many
    /// bytes of records beyond the newest.
    pub fn open_with(dir: &Path, cache_bytes: u64, budgets: Backlogs) -> Result<Self, StoreError> {
        let inner = Inner::open(dir, cache_bytes, budgets)?;
        Ok(SledStore {
            dir: dir.to_path_buf(),
            cache_bytes,
            budgets,
            outbox_dropped: Default::default(),
            unfinished: Mutex::new(Unfinished::None),
            append_failed: Default::default(),
            merge_from: Default::default(),
            merge_pass_bytes: MERGE_PASS_BYTES,
            compact_pass_bytes: COMPACT_PASS_BYTES,
            inner: RwLock::new(Some(inner)),
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, Option<Inner>> {
        self.inner.read()
    }

    fn write(&self) -> RwLockWriteGuard<'_, Option<Inner>> {
        self.inner.write()
    }

    /// Blocks, points in them, and their bytes; the log's records and
    /// bytes; points in heads and the heap bytes those take. For benches
    /// and the docs' figures.
    pub fn measure(&self) -> Result<Layout, StoreError> {
        let guard = self.read();
        let inner = guard.as_ref().ok_or_else(reopening)?;
        let heads = inner.heads.iter().filter(|h| !h.chunk.is_empty());
        let (blocks, block_points, block_bytes) = inner.blocks.stats();
        let (block_file_bytes, block_index_bytes) = inner.blocks.footprint();
        Ok(Layout {
            series: inner.names.len() as u64,
            blocks,
            block_points,
            block_bytes,
            block_file_bytes,
            block_index_bytes,
            records: inner.records.len() as u64,
            record_bytes: inner.record_bytes(),
            head_points: heads.clone().map(|h| u64::from(h.chunk.len())).sum(),
            head_bytes: heads.map(|h| h.chunk.heap_bytes() as u64).sum(),
        })
    }
}

/// Where the store's data is (see [`SledStore::measure`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Layout {
    /// Series known.
    pub series: u64,
    /// History blocks.
    pub blocks: u64,
    /// Points in them.
    pub block_points: u64,
    /// Their frames' bytes.
    pub block_bytes: u64,
    /// The bytes of the block files (their frames, and those of blocks
    /// replaced or dropped that wait for their segment to go).
    pub block_file_bytes: u64,
    /// Heap bytes of the blocks' index.
    pub block_index_bytes: u64,
    /// Commit records in the log.
    pub records: u64,
    /// Their bytes.
    pub record_bytes: u64,
    /// Points in the heads.
    pub head_points: u64,
    /// Heap bytes the heads take.
    pub head_bytes: u64,
}

/// What reading the commit log back at open needs, and counts
/// ([`Inner::replay`]).
struct Replay {
    /// Series id → the last sequence in its blocks: later points go to
    /// its head.
    cuts: HashMap<u32, u64>,
    /// The last audit entry sled holds, or the last a trim saw: later ones
    /// in the log are put back.
    audited: u64,
    /// Records that end at or before this have gone (their segment stayed).
    collected: u64,
    /// Names and audit entries put back.
    restored: u64,
}

/// One walk of a retention pass ([`Inner::plan_trim`]).
struct TrimPlan {
    /// Heads holding records before this are cut ([`Inner::tail_start`]).
    keep_from: u64,
    /// A block starting before this is due to go by age: `before` less the
    /// slack ([`Store::trim_within`]).
    due: Micros,
    /// Blocks that end before this go for size; `Micros::MIN` within it.
    ended_before: Micros,
    /// The walk ([`Blocks::walk_begins`]), when every series' blocks are
    /// to be looked at.
    walk: Option<u64>,
}

/// A commit that failed, until its changes are stored.
#[derive(Debug, Default, PartialEq)]
enum Unfinished {
    /// The last commit succeeded.
    #[default]
    None,
    /// These changes failed to commit as the record at `first`, with these
    /// audit entries under the sequence numbers they were given; any of it
    /// may be on disk.
    Failed {
        changes: Vec<Change>,
        audit: Vec<Numbered>,
        first: u64,
    },
    /// A reopen found or stored them before the writer retried: the retry
    /// (of the same changes and audit entries) has nothing left to do.
    Finished {
        changes: Vec<Change>,
        audit: Vec<(Micros, Vec<u8>)>,
    },
}

/// A journal entry with its sequence number: `(seq, ts, body)`. A failed
/// commit's retry writes its audit entries under the same numbers, so an
/// entry that reached the disk is not written twice.
type Numbered = (u64, Micros, Vec<u8>);

/// Series per slice of a retention pass. A pass takes the store's lock once
/// per slice (and gives it up fairly: [`SledStore::in_turns`]), so
/// the writer's commits (and with them REST writes) wait for one slice at
/// most, not for the whole pass: cutting every head of 100 000 series took
/// 2.1 s in one piece; a slice that cuts 512 heads takes under 20 ms.
const TRIM_SLICE: u32 = 512;

/// Log records dropped per turn of the store's lock. Under 10 000 changes/s
/// a pass that has just cut every head lets nearly the whole log go, some
/// 80 000 records: in one piece that held the store for 0.6 s.
const COLLECT_SLICE: usize = 1024;

/// Blocks moved per turn of the store's lock when a block file is
/// compacted (about 200 bytes each: a read and an append).
const COMPACT_SLICE: usize = 2048;

/// Blocks read per turn of the store's lock when runs of them are merged
/// (a read of each, an append of the merged block per run).
const MERGE_SLICE: usize = 1024;

/// The most bytes of blocks a pass reads to merge them (and so about the
/// most it appends); the next pass goes on where it stopped. Runs become
/// mergeable all at once when a series' history grows to sixteen times
/// their span (`blocks::MERGE_SPAN_SHARE`): 10 000 series changing every
/// second had 1.2 GB of history to merge in one pass after 4.3 hours,
/// which took 10 s, and would take minutes of an SD card's writes.
const MERGE_PASS_BYTES: u64 = 64 * 1024 * 1024;

/// The most bytes of blocks a pass moves to compact the segments that are
/// mostly empty (a read and an append each); the next pass goes on with
/// the segments left. A pass's merges leave the segments they read sparse
/// all at once: in `store_load`'s six hours of 10 000 series changing
/// every second, passes moved 152 and 102 MiB, for 2.0 and 1.3 s. A
/// sparse segment holds under 8 MiB live, so a pass still frees eight
/// segments (256 MiB of files) or more: faster than a pass's merges (64
/// MiB read) and a minute's history make them sparse.
const COMPACT_PASS_BYTES: u64 = 64 * 1024 * 1024;

impl SledStore {
    /// Runs `each` on every series, [`TRIM_SLICE`] series per turn of the
    /// store's lock; returns the sum of what it returned.
    fn in_slices(
        &self,
        mut each: impl FnMut(&mut Inner, u32) -> Result<u64, StoreError>,
    ) -> Result<u64, StoreError> {
        let mut sum = 0u64;
        let mut start = 0u32;
        let (slices, longest) = self.in_turns(|inner| {
            // Series added between slices are in a later slice.
            let series = inner.names.len() as u32;
            let end = start.saturating_add(TRIM_SLICE).min(series);
            for id in start..end {
                sum += each(inner, id)?;
            }
            start = end;
            Ok(end < series)
        })?;
        tracing::debug!(
            "a walk of the series in {slices} slices; the longest held the store {longest:?}"
        );
        Ok(sum)
    }

    /// Runs `turn` under the store's lock until it says nothing is left,
    /// giving the lock up fairly after each turn, so that a commit waiting
    /// for it goes before the next. Returns the turns taken and the longest.
    fn in_turns(
        &self,
        mut turn: impl FnMut(&mut Inner) -> Result<bool, StoreError>,
    ) -> Result<(u32, std::time::Duration), StoreError> {
        let (mut turns, mut longest) = (0u32, std::time::Duration::ZERO);
        loop {
            let began = std::time::Instant::now();
            let more = self.writing(&mut turn, true)?;
            turns += 1;
            longest = longest.max(began.elapsed());
            if !more {
                return Ok((turns, longest));
            }
        }
    }

    /// Runs a write, reopening the database first if the last write failed
    /// (and finishing a failed commit before anything else), and dropping it
    /// after a failure: sled would repeat that error forever.
    fn with_writable<T>(
        &self,
        write: impl FnOnce(&mut Inner) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.writing(write, false)
    }

    /// [`Self::with_writable`], giving the lock up fairly after it when
    /// `fair` ([`Self::in_turns`]).
    fn writing<T>(
        &self,
        write: impl FnOnce(&mut Inner) -> Result<T, StoreError>,
        fair: bool,
    ) -> Result<T, StoreError> {
        let mut guard = self.write();
        if guard.is_none() {
            let mut inner = Inner::open(&self.dir, self.cache_bytes, self.budgets)?;
            let mut unfinished = self.unfinished();
            if let Unfinished::Failed {
                changes,
                audit,
                first,
            } = std::mem::take(&mut *unfinished)
            {
                // The audit entries are written again whatever is found:
                // under their own numbers, that changes nothing if they
                // are there.
                let missing = if inner.records.contains_key(&first) {
                    &[][..]
                } else {
                    &changes[..]
                };
                // On error `inner` goes unused: the next write reopens.
                if let Err(e) = inner.commit(missing, &audit) {
                    *unfinished = Unfinished::Failed {
                        changes,
                        audit,
                        first,
                    };
                    return Err(e);
                }
                *unfinished = Unfinished::Finished {
                    changes,
                    audit: audit.into_iter().map(|(_, ts, body)| (ts, body)).collect(),
                };
            }
            drop(unfinished);
            *guard = Some(inner);
            tracing::info!("the store reopened after a failure");
        }
        let inner = guard.as_mut().ok_or_else(reopening)?;
        let result = write(inner);
        if result.is_err() {
            if let Some(inner) = guard.as_ref() {
                for (cursor, dropped) in inner.cursors.iter().zip(&self.outbox_dropped) {
                    if let Some(cursor) = cursor {
                        dropped
                            .fetch_add(lock(cursor).dropped, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
            *guard = None;
        }
        // A fair unlock: a thread waiting for the lock gets it now. The
        // retention pass takes the lock again right after each slice, and
        // with a plain unlock it won the race every time: a REST write's
        // commit waited 2.26 s behind a pass of 50 slices of under 60 ms.
        if fair {
            RwLockWriteGuard::unlock_fair(guard);
        }
        result
    }

    /// Drops the records nothing needs any more, [`COLLECT_SLICE`] per turn
    /// of the store's lock. Returns how many went.
    fn collect_log(&self) -> Result<u64, StoreError> {
        let began = std::time::Instant::now();
        let limit = self.with_writable(Inner::collectable_before)?;
        let first = began.elapsed();
        let mut dropped = 0u64;
        let (slices, longest) = self.in_turns(|inner| {
            let (went, more) = inner.drop_records_before(limit, COLLECT_SLICE)?;
            dropped += went;
            Ok(more)
        })?;
        let longest = longest.max(first).max(self.sync_blocks()?);
        // What the frames of the segments about to go carried (the names
        // and audit entries of their commits, the blocks their records were
        // cut into) is durable first: the blocks synced above, sled now.
        let began = std::time::Instant::now();
        self.with_writable(|inner| inner.let_log_go(limit))?;
        let longest = longest.max(began.elapsed());
        tracing::debug!(
            "{dropped} log records dropped in {slices} slices; the longest held the store {longest:?}"
        );
        Ok(dropped)
    }

    /// One walk of a retention pass, as `plan` says: heads reaching back
    /// before `before`, or holding back records the log's tail budget lets
    /// go, are cut first, so that their old points go with the blocks'; then
    /// each series' blocks are trimmed (and, the first time, counted).
    ///
    /// The blocks are read only when one may be old enough to go: under a
    /// steady load, history younger than `before` would otherwise have every
    /// series' blocks looked up each minute, a pass that grew to a second
    /// with 20 minutes of history.
    fn trim_as(
        &self,
        plan: &TrimPlan,
        before: Micros,
        trimmed: &mut Trimmed,
    ) -> Result<(), StoreError> {
        let mut left = Micros::MAX;
        let mut by_size = 0u64;
        trimmed.by_age += self.in_slices(|inner, id| {
            if inner.heads.get(id as usize).is_some_and(|head| {
                !head.chunk.is_empty()
                    && (head.chunk.span().0 < before || head.first_seq < plan.keep_from)
            }) {
                inner.cut(id)?;
            }
            // Outside a walk, a head just cut may have put a block before
            // the slack (its device's clock set back): that series is
            // trimmed now. Any other series' blocks start after it.
            if plan.walk.is_none() && inner.blocks.oldest() >= plan.due {
                return Ok(0);
            }
            let trim = inner.blocks.trim(id, before, plan.ended_before)?;
            left = left.min(trim.left.unwrap_or(Micros::MAX));
            by_size += trim.by_size;
            Ok(trim.by_age)
        })?;
        trimmed.by_size += by_size;
        if let Some(walked) = &plan.walk {
            // Not after a reopen between slices: blocks written before it
            // were noted by the index that went, and the reopened one
            // computed its bound at open.
            self.with_writable(|inner| {
                if inner.blocks.is(*walked) {
                    inner.blocks.settle(left);
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Syncs the blocks, the store's lock held only to merge runs of
    /// blocks (up to `merge_pass_bytes` of them a pass) and to compact (a
    /// slice at a time, up to `compact_pass_bytes` a pass), to begin the
    /// round and to delete the segments it emptied, not for the
    /// `fdatasync`: after a pass that cut 100 000 heads, the sync and the
    /// cuts written to sled took 0.7 s in one hold. Returns the longest
    /// hold.
    fn sync_blocks(&self) -> Result<std::time::Duration, StoreError> {
        let mut from = self.merge_from.load(std::sync::atomic::Ordering::Relaxed);
        let mut read = 0u64;
        let merge_began = std::time::Instant::now();
        let (_, merging) = self.in_turns(|inner| {
            let before = inner.blocks.merged_bytes();
            let next = inner.blocks.merge_some(from, MERGE_SLICE)?;
            read += inner.blocks.merged_bytes().saturating_sub(before);
            from = next.unwrap_or(0);
            Ok(next.is_some() && read < self.merge_pass_bytes)
        })?;
        self.merge_from
            .store(from, std::sync::atomic::Ordering::Relaxed);
        let merge_took = merge_began.elapsed();
        let mut moved = 0u64;
        let compact_began = std::time::Instant::now();
        let (_, compacting) = self.in_turns(|inner| {
            let before = inner.blocks.compacted_bytes();
            let more = inner.blocks.compact_some(COMPACT_SLICE)?;
            moved += inner.blocks.compacted_bytes().saturating_sub(before);
            Ok(more && moved < self.compact_pass_bytes)
        })?;
        if read > 0 || moved > 0 {
            tracing::debug!(
                "history blocks: {} KiB read to merge runs in {} ms, {} KiB moved to compact segments in {} ms",
                read / 1024,
                merge_took.as_millis(),
                moved / 1024,
                compact_began.elapsed().as_millis()
            );
        }
        let compacting = compacting.max(merging);
        let began = std::time::Instant::now();
        let round = self.with_writable(|inner| inner.blocks.begin_sync())?;
        let mut longest = compacting.max(began.elapsed());
        if let Err(e) = round.sync() {
            // The store reopens, and reads what is really on disk.
            return self.with_writable(|inner| {
                inner.blocks.sync_failed();
                Err(e)
            });
        }
        let began = std::time::Instant::now();
        let gone_before = round.gone_before;
        let went = self.with_writable(|inner| {
            inner
                .meta
                .insert(GONE_BEFORE, &(gone_before as u64).to_be_bytes())?;
            inner.blocks.finish_sync(&round.empty)
        })?;
        if went > 0 {
            tracing::debug!("{went} history block segment(s) deleted");
        }
        longest = longest.max(began.elapsed());
        Ok(longest)
    }

    fn unfinished(&self) -> std::sync::MutexGuard<'_, Unfinished> {
        lock(&self.unfinished)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The uplink reads the outbox through the store, under its lock: it sees
/// only what a commit has flushed, so that a sequence it sends can never be
/// handed out again after a crash.
impl ferrite_sync::outbox::OutboxAccess for SledStore {
    fn read(
        &self,
        from: u64,
        max: usize,
    ) -> Result<Vec<(u64, ferrite_sync::delta::Change)>, OutboxError> {
        self.owed(Reader::Cloud, from, max)
    }

    fn acknowledge(&self, seq: u64) -> Result<(), OutboxError> {
        self.acknowledge_for(Reader::Cloud, seq)
    }

    fn acknowledged(&self) -> Result<u64, OutboxError> {
        self.acknowledged_by(Reader::Cloud)
    }

    fn last(&self) -> Result<u64, OutboxError> {
        self.with_outbox(|inner, _| Ok(inner.next_seq - 1))
    }

    fn desired_version(&self) -> Result<u64, OutboxError> {
        self.with_outbox(|inner, _| Ok(meta_u64(&inner.meta, DESIRED)?.unwrap_or(0)))
    }

    fn set_desired_version(&self, version: u64) -> Result<(), OutboxError> {
        self.with_outbox(|inner, _| inner.set_durably(DESIRED, version))
    }

    fn config_version(&self) -> Result<u64, OutboxError> {
        self.with_outbox(|inner, _| Ok(meta_u64(&inner.meta, CONFIG)?.unwrap_or(0)))
    }

    fn set_config_version(&self, version: u64) -> Result<(), OutboxError> {
        self.with_outbox(|inner, _| inner.set_durably(CONFIG, version))
    }

    /// The events journal, from just after `seq`: what a commit of the
    /// journal has made durable.
    fn events_after(
        &self,
        seq: u64,
        max: usize,
    ) -> Result<Vec<ferrite_sync::wire::JournalEvent>, OutboxError> {
        self.with_outbox(|inner, _| {
            let from = seq.saturating_add(1).to_be_bytes();
            inner
                .events
                .range(from..)
                .take(max)
                .map(|item| {
                    let (k, v) = item?;
                    let entry = entry_from(&k, &v).map_err(|_| OutboxError::Corrupt(seq))?;
                    Ok(ferrite_sync::wire::JournalEvent {
                        seq: entry.seq,
                        ts_ms: entry.ts.div_euclid(1000),
                        body: String::from_utf8_lossy(&entry.body).into_owned(),
                    })
                })
                .collect()
        })
    }

    fn events_acked(&self) -> Result<u64, OutboxError> {
        self.with_outbox(|inner, _| Ok(meta_u64(&inner.meta, EVENTS_ACKED)?.unwrap_or(0)))
    }

    fn acknowledge_events(&self, seq: u64) -> Result<(), OutboxError> {
        self.with_outbox(|inner, _| {
            if seq > meta_u64(&inner.meta, EVENTS_ACKED)?.unwrap_or(0) {
                inner.meta.insert(EVENTS_ACKED, &seq.to_be_bytes())?;
            }
            Ok(())
        })
    }
}

/// The highest journal event the control plane has, in the meta tree.
const EVENTS_ACKED: &[u8] = b"events_acked";

impl SledStore {
    /// Up to `max` changes from `from` on that `reader` still needs, in
    /// order, with their sequences; only what a commit has flushed.
    pub fn owed(
        &self,
        reader: Reader,
        from: u64,
        max: usize,
    ) -> Result<Vec<(u64, ferrite_sync::delta::Change)>, OutboxError> {
        self.with_cursor(reader, |inner, cursor| {
            inner.owed(from.max(cursor.owed_from()), max)
        })
    }

    /// `reader` has every change up to and including `seq`: the log need
    /// not keep them for it any more. Durable with the next commit.
    pub fn acknowledge_for(&self, reader: Reader, seq: u64) -> Result<(), OutboxError> {
        self.with_cursor(reader, |inner, cursor| {
            let seq = seq.min(inner.next_seq - 1);
            if seq > cursor.acked {
                inner.meta.insert(reader.keys().0, &seq.to_be_bytes())?;
                cursor.acked = seq;
                cursor.owed_bytes = inner.owed_bytes(cursor.owed_from());
            }
            Ok(())
        })
    }

    /// The sequence of the newest change committed (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.read().as_ref().map_or(0, |inner| inner.next_seq - 1)
    }

    /// The highest sequence `reader` acknowledged.
    pub fn acknowledged_by(&self, reader: Reader) -> Result<u64, OutboxError> {
        self.with_cursor(reader, |_, cursor| Ok(cursor.acked))
    }

    /// What waits for `reader`, if it is configured.
    pub fn backlog(&self, reader: Reader) -> Option<super::OutboxState> {
        let guard = self.read();
        let inner = guard.as_ref()?;
        let cursor = lock(inner.cursors[reader as usize].as_ref()?);
        Some(super::OutboxState {
            backlog: inner.next_seq.saturating_sub(cursor.owed_from()),
            bytes: cursor.owed_bytes,
            dropped: self.outbox_dropped[reader as usize]
                .load(std::sync::atomic::Ordering::Relaxed)
                + cursor.dropped,
        })
    }

    fn with_outbox<T>(
        &self,
        f: impl FnOnce(&Inner, &mut Cursor) -> Result<T, OutboxError>,
    ) -> Result<T, OutboxError> {
        self.with_cursor(Reader::Cloud, f)
    }

    fn with_cursor<T>(
        &self,
        reader: Reader,
        f: impl FnOnce(&Inner, &mut Cursor) -> Result<T, OutboxError>,
    ) -> Result<T, OutboxError> {
        let guard = self.read();
        let Some((inner, cursor)) = guard.as_ref().and_then(|i| {
            i.cursors[reader as usize]
                .as_ref()
                .map(|cursor| (i, cursor))
        }) else {
            return Err(OutboxError::Io(sled::Error::Unsupported(format!(
                "{} is not open",
                reader.name()
            ))));
        };
        f(inner, &mut lock(cursor))
    }
}

/// Runs `write`, telling it whether the last write guarded by `failed`
/// failed (so that this one is its retry), and records how this one ends.
fn retrying<T>(
    failed: &std::sync::atomic::AtomicBool,
    write: impl FnOnce(bool) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    use std::sync::atomic::Ordering;
    let result = write(failed.load(Ordering::Relaxed));
    failed.store(result.is_err(), Ordering::Relaxed);
    result
}

fn reopening() -> StoreError {
    StoreError::Io("the store is reopening after a failed write".into())
}

fn io(e: OutboxError) -> StoreError {
    StoreError::Io(e.to_string())
}

impl Inner {
    fn open(dir: &Path, cache_bytes: u64, budgets: Backlogs) -> Result<Inner, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Io(format!("{}: {e}", dir.display())))?;
        let path = dir.join("store");
        let config = sled::Config::new()
            .path(&path)
            // The writer flushes explicitly after each batch; no timer needed.
            .flush_every_ms(None)
            .cache_capacity(cache_bytes);
        // Past an unfinished snapshot a full disk or a crash left behind.
        let (db, _) = ferrite_sync::sled_open::open(config, &path)?;
        let gone_before = meta_u64(&db.open_tree(META_TREE)?, GONE_BEFORE)
            .map_err(io)?
            .map_or(Micros::MIN, |mark| mark as Micros);
        let (blocks, block_cuts) = Blocks::open(&dir.join("blocks"), &db, gone_before)?;
        let mut inner = Inner {
            names_tree: db.open_tree("names")?,
            names_page: Vec::new(),
            names_dirty: false,
            log: CommitLog::unopened(),
            cuts: db.open_tree("cuts")?,
            meta: db.open_tree(META_TREE)?,
            blocks,
            events: db.open_tree(Log::Events.tree())?,
            audit: db.open_tree(Log::Audit.tree())?,
            rule_state: db.open_tree("rule_state")?,
            config: db.open_tree("config")?,
            db,
            names: Dictionary::default(),
            heads: Vec::new(),
            next_seq: 1,
            next_entry: 1,
            records: BTreeMap::new(),
            cursors: [None, None],
        };
        inner.read_names()?;
        inner.next_seq = meta_u64(&inner.meta, NEXT).map_err(io)?.unwrap_or(1).max(1);
        let mut replay = inner.replay_from()?;
        // Past every number on disk: the audit entries (and the trim's
        // mark) and the events; the log's audit frames raise it as they are
        // put back.
        inner.next_entry = replay.audited.max(last_key(&inner.events)?) + 1;
        for (id, cut) in block_cuts {
            let known = replay.cuts.entry(id).or_default();
            *known = (*known).max(cut);
        }
        inner.log = CommitLog::open(&dir.join("commitlog"), |frame| {
            inner.replay(frame, &mut replay)
        })?;
        inner.move_sled_log(&replay)?;
        if migrate::needed(&inner.db) {
            inner.migrate(&replay)?;
        }
        if replay.restored > 0 {
            inner.write_names_page()?;
            inner.db.flush()?;
            tracing::info!(
                "the store restored {} name(s) and audit entries from its commit log",
                replay.restored
            );
        }
        for reader in Reader::ALL {
            if let Some(budget) = budgets.of(reader) {
                inner.open_outbox(reader, budget)?;
            }
        }
        Ok(inner)
    }

    /// Converts an old data dir (see [`migrate`]); the commit records it
    /// writes are read into the store as `replay` reads the log's.
    fn migrate(&mut self, replay: &Replay) -> Result<(), StoreError> {
        let points = migrate::history(&self.db, &mut self.blocks)?;
        let mut waiting = 0u64;
        let first = migrate::outbox(&self.db.clone(), |page| {
            waiting += page.len() as u64;
            self.convert_outbox_page(page, replay)
        })?;
        if let Some(first) = first {
            self.meta.insert(FLOOR, &first.to_be_bytes())?;
        }
        self.write_names_page()?;
        self.meta.insert(NEXT, &self.next_seq.to_be_bytes())?;
        self.db.flush()?;
        tracing::info!(
            "converted the store to the commit log: {points} history point(s) into blocks, {waiting} change(s) waiting for the control plane"
        );
        Ok(())
    }

    /// Moves the commit records of a data dir written before the commit log
    /// had files of its own (sled's `log` tree) into it, once. A crash half
    /// way moves the rest at the next open: the records already in the
    /// file are known by their sequences. What it moves is read into the
    /// store as `replay` reads the log's.
    fn move_sled_log(&mut self, replay: &Replay) -> Result<(), StoreError> {
        if !self
            .db
            .tree_names()
            .iter()
            .any(|name| name.as_ref() == b"log")
        {
            return Ok(());
        }
        let old = self.db.open_tree("log")?;
        let end = self.log.records_end();
        let mut moved = 0u64;
        let mut page: Vec<(u64, sled::IVec)> = Vec::new();
        let mut items = old.iter();
        loop {
            let item = items.next().transpose()?;
            if let Some((key, value)) = &item {
                match <[u8; 8]>::try_from(key.as_ref()).map(u64::from_be_bytes) {
                    Ok(first) if first >= end => page.push((first, value.clone())),
                    Ok(_) => {}
                    Err(_) => tracing::error!("the store skips a commit record: key {key:02x?}"),
                }
            }
            if page.len() >= 1024 || (item.is_none() && !page.is_empty()) {
                self.append_records(
                    page.iter().map(|(first, bytes)| (*first, &bytes[..])),
                    replay,
                )?;
                moved += page.len() as u64;
                page.clear();
            }
            if item.is_none() {
                break;
            }
        }
        drop(old);
        self.db.drop_tree("log")?;
        self.db.flush()?;
        tracing::info!(
            "moved {moved} commit record(s) from the store's sled tree into its commit log files"
        );
        Ok(())
    }

    /// Appends commit records (first sequence, record) that a migration
    /// writes, in one commit, and reads them into the store as `replay`
    /// reads the log's.
    fn append_records<'a>(
        &mut self,
        records: impl Iterator<Item = (u64, &'a [u8])>,
        replay: &Replay,
    ) -> Result<(), StoreError> {
        let frames: Vec<Frame<'a>> = records
            .map(|(first, bytes)| Frame::Record { first, bytes })
            .collect();
        let places = self.log.append(&frames)?;
        for (frame, at) in frames.iter().zip(places) {
            if let Frame::Record { first, bytes } = frame {
                self.replay_record(*first, bytes, at, replay);
            }
        }
        Ok(())
    }

    /// Old outbox entries as commit records of consecutive sequences, marked
    /// as history already.
    fn convert_outbox_page(
        &mut self,
        page: &[(u64, String, String, Micros, ferrite_models::Value)],
        replay: &Replay,
    ) -> Result<(), StoreError> {
        let mut start = 0;
        while start < page.len() {
            let mut end = start + 1;
            while end < page.len() && page[end].0 == page[end - 1].0 + 1 {
                end += 1;
            }
            let run = &page[start..end];
            let ids = run
                .iter()
                .map(|(_, device, property, _, _)| self.id(device, property))
                .collect::<Result<Vec<u32>, _>>()?;
            let points: Vec<(u32, Micros, &ferrite_models::Value)> = ids
                .iter()
                .zip(run)
                .map(|(id, (_, _, _, ts, value))| (*id, *ts, value))
                .collect();
            let records = encode_records(run[0].0, true, &points);
            self.append_records(
                records.iter().map(|(first, _, bytes)| (*first, &bytes[..])),
                replay,
            )?;
            self.next_seq = self.next_seq.max(run[run.len() - 1].0 + 1);
            start = end;
        }
        Ok(())
    }

    /// What reading the log back needs from sled: each series' cut, the
    /// last audit entry sled holds (or the trim's mark), and where the log's
    /// collected records end.
    fn replay_from(&self) -> Result<Replay, StoreError> {
        let mut cuts = HashMap::new();
        for item in self.cuts.iter() {
            let (k, v) = item?;
            let seq = <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Corrupt("cut".into()))?;
            cuts.insert(id_from(&k)?, seq);
        }
        let trimmed = meta_u64(&self.meta, JOURNAL_NEXT)
            .map_err(io)?
            .map_or(0, |next| next.saturating_sub(1));
        Ok(Replay {
            cuts,
            audited: last_key(&self.audit)?.max(trimmed),
            collected: meta_u64(&self.meta, COLLECTED).map_err(io)?.unwrap_or(0),
            restored: 0,
        })
    }

    /// One frame of the log, read back at open: a record into the index
    /// and the heads; a name or an audit entry sled lost (a crash before
    /// the flush that follows the commit) put back.
    fn replay(&mut self, frame: Replayed, replay: &mut Replay) -> Result<(), StoreError> {
        match frame {
            Replayed::Name {
                id,
                device,
                property,
            } => {
                let known = self.names.len() as u64;
                if u64::from(id) == known {
                    self.add_name(id, &device, &property)?;
                    replay.restored += 1;
                } else if u64::from(id) > known {
                    tracing::error!("the commit log names series {id} after {known}: skipped");
                }
            }
            Replayed::Audit { seq, ts, body } => {
                if seq > replay.audited {
                    self.insert_entries(Log::Audit, &[(seq, ts, body)])?;
                    replay.restored += 1;
                }
            }
            Replayed::Record { first, bytes, at } => {
                self.replay_record(first, &bytes, at, replay);
            }
        }
        Ok(())
    }

    /// One commit record, read back: into the index, and its points after
    /// their series' cut into the heads. A record that does not read (a
    /// foreign or damaged one) is left where it is and reported: refusing to
    /// open would stop the gateway, and with it every reading after it.
    fn replay_record(&mut self, first: u64, bytes: &[u8], at: At, replay: &Replay) {
        let record = match record::decode(first, bytes) {
            Ok(record) => record,
            Err(e) => {
                tracing::error!("the store skips a commit record: {e}");
                return;
            }
        };
        let Some(count) = u32::try_from(record.points.len()).ok().filter(|n| *n > 0) else {
            return;
        };
        self.next_seq = self.next_seq.max(first + u64::from(count));
        if first + u64::from(count) <= replay.collected {
            return;
        }
        self.records.insert(
            first,
            RecordInfo {
                count,
                bytes: RECORD_OVERHEAD + bytes.len() as u64,
                at,
            },
        );
        if record.outbox_only {
            return;
        }
        for (seq, (id, (ts, value))) in (first..).zip(record.ids.into_iter().zip(record.points)) {
            if (id as usize) >= self.names.len() {
                tracing::error!("commit record {first}: unknown series {id}, skipped");
                continue;
            }
            if seq > replay.cuts.get(&id).copied().unwrap_or(0) {
                self.head(id).push(seq, ts, &value);
            }
        }
    }

    /// `reader`'s cursor. A store that never had one owes it nothing from
    /// before.
    fn open_outbox(&mut self, reader: Reader, budget: u64) -> Result<(), StoreError> {
        let (acked_key, floor_key) = reader.keys();
        let acked = meta_u64(&self.meta, acked_key).map_err(io)?;
        let floor = match meta_u64(&self.meta, floor_key).map_err(io)? {
            Some(floor) => floor,
            None => {
                let floor = acked.map_or(self.next_seq, |acked| acked + 1);
                self.meta.insert(floor_key, &floor.to_be_bytes())?;
                floor
            }
        };
        let acked = acked.unwrap_or(0);
        let mut cursor = Cursor {
            reader,
            budget,
            acked,
            floor,
            owed_bytes: 0,
            dropped: 0,
        };
        cursor.owed_bytes = self.owed_bytes(cursor.owed_from());
        self.cursors[reader as usize] = Some(Mutex::new(cursor));
        Ok(())
    }

    /// Sets `key` of the meta tree to `value` and flushes.
    fn set_durably(&self, key: &[u8], value: u64) -> Result<(), OutboxError> {
        self.meta.insert(key, &value.to_be_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    fn head(&mut self, id: u32) -> &mut Head {
        let slot = id as usize;
        if self.heads.len() <= slot {
            self.heads.resize_with(slot + 1, Head::default);
        }
        &mut self.heads[slot]
    }

    /// The names from their pages, after converting the one-key-per-series
    /// tree of earlier versions.
    fn read_names(&mut self) -> Result<(), StoreError> {
        if let Some(old) = migrate::series(&self.db)? {
            for (id, (device, property)) in old.iter().enumerate() {
                let id = u32::try_from(id).map_err(|_| StoreError::Corrupt("series id".into()))?;
                self.add_name(id, device, property)?;
            }
            self.write_names_page()?;
            self.db.flush()?;
            migrate::drop_series(&self.db)?;
            return Ok(());
        }
        for item in self.names_tree.iter() {
            let (k, v) = item?;
            let page = id_from(&k)?;
            let entries = dictionary::read_page(&v)
                .ok_or_else(|| StoreError::Corrupt(format!("names page {page}")))?;
            for (i, (device, property)) in (0u32..).zip(&entries) {
                self.names
                    .insert(page * dictionary::PAGE + i, device, property);
            }
            self.names_page = v.to_vec();
        }
        Ok(())
    }

    /// The series ids of `changes`, naming the series seen for the first
    /// time. A commit's changes come a device at a time (the writer takes a
    /// device's poll whole), so a device's name is looked up once per run
    /// of its changes rather than once per change.
    fn ids(&mut self, changes: &[Change]) -> Result<Vec<u32>, StoreError> {
        let mut ids = Vec::with_capacity(changes.len());
        let mut device: Option<(&Arc<str>, Option<u32>)> = None;
        for change in changes {
            let number = match device {
                Some((name, number))
                    if Arc::ptr_eq(name, &change.device) || *name == change.device =>
                {
                    number
                }
                _ => self.names.device(&change.device),
            };
            device = Some((&change.device, number));
            match number.and_then(|n| self.names.get_in(n, &change.property)) {
                Some(id) => ids.push(id),
                None => {
                    ids.push(self.id(&change.device, &change.property)?);
                    // Naming it may have numbered the device.
                    device = None;
                }
            }
        }
        Ok(ids)
    }

    fn id(&mut self, device: &str, property: &str) -> Result<u32, StoreError> {
        if let Some(id) = self.names.get(device, property) {
            return Ok(id);
        }
        let id = u32::try_from(self.names.len())
            .map_err(|_| StoreError::Corrupt("too many series".into()))?;
        self.add_name(id, device, property)?;
        Ok(id)
    }

    /// Gives `id` (the next one) to `device`'s `property`, in memory and in
    /// the last page of names (written by [`Inner::write_names_page`]).
    fn add_name(&mut self, id: u32, device: &str, property: &str) -> Result<(), StoreError> {
        if id.is_multiple_of(dictionary::PAGE) && id > 0 {
            self.write_names_page()?;
            self.names_page.clear();
        }
        dictionary::put_entry(&mut self.names_page, device, property);
        self.names.insert(id, device, property);
        self.names_dirty = true;
        Ok(())
    }

    /// Writes the last page of names, if it changed.
    fn write_names_page(&mut self) -> Result<(), StoreError> {
        if self.names_dirty {
            let last = u32::try_from(self.names.len().saturating_sub(1)).unwrap_or(u32::MAX);
            let page = last / dictionary::PAGE;
            self.names_tree
                .insert(page.to_be_bytes(), self.names_page.as_slice())?;
            self.names_dirty = false;
        }
        Ok(())
    }

    /// Appends `changes` as commit records, with the names of new series and
    /// `audit`, to the commit log and syncs it: from then on the commit is
    /// durable. Then adds the changes to their heads (cutting full heads
    /// into blocks) and writes the rest to sled, which the retention pass
    /// flushes. Returns the sequence of the first change.
    fn commit(&mut self, changes: &[Change], audit: &[Numbered]) -> Result<u64, StoreError> {
        let first = self.next_seq;
        if changes.is_empty() {
            if !audit.is_empty() {
                self.insert_entries(Log::Audit, audit)?;
                self.db.flush()?;
            }
            return Ok(first);
        }
        let named = self.names.len() as u32;
        let ids = self.ids(changes)?;
        let points: Vec<(u32, Micros, &ferrite_models::Value)> = ids
            .iter()
            .zip(changes)
            .map(|(id, c)| (*id, c.at.ts, &c.at.value))
            .collect();
        let records = encode_records(first, false, &points);
        let mut frames = Vec::with_capacity(records.len() + audit.len());
        for id in named..self.names.len() as u32 {
            let (device, property) = self
                .names
                .names(id)
                .ok_or_else(|| StoreError::Corrupt(format!("series {id} unnamed")))?;
            frames.push(Frame::Name {
                id,
                device,
                property,
            });
        }
        frames.extend(records.iter().map(|(first, _, bytes)| Frame::Record {
            first: *first,
            bytes,
        }));
        frames.extend(audit.iter().map(|(seq, ts, body)| Frame::Audit {
            seq: *seq,
            ts: *ts,
            body,
        }));
        let places = self.log.append(&frames)?;
        drop(frames);
        self.write_names_page()?;
        self.insert_entries(Log::Audit, audit)?;
        // The next sequence goes to sled when the log lets records go: until
        // then a reopen reads it off the records.
        self.next_seq = first + changes.len() as u64;
        let mut owed = 0u64;
        for ((first, count, bytes), at) in records.iter().zip(places) {
            let info = RecordInfo {
                count: *count,
                bytes: RECORD_OVERHEAD + bytes.len() as u64,
                at,
            };
            owed += info.bytes;
            self.records.insert(*first, info);
        }
        for (seq, (id, change)) in (first..).zip(ids.iter().zip(changes)) {
            let head = self.head(*id);
            head.push(seq, change.at.ts, &change.at.value);
            if head.chunk.len() >= CUT_POINTS {
                self.cut(*id)?;
            }
        }
        for cursor in self.cursors.iter_mut().flatten() {
            cursor
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner)
                .owed_bytes += owed;
        }
        self.keep_outbox_budget()?;
        Ok(first)
    }

    /// Gives each of `entries` the next sequence number of the journals.
    fn number(&mut self, entries: &[(Micros, Vec<u8>)]) -> Result<Vec<Numbered>, StoreError> {
        Ok(entries
            .iter()
            .map(|(ts, body)| (self.entry_number(), *ts, body.clone()))
            .collect())
    }

    /// The next journal entry's number; from 1, so that 0 can mean "before
    /// everything".
    fn entry_number(&mut self) -> u64 {
        let seq = self.next_entry;
        self.next_entry += 1;
        seq
    }

    /// Writes numbered `entries` to `log` (not flushed).
    fn insert_entries(&mut self, log: Log, entries: &[Numbered]) -> Result<(), StoreError> {
        let tree = self.log(log);
        for (seq, ts, body) in entries {
            tree.insert(seq.to_be_bytes(), entry_value(*ts, body))?;
        }
        // A retry's entries keep the numbers they were given before a
        // reopen counted again.
        if let Some(last) = entries.iter().map(|(seq, _, _)| *seq).max() {
            self.next_entry = self.next_entry.max(last + 1);
        }
        Ok(())
    }

    /// Writes series `id`'s head as a block.
    fn cut(&mut self, id: u32) -> Result<(), StoreError> {
        let Some(head) = self.heads.get_mut(id as usize).map(std::mem::take) else {
            return Ok(());
        };
        if head.chunk.is_empty() {
            return Ok(());
        }
        // The cut goes in the block's frame, not to sled: a block and its
        // cut are on disk together or not at all.
        self.blocks.write(id, head.chunk.points(), head.last_seq)
    }

    /// Over a reader's budget, the oldest records it is owed are dropped
    /// from its backlog (never the newest), and counted.
    fn keep_outbox_budget(&mut self) -> Result<(), StoreError> {
        for cursor in self.cursors.iter().flatten() {
            self.keep_budget(&mut lock(cursor))?;
        }
        Ok(())
    }

    fn keep_budget(&self, cursor: &mut Cursor) -> Result<(), StoreError> {
        let newest = self.records.keys().next_back().copied().unwrap_or(0);
        let mut moved = false;
        while cursor.owed_bytes > cursor.budget {
            let from = cursor.owed_from();
            let Some((first, info)) = self
                .records
                .iter()
                .find(|(first, info)| info.last(**first) >= from)
            else {
                break;
            };
            if *first >= newest {
                break;
            }
            let end = info.last(*first) + 1;
            cursor.dropped += end - from.max(*first);
            cursor.floor = end;
            cursor.owed_bytes = cursor.owed_bytes.saturating_sub(info.bytes);
            moved = true;
        }
        if moved {
            self.meta
                .insert(cursor.reader.keys().1, &cursor.floor.to_be_bytes())?;
        }
        Ok(())
    }

    /// Bytes of the records holding changes from `from` on.
    fn owed_bytes(&self, from: u64) -> u64 {
        self.records
            .iter()
            .filter(|(first, info)| info.last(**first) >= from)
            .map(|(_, info)| info.bytes)
            .sum()
    }

    /// Up to `max` changes from `from` on, as the uplink sends them.
    fn owed(
        &self,
        from: u64,
        max: usize,
    ) -> Result<Vec<(u64, ferrite_sync::delta::Change)>, OutboxError> {
        let start = self
            .records
            .range(..=from)
            .next_back()
            .map_or(from, |(first, _)| *first);
        let mut out = Vec::new();
        for first in self.records.range(start..).map(|(first, _)| *first) {
            if out.len() >= max {
                break;
            }
            let Some(info) = self.records.get(&first) else {
                continue;
            };
            let bytes = self
                .log
                .read(info.at)
                .map_err(|e| OutboxError::Storage(e.to_string()))?;
            let record = record::decode(first, &bytes).map_err(|_| OutboxError::Corrupt(first))?;
            for (seq, (id, (ts, value))) in (first..).zip(record.ids.into_iter().zip(record.points))
            {
                if seq < from {
                    continue;
                }
                if out.len() >= max {
                    break;
                }
                let (device, property) = self.names.names(id).ok_or(OutboxError::Corrupt(seq))?;
                out.push((
                    seq,
                    ferrite_sync::delta::Change {
                        device: device.to_string(),
                        property: property.to_string(),
                        ts_ms: ts.div_euclid(1000),
                        value,
                    },
                ));
            }
        }
        Ok(out)
    }

    /// What the next walk of a retention pass is to do. It looks at every
    /// series' blocks once a block may start before `before - slack`. Past
    /// `max_bytes` (the blocks' bytes, from their ledger, and the log's),
    /// the blocks that end before the time that frees the excess go too.
    fn plan_trim(&mut self, before: Micros, slack: Micros, max_bytes: u64) -> TrimPlan {
        let held = self.blocks.held() + self.record_bytes();
        let ended_before = held
            .checked_sub(max_bytes)
            .filter(|over| *over > 0)
            .and_then(|over| self.blocks.ended_before_freeing(over))
            .unwrap_or(Micros::MIN);
        if ended_before > Micros::MIN {
            tracing::debug!(
                "the store holds {held} bytes of history, over {max_bytes}: blocks that end before {ended_before} go"
            );
        }
        let due = before.saturating_sub(slack.max(0));
        let walk = (due > self.blocks.oldest() || ended_before > Micros::MIN)
            .then(|| self.blocks.walk_begins());
        TrimPlan {
            keep_from: self.tail_start(),
            due,
            ended_before,
            walk,
        }
    }

    /// The bytes of the log's records.
    fn record_bytes(&self) -> u64 {
        self.records.values().map(|r| r.bytes).sum()
    }

    /// Cuts the heads that hold back more than [`LOG_TAIL_BYTES`] of log,
    /// and returns the sequence below which no record is needed any more:
    /// every point before it is in a block, and every reader has it or lost
    /// it over its budget. Capped at the next sequence, so that it stays
    /// true while the lock is given up between slices: later commits' points
    /// all come after it.
    fn collectable_before(&mut self) -> Result<u64, StoreError> {
        let keep_from = self.tail_start();
        self.cut_where(|head| head.first_seq < keep_from)?;
        let held = self
            .heads
            .iter()
            .filter(|h| !h.chunk.is_empty())
            .map(|h| h.first_seq)
            .min()
            .unwrap_or(u64::MAX);
        let owed = self
            .cursors
            .iter()
            .flatten()
            .map(|c| lock(c).owed_from())
            .min()
            .unwrap_or(u64::MAX);
        Ok(held.min(owed).min(self.next_seq))
    }

    /// Drops up to `max` of the oldest records whose changes all come
    /// before `limit`; says how many went and whether more may be left.
    fn drop_records_before(&mut self, limit: u64, max: usize) -> Result<(u64, bool), StoreError> {
        let doomed: Vec<u64> = self
            .records
            .iter()
            .take_while(|(first, info)| info.last(**first) < limit)
            .take(max)
            .map(|(first, _)| *first)
            .collect();
        for first in &doomed {
            self.records.remove(first);
        }
        Ok((doomed.len() as u64, doomed.len() == max))
    }

    /// Flushes sled, saying the records before `limit` have gone, then
    /// deletes the log's segments that hold nothing else. The blocks those
    /// records were cut into must be synced first.
    fn let_log_go(&mut self, limit: u64) -> Result<(), StoreError> {
        self.meta.insert(COLLECTED, &limit.to_be_bytes())?;
        self.meta.insert(NEXT, &self.next_seq.to_be_bytes())?;
        self.db.flush()?;
        let went = self.log.drop_before(limit)?;
        if went > 0 {
            tracing::debug!("{went} commit log segment(s) deleted");
        }
        Ok(())
    }

    /// The first sequence of the newest [`LOG_TAIL_BYTES`] of log: heads
    /// holding records before it are cut.
    fn tail_start(&self) -> u64 {
        let mut kept = 0u64;
        for (first, info) in self.records.iter().rev() {
            kept += info.bytes;
            if kept > LOG_TAIL_BYTES {
                return first + u64::from(info.count);
            }
        }
        0
    }

    /// Cuts the heads that `stale` picks into blocks.
    fn cut_where(&mut self, stale: impl Fn(&Head) -> bool) -> Result<(), StoreError> {
        for id in 0..self.heads.len() {
            let head = &self.heads[id];
            if !head.chunk.is_empty() && stale(head) {
                self.cut(id as u32)?;
            }
        }
        Ok(())
    }
}

impl Head {
    fn push(&mut self, seq: u64, ts: Micros, value: &ferrite_models::Value) {
        if self.chunk.is_empty() {
            self.first_seq = seq;
        }
        self.last_seq = seq;
        self.chunk.push(ts, value);
    }
}

impl Inner {
    fn log(&self, log: Log) -> &sled::Tree {
        match log {
            Log::Events => &self.events,
            Log::Audit => &self.audit,
        }
    }

    /// Series `id`'s points between `since` and `until` in its head.
    fn head_points(&self, id: u32, since: Micros, until: Micros) -> Vec<Point> {
        match self.heads.get(id as usize).filter(|h| !h.chunk.is_empty()) {
            Some(head) => {
                let (min, max) = head.chunk.span();
                if max < since || min > until {
                    return Vec::new();
                }
                head.chunk
                    .points()
                    .into_iter()
                    .filter(|p| p.0 >= since && p.0 <= until)
                    .collect()
            }
            None => Vec::new(),
        }
    }
}

/// A journal entry's value on disk: its time (BE), then its body.
/// `points` (series id, time, value), numbered from `first` on, as commit
/// records of at most [`RECORD_POINTS`]: each one's first sequence, count
/// and bytes.
fn encode_records(
    first: u64,
    outbox_only: bool,
    points: &[(u32, Micros, &ferrite_models::Value)],
) -> Vec<(u64, u32, Vec<u8>)> {
    let mut seq = first;
    points
        .chunks(RECORD_POINTS)
        .map(|part| {
            let record = (
                seq,
                // At most RECORD_POINTS.
                part.len() as u32,
                record::encode(outbox_only, part.iter().copied()),
            );
            seq += part.len() as u64;
            record
        })
        .collect()
}

fn entry_value(ts: Micros, body: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(8 + body.len());
    value.extend_from_slice(&ts.to_be_bytes());
    value.extend_from_slice(body);
    value
}

fn entry_from(key: &[u8], value: &[u8]) -> Result<Entry, StoreError> {
    let corrupt = || StoreError::Corrupt("journal entry".into());
    let seq: [u8; 8] = key.try_into().map_err(|_| corrupt())?;
    let (ts, body) = value.split_at_checked(8).ok_or_else(corrupt)?;
    let ts: [u8; 8] = ts.try_into().map_err(|_| corrupt())?;
    Ok(Entry {
        seq: u64::from_be_bytes(seq),
        ts: i64::from_be_bytes(ts),
        body: body.to_vec(),
    })
}

/// The number under `tree`'s last key (a journal's newest entry), 0 if it
/// is empty.
fn last_key(tree: &sled::Tree) -> Result<u64, StoreError> {
    Ok(match tree.last()? {
        Some((k, _)) => <[u8; 8]>::try_from(k.as_ref()).map_or(0, u64::from_be_bytes),
        None => 0,
    })
}

fn id_from(bytes: &[u8]) -> Result<u32, StoreError> {
    let arr: [u8; 4] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("series id".into()))?;
    Ok(u32::from_be_bytes(arr))
}

impl Store for SledStore {
    fn commit_with_audit(
        &self,
        changes: &[Change],
        audit: &[(Micros, Vec<u8>)],
    ) -> Result<(), StoreError> {
        // After a failed commit, the writer's next one retries the same
        // changes and entries (the writer is the only one that commits);
        // the reopen in `with_writable` stores them, and the retry itself
        // then does nothing. Any other commit is new.
        // A failure is recorded before the lock is released, so that no
        // other write can reopen the store without finishing this commit.
        self.with_writable(|inner| {
            let mut unfinished = self.unfinished();
            if matches!(&*unfinished, Unfinished::Finished { changes: done, audit: kept }
                if done == changes && kept == audit)
            {
                *unfinished = Unfinished::None;
                return Ok(());
            }
            let first = inner.next_seq;
            let audit = inner.number(audit)?;
            let result = inner.commit(changes, &audit).map(drop);
            *unfinished = match result {
                Ok(()) => Unfinished::None,
                Err(_) => Unfinished::Failed {
                    changes: changes.to_vec(),
                    audit,
                    first,
                },
            };
            result
        })
    }

    fn latest_all(&self) -> Result<Vec<(String, String, Stamped)>, StoreError> {
        let guard = self.read();
        let inner = guard.as_ref().ok_or_else(reopening)?;
        let mut out = Vec::with_capacity(inner.names.len());
        for (id, device, property) in inner.names.iter() {
            // The head's points are newer, so they win a tie.
            let at_rest = inner.blocks.last(id)?;
            let in_head = inner.head_points(id, Micros::MIN, Micros::MAX).pop();
            let latest = match (at_rest, in_head) {
                (Some(old), Some(new)) => Some(if old.0 > new.0 { old } else { new }),
                (old, new) => new.or(old),
            };
            if let Some((ts, value)) = latest {
                out.push((
                    device.to_string(),
                    property.to_string(),
                    Stamped { ts, value },
                ));
            }
        }
        Ok(out)
    }

    fn history(
        &self,
        device: &str,
        property: &str,
        since: Micros,
        until: Micros,
        limit: usize,
        end: End,
    ) -> Result<Vec<Stamped>, StoreError> {
        let guard = self.read();
        let inner = guard.as_ref().ok_or_else(reopening)?;
        let Some(id) = inner.names.get(device, property) else {
            return Ok(Vec::new());
        };
        let mut points = inner.blocks.range(id, since, until, limit, end)?;
        let head = inner.head_points(id, since, until);
        if !head.is_empty() {
            // After the blocks' points, so that the head's win a tie.
            points.extend(head);
            points = chunk::in_time_order(points);
        }
        let skip = match end {
            End::Oldest => 0,
            End::Newest => points.len().saturating_sub(limit),
        };
        Ok(points
            .into_iter()
            .skip(skip)
            .take(limit)
            .map(|(ts, value)| Stamped { ts, value })
            .collect())
    }

    fn trim_within(
        &self,
        before: Micros,
        slack: Micros,
        max_bytes: u64,
    ) -> Result<Trimmed, StoreError> {
        let mut trimmed = Trimmed::default();
        let plan = self.with_writable(|inner| Ok(inner.plan_trim(before, slack, max_bytes)))?;
        self.trim_as(&plan, before, &mut trimmed)?;
        self.collect_log()?;
        Ok(trimmed)
    }

    fn append(&self, log: Log, entries: &[(Micros, Vec<u8>)]) -> Result<Vec<u64>, StoreError> {
        // As with commits: after a failed append, the next one to the same
        // log (by the one journal task) is its retry, and what the failed
        // attempt left on disk is not appended twice.
        let failed = match log {
            Log::Events => &self.append_failed[0],
            Log::Audit => &self.append_failed[1],
        };
        retrying(failed, |retry| {
            self.with_writable(|inner| {
                let tree = inner.log(log).clone();
                let kept: Vec<(sled::IVec, sled::IVec)> = if retry {
                    tree.iter()
                        .rev()
                        .take(entries.len())
                        .collect::<Result<_, _>>()?
                } else {
                    Vec::new()
                };
                let mut seqs = Vec::with_capacity(entries.len());
                for (ts, body) in entries {
                    let value = entry_value(*ts, body);
                    if let Some((key, kept)) =
                        kept.iter().find(|(_, v)| v.as_ref() == value.as_slice())
                    {
                        seqs.push(entry_from(key, kept)?.seq);
                        continue;
                    }
                    let seq = inner.entry_number();
                    tree.insert(seq.to_be_bytes(), value)?;
                    seqs.push(seq);
                }
                inner.db.flush()?;
                Ok(seqs)
            })
        })
    }

    fn recent(
        &self,
        log: Log,
        before: u64,
        limit: usize,
        keep: &dyn Fn(&Entry) -> bool,
    ) -> Result<Vec<Entry>, StoreError> {
        let guard = self.read();
        let inner = guard.as_ref().ok_or_else(reopening)?;
        let mut out = Vec::new();
        for item in inner.log(log).range(..before.to_be_bytes()).rev() {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            let entry = entry_from(&k, &v)?;
            if keep(&entry) {
                out.push(entry);
            }
        }
        Ok(out)
    }

    fn trim_log(&self, log: Log, before: Micros, max_entries: usize) -> Result<u64, StoreError> {
        let guard = self.write();
        let Some(inner) = guard.as_ref() else {
            return Ok(0);
        };
        let tree = inner.log(log);
        let excess = tree.len().saturating_sub(max_entries);
        let mut doomed = Vec::new();
        for item in tree.iter() {
            let (k, v) = item?;
            if doomed.len() >= excess && entry_from(&k, &v)?.ts >= before {
                break;
            }
            doomed.push(k);
        }
        if !doomed.is_empty() {
            inner
                .meta
                .insert(JOURNAL_NEXT, &inner.next_entry.to_be_bytes())?;
        }
        for key in &doomed {
            tree.remove(key)?;
        }
        Ok(doomed.len() as u64)
    }

    fn layout(&self) -> Option<Layout> {
        self.measure().ok()
    }

    fn history_bytes(&self) -> Option<u64> {
        let guard = self.read();
        let inner = guard.as_ref()?;
        Some(inner.blocks.held() + inner.record_bytes())
    }

    fn size_on_disk(&self) -> Option<u64> {
        let guard = self.read();
        let inner = guard.as_ref()?;
        Some(inner.db.size_on_disk().ok()? + inner.log.bytes() + inner.blocks.footprint().0)
    }

    fn outbox(&self) -> Option<super::OutboxState> {
        self.backlog(Reader::Cloud)
    }

    fn save_config_version(
        &self,
        version: u64,
        body: &[u8],
        keep: usize,
    ) -> Result<(), StoreError> {
        self.with_writable(|inner| {
            inner.config.insert(version.to_be_bytes(), body)?;
            while inner.config.len() > keep.max(1) {
                if inner.config.pop_min()?.is_none() {
                    break;
                }
            }
            inner.db.flush()?;
            Ok(())
        })
    }

    fn config_versions(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let guard = self.read();
        let inner = guard.as_ref().ok_or_else(reopening)?;
        inner
            .config
            .iter()
            .map(|item| {
                let (k, v) = item?;
                let version = <[u8; 8]>::try_from(k.as_ref())
                    .map(u64::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt("config version key".into()))?;
                Ok((version, v.to_vec()))
            })
            .collect()
    }

    fn rule_states(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let guard = self.read();
        let inner = guard.as_ref().ok_or_else(reopening)?;
        inner
            .rule_state
            .iter()
            .map(|item| {
                let (k, v) = item?;
                Ok((String::from_utf8_lossy(&k).into_owned(), v.to_vec()))
            })
            .collect()
    }

    fn save_rule_states(&self, states: &[(String, Option<Vec<u8>>)]) -> Result<(), StoreError> {
        self.with_writable(|inner| {
            for (name, state) in states {
                match state {
                    Some(bytes) => inner.rule_state.insert(name.as_bytes(), bytes.as_slice())?,
                    None => inner.rule_state.remove(name.as_bytes())?,
                };
            }
            inner.db.flush()?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrite_models::Value;

    fn change(device: &str, property: &str, ts: Micros, value: Value) -> Change {
        Change {
            device: device.into(),
            property: property.into(),
            at: Stamped { ts, value },
        }
    }

    /// As if a commit of `batch` had reached the disk and then failed (a
    /// full disk at its flush): what `commit` leaves behind on a failure.
    fn failed_after_reaching_the_disk(
        store: &SledStore,
        batch: &[Change],
    ) -> Result<(), StoreError> {
        failed_with_audit_after_reaching_the_disk(store, batch, &[])
    }

    /// The same, for a commit with audit entries.
    fn failed_with_audit_after_reaching_the_disk(
        store: &SledStore,
        batch: &[Change],
        audit: &[(Micros, Vec<u8>)],
    ) -> Result<(), StoreError> {
        let mut guard = store.write();
        let inner = guard.as_mut().ok_or_else(reopening)?;
        let audit = inner.number(audit)?;
        let first = inner.commit(batch, &audit)?;
        *store.unfinished() = Unfinished::Failed {
            changes: batch.to_vec(),
            audit,
            first,
        };
        *guard = None;
        Ok(())
    }

    #[test]
    fn audit_entries_are_kept_in_the_commit_and_a_retry_keeps_them_once() -> Result<(), StoreError>
    {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Io(e.to_string()))?;
        let store = SledStore::open(dir.path())?;
        let bodies = |store: &SledStore| -> Result<Vec<Vec<u8>>, StoreError> {
            let mut entries = store.recent(Log::Audit, u64::MAX, 10, &|_| true)?;
            entries.reverse();
            Ok(entries.into_iter().map(|e| e.body).collect())
        };
        // With a change, and with none (a read-back of the value it had).
        store.commit_with_audit(
            &[change("d", "p", 1_000, Value::Int(1))],
            &[(1_000, b"first".to_vec())],
        )?;
        store.commit_with_audit(&[], &[(2_000, b"second".to_vec())])?;
        assert_eq!(bodies(&store)?, [b"first".to_vec(), b"second".to_vec()]);
        let times: Vec<Micros> = store
            .recent(Log::Audit, u64::MAX, 10, &|_| true)?
            .iter()
            .map(|e| e.ts)
            .collect();
        assert_eq!(times, [2_000, 1_000], "newest first, with their times");
        // A commit that reached the disk and failed, then the writer's retry.
        let batch = [change("d", "p", 3_000, Value::Int(3))];
        let audit = [(3_000, b"third".to_vec())];
        failed_with_audit_after_reaching_the_disk(&store, &batch, &audit)?;
        store.commit_with_audit(&batch, &audit)?;
        assert_eq!(
            bodies(&store)?,
            [b"first".to_vec(), b"second".to_vec(), b"third".to_vec()],
            "the retry kept the entry once"
        );
        assert_eq!(
            store.history("d", "p", 0, i64::MAX, 10, End::Oldest)?.len(),
            2
        );
        // The same with nothing but an entry, where no record tells that
        // the failed commit reached the disk.
        let audit = [(4_000, b"fourth".to_vec())];
        failed_with_audit_after_reaching_the_disk(&store, &[], &audit)?;
        store.append(Log::Events, &[(4_000, b"reopens".to_vec())])?;
        store.commit_with_audit(&[], &audit)?;
        assert_eq!(bodies(&store)?.len(), 4, "{:?}", bodies(&store)?);
        // The next commit of an equal entry is new.
        store.commit_with_audit(&[], &audit)?;
        assert_eq!(bodies(&store)?.len(), 5);
        // Reopened, everything is there.
        drop(store);
        let store = reopened(dir.path())?;
        assert_eq!(bodies(&store)?.len(), 5);
        Ok(())
    }

    #[test]
    fn a_commit_half_done_is_finished_by_whoever_reopens_and_never_sent_twice()
    -> Result<(), StoreError> {
        use ferrite_sync::outbox::OutboxAccess;
        let io = |e: ferrite_sync::outbox::OutboxError| StoreError::Io(e.to_string());
        let dir = tempfile::tempdir().map_err(|e| StoreError::Io(e.to_string()))?;
        let store = SledStore::open_with(dir.path(), 1 << 20, Backlogs::cloud(1 << 20))?;
        let batch = [
            change("d", "n", 2_000, Value::Int(2)),
            change("d", "m", 2_000, Value::Float(0.5)),
        ];
        failed_after_reaching_the_disk(&store, &batch)?;
        // The journal writes first (a `store_failing` event), which reopens
        // the store; then the uplink sends what it finds, and the control
        // plane acknowledges it.
        store.append(Log::Events, &[(1, b"store_failing".to_vec())])?;
        let sent = OutboxAccess::read(&store, 1, 10).map_err(io)?;
        assert_eq!(sent.len(), 2, "the reopen finished the commit");
        OutboxAccess::acknowledge(&store, 2).map_err(io)?;
        // Only now does the writer's retry come.
        store.commit(&batch)?;
        assert_eq!(store.last().map_err(io)?, 2, "nothing appended again");
        assert!(OutboxAccess::read(&store, 1, 10).map_err(io)?.is_empty());
        assert_eq!(
            store.history("d", "n", 0, i64::MAX, 10, End::Oldest)?.len(),
            1
        );
        // The next commit, even of equal changes, is new.
        store.commit(&batch)?;
        assert_eq!(store.last().map_err(io)?, 4);
        Ok(())
    }

    #[test]
    fn a_retried_commit_does_not_put_its_changes_in_the_outbox_twice() -> Result<(), StoreError> {
        use ferrite_sync::outbox::OutboxAccess;
        let dir = tempfile::tempdir().map_err(|e| StoreError::Io(e.to_string()))?;
        let store = SledStore::open_with(dir.path(), 1 << 20, Backlogs::cloud(1 << 20))?;
        let first = [change("d", "n", 1_000, Value::Int(1))];
        let batch = [
            change("d", "n", 2_000, Value::Int(2)),
            change("d", "m", 2_000, Value::Float(0.5)),
        ];
        store.commit(&first)?;
        failed_after_reaching_the_disk(&store, &batch)?;
        // The writer's retry: the same changes again.
        store.commit(&batch)?;
        assert_eq!(store.last().map_err(|e| StoreError::Io(e.to_string()))?, 3);
        let outbox =
            OutboxAccess::read(&store, 1, 10).map_err(|e| StoreError::Io(e.to_string()))?;
        let seqs: Vec<u64> = outbox.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, [1, 2, 3], "each change once");
        // A later commit appends as usual.
        store.commit(&[change("d", "n", 3_000, Value::Int(2))])?;
        assert_eq!(store.last().map_err(|e| StoreError::Io(e.to_string()))?, 4);
        Ok(())
    }

    #[test]
    fn a_retried_append_does_not_log_its_entries_twice() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Io(e.to_string()))?;
        let store = SledStore::open(dir.path())?;
        let entries = [(1, b"first".to_vec()), (2, b"second".to_vec())];
        let seqs = store.append(Log::Audit, &entries)?;
        // As if that append had reached the disk and then failed.
        store.append_failed[1].store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            store.append(Log::Audit, &entries)?,
            seqs,
            "the same entries"
        );
        let all = store.recent(Log::Audit, u64::MAX, 10, &|_| true)?;
        assert_eq!(all.len(), 2, "each once");
        // The flag is cleared by the success: the same body may come again.
        store.append(Log::Audit, &entries[..1])?;
        assert_eq!(store.recent(Log::Audit, u64::MAX, 10, &|_| true)?.len(), 3);
        Ok(())
    }

    #[test]
    fn history_is_ordered_ranged_limited_and_trimmed() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Io(e.to_string()))?;
        let store = SledStore::open(dir.path())?;
        let changes: Vec<Change> = (0..100)
            .map(|i| change("d", "p", 1000 + i, Value::Int(i)))
            .collect();
        store.commit(&changes)?;
        store.commit(&[change("d", "q", 5, Value::Bool(true))])?;
        let all = store.history("d", "p", 0, i64::MAX, 1000, End::Oldest)?;
        assert_eq!(all.len(), 100);
        assert!(all.windows(2).all(|w| w[0].ts < w[1].ts));
        assert_eq!(
            store
                .history("d", "p", 1010, 1019, 1000, End::Oldest)?
                .len(),
            10
        );
        let oldest = store.history("d", "p", 0, i64::MAX, 3, End::Oldest)?;
        let ts = |v: &[Stamped]| v.iter().map(|s| s.ts).collect::<Vec<_>>();
        assert_eq!(ts(&oldest), [1000, 1001, 1002]);
        let newest = store.history("d", "p", 0, i64::MAX, 3, End::Newest)?;
        assert_eq!(ts(&newest), [1097, 1098, 1099], "the newest, in time order");
        let newest_until = store.history("d", "p", 0, 1050, 2, End::Newest)?;
        assert_eq!(ts(&newest_until), [1049, 1050]);
        assert!(
            store
                .history("d", "nope", 0, i64::MAX, 10, End::Oldest)?
                .is_empty()
        );
        let latest = store.latest_all()?;
        assert!(latest.contains(&(
            "d".into(),
            "p".into(),
            Stamped {
                ts: 1099,
                value: Value::Int(99)
            }
        )));
        let trimmed = store.trim(1050, u64::MAX)?;
        assert_eq!(
            trimmed.by_age, 51,
            "everything before 1050 from p, and q's entry at 5"
        );
        assert_eq!(
            store
                .history("d", "p", 0, i64::MAX, 1000, End::Oldest)?
                .len(),
            50
        );
        let trimmed = store.trim(0, 0)?;
        assert!(trimmed.by_size > 0);
        Ok(())
    }

    #[test]
    fn a_retention_pass_in_slices_reaches_every_series() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Io(e.to_string()))?;
        let store = SledStore::open(dir.path())?;
        let series = 2 * TRIM_SLICE as i64 + 5;
        let names: Vec<String> = (0..series).map(|i| format!("p{i}")).collect();
        for ts in [10, 2000] {
            let changes: Vec<Change> = names
                .iter()
                .map(|p| change("d", p, ts, Value::Int(ts)))
                .collect();
            store.commit(&changes)?;
        }
        let trimmed = store.trim(1000, u64::MAX)?;
        assert_eq!(trimmed.by_age, series as u64, "one old point of each");
        let last = names.last().map_or("", String::as_str);
        let kept = store.history("d", last, 0, i64::MAX, 10, End::Oldest)?;
        assert_eq!(kept.iter().map(|s| s.ts).collect::<Vec<_>>(), [2000]);
        let trimmed = store.trim(0, 0)?;
        assert_eq!(trimmed.by_size, series as u64, "the other point of each");
        assert!(
            store
                .history("d", last, 0, i64::MAX, 10, End::Oldest)?
                .is_empty()
        );
        Ok(())
    }

    #[test]
    fn a_log_collected_in_slices_keeps_only_the_records_a_head_needs() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Io(e.to_string()))?;
        let store = SledStore::open(dir.path())?;
        // One series, so heads are cut every CUT_POINTS points as they come;
        // three slices' worth of records and a few more.
        let points = (3 * COLLECT_SLICE + 3) * RECORD_POINTS;
        let mut ts = 0i64;
        for _ in 0..points.div_ceil(RECORD_POINTS * 512) {
            let changes: Vec<Change> = (0..RECORD_POINTS * 512)
                .map(|_| {
                    ts += 1;
                    change("d", "p", ts, Value::Int(ts))
                })
                .collect();
            store.commit(&changes)?;
        }
        let committed = ts as usize;
        let records = store.measure()?.records as usize;
        assert_eq!(records, committed / RECORD_POINTS);
        store.trim(i64::MIN, u64::MAX)?;
        let waiting = committed % CUT_POINTS as usize;
        assert_eq!(
            store.measure()?.records as usize,
            records - (committed - waiting) / RECORD_POINTS,
            "only the records of the {waiting} points in the head are left"
        );
        let all = store.history("d", "p", i64::MIN, i64::MAX, usize::MAX, End::Oldest)?;
        assert_eq!(all.len(), committed, "every point is still in history");
        Ok(())
    }

    #[test]
    fn logs_append_in_order_read_newest_first_and_trim() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Io(e.to_string()))?;
        let store = SledStore::open(dir.path())?;
        let entries: Vec<(Micros, Vec<u8>)> = (0..10)
            .map(|i| (100 + i, format!("e{i}").into_bytes()))
            .collect();
        let seqs = store.append(Log::Events, &entries)?;
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        store.append(Log::Audit, &[(5, b"a".to_vec())])?;
        let newest = store.recent(Log::Events, u64::MAX, 3, &|_| true)?;
        let bodies: Vec<&[u8]> = newest.iter().map(|e| e.body.as_slice()).collect();
        assert_eq!(bodies, [b"e9", b"e8", b"e7"]);
        assert_eq!(newest[0].ts, 109);
        let page = store.recent(Log::Events, newest[2].seq, 2, &|_| true)?;
        assert_eq!(page[0].body, b"e6");
        let odd = store.recent(Log::Events, u64::MAX, 100, &|e| e.ts % 2 == 1)?;
        assert_eq!(odd.len(), 5);
        assert_eq!(store.trim_log(Log::Events, 103, 100)?, 3, "by age");
        assert_eq!(store.trim_log(Log::Events, 0, 4)?, 3, "by count");
        let left = store.recent(Log::Events, u64::MAX, 100, &|_| true)?;
        assert_eq!(left.len(), 4);
        assert_eq!(left[3].body, b"e6");
        assert_eq!(store.recent(Log::Audit, u64::MAX, 9, &|_| true)?.len(), 1);
        Ok(())
    }

    #[test]
    fn with_a_cloud_every_committed_change_waits_in_the_outbox() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Io(e.to_string()))?;
        let plain = SledStore::open(&dir.path().join("a"))?;
        plain.commit(&[change("d", "p", 1, Value::Int(1))])?;
        assert_eq!(plain.outbox(), None, "no [cloud], no outbox");
        let store = SledStore::open_with(&dir.path().join("b"), 1 << 20, Backlogs::cloud(1 << 20))?;
        store.commit(&[
            change("d", "p", 1_000, Value::Int(1)),
            change("d", "q", 1_000, Value::Bool(true)),
        ])?;
        store.commit(&[change("d", "p", 2_000, Value::Int(2))])?;
        let state = store.outbox().expect("outbox");
        assert_eq!((state.backlog, state.dropped), (3, 0));
        assert!(state.bytes > 0);
        // A budget of one record keeps the newest and counts the rest.
        let tight = SledStore::open_with(&dir.path().join("c"), 1 << 20, Backlogs::cloud(20))?;
        for i in 0..5 {
            tight.commit(&[change("d", "p", i, Value::Int(i))])?;
        }
        let state = tight.outbox().expect("outbox");
        assert_eq!((state.backlog, state.dropped), (1, 4));
        use ferrite_sync::outbox::OutboxAccess;
        let left = OutboxAccess::read(&tight, 0, 10).map_err(io)?;
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0, 5, "the newest stays");
        // The newest record stays even when it alone is over the budget.
        let one = SledStore::open_with(&dir.path().join("d"), 1 << 20, Backlogs::cloud(10))?;
        one.commit(
            &(0..5)
                .map(|i| change("d", "p", i, Value::Int(i)))
                .collect::<Vec<_>>(),
        )?;
        assert_eq!(one.outbox().map(|s| (s.backlog, s.dropped)), Some((5, 0)));
        Ok(())
    }

    #[test]
    fn rule_states_are_saved_and_forgotten() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Io(e.to_string()))?;
        let store = SledStore::open(dir.path())?;
        store.save_rule_states(&[
            ("a".into(), Some(b"1".to_vec())),
            ("b".into(), Some(b"2".to_vec())),
        ])?;
        store.save_rule_states(&[("a".into(), None), ("b".into(), Some(b"3".to_vec()))])?;
        assert_eq!(store.rule_states()?, vec![("b".to_string(), b"3".to_vec())]);
        Ok(())
    }

    fn all(store: &SledStore, property: &str) -> Result<Vec<(Micros, Value)>, StoreError> {
        Ok(store
            .history("d", property, i64::MIN, i64::MAX, usize::MAX, End::Oldest)?
            .into_iter()
            .map(|s| (s.ts, s.value))
            .collect())
    }

    #[test]
    fn retention_reads_blocks_only_when_one_may_be_old_enough() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Io(e.to_string()))?;
        let store = SledStore::open(dir.path())?;
        let points = |property: &str, times: std::ops::Range<i64>| -> Vec<Change> {
            times
                .map(|ts| change("d", property, ts, Value::Int(ts)))
                .collect()
        };
        // 120 points: the head is cut into a block from 1000 to 1119.
        store.commit(&points("a", 1000..1120))?;
        let blocks = || -> Result<Micros, StoreError> {
            let guard = store.read();
            Ok(guard.as_ref().ok_or_else(reopening)?.blocks.oldest())
        };
        assert_eq!(blocks()?, 1000, "the index knows the block written");
        assert_eq!(store.trim(500, u64::MAX)?.by_age, 0);
        assert_eq!(blocks()?, 1000);
        assert_eq!(
            store.trim(900, u64::MAX)?.by_age,
            0,
            "no walk: nothing before 1000"
        );
        // A device whose clock went back: its head is cut in the pass and
        // its block, older than `before`, goes in the same pass.
        store.commit(&points("b", 10..11))?;
        assert_eq!(store.trim(900, u64::MAX)?.by_age, 1);
        assert_eq!(all(&store, "b")?, vec![]);
        // The bound is 10 now (a lower bound): the next pass walks, trims,
        // and raises it to what is left.
        assert_eq!(store.trim(1050, u64::MAX)?.by_age, 50);
        assert_eq!(all(&store, "a")?.first(), Some(&(1050, Value::Int(1050))));
        assert_eq!(blocks()?, 1050);
        assert_eq!(store.trim(1040, u64::MAX)?.by_age, 0);
        assert_eq!(all(&store, "a")?.len(), 70);
        // A reopen finds the same: the trimmed block's older part and "b"'s
        // block stay gone, though their frames are still in the files.
        drop(store);
        let store = SledStore::open(dir.path())?;
        assert_eq!(all(&store, "a")?.len(), 70);
        assert_eq!(all(&store, "b")?, vec![]);
        Ok(())
    }

    #[test]
    fn history_within_the_slack_waits_for_a_later_pass() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Io(e.to_string()))?;
        let store = SledStore::open(dir.path())?;
        let points: Vec<Change> = (1000..1120)
            .map(|ts| change("d", "a", ts, Value::Int(ts)))
            .collect();
        // 120 points: one block from 1000 to 1119, found by a first walk.
        store.commit(&points)?;
        assert_eq!(store.trim(500, u64::MAX)?, Trimmed::default());
        // 50 points are past the limit, but within the slack: no walk.
        assert_eq!(store.trim_within(1050, 100, u64::MAX)?.by_age, 0);
        assert_eq!(all(&store, "a")?.len(), 120);
        // Past the slack: the walk trims to the limit itself.
        assert_eq!(store.trim_within(1110, 100, u64::MAX)?.by_age, 110);
        assert_eq!(all(&store, "a")?.first(), Some(&(1110, Value::Int(1110))));
        Ok(())
    }

    #[test]
    fn a_pass_merges_up_to_its_budget_and_the_next_goes_on_where_it_stopped()
    -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Io(e.to_string()))?;
        let mut store = SledStore::open(dir.path())?;
        // Series of three small blocks each (20 points a block): six turns
        // of MERGE_SLICE blocks read.
        const SERIES: u64 = 2048;
        store.with_writable(|inner| {
            for id in 0..SERIES as u32 {
                for b in 0..3i64 {
                    let points = (b * 20..b * 20 + 20).map(|i| (i, Value::Int(i))).collect();
                    inner.blocks.write(id, points, 0)?;
                }
            }
            Ok(())
        })?;
        let layout = store.measure()?;
        assert_eq!(layout.blocks, 3 * SERIES);
        // A quarter of the bytes: the pass stops after the turn that
        // reaches it (each merged series goes from three blocks to one).
        store.merge_pass_bytes = layout.block_bytes / 4;
        store.sync_blocks()?;
        let merged = |store: &SledStore| -> Result<u64, StoreError> {
            Ok((3 * SERIES - store.measure()?.blocks) / 2)
        };
        let first = merged(&store)?;
        assert!(
            (SERIES / 4..SERIES / 2).contains(&first),
            "{first} series merged"
        );
        let from = store.merge_from.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(u64::from(from), first, "the next pass begins after them");
        // The next pass goes on from there, as far again.
        store.sync_blocks()?;
        assert_eq!(merged(&store)?, 2 * first);
        // Until every series is merged; a pass that reaches the last series
        // leaves the next to begin at the first.
        for _ in 0..2 {
            store.sync_blocks()?;
        }
        assert_eq!(merged(&store)?, SERIES);
        assert_eq!(
            store.merge_from.load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        assert_eq!(store.measure()?.block_points, 60 * SERIES);
        Ok(())
    }

    #[test]
    fn a_pass_compacts_up_to_its_budget_and_the_next_goes_on_with_the_segments_left()
    -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Io(e.to_string()))?;
        let mut store = SledStore::open(dir.path())?;
        // Segments of 4 KiB, about sixty blocks of 20 points each. Every
        // series gets a block; then seven series in eight get it again (the
        // new block replaces the old, in new segments), so the first
        // segments keep an eighth of their blocks live: each is sparse.
        const SERIES: u32 = 2048;
        let points = || (0..20i64).map(|i| (i, Value::Int(i))).collect::<Vec<_>>();
        store.with_writable(|inner| {
            inner.blocks.set_segment_bytes(4096);
            for id in 0..SERIES {
                inner.blocks.write(id, points(), 0)?;
            }
            for id in (0..SERIES).filter(|id| id % 8 != 0) {
                inner.blocks.write(id, points(), 0)?;
            }
            Ok(())
        })?;
        let compacted =
            |store: &SledStore| store.with_writable(|inner| Ok(inner.blocks.compacted_bytes()));
        let files = |store: &SledStore| -> Result<u64, StoreError> {
            Ok(store.measure()?.block_file_bytes)
        };
        // The live blocks in sparse segments: an eighth of the series'
        // blocks, every frame the same size.
        let layout = store.measure()?;
        assert_eq!(layout.blocks, u64::from(SERIES));
        let sparse_live = layout.block_bytes / 8;
        store.compact_pass_bytes = sparse_live / 4;
        let files_before = files(&store)?;
        store.sync_blocks()?;
        // The pass stops after the turn that reaches its budget: a turn
        // moves one segment's live blocks, under a quarter of 4 KiB.
        let first = compacted(&store)?;
        assert!(
            (sparse_live / 4..sparse_live / 4 + 1024).contains(&first),
            "{first} bytes moved, budget {}",
            sparse_live / 4
        );
        let files_after_one = files(&store)?;
        assert!(
            files_after_one < files_before,
            "{files_before} → {files_after_one}"
        );
        // The next passes go on with the segments left, until none is.
        for _ in 0..8 {
            store.sync_blocks()?;
        }
        assert!(
            !store.with_writable(|inner| inner.blocks.compact_some(usize::MAX))?,
            "a segment is still sparse"
        );
        // What was live in them, but for the blocks that shared a segment
        // with the first rewrites (not sparse).
        let all_moved = compacted(&store)?;
        assert!(
            (sparse_live - 1024..=sparse_live).contains(&all_moved),
            "{all_moved} bytes moved of {sparse_live} live in sparse segments"
        );
        let files_at_the_end = files(&store)?;
        assert!(files_at_the_end < files_after_one);
        // Every series keeps its block, as it was.
        let layout = store.measure()?;
        assert_eq!(layout.blocks, u64::from(SERIES));
        assert_eq!(layout.block_points, 20 * u64::from(SERIES));
        store.with_writable(|inner| {
            for id in [0, 1, 8, SERIES - 8, SERIES - 1] {
                let read =
                    inner
                        .blocks
                        .range(id, Micros::MIN, Micros::MAX, usize::MAX, End::Oldest)?;
                assert_eq!(read, points(), "series {id}");
            }
            Ok(())
        })?;
        Ok(())
    }

    #[test]
    fn over_its_size_history_loses_the_blocks_that_end_first_and_no_more_pass_after_pass()
    -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Io(e.to_string()))?;
        let store = SledStore::open(dir.path())?;
        // 30 series, a point every 10 s for an hour each, the n-th starting
        // n minutes after the first: 3 blocks of 120 points a series, the
        // 90 blocks ending in 90 different minutes.
        const SECOND: Micros = 1_000_000;
        let start = 1_700_000_000 * SECOND;
        let series: Vec<String> = (0..30).map(|n| format!("s{n}")).collect();
        for k in 0..(29 * 6 + 360i64) {
            let changes: Vec<Change> = (0..30i64)
                .filter(|n| (n * 6..n * 6 + 360).contains(&k))
                .map(|n| {
                    let ts = start + k * 10 * SECOND;
                    change("d", &series[n as usize], ts, Value::Float(k as f64 * 0.37))
                })
                .collect();
            store.commit(&changes)?;
        }
        let held = |store: &SledStore| -> Result<u64, StoreError> {
            let layout = store.measure()?;
            Ok(layout.block_bytes + layout.record_bytes)
        };
        let firsts = |store: &SledStore| -> Result<Vec<Micros>, StoreError> {
            series
                .iter()
                .map(|s| Ok(all(store, s)?.first().map_or(Micros::MAX, |p| p.0)))
                .collect()
        };
        assert_eq!(store.trim(Micros::MIN, u64::MAX)?, Trimmed::default());
        let full = held(&store)?;
        let budget = full / 2;
        let trimmed = store.trim(Micros::MIN, budget)?;
        let left = held(&store)?;
        assert!(left <= budget, "{left} bytes left, over {budget}");
        assert_eq!(store.history_bytes(), Some(left), "the ledger agrees");
        // Only the blocks that end first went: about half of the bytes, not
        // everything (a minute's blocks are 1/90 of them, or 2/90).
        assert!(left > budget * 8 / 10, "{left} bytes left of {full}");
        assert!(trimmed.by_size > 0 && trimmed.by_age == 0, "{trimmed:?}");
        // Whole blocks, the ones that end first: each series keeps
        // everything from one of its blocks' starts on, and every block that
        // went ended before every block that stayed.
        let kept = firsts(&store)?;
        let (mut went, mut stayed) = (Micros::MIN, Micros::MAX);
        for (n, first) in (0i64..).zip(&kept) {
            let from = if *first == Micros::MAX {
                3
            } else {
                let offset = (first - start) / (10 * SECOND) - n * 6;
                assert!([0, 120, 240].contains(&offset), "series {n}: {offset}");
                offset / 120
            };
            let end = |block: i64| start + (n * 6 + block * 120 + 119) * 10 * SECOND;
            if from > 0 {
                went = went.max(end(from - 1));
            }
            if from < 3 {
                stayed = stayed.min(end(from));
                assert_eq!(
                    all(&store, &series[n as usize])?.len() as i64,
                    360 - from * 120
                );
            }
        }
        assert!(
            went < stayed,
            "a block ending at {went} went, one at {stayed} stayed"
        );
        // The next passes find the history within its size, even though
        // sled's file does not shrink; so does the first pass after a reopen,
        // which counts the blocks again.
        assert_eq!(store.trim(Micros::MIN, budget)?, Trimmed::default());
        drop(store);
        let store = reopened(dir.path())?;
        assert_eq!(store.trim(Micros::MIN, budget)?, Trimmed::default());
        assert_eq!(firsts(&store)?, kept);
        Ok(())
    }

    #[test]
    fn a_commit_finds_each_change_its_own_series_across_devices_and_new_names()
    -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Io(e.to_string()))?;
        let store = SledStore::open(dir.path())?;
        let shared: Arc<str> = "x".into();
        let named = |device: &str, ts: Micros, value: i64| Change {
            device: device.into(),
            property: shared.clone(),
            at: Stamped {
                ts,
                value: Value::Int(value),
            },
        };
        store.commit(&[named("a", 1, 1), named("b", 1, 2)])?;
        // Runs of one device, a device after another with the same
        // property name, a new property and a new device in the middle.
        store.commit(&[
            named("a", 2, 10),
            change("a", "y", 2, Value::Int(11)),
            named("a", 3, 12),
            named("b", 2, 20),
            named("c", 2, 30),
            change("c", "y", 2, Value::Int(31)),
            named("b", 3, 21),
        ])?;
        let history = |device: &str, property: &str| -> Result<Vec<(Micros, Value)>, StoreError> {
            Ok(store
                .history(
                    device,
                    property,
                    i64::MIN,
                    i64::MAX,
                    usize::MAX,
                    End::Oldest,
                )?
                .into_iter()
                .map(|s| (s.ts, s.value))
                .collect())
        };
        let int = |points: &[(Micros, i64)]| -> Vec<(Micros, Value)> {
            points.iter().map(|(ts, v)| (*ts, Value::Int(*v))).collect()
        };
        assert_eq!(history("a", "x")?, int(&[(1, 1), (2, 10), (3, 12)]));
        assert_eq!(history("a", "y")?, int(&[(2, 11)]));
        assert_eq!(history("b", "x")?, int(&[(1, 2), (2, 20), (3, 21)]));
        assert_eq!(history("c", "x")?, int(&[(2, 30)]));
        assert_eq!(history("c", "y")?, int(&[(2, 31)]));
        assert_eq!(store.measure()?.series, 5);
        Ok(())
    }

    #[test]
    fn a_commit_is_one_record_and_history_reads_the_same_across_cuts_and_reopens()
    -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Io(e.to_string()))?;
        let mut expected = Vec::new();
        {
            let store = SledStore::open(dir.path())?;
            // 3 commits of 100 points per series: heads are cut at 120.
            for commit in 0..3i64 {
                let batch: Vec<Change> = (0..100)
                    .flat_map(|i| {
                        let ts = (commit * 100 + i) * 1_000_000;
                        [
                            change("d", "p", ts, Value::Float(20.0 + i as f64 / 10.0)),
                            change("d", "q", ts, Value::Int(i)),
                        ]
                    })
                    .collect();
                expected.extend(
                    batch
                        .iter()
                        .filter(|c| &*c.property == "p")
                        .map(|c| (c.at.ts, c.at.value.clone())),
                );
                store.commit(&batch)?;
            }
            // A clock set back: into a block already cut, and a repeated time.
            store.commit(&[
                change("d", "p", 5_500_000, Value::Float(-1.0)),
                change("d", "p", 7_000_000, Value::Float(-2.0)),
            ])?;
            expected.push((5_500_000, Value::Float(-1.0)));
            expected.retain(|p| p.0 != 7_000_000);
            expected.push((7_000_000, Value::Float(-2.0)));
            expected.sort_by_key(|p| p.0);
            let layout = store.measure()?;
            assert_eq!(
                layout.records,
                3 * 200usize.div_ceil(RECORD_POINTS) as u64 + 1,
                "records of at most RECORD_POINTS changes"
            );
            assert_eq!(layout.block_points + layout.head_points, 602);
            assert!(layout.blocks >= 4, "{layout:?}");
            assert_eq!(all(&store, "p")?, expected);
            let newest = store.history("d", "p", 0, 250_000_000, 3, End::Newest)?;
            let ts: Vec<Micros> = newest.iter().map(|s| s.ts).collect();
            assert_eq!(ts, [248_000_000, 249_000_000, 250_000_000]);
            let oldest = store.history("d", "p", 5_000_000, i64::MAX, 2, End::Oldest)?;
            assert_eq!(oldest[1].ts, 5_500_000);
        }
        // The heads come back from the log.
        let store = reopened(dir.path())?;
        assert_eq!(all(&store, "p")?, expected);
        assert_eq!(all(&store, "q")?.len(), 300);
        let latest = store.latest_all()?;
        assert!(latest.contains(&(
            "d".into(),
            "q".into(),
            Stamped {
                ts: 299_000_000,
                value: Value::Int(99)
            }
        )));
        Ok(())
    }

    /// sled may refuse a reopen straight after a drop (its file lock).
    fn reopened(dir: &Path) -> Result<SledStore, StoreError> {
        reopened_with(dir, Backlogs::default())
    }

    /// Reopens past sled's file lock, which a drop releases late.
    fn reopened_with(dir: &Path, budgets: Backlogs) -> Result<SledStore, StoreError> {
        let cache = ferrite_models::config::StoreSection::default().cache_mib * 1024 * 1024;
        for _ in 0..50 {
            match SledStore::open_with(dir, cache, budgets) {
                Ok(store) => return Ok(store),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        }
        SledStore::open_with(dir, cache, budgets)
    }

    #[test]
    fn a_record_stays_until_every_reader_has_it_and_each_cursor_survives_a_reopen()
    -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Io(e.to_string()))?;
        let both = Backlogs {
            cloud: Some(1 << 30),
            north: Some(1 << 30),
        };
        let store = SledStore::open_with(dir.path(), 1 << 20, both)?;
        for i in 0..CUT_POINTS as i64 {
            store.commit(&[change("d", "p", i, Value::Int(i))])?;
        }
        store.acknowledge_for(Reader::Cloud, 120).map_err(io)?;
        store.trim(i64::MIN, u64::MAX)?;
        assert_eq!(store.measure()?.records, 120, "the north has none yet");
        assert_eq!(store.backlog(Reader::Cloud).map(|s| s.backlog), Some(0));
        assert_eq!(store.backlog(Reader::North).map(|s| s.backlog), Some(120));
        store.acknowledge_for(Reader::North, 100).map_err(io)?;
        let owed = store.owed(Reader::North, 0, 1000).map_err(io)?;
        assert_eq!(owed.first().map(|o| o.0), Some(101), "from its own cursor");
        assert_eq!(owed.len(), 20);
        store.trim(i64::MIN, u64::MAX)?;
        assert_eq!(store.measure()?.records, 20);
        store.commit(&[change("d", "q", 1, Value::Int(1))])?;
        drop(store);
        let store = reopened_with(dir.path(), both)?;
        assert_eq!(store.acknowledged_by(Reader::North).map_err(io)?, 100);
        assert_eq!(store.acknowledged_by(Reader::Cloud).map_err(io)?, 120);
        let owed = store.owed(Reader::North, 0, 1000).map_err(io)?;
        assert_eq!(owed.len(), 21, "after a restart too");
        assert_eq!(store.owed(Reader::Cloud, 0, 1000).map_err(io)?.len(), 1);
        drop(store);
        let cloud_only = reopened_with(dir.path(), Backlogs::cloud(1 << 30))?;
        assert!(
            cloud_only.owed(Reader::North, 0, 1).is_err(),
            "without [north], no northbound backlog"
        );
        Ok(())
    }

    #[test]
    fn records_go_once_cut_and_acknowledged() -> Result<(), StoreError> {
        use ferrite_sync::outbox::OutboxAccess;
        let dir = tempfile::tempdir().map_err(|e| StoreError::Io(e.to_string()))?;
        let store = SledStore::open_with(dir.path(), 1 << 20, Backlogs::cloud(1 << 30))?;
        for i in 0..CUT_POINTS as i64 {
            store.commit(&[change("d", "p", i, Value::Int(i))])?;
        }
        store.commit(&[change("d", "q", 1, Value::Int(1))])?;
        store.trim(i64::MIN, u64::MAX)?;
        assert_eq!(store.measure()?.records, 121, "nothing acknowledged yet");
        OutboxAccess::acknowledge(&store, 121).map_err(io)?;
        store.trim(i64::MIN, u64::MAX)?;
        assert_eq!(
            store.measure()?.records,
            1,
            "the record of q's point waits in q's head"
        );
        assert_eq!(store.outbox().map(|s| s.backlog), Some(0));
        let sent = OutboxAccess::read(&store, 0, 10).map_err(io)?;
        assert!(sent.is_empty());
        store.commit(&[change("d", "p", 500, Value::Int(5))])?;
        let sent = OutboxAccess::read(&store, 0, 10).map_err(io)?;
        assert_eq!(sent.len(), 1);
        assert_eq!((sent[0].0, sent[0].1.ts_ms), (122, 0));
        Ok(())
    }

    #[test]
    fn a_data_dir_of_the_old_layout_keeps_its_history_and_its_unsent_outbox()
    -> Result<(), StoreError> {
        use ferrite_sync::outbox::OutboxAccess;
        let dir = tempfile::tempdir().map_err(|e| StoreError::Io(e.to_string()))?;
        {
            // What the store before the commit log wrote.
            let db = sled::Config::new().path(dir.path().join("store")).open()?;
            db.open_tree("series")?
                .insert(b"d\0p", &0u32.to_be_bytes())?;
            let history = db.open_tree("history")?;
            for i in 0..300i64 {
                let mut value = Vec::new();
                Value::Float(i as f64).encode_into(&mut value);
                history.insert(migrate::old_history_key(0, i * 1000), value)?;
            }
            let outbox = ferrite_sync::outbox::Outbox::open(&db, u64::MAX).map_err(io)?;
            let synced: Vec<ferrite_sync::delta::Change> = (0..300i64)
                .map(|i| ferrite_sync::delta::Change {
                    device: "d".into(),
                    property: "p".into(),
                    ts_ms: i,
                    value: Value::Float(i as f64),
                })
                .collect();
            outbox.append(&synced).map_err(io)?;
            outbox.acknowledge(100).map_err(io)?;
            db.flush()?;
        }
        let store = SledStore::open_with(dir.path(), 1 << 20, Backlogs::cloud(1 << 30))?;
        let history = all(&store, "p")?;
        assert_eq!(history.len(), 300);
        assert_eq!(history[299], (299_000, Value::Float(299.0)));
        assert_eq!(OutboxAccess::acknowledged(&store).map_err(io)?, 100);
        let waiting = OutboxAccess::read(&store, 0, 1000).map_err(io)?;
        assert_eq!(waiting.len(), 200, "the unacknowledged");
        assert_eq!(waiting[0].0, 101);
        assert_eq!(waiting[199].1.ts_ms, 299);
        // New changes carry on the numbering; history does not double.
        store.commit(&[change("d", "p", 300_000, Value::Float(300.0))])?;
        assert_eq!(OutboxAccess::last(&store).map_err(io)?, 301);
        assert_eq!(all(&store, "p")?.len(), 301);
        assert!(!migrate::needed(&store.read().as_ref().expect("open").db));
        Ok(())
    }

    #[test]
    fn a_damaged_record_is_skipped_and_a_torn_append_cut_and_the_rest_opens()
    -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Io(e.to_string()))?;
        {
            let store = SledStore::open(dir.path())?;
            store.commit(&[change("d", "p", 1, Value::Int(1))])?;
            store.commit(&[change("d", "p", 2, Value::Int(2))])?;
            let mut guard = store.write();
            let inner = guard.as_mut().ok_or_else(reopening)?;
            // A frame that reads but holds no record this gateway knows.
            inner.log.append(&[Frame::Record {
                first: 3,
                bytes: &[1u8, 0, 9, 9],
            }])?;
        }
        let store = reopened(dir.path())?;
        assert_eq!(all(&store, "p")?.len(), 2, "both records before it");
        store.commit(&[change("d", "p", 3, Value::Int(3))])?;
        assert_eq!(all(&store, "p")?.len(), 3);
        drop(store);
        // Half a commit at the end (a crash mid-append): cut at the open.
        let segment = dir.path().join("commitlog").join("00000001.log");
        let whole = std::fs::metadata(&segment)
            .map_err(|e| StoreError::Io(e.to_string()))?
            .len();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&segment)
            .map_err(|e| StoreError::Io(e.to_string()))?;
        std::io::Write::write_all(&mut file, &[40, 0, 0, 0, 1, 2, 3, 4, 0x81, 0, 0])
            .map_err(|e| StoreError::Io(e.to_string()))?;
        drop(file);
        let store = reopened(dir.path())?;
        let cut = std::fs::metadata(&segment)
            .map_err(|e| StoreError::Io(e.to_string()))?
            .len();
        assert_eq!(cut, whole, "the torn append is cut off");
        store.commit(&[change("d", "p", 4, Value::Int(4))])?;
        drop(store);
        let store = reopened(dir.path())?;
        let values: Vec<Value> = all(&store, "p")?.into_iter().map(|(_, v)| v).collect();
        assert_eq!(
            values,
            [1, 2, 3, 4].map(Value::Int),
            "every whole commit, the one after the cut too"
        );
        Ok(())
    }

    #[test]
    fn what_sled_had_not_flushed_of_a_commit_comes_back_from_the_commit_log()
    -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Io(e.to_string()))?;
        {
            let store = SledStore::open_with(dir.path(), 1 << 20, Backlogs::cloud(1 << 30))?;
            store.commit(&[change("d", "p", 1, Value::Int(1))])?;
            store.commit_with_audit(
                &[
                    change("d", "p", 2, Value::Int(2)),
                    change("e", "q", 2, Value::Int(3)),
                ],
                &[(2, b"{\"write\":1}".to_vec())],
            )?;
            // As if the process had died before sled's next flush: sled
            // has neither the new name nor the audit entry nor the next
            // sequence; the commit log has all three.
            let guard = store.read();
            let inner = guard.as_ref().ok_or_else(reopening)?;
            inner.names_tree.clear()?;
            inner.audit.clear()?;
            inner.meta.remove(NEXT)?;
            inner.db.flush()?;
        }
        let store = reopened_with(dir.path(), Backlogs::cloud(1 << 30))?;
        assert_eq!(all(&store, "p")?.len(), 2);
        let q = store.history("e", "q", i64::MIN, i64::MAX, 10, End::Oldest)?;
        assert_eq!(q.len(), 1, "its name is back");
        let audit = store.recent(Log::Audit, u64::MAX, 10, &|_| true)?;
        assert_eq!(audit.len(), 1, "the audit entry is back");
        let owed = store.owed(Reader::Cloud, 0, 10).map_err(io)?;
        assert_eq!(owed.len(), 3);
        assert_eq!((owed[2].0, owed[2].1.device.as_str()), (3, "e"));
        store.commit(&[change("d", "p", 3, Value::Int(4))])?;
        assert_eq!(store.last_seq(), 4, "numbering goes on");
        // Once a pass has flushed sled and the log has let the records go,
        // a reopen needs nothing from it.
        store.acknowledge_for(Reader::Cloud, 4).map_err(io)?;
        store.trim(Micros::MIN, u64::MAX)?;
        drop(store);
        let store = reopened_with(dir.path(), Backlogs::cloud(1 << 30))?;
        assert_eq!(all(&store, "p")?.len(), 3);
        assert_eq!(store.recent(Log::Audit, u64::MAX, 10, &|_| true)?.len(), 1);
        Ok(())
    }

    /// Set in the child processes of
    /// [`audit_entries_keep_their_own_numbers_across_crashes`]: the data dir
    /// to write to before dying.
    const CRASH_CHILD_DIR: &str = "FERRITE_TEST_CRASH_CHILD_DIR";
    /// Which of those children this is.
    const CRASH_CHILD_RUN: &str = "FERRITE_TEST_CRASH_CHILD_RUN";
    /// Audit entries each child commits.
    const CRASH_CHILD_ENTRIES: i64 = 5;

    /// Three processes in turn commit writes with their audit entries and
    /// die with `abort` (no flush, no drop: as `kill -9`), then a fourth
    /// opens the store: every entry is there, once. With sled's
    /// `generate_id` for numbers, the third run got the second's numbers
    /// again (sled had not made its counter durable) and the reopen kept
    /// the second run's entries under them: the crash campaign's lost
    /// writes.
    #[test]
    fn audit_entries_keep_their_own_numbers_across_crashes() -> Result<(), StoreError> {
        if let Ok(dir) = std::env::var(CRASH_CHILD_DIR) {
            let run: i64 = std::env::var(CRASH_CHILD_RUN)
                .ok()
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            let store = SledStore::open(Path::new(&dir))?;
            for i in 0..CRASH_CHILD_ENTRIES {
                let n = run * 100 + i;
                store.commit_with_audit(
                    &[change("d", "setpoint", n, Value::Int(n))],
                    &[(n, format!("{{\"write\":{n}}}").into_bytes())],
                )?;
            }
            std::process::abort();
        }
        let dir = tempfile::tempdir().map_err(|e| StoreError::Io(e.to_string()))?;
        let me = std::env::current_exe().map_err(|e| StoreError::Io(e.to_string()))?;
        for run in 0..3 {
            let status = std::process::Command::new(&me)
                .args([
                    "store::sled_store::tests::audit_entries_keep_their_own_numbers_across_crashes",
                    "--exact",
                    "--test-threads=1",
                ])
                .env(CRASH_CHILD_DIR, dir.path())
                .env(CRASH_CHILD_RUN, run.to_string())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .map_err(|e| StoreError::Io(e.to_string()))?;
            assert!(
                !status.success(),
                "run {run}: the child ran to the end instead of dying ({status})"
            );
        }
        let store = reopened(dir.path())?;
        let audit = store.recent(Log::Audit, u64::MAX, 100, &|_| true)?;
        let mut bodies: Vec<String> = audit
            .iter()
            .map(|e| String::from_utf8_lossy(&e.body).into_owned())
            .collect();
        bodies.sort();
        let mut wanted: Vec<String> = (0..3)
            .flat_map(|run| (0..CRASH_CHILD_ENTRIES).map(move |i| run * 100 + i))
            .map(|n| format!("{{\"write\":{n}}}"))
            .collect();
        wanted.sort();
        assert_eq!(bodies, wanted, "every run's audit entries, once each");
        let history = store.history("d", "setpoint", i64::MIN, i64::MAX, 100, End::Oldest)?;
        assert_eq!(history.len(), 15, "and every run's changes");
        Ok(())
    }

    #[test]
    fn a_block_lost_before_its_sync_comes_back_from_the_log() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Io(e.to_string()))?;
        let points: Vec<Change> = (0..130)
            .map(|ts| change("d", "a", ts, Value::Int(ts)))
            .collect();
        {
            let store = SledStore::open(dir.path())?;
            // 120 points cut into a block (appended, not synced), 10 left
            // in the head.
            store.commit(&points)?;
            assert_eq!(store.measure()?.blocks, 1);
            // A journal append flushes sled: nothing in it may say that the
            // block is on disk yet.
            store.append(Log::Audit, &[(1, b"{}".to_vec())])?;
        }
        // The append lost, as a power cut before the sync would lose it.
        let segment = dir.path().join("blocks").join("00000001.blk");
        std::fs::File::options()
            .write(true)
            .open(&segment)
            .and_then(|file| file.set_len(0))
            .map_err(|e| StoreError::Io(e.to_string()))?;
        let store = SledStore::open(dir.path())?;
        let expected: Vec<(Micros, Value)> =
            points.into_iter().map(|c| (c.at.ts, c.at.value)).collect();
        assert_eq!(all(&store, "a")?, expected);
        Ok(())
    }

    #[test]
    fn a_data_dir_with_the_log_in_sled_moves_it_to_files_once() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Io(e.to_string()))?;
        {
            let store = SledStore::open_with(dir.path(), 1 << 20, Backlogs::cloud(1 << 30))?;
            for i in 0..50 {
                store.commit(&[change("d", "p", i, Value::Int(i))])?;
            }
            store.acknowledge_for(Reader::Cloud, 20).map_err(io)?;
            // The layout before the commit log had files: its records in
            // sled's `log` tree, under their first sequence.
            let mut guard = store.write();
            let inner = guard.as_mut().ok_or_else(reopening)?;
            let old = inner.db.open_tree("log")?;
            assert_eq!(inner.records.len(), 50);
            for (first, record) in &inner.records {
                old.insert(first.to_be_bytes(), inner.log.read(record.at)?)?;
            }
            inner.db.flush()?;
            *guard = None;
        }
        // Every record in sled, and the first 5 in the file: a crash half
        // way through the move.
        let log_dir = dir.path().join("commitlog");
        let mut moved = Vec::new();
        drop(CommitLog::open(&log_dir, |frame| {
            if let Replayed::Record { first, bytes, .. } = frame
                && first <= 5
            {
                moved.push((first, bytes));
            }
            Ok(())
        })?);
        std::fs::remove_dir_all(&log_dir).map_err(|e| StoreError::Io(e.to_string()))?;
        let mut files = CommitLog::open(&log_dir, |_| Ok(()))?;
        for (first, bytes) in &moved {
            files.append(&[Frame::Record {
                first: *first,
                bytes,
            }])?;
        }
        drop(files);
        let store = reopened_with(dir.path(), Backlogs::cloud(1 << 30))?;
        assert_eq!(all(&store, "p")?.len(), 50, "45 moved, 5 there already");
        let owed = store.owed(Reader::Cloud, 0, 100).map_err(io)?;
        assert_eq!(owed.first().map(|o| o.0), Some(21));
        assert_eq!(owed.len(), 30, "each once");
        drop(store);
        let store = reopened_with(dir.path(), Backlogs::cloud(1 << 30))?;
        assert_eq!(all(&store, "p")?.len(), 50, "moved once");
        assert_eq!(store.owed(Reader::Cloud, 0, 100).map_err(io)?.len(), 30);
        let guard = store.read();
        let inner = guard.as_ref().ok_or_else(reopening)?;
        assert!(!inner.db.tree_names().iter().any(|n| n.as_ref() == b"log"));
        Ok(())
    }

    #[test]
    fn names_fill_pages_and_come_back_after_a_reopen() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Io(e.to_string()))?;
        {
            let store = SledStore::open(dir.path())?;
            for part in 0..3 {
                let batch: Vec<Change> = (part * 200..(part + 1) * 200)
                    .map(|i| change("d", &format!("p{i}"), 1, Value::Int(i)))
                    .collect();
                store.commit(&batch)?;
            }
            assert_eq!(store.measure()?.series, 600);
        }
        let store = reopened(dir.path())?;
        assert_eq!(store.measure()?.series, 600);
        for i in [0i64, 255, 256, 511, 512, 599] {
            assert_eq!(all(&store, &format!("p{i}"))?, [(1, Value::Int(i))], "p{i}");
        }
        store.commit(&[change("e", "new", 2, Value::Int(7))])?;
        let guard = store.read();
        let inner = guard.as_ref().ok_or_else(reopening)?;
        assert_eq!(inner.names.get("e", "new"), Some(600));
        assert_eq!(inner.names_tree.len(), 3, "pages of 256");
        Ok(())
    }
}
