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
//! is old enough to go (see [`Blocks::oldest`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

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
        })
    }

    /// No block at rest starts before this time (a lower bound: the true
    /// oldest may be later, after blocks went).
    pub fn oldest(&self) -> Micros {
        self.oldest.load(Ordering::Acquire)
    }

    /// A walk of every series, calling [`Blocks::trim_before`] on each,
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
        self.tree.insert(key(id, start), encode(points))?;
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
            overlapping.push((k.clone(), block.points(&k)?));
        }
        if overlapping.is_empty() {
            return self.insert(id, min, &points);
        }
        // Older blocks first, then the new points, so that these win.
        let mut merged = Vec::new();
        for (k, old) in overlapping.into_iter().rev() {
            self.tree.remove(k)?;
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

    /// Drops series `id`'s points before `before`; returns how many, and
    /// the earliest time the series keeps at rest, if any.
    pub fn trim_before(
        &self,
        id: u32,
        before: Micros,
    ) -> Result<(u64, Option<Micros>), StoreError> {
        let mut doomed = Vec::new();
        let mut left = None;
        // In key order, so by time: the first block starting at or after
        // `before` ends the scan.
        for item in self.tree.scan_prefix(id.to_be_bytes()) {
            let (k, v) = item?;
            let start = split_key(&k).map_or(Micros::MIN, |(_, start)| start);
            if start >= before {
                left = Some(start);
                break;
            }
            doomed.push((k, v));
        }
        let mut removed = 0u64;
        for (k, v) in doomed {
            let block = parse(&k, &v)?;
            if block.max_ts < before {
                removed += u64::from(block.count);
                self.tree.remove(&k)?;
                continue;
            }
            // Straddles `before` (the last block that can: blocks do not
            // overlap): keep its newer part, the series' earliest now.
            let points = block.points(&k)?;
            let kept: Vec<Point> = points.iter().filter(|p| p.0 >= before).cloned().collect();
            removed += (points.len() - kept.len()) as u64;
            self.tree.remove(&k)?;
            if let Some((start, _)) = kept.first() {
                self.insert(id, *start, &kept)?;
                left = Some(*start);
            }
        }
        Ok((removed, left))
    }

    /// Drops series `id`'s oldest block; returns its point count.
    pub fn drop_oldest(&self, id: u32) -> Result<u64, StoreError> {
        let Some(item) = self.tree.scan_prefix(id.to_be_bytes()).next() else {
            return Ok(0);
        };
        let (k, v) = item?;
        let count = parse(&k, &v)?.count;
        self.tree.remove(&k)?;
        Ok(u64::from(count))
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
        let (_, left) = blocks.trim_before(1, 0)?;
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
        assert_eq!(blocks.trim_before(1, 70)?, (7, Some(70)));
        let left = blocks.range(1, i64::MIN, i64::MAX, 100, End::Oldest)?;
        assert_eq!(left, ints(7..10));
        assert_eq!(blocks.trim_before(1, 70)?, (0, Some(70)), "nothing more");
        assert_eq!(blocks.trim_before(2, 70)?, (0, None), "no blocks");
        assert_eq!(blocks.drop_oldest(1)?, 3);
        assert_eq!(blocks.drop_oldest(1)?, 0);
        Ok(())
    }
}
