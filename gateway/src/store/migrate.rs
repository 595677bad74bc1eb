//! Data dirs written by the store before the commit log (Ferrite 0.x up to
//! issue 20): one `history` key per point, and with `[cloud]` an `outbox`
//! key per change, names spelled out. Converted once, at open: history into
//! blocks, the outbox into commit records marked as history already. Each
//! old tree is dropped only after its conversion is flushed; a crash in
//! between converts it again, which the blocks' merge makes harmless.

use ferrite_models::Value;

use super::StoreError;
use super::blocks::{Blocks, CUT_POINTS, Point};
use crate::time::Micros;

/// The old history tree.
const HISTORY: &[u8] = b"history";
/// The old outbox tree.
const OUTBOX: &[u8] = b"outbox";
/// The old names tree: `device NUL property` → series id, a key per series.
const SERIES: &[u8] = b"series";

/// What was converted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Converted {
    /// History points now in blocks.
    pub points: u64,
    /// Outbox changes now in commit records.
    pub waiting: u64,
}

/// Whether `db` holds trees of the old layout.
pub fn needed(db: &sled::Db) -> bool {
    db.tree_names()
        .iter()
        .any(|name| name.as_ref() == HISTORY || name.as_ref() == OUTBOX)
}

/// The old names tree's names by id (an id nobody has: empty names), if
/// `db` has that tree. [`drop_series`] drops it once the caller has saved
/// them the new way.
pub fn series(db: &sled::Db) -> Result<Option<Vec<(String, String)>>, StoreError> {
    if !db.tree_names().iter().any(|n| n.as_ref() == SERIES) {
        return Ok(None);
    }
    let mut names: Vec<(String, String)> = Vec::new();
    for item in db.open_tree(SERIES)?.iter() {
        let (k, v) = item?;
        let id = <[u8; 4]>::try_from(v.as_ref())
            .map(u32::from_be_bytes)
            .map_err(|_| StoreError::Corrupt(format!("old series id {v:02x?}")))?;
        let name = String::from_utf8_lossy(&k);
        let (device, property) = name
            .split_once('\0')
            .ok_or_else(|| StoreError::Corrupt(format!("old series name {name:?}")))?;
        let slot = id as usize;
        if names.len() <= slot {
            names.resize(slot + 1, Default::default());
        }
        names[slot] = (device.to_string(), property.to_string());
    }
    Ok(Some(names))
}

/// Drops the old names tree.
pub fn drop_series(db: &sled::Db) -> Result<(), StoreError> {
    db.drop_tree(SERIES)?;
    Ok(())
}

/// Moves the old `history` tree (key: series id + flipped time, value: a
/// [`Value::encode_into`]) into `blocks`, then drops it.
pub fn history(db: &sled::Db, blocks: &mut Blocks) -> Result<u64, StoreError> {
    if !db.tree_names().iter().any(|n| n.as_ref() == HISTORY) {
        return Ok(0);
    }
    let old = db.open_tree(HISTORY)?;
    let mut converted = 0u64;
    let mut series: Option<u32> = None;
    let mut points: Vec<Point> = Vec::new();
    for item in old.iter() {
        let (k, v) = item?;
        // Series id + sign-flipped time: the blocks' key layout.
        let (id, ts) = super::blocks::split_key(&k)
            .ok_or_else(|| StoreError::Corrupt(format!("old history key {k:02x?}")))?;
        let value = Value::decode(&v)
            .ok_or_else(|| StoreError::Corrupt(format!("old history value {v:02x?}")))?;
        if series != Some(id) || points.len() >= CUT_POINTS as usize {
            if let Some(id) = series {
                converted += points.len() as u64;
                blocks.write(id, std::mem::take(&mut points), 0)?;
            }
            series = Some(id);
        }
        points.push((ts, value));
    }
    if let Some(id) = series {
        converted += points.len() as u64;
        blocks.write(id, points, 0)?;
    }
    blocks.sync()?;
    db.flush()?;
    db.drop_tree(HISTORY)?;
    Ok(converted)
}

/// The old outbox's waiting changes, in order, in pages: `write` gets each
/// page (sequence, device, property, time, value) and stores it; the old
/// tree is dropped after. Returns the first waiting sequence, if any.
pub fn outbox(
    db: &sled::Db,
    mut write: impl FnMut(&[(u64, String, String, Micros, Value)]) -> Result<(), StoreError>,
) -> Result<Option<u64>, StoreError> {
    if !db.tree_names().iter().any(|n| n.as_ref() == OUTBOX) {
        return Ok(None);
    }
    let old = ferrite_sync::outbox::Outbox::open(db, u64::MAX)
        .map_err(|e| StoreError::Io(e.to_string()))?;
    let mut first = None;
    let mut from = 0;
    loop {
        let page = old
            .read(from, 4096)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let Some((last, _)) = page.last() else {
            break;
        };
        from = last + 1;
        first = first.or(page.first().map(|(seq, _)| *seq));
        let page: Vec<_> = page
            .into_iter()
            .map(|(seq, c)| (seq, c.device, c.property, c.ts_ms * 1000, c.value))
            .collect();
        write(&page)?;
    }
    drop(old);
    db.flush()?;
    db.drop_tree(OUTBOX)?;
    Ok(first)
}

/// The old history key of series `id` at `ts`, for tests that write the old
/// layout.
#[cfg(test)]
pub fn old_history_key(id: u32, ts: Micros) -> [u8; 12] {
    super::blocks::key(id, ts)
}
