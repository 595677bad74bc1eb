//! History at rest: each series' points in compressed blocks, one sled key
//! per block.
//!
//! Key: series id (4 bytes) + the block's first time (8, sign-flipped, so
//! keys sort by time). Value: the block's last time (8), its point count
//! (varint), then a [`Chunk`].
//!
//! The blocks of a series never overlap in time: a block whose span meets
//! existing blocks (a clock set back, a device's own timestamps) is merged
//! with them before it is written. So a range query reads the blocks in key
//! order and stops at the first past its end, and two points at one time
//! cannot hide in two blocks.
//!
//! The blocks also keep a lower bound of the oldest time at rest, so that
//! the minute's retention pass can tell without reading a block that none
//! is old enough to go (see [`Blocks::oldest`]), and a ledger of the bytes
//! at rest by the minute their blocks end, so that retention by size knows
//! how much is held and which blocks to drop without asking sled, whose
//! file does not shrink when data goes (see [`Blocks::held`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use ferrite_models::Value;

use super::chunk::{self, Chunk};
use super::{End, StoreError};
use crate::time::Micros;

/// Points a series' head gathers before it is cut into a block.
pub const CUT_POINTS: u32 = 120;

/// A point: its time and value.
pub type Point = (Micros, Value);

/// The blocks tree (a handle: clones share it).
#[derive(Clone)]
pub struct Blocks {
    tree: sled::Tree,
    /// No block at rest starts before this. `Micros::MIN` (anything may be
    /// there) until a retention walk has looked at every series; each
    /// block written lowers it, a walk raises it ([`Blocks::settle`]).
    oldest: Arc<AtomicI64>,
    /// The earliest start written since the last walk began.
    written: Arc<AtomicI64>,
    /// The bytes at rest, once counted.
    ledger: Arc<Mutex<Ledger>>,
}

/// The blocks' bytes (key and value) by the minute each block ends.
///
/// Counted series by series, in id order, by the first retention walk after
/// the store opens ([`Blocks::count`]); from then on every block written or
/// removed is booked as it goes. Until the count is done a series not yet
/// counted is not booked (the count will find its blocks).
#[derive(Debug, Default)]
struct Ledger {
    /// Series below this id are counted; `u32::MAX` once all are.
    counted_below: u32,
    /// Bytes by the minute their blocks' last points fall in.
    by_minute: BTreeMap<i64, u64>,
    /// Their sum.
    total: u64,
}

/// The ledger's unit of time.
const MINUTE: Micros = 60_000_000;

impl Ledger {
    fn book(&mut self, id: u32, max_ts: Micros, bytes: usize, added: bool) {
        if id >= self.counted_below {
            return;
        }
        let bytes = bytes as u64;
        let minute = max_ts.div_euclid(MINUTE);
        if added {
            *self.by_minute.entry(minute).or_default() += bytes;
            self.total += bytes;
            return;
        }
        if let Some(held) = self.by_minute.get_mut(&minute) {
            *held = held.saturating_sub(bytes);
            if *held == 0 {
                self.by_minute.remove(&minute);
            }
        }
        self.total = self.total.saturating_sub(bytes);
    }
}

/// A block's key.
pub fn key(id: u32, ts: Micros) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..4].copy_from_slice(&id.to_be_bytes());
    key[4..].copy_from_slice(&flip(ts).to_be_bytes());
    key
}

/// The series id and time of a [`key`]; `None` for anything else. (The
/// store before issue 20 keyed each history point the same way.)
pub fn split_key(key: &[u8]) -> Option<(u32, Micros)> {
    let id = <[u8; 4]>::try_from(key.get(..4)?).ok()?;
    let ts = <[u8; 8]>::try_from(key.get(4..)?).ok()?;
    Some((u32::from_be_bytes(id), unflip(u64::from_be_bytes(ts))))
}

/// Times as unsigned, so that negative times sort first.
fn flip(ts: Micros) -> u64 {
    (ts as u64) ^ (1 << 63)
}

fn unflip(bits: u64) -> Micros {
    (bits ^ (1 << 63)) as i64
}

/// What [`Blocks::trim`] did to one series.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Trim {
    /// Points dropped for being older than the age limit.
    pub by_age: u64,
    /// Points dropped in whole blocks ending before the size limit's time.
    pub by_size: u64,
    /// The series' earliest time left at rest, if any.
    pub left: Option<Micros>,
}

/// A block's header and its still encoded points.
struct Block<'a> {
    max_ts: Micros,
    count: u32,
    body: &'a [u8],
}

