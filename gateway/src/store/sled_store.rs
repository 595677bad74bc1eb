//! [`Store`] on sled.
//!
//! Trees:
//! - `series`: `device \0 property` → series id (u32, big-endian);
//! - `history`: series id + ts (both BE, so a prefix scan is time-ordered) →
//!   value;
//! - `events`, `audit` (the [`Log`]s): sequence number (BE, from sled's
//!   `generate_id`, which grows across restarts) → ts (BE) + body;
//! - `rule_state`: rule name → its state (JSON);
//! - `config`: version (BE) → an applied configuration (JSON: its files,
//!   hash and source), the newest few;
//! - with `[cloud]`, `outbox` and `outbox_meta` (ferrite-sync's outbox):
//!   every committed change again, until the control plane acknowledges it.
//!
//! Values are one tag byte plus the payload. sled can fail to re-acquire its
//! file lock when a `Db` is reopened right after a drop (sled #1234), so the
//! gateway opens exactly one per process and shares it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use ferrite_models::Value;
use ferrite_sync::outbox::OutboxError;

use super::{Change, End, Entry, Log, Stamped, Store, StoreError, Trimmed};
use crate::time::Micros;

/// The sled-backed store.
///
/// After a failed commit (a full disk, say) sled keeps failing: it remembers
/// the I/O error. So the store then drops its handles and reopens the
/// database on the next write, which recovers everything flushed so far;
/// the writer retries the failed batch, so nothing is lost.
///
/// Part of a failed commit may have reached the disk, and a reopen makes it
/// visible. Whoever reopens (often the journal, before the writer's retry)
/// therefore first finishes that commit, under the same lock: otherwise the
/// uplink could send and trim the half that was there, and the retry, no
/// longer finding it, would put it into the outbox a second time (the fault
/// campaign's "1 doubled").
pub struct SledStore {
    dir: PathBuf,
    cache_bytes: u64,
    /// With `[cloud]`: the outbox's budget in bytes.
    outbox_budget: Option<u64>,
    /// Outbox entries dropped over the budget, since start.
    outbox_dropped: std::sync::atomic::AtomicU64,
    /// The last commit, if it failed (see [`Unfinished`]).
    unfinished: std::sync::Mutex<Unfinished>,
    /// The same for appends to the events and the audit log.
    append_failed: [std::sync::atomic::AtomicBool; 2],
    /// Held for writing from the first insert to the fsync, and for reading
    /// by queries, so that a query never sees what a crash could still take
    /// away. `None` between a failure and the reopen.
    inner: RwLock<Option<Inner>>,
}

/// The open database.
struct Inner {
    db: sled::Db,
    series: sled::Tree,
    history: sled::Tree,
    events: sled::Tree,
    audit: sled::Tree,
    rule_state: sled::Tree,
    /// Applied configuration versions (see `crate::reconcile`).
    config: sled::Tree,
    /// With `[cloud]`: changes waiting for the control plane.
    outbox: Option<ferrite_sync::outbox::Outbox>,
    ids: HashMap<(String, String), u32>,
}