impl Block<'_> {
    fn points(&self, key: &[u8]) -> Result<Vec<Point>, StoreError> {
        chunk::decode(self.body, self.count).ok_or_else(|| corrupt(key))
    }
}

fn corrupt(key: &[u8]) -> StoreError {
    StoreError::Corrupt(format!("history block {key:02x?}"))
}

fn parse<'a>(key: &[u8], value: &'a [u8]) -> Result<Block<'a>, StoreError> {
    if key.len() != 12 {
        return Err(corrupt(key));
    }
    let (max, mut rest) = value.split_at_checked(8).ok_or_else(|| corrupt(key))?;
    let max = <[u8; 8]>::try_from(max).map_err(|_| corrupt(key))?;
    let count = chunk::get_varint(&mut rest)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| corrupt(key))?;
    Ok(Block {
        max_ts: unflip(u64::from_be_bytes(max)),
        count,
        body: rest,
    })
}

/// A block's value for `points` (in time order, not empty).
fn encode(points: &[Point]) -> Vec<u8> {
    let chunk = Chunk::of(points);
    let (_, max) = chunk.span();
    let mut out = Vec::with_capacity(12 + chunk.bytes().len());
    out.extend_from_slice(&flip(max).to_be_bytes());
    chunk::put_varint(&mut out, u64::from(chunk.len()));
    out.extend_from_slice(chunk.bytes());
    out
}

impl Blocks {
    /// The blocks in `db`'s `blocks` tree.
    pub fn open(db: &sled::Db) -> Result<Blocks, StoreError> {
        Ok(Blocks {
            tree: db.open_tree("blocks")?,
            oldest: Arc::new(AtomicI64::new(Micros::MIN)),
            written: Arc::new(AtomicI64::new(Micros::MAX)),
            ledger: Arc::default(),
        })
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether every series' blocks are counted in the ledger.
    pub fn counted(&self) -> bool {
        self.ledger().counted_below == u32::MAX
    }

    /// Counts series `id`'s blocks into the ledger, if it is the next one
    /// to count (series are counted in id order, each once).
    pub fn count(&self, id: u32) -> Result<(), StoreError> {
        if self.ledger().counted_below != id {
            return Ok(());
        }
        let mut found = Vec::new();
        for item in self.tree.scan_prefix(id.to_be_bytes()) {
            let (k, v) = item?;
            found.push((parse(&k, &v)?.max_ts, k.len() + v.len()));
        }
        let mut ledger = self.ledger();
        ledger.counted_below = id + 1;
        for (max_ts, bytes) in found {
            ledger.book(id, max_ts, bytes, true);
        }
        Ok(())
    }

    /// Counts the series from the next uncounted one up to (not including)
    /// `series` (those added since the walk passed), then books every
    /// series from now on: the count is done.
    pub fn finish_count(&self, series: u32) -> Result<(), StoreError> {
        let next = self.ledger().counted_below;
        if next == u32::MAX {
            return Ok(());
        }
        for id in next..series {
            self.count(id)?;
        }
        let mut ledger = self.ledger();
        if ledger.counted_below >= series {
            ledger.counted_below = u32::MAX;
        }
        Ok(())
    }

    /// The bytes at rest (blocks' keys and values), once counted.
    pub fn held(&self) -> Option<u64> {
        let ledger = self.ledger();
        (ledger.counted_below == u32::MAX).then_some(ledger.total)
    }

    /// The earliest time such that dropping every block that ends before
    /// it frees at least `bytes` (all of them, if there are not so many);
    /// `None` before the count is done or with nothing at rest.
    pub fn ended_before_freeing(&self, bytes: u64) -> Option<Micros> {
        let ledger = self.ledger();
        if ledger.counted_below != u32::MAX {
            return None;
        }
        let mut freed = 0u64;
        let mut last = None;
        for (minute, held) in &ledger.by_minute {
            freed += held;
            last = Some(minute.saturating_add(1).saturating_mul(MINUTE));
            if freed >= bytes {
                break;
            }
        }
        last
    }

    /// No block at rest starts before this time (a lower bound: the true
    /// oldest may be later, after blocks went).
    pub fn oldest(&self) -> Micros {
        self.oldest.load(Ordering::Acquire)
    }

    /// A walk of every series, calling [`Blocks::trim`] on each,
    /// begins: blocks written from now on are remembered for
    /// [`Blocks::settle`].
    pub fn walk_begins(&self) {
        self.written.store(Micros::MAX, Ordering::Release);
    }

    /// The walk has looked at every series and `left` is the earliest start
    /// it left behind: that, or an earlier block written during the walk,
    /// is the oldest now.
    pub fn settle(&self, left: Micros) {
        let written = self.written.load(Ordering::Acquire);
        self.oldest.store(left.min(written), Ordering::Release);
    }

    /// Whether `other` is this same handle's bookkeeping (not that of a
    /// store reopened since).
    pub fn is(&self, other: &Blocks) -> bool {
        Arc::ptr_eq(&self.oldest, &other.oldest)
    }

    /// Inserts a block starting at `start`.
    fn insert(&self, id: u32, start: Micros, points: &[Point]) -> Result<(), StoreError> {
        self.oldest.fetch_min(start, Ordering::AcqRel);
        self.written.fetch_min(start, Ordering::AcqRel);
        let key = key(id, start);
        let value = encode(points);
        let bytes = key.len() + value.len();
        self.tree.insert(key, value)?;
        let max_ts = points.last().map_or(start, |p| p.0);
        self.ledger().book(id, max_ts, bytes, true);
        Ok(())
    }

    /// Removes the block at `key` (of series `id`, ending at `max_ts`,
    /// `value` its value).
    fn remove(&self, id: u32, key: &[u8], max_ts: Micros, value: &[u8]) -> Result<(), StoreError> {
        self.tree.remove(key)?;
        self.ledger()
            .book(id, max_ts, key.len() + value.len(), false);
        Ok(())
    }

    /// Writes `points` (in time order, later points winning at equal
    /// times: [`chunk::in_time_order`]'s form) to series `id`, merged with
    /// any block they overlap.
    pub fn write(&self, id: u32, points: Vec<Point>) -> Result<(), StoreError> {
        let (Some(first), Some(last)) = (points.first(), points.last()) else {
            return Ok(());
        };
        let (min, max) = (first.0, last.0);
        let mut overlapping = Vec::new();
        for item in self.tree.range(key(id, Micros::MIN)..=key(id, max)).rev() {
            let (k, v) = item?;
            let block = parse(&k, &v)?;
            if block.max_ts < min {
                break;
            }
            overlapping.push((block.points(&k)?, block.max_ts, k, v));
        }
        if overlapping.is_empty() {
            return self.insert(id, min, &points);
        }
        // Older blocks first, then the new points, so that these win.
        let mut merged = Vec::new();
        for (old, max_ts, k, v) in overlapping.into_iter().rev() {
            self.remove(id, &k, max_ts, &v)?;
            merged.extend(old);
        }
        merged.extend(points);
        let merged = chunk::in_time_order(merged);
        match merged.first() {
            Some((start, _)) => self.insert(id, *start, &merged),
            None => Ok(()),
        }
    }

    /// Series `id`'s points between `since` and `until` (inclusive), in time
    /// order: at least the `limit` from the range's `end` when there are so
    /// many (whole blocks are read, so there may be more).
    pub fn range(
        &self,
        id: u32,
        since: Micros,
        until: Micros,
        limit: usize,
        end: End,
    ) -> Result<Vec<Point>, StoreError> {
        let mut blocks: Vec<Vec<Point>> = Vec::new();
        let mut taken = 0;
        let within = |p: &Point| p.0 >= since && p.0 <= until;
        type Items<'a> = Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>> + 'a>;
        let items: Items = match end {
            End::Oldest => {
                // The block that starts before `since` may reach into it.
                let before = self
                    .tree
                    .range(key(id, Micros::MIN)..key(id, since))
                    .next_back();
                Box::new(
                    before
                        .into_iter()
                        .chain(self.tree.range(key(id, since)..=key(id, until))),
                )
            }
            End::Newest => Box::new(self.tree.range(key(id, Micros::MIN)..=key(id, until)).rev()),
        };
        for item in items {
            let (k, v) = item?;
            let block = parse(&k, &v)?;
            if block.max_ts < since {
                // Going back in time, every block further is older still.
                match end {
                    End::Oldest => continue,
                    End::Newest => break,
                }
            }
            let points: Vec<Point> = block.points(&k)?.into_iter().filter(within).collect();
            taken += points.len();
            blocks.push(points);
            if taken >= limit {
                break;
            }
        }
        if end == End::Newest {
            blocks.reverse();
        }
        Ok(blocks.into_iter().flatten().collect())
    }

    /// Series `id`'s latest point at rest.
    pub fn last(&self, id: u32) -> Result<Option<Point>, StoreError> {
        let Some(item) = self.tree.scan_prefix(id.to_be_bytes()).next_back() else {
            return Ok(None);
        };
        let (k, v) = item?;
        Ok(parse(&k, &v)?.points(&k)?.pop())
    }

    /// Drops series `id`'s points before `before` (whole blocks, and the
    /// older part of the one that straddles it), then its blocks that end
    /// before `ended_before` (whole: none is cut for it). Returns the points
    /// dropped for each, and the earliest time the series keeps at rest, if
    /// any.
    pub fn trim(&self, id: u32, before: Micros, ended_before: Micros) -> Result<Trim, StoreError> {
        let mut doomed = Vec::new();
        let mut trim = Trim::default();
        // In key order, so by time (blocks do not overlap): the first block
        // that neither ends before `ended_before` nor starts before `before`
        // ends the scan.
        for item in self.tree.scan_prefix(id.to_be_bytes()) {
            let (k, v) = item?;
            let block = parse(&k, &v)?;
            let start = split_key(&k).map_or(Micros::MIN, |(_, start)| start);
            if block.max_ts >= ended_before && start >= before {
                trim.left = Some(start);
                break;
            }
            let max_ts = block.max_ts;
            doomed.push((k, v, start, max_ts));
        }
        for (k, v, start, max_ts) in doomed {
            let block = parse(&k, &v)?;
            if max_ts < before {
                trim.by_age += u64::from(block.count);
                self.remove(id, &k, max_ts, &v)?;
                continue;
            }
            if max_ts < ended_before {
                // Its points older than `before` would have gone anyway.
                let old = if start < before {
                    block.points(&k)?.iter().filter(|p| p.0 < before).count() as u64
                } else {
                    0
                };
                trim.by_age += old;
                trim.by_size += u64::from(block.count) - old;
                self.remove(id, &k, max_ts, &v)?;
                continue;
            }
            // Straddles `before` (the last block that can: blocks do not
            // overlap): keep its newer part, the series' earliest now.
            let points = block.points(&k)?;
            let kept: Vec<Point> = points.iter().filter(|p| p.0 >= before).cloned().collect();
            trim.by_age += (points.len() - kept.len()) as u64;
            self.remove(id, &k, max_ts, &v)?;
            if let Some((start, _)) = kept.first() {
                self.insert(id, *start, &kept)?;
                trim.left = Some(*start);
            }
        }
        Ok(trim)
    }

    /// Blocks and points at rest, and the bytes their values take.
    pub fn stats(&self) -> Result<(u64, u64, u64), StoreError> {
        let (mut blocks, mut points, mut bytes) = (0u64, 0u64, 0u64);
        for item in self.tree.iter() {
            let (k, v) = item?;
            blocks += 1;
            points += u64::from(parse(&k, &v)?.count);
            bytes += (k.len() + v.len()) as u64;
        }
        Ok((blocks, points, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks() -> (tempfile::TempDir, Blocks) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .expect("sled");
        (dir, Blocks::open(&db).expect("blocks"))
    }

    fn ints(range: std::ops::Range<i64>) -> Vec<Point> {
        range.map(|i| (i * 10, Value::Int(i))).collect()
    }

    #[test]
    fn ranges_read_across_blocks_from_either_end() -> Result<(), StoreError> {
        let (_dir, blocks) = blocks();
        for part in [0..5, 5..10, 10..15] {
            blocks.write(1, ints(part))?;
        }
        blocks.write(2, ints(0..3))?;
        let ts = |v: Vec<Point>| v.into_iter().map(|p| p.0).collect::<Vec<_>>();
        assert_eq!(ts(blocks.range(1, 35, 65, 100, End::Oldest)?), [40, 50, 60]);
        let oldest = blocks.range(1, 0, i64::MAX, 3, End::Oldest)?;
        assert_eq!(ts(oldest)[..3], [0, 10, 20]);
        let newest = blocks.range(1, 0, i64::MAX, 3, End::Newest)?;
        assert!(ts(newest).ends_with(&[120, 130, 140]));
        assert_eq!(blocks.last(1)?, Some((140, Value::Int(14))));
        assert!(blocks.range(3, 0, i64::MAX, 10, End::Oldest)?.is_empty());
        Ok(())
    }

    #[test]
    fn an_overlapping_block_is_merged_and_its_points_win() -> Result<(), StoreError> {
        let (_dir, blocks) = blocks();
        blocks.write(1, ints(0..5))?;
        blocks.write(1, ints(10..15))?;
        // A clock set back: points inside both earlier blocks.
        blocks.write(1, vec![(20, Value::Int(-2)), (105, Value::Int(-1))])?;
        let all = blocks.range(1, 0, i64::MAX, 100, End::Oldest)?;
        assert_eq!(all.len(), 11);
        assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(all.contains(&(20, Value::Int(-2))), "the later write wins");
        assert_eq!(blocks.stats()?.0, 1, "one block now");
        Ok(())
    }

    #[test]
    fn the_oldest_time_at_rest_is_a_lower_bound_that_a_walk_raises() -> Result<(), StoreError> {
        let (_dir, blocks) = blocks();
        assert_eq!(blocks.oldest(), Micros::MIN, "unknown until a walk");
        blocks.write(1, ints(5..10))?;
        blocks.walk_begins();
        let left = blocks.trim(1, 0, Micros::MIN)?.left;
        assert_eq!(left, Some(50));
        // Written during the walk, to a series it has already passed.
        blocks.write(2, ints(2..4))?;
        blocks.settle(left.unwrap_or(Micros::MAX));
        assert_eq!(blocks.oldest(), 20);
        blocks.write(3, ints(1..2))?;
        assert_eq!(blocks.oldest(), 10, "a block written lowers it at once");
        Ok(())
    }

    #[test]
    fn trimming_drops_whole_blocks_and_cuts_the_one_that_straddles() -> Result<(), StoreError> {
        let (_dir, blocks) = blocks();
        blocks.write(1, ints(0..5))?;
        blocks.write(1, ints(5..10))?;
        let by_age = |by_age, left| Trim {
            by_age,
            by_size: 0,
            left,
        };
        assert_eq!(blocks.trim(1, 70, Micros::MIN)?, by_age(7, Some(70)));
        let left = blocks.range(1, i64::MIN, i64::MAX, 100, End::Oldest)?;
        assert_eq!(left, ints(7..10));
        assert_eq!(blocks.trim(1, 70, 0)?, by_age(0, Some(70)), "nothing more");
        assert_eq!(blocks.trim(2, 70, 0)?, by_age(0, None), "no blocks");
        Ok(())
    }

    #[test]
    fn trimming_by_size_drops_only_whole_blocks_that_end_in_time() -> Result<(), StoreError> {
        let (_dir, blocks) = blocks();
        for part in [0..5, 5..10, 10..15] {
            blocks.write(1, ints(part))?;
        }
        // 95 falls between the second block (50..=90) and the third
        // (100..=140): the first two go whole, their points before 20
        // counted as gone for age.
        let trim = blocks.trim(1, 20, 95)?;
        assert_eq!((trim.by_age, trim.by_size, trim.left), (2, 8, Some(100)));
        assert_eq!(
            blocks.range(1, i64::MIN, i64::MAX, 100, End::Oldest)?,
            ints(10..15)
        );
        // 130 falls inside the third: it stays whole.
        let trim = blocks.trim(1, 20, 130)?;
        assert_eq!((trim.by_age, trim.by_size, trim.left), (0, 0, Some(100)));
        Ok(())
    }

    #[test]
    fn the_ledger_counts_what_is_at_rest_and_books_every_change_after() -> Result<(), StoreError> {
        let (_dir, blocks) = blocks();
        let minute = |m: i64| m * MINUTE;
        let at = |m: i64, n: i64| -> Vec<Point> {
            (0..n).map(|i| (minute(m) + i, Value::Int(i))).collect()
        };
        blocks.write(1, at(0, 3))?;
        blocks.write(2, at(1, 3))?;
        assert_eq!(blocks.held(), None, "not counted yet");
        assert_eq!(blocks.ended_before_freeing(1), None);
        // Counted in id order only: series 1 is not next.
        blocks.count(1)?;
        blocks.count(0)?;
        blocks.count(0)?;
        blocks.count(1)?;
        assert_eq!(blocks.held(), None, "series 2 is not counted yet");
        // A block written to series 2 now is not booked (its count finds
        // it), one written to series 1 is.
        blocks.write(2, at(5, 2))?;
        blocks.write(1, at(3, 2))?;
        blocks.finish_count(3)?;
        let held = blocks.held().unwrap_or(0);
        assert_eq!(
            held,
            blocks.stats()?.2,
            "the ledger agrees with a full count"
        );
        // Series 1's block that ends in minute 0 goes.
        let all = blocks.stats()?.2;
        blocks.trim(1, Micros::MIN, minute(1))?;
        let first = all - blocks.stats()?.2;
        assert!(first > 0);
        assert_eq!(blocks.held(), Some(held - first));
        // The oldest minute left is minute 1: freeing one byte drops what
        // ends before minute 2; freeing everything, what ends before 6.
        assert_eq!(blocks.ended_before_freeing(1), Some(minute(2)));
        assert_eq!(blocks.ended_before_freeing(u64::MAX), Some(minute(6)));
        // Merges and cuts are booked too.
        blocks.write(2, at(1, 5))?;
        blocks.trim(2, minute(1) + 2, Micros::MIN)?;
        assert_eq!(blocks.held(), Some(blocks.stats()?.2));
        Ok(())
    }
}