impl SledStore {
    /// Opens (or creates) the store in `dir`, with the config's default cache.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let cache_mib = ferrite_models::config::StoreSection::default().cache_mib;
        Self::open_with_cache(dir, cache_mib * 1024 * 1024)
    }

    /// Opens (or creates) the store in `dir` with a page cache of
    /// `cache_bytes`.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        Self::open_with(dir, cache_bytes, None)
    }

    /// Opens the store; with `outbox_budget`, every committed change is also
    /// appended to the sync outbox (in the same fsync), which keeps at most
    /// that many bytes.
    pub fn open_with(
        dir: &Path,
        cache_bytes: u64,
        outbox_budget: Option<u64>,
    ) -> Result<Self, StoreError> {
        let inner = Inner::open(dir, cache_bytes, outbox_budget)?;
        Ok(SledStore {
            dir: dir.to_path_buf(),
            cache_bytes,
            outbox_budget,
            outbox_dropped: std::sync::atomic::AtomicU64::new(0),
            unfinished: std::sync::Mutex::new(Unfinished::None),
            append_failed: Default::default(),
            inner: RwLock::new(Some(inner)),
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, Option<Inner>> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Option<Inner>> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A commit that failed, until its changes are stored.
#[derive(Debug, Default, PartialEq)]
enum Unfinished {
    /// The last commit succeeded.
    #[default]
    None,
    /// These changes failed to commit; some may be on disk.
    Failed(Vec<Change>),
    /// A reopen stored them before the writer retried: the retry has
    /// nothing left to do.
    Finished(Vec<Change>),
}

impl SledStore {
    /// Runs a write, reopening the database first if the last write failed
    /// (and finishing a failed commit before anything else), and dropping it
    /// after a failure: sled would repeat that error forever.
    fn with_writable<T>(
        &self,
        write: impl FnOnce(&mut Inner) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut guard = self.write();
        if guard.is_none() {
            let mut inner = Inner::open(&self.dir, self.cache_bytes, self.outbox_budget)?;
            let mut unfinished = self.unfinished();
            if let Unfinished::Failed(changes) = std::mem::take(&mut *unfinished) {
                // On error `inner` goes unused: the next write reopens again.
                if let Err(e) = inner.commit(&changes, true) {
                    *unfinished = Unfinished::Failed(changes);
                    return Err(e);
                }
                *unfinished = Unfinished::Finished(changes);
            }
            drop(unfinished);
            *guard = Some(inner);
            tracing::info!("the store reopened after a failure");
        }
        let inner = guard.as_mut().ok_or_else(reopening)?;
        let result = write(inner);
        if result.is_err() {
            if let Some(outbox) = guard.as_ref().and_then(|i| i.outbox.as_ref()) {
                self.outbox_dropped
                    .fetch_add(outbox.dropped(), std::sync::atomic::Ordering::Relaxed);
            }
            *guard = None;
        }
        result
    }

    fn unfinished(&self) -> std::sync::MutexGuard<'_, Unfinished> {
        self.unfinished
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
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
        self.with_outbox(|o| o.read(from, max))
    }

    fn acknowledge(&self, seq: u64) -> Result<(), OutboxError> {
        self.with_outbox(|o| o.acknowledge(seq).map(drop))
    }

    fn acknowledged(&self) -> Result<u64, OutboxError> {
        self.with_outbox(|o| o.acknowledged())
    }

    fn last(&self) -> Result<u64, OutboxError> {
        self.with_outbox(|o| Ok(o.last()))
    }

    fn desired_version(&self) -> Result<u64, OutboxError> {
        self.with_outbox(|o| o.desired_version())
    }

    fn set_desired_version(&self, version: u64) -> Result<(), OutboxError> {
        // The outbox's own implementation flushes the database.
        self.with_outbox(|o| ferrite_sync::outbox::OutboxAccess::set_desired_version(o, version))
    }

    fn config_version(&self) -> Result<u64, OutboxError> {
        self.with_outbox(|o| o.config_version())
    }

    fn set_config_version(&self, version: u64) -> Result<(), OutboxError> {
        self.with_outbox(|o| ferrite_sync::outbox::OutboxAccess::set_config_version(o, version))
    }
}

impl SledStore {
    fn with_outbox<T>(
        &self,
        f: impl FnOnce(&ferrite_sync::outbox::Outbox) -> Result<T, OutboxError>,
    ) -> Result<T, OutboxError> {
        let guard = self.read();
        let outbox = guard
            .as_ref()
            .and_then(|i| i.outbox.as_ref())
            .ok_or_else(|| {
                OutboxError::Io(sled::Error::Unsupported(
                    "the outbox is not open (no [cloud], or the store is reopening)".into(),
                ))
            })?;
        f(outbox)
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

impl Inner {
    fn open(dir: &Path, cache_bytes: u64, outbox_budget: Option<u64>) -> Result<Inner, StoreError> {
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
        let series = db.open_tree("series")?;
        let history = db.open_tree("history")?;
        let events = db.open_tree(Log::Events.tree())?;
        let audit = db.open_tree(Log::Audit.tree())?;
        let rule_state = db.open_tree("rule_state")?;
        let config = db.open_tree("config")?;
        let outbox = outbox_budget
            .map(|budget| ferrite_sync::outbox::Outbox::open(&db, budget))
            .transpose()
            .map_err(|e| StoreError::Io(e.to_string()))?;
        let mut ids = HashMap::new();
        for entry in series.iter() {
            let (k, v) = entry?;
            let name = String::from_utf8_lossy(&k).into_owned();
            let (device, property) = name
                .split_once('\0')
                .ok_or_else(|| StoreError::Corrupt(name.clone()))?;
            ids.insert((device.to_string(), property.to_string()), id_from(&v)?);
        }
        Ok(Inner {
            db,
            series,
            history,
            events,
            audit,
            rule_state,
            config,
            outbox,
            ids,
        })
    }

    fn id(&mut self, device: &str, property: &str) -> Result<u32, StoreError> {
        if let Some(id) = self.ids.get(&(device.to_string(), property.to_string())) {
            return Ok(*id);
        }
        let id = u32::try_from(self.ids.len())
            .map_err(|_| StoreError::Corrupt("too many series".into()))?;
        self.series.insert(
            format!("{device}\0{property}").as_bytes(),
            &id.to_be_bytes(),
        )?;
        self.ids
            .insert((device.to_string(), property.to_string()), id);
        Ok(id)
    }

    /// Appends `changes` to history (and the outbox) and flushes. A
    /// `retry` follows a failed commit of the same changes, some of which
    /// may have reached the disk: history keys are simply written again,
    /// but outbox entries already there are not appended twice (the control
    /// plane would count a second copy, under a new sequence, as new).
    fn commit(&mut self, changes: &[Change], retry: bool) -> Result<(), StoreError> {
        // Plain inserts, not `sled::Batch`: in sled 0.34 a large batch keeps
        // several times more memory (measured: 830 MB against 110 MB for
        // 300k entries). Atomicity is not needed: nothing here is visible
        // before the flush below, each entry stands alone, and a retry
        // skips what a failed attempt left in the outbox.
        let mut buf = Vec::with_capacity(32);
        for change in changes {
            let id = self.id(&change.device, &change.property)?;
            buf.clear();
            change.at.value.encode_into(&mut buf);
            self.history
                .insert(&history_key(id, change.at.ts)[..], buf.as_slice())?;
        }
        if let Some(outbox) = &self.outbox {
            let mut synced: Vec<ferrite_sync::delta::Change> = changes
                .iter()
                .map(|c| ferrite_sync::delta::Change {
                    device: c.device.clone(),
                    property: c.property.clone(),
                    ts_ms: c.at.ts.div_euclid(1000),
                    value: c.at.value.clone(),
                })
                .collect();
            if retry {
                // The failed attempt's entries, if any, are the newest: the
                // writer appends nothing else before its retry succeeds.
                let kept = outbox
                    .newest(synced.len())
                    .map_err(|e| StoreError::Io(e.to_string()))?;
                synced.retain(|c| !kept.iter().any(|(_, k)| k == c));
                if synced.len() < changes.len() {
                    tracing::info!(
                        "{} change(s) of the failed commit were already in the outbox",
                        changes.len() - synced.len()
                    );
                }
            }
            outbox
                .append(&synced)
                .map_err(|e| StoreError::Io(e.to_string()))?;
        }
        self.db.flush()?;
        Ok(())
    }

    /// Removes history keys one by one (see `commit` on why not a batch).
    fn remove_keys(
        &self,
        keys: impl Iterator<Item = sled::Result<sled::IVec>>,
    ) -> Result<u64, StoreError> {
        let keys: Vec<sled::IVec> = keys.collect::<Result<_, _>>()?;
        for key in &keys {
            self.history.remove(key)?;
        }
        Ok(keys.len() as u64)
    }
}

impl Inner {
    fn log(&self, log: Log) -> &sled::Tree {
        match log {
            Log::Events => &self.events,
            Log::Audit => &self.audit,
        }
    }
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

fn id_from(bytes: &[u8]) -> Result<u32, StoreError> {
    let arr: [u8; 4] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("series id".into()))?;
    Ok(u32::from_be_bytes(arr))
}

fn history_key(id: u32, ts: Micros) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..4].copy_from_slice(&id.to_be_bytes());
    // Flip the sign bit so that negative times sort before positive ones.
    key[4..].copy_from_slice(&((ts as u64) ^ (1 << 63)).to_be_bytes());
    key
}

fn ts_from_key(key: &[u8]) -> Result<Micros, StoreError> {
    let arr: [u8; 8] = key
        .get(4..12)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| StoreError::Corrupt("history key".into()))?;
    Ok((u64::from_be_bytes(arr) ^ (1 << 63)) as i64)
}

/// Decodes a stored value ([`Value::encode_into`]'s form).
fn decode_value(bytes: &[u8]) -> Result<Value, StoreError> {
    Value::decode(bytes).ok_or_else(|| StoreError::Corrupt(format!("value {bytes:02x?}")))
}

impl Store for SledStore {
    fn commit(&self, changes: &[Change]) -> Result<(), StoreError> {
        // After a failed commit, the writer's next one retries the same
        // changes (the writer is the only one that commits); the reopen in
        // `with_writable` stores them, and the retry itself then does
        // nothing. Any other commit is new.
        // A failure is recorded before the lock is released, so that no
        // other write can reopen the store without finishing this commit.
        self.with_writable(|inner| {
            let mut unfinished = self.unfinished();
            if matches!(&*unfinished, Unfinished::Finished(done) if done == changes) {
                *unfinished = Unfinished::None;
                return Ok(());
            }
            let result = inner.commit(changes, false);
            *unfinished = match result {
                Ok(()) => Unfinished::None,
                Err(_) => Unfinished::Failed(changes.to_vec()),
            };
            result
        })
    }

    fn latest_all(&self) -> Result<Vec<(String, String, Stamped)>, StoreError> {
        let guard = self.read();
        let inner = guard.as_ref().ok_or_else(reopening)?;
        let mut out = Vec::with_capacity(inner.ids.len());
        for ((device, property), id) in &inner.ids {
            // The latest value is the last history entry: keeping it twice
            // would double the writes.
            let Some(entry) = inner.history.scan_prefix(id.to_be_bytes()).next_back() else {
                continue;
            };
            let (key, value) = entry?;
            let at = Stamped {
                ts: ts_from_key(&key)?,
                value: decode_value(&value)?,
            };
            out.push((device.clone(), property.clone(), at));
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
        let Some(id) = inner
            .ids
            .get(&(device.to_string(), property.to_string()))
            .copied()
        else {
            return Ok(Vec::new());
        };
        let range = inner
            .history
            .range(history_key(id, since)..=history_key(id, until));
        let entries: Box<dyn Iterator<Item = _>> = match end {
            End::Oldest => Box::new(range.take(limit)),
            End::Newest => Box::new(range.rev().take(limit)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let (k, v) = entry?;
            out.push(Stamped {
                ts: ts_from_key(&k)?,
                value: decode_value(&v)?,
            });
        }
        if end == End::Newest {
            out.reverse();
        }
        Ok(out)
    }

    fn trim(&self, before: Micros, max_bytes: u64) -> Result<Trimmed, StoreError> {
        let guard = self.write();
        let Some(inner) = guard.as_ref() else {
            return Ok(Trimmed::default());
        };
        let ids: Vec<u32> = inner.ids.values().copied().collect();
        let mut trimmed = Trimmed::default();
        for id in &ids {
            let range = history_key(*id, i64::MIN)..history_key(*id, before);
            trimmed.by_age += inner.remove_keys(inner.history.range(range).keys())?;
        }
        // Over budget: drop the oldest tenth of every series, until under it
        // or nothing is left to drop. sled reclaims space lazily, so the loop
        // is bounded rather than trusting the size to fall at once.
        for _ in 0..10 {
            if inner.db.size_on_disk()? <= max_bytes {
                break;
            }
            let mut removed = 0;
            for id in &ids {
                let count = inner.history.scan_prefix(id.to_be_bytes()).count();
                let oldest = inner
                    .history
                    .scan_prefix(id.to_be_bytes())
                    .keys()
                    .take(count.div_ceil(10));
                removed += inner.remove_keys(oldest)?;
            }
            trimmed.by_size += removed;
            if removed == 0 {
                break;
            }
        }
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
                let tree = inner.log(log);
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
                    let mut value = Vec::with_capacity(8 + body.len());
                    value.extend_from_slice(&ts.to_be_bytes());
                    value.extend_from_slice(body);
                    if let Some((key, kept)) =
                        kept.iter().find(|(_, v)| v.as_ref() == value.as_slice())
                    {
                        seqs.push(entry_from(key, kept)?.seq);
                        continue;
                    }
                    // Starts at 1, so that 0 can mean "before everything".
                    let seq = inner.db.generate_id()? + 1;
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
        for key in &doomed {
            tree.remove(key)?;
        }
        Ok(doomed.len() as u64)
    }

    fn size_on_disk(&self) -> Option<u64> {
        self.read().as_ref()?.db.size_on_disk().ok()
    }

    fn outbox(&self) -> Option<super::OutboxState> {
        let guard = self.read();
        let outbox = guard.as_ref()?.outbox.as_ref()?;
        Some(super::OutboxState {
            backlog: outbox.backlog() as u64,
            bytes: outbox.bytes(),
            dropped: self
                .outbox_dropped
                .load(std::sync::atomic::Ordering::Relaxed)
                + outbox.dropped(),
        })
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
        let mut guard = store.write();
        guard.as_mut().ok_or_else(reopening)?.commit(batch, false)?;
        *store.unfinished() = Unfinished::Failed(batch.to_vec());
        *guard = None;
        Ok(())
    }

    #[test]
    fn a_commit_half_done_is_finished_by_whoever_reopens_and_never_sent_twice()
    -> Result<(), StoreError> {
        use ferrite_sync::outbox::OutboxAccess;
        let io = |e: ferrite_sync::outbox::OutboxError| StoreError::Io(e.to_string());
        let dir = tempfile::tempdir().map_err(|e| StoreError::Io(e.to_string()))?;
        let store = SledStore::open_with(dir.path(), 1 << 20, Some(1 << 20))?;
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
        let store = SledStore::open_with(dir.path(), 1 << 20, Some(1 << 20))?;
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
    fn values_encode_and_decode() {
        for v in [
            Value::Bool(true),
            Value::Int(-5),
            Value::Float(2.5),
            Value::String("hé".into()),
        ] {
            let mut buf = Vec::new();
            v.encode_into(&mut buf);
            assert_eq!(decode_value(&buf).ok(), Some(v));
        }
        assert!(decode_value(&[9, 1]).is_err());
        assert!(decode_value(&[]).is_err());
        assert!(decode_value(&[1, 0]).is_err());
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
        let store = SledStore::open_with(&dir.path().join("b"), 1 << 20, Some(1 << 20))?;
        store.commit(&[
            change("d", "p", 1_000, Value::Int(1)),
            change("d", "q", 1_000, Value::Bool(true)),
        ])?;
        store.commit(&[change("d", "p", 2_000, Value::Int(2))])?;
        let state = store.outbox().expect("outbox");
        assert_eq!((state.backlog, state.dropped), (3, 0));
        assert!(state.bytes > 0);
        // A budget of one entry keeps the newest and counts the rest.
        let tight = SledStore::open_with(&dir.path().join("c"), 1 << 20, Some(30))?;
        tight.commit(
            &(0..5)
                .map(|i| change("d", "p", i, Value::Int(i)))
                .collect::<Vec<_>>(),
        )?;
        let state = tight.outbox().expect("outbox");
        assert_eq!((state.backlog, state.dropped), (1, 4));
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
}
