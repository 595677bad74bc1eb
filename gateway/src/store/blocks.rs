//! History at rest: each series' points in compressed blocks, appended to
//! segment files of their own, with an index in memory.
//!
//! Until issue 20's last step the blocks were sled keys. sled kept its pages
//! in memory whatever its cache was set to (about 200 bytes a block beyond
//! the block itself, and growing with the history held), so the gateway's
//! memory grew by megabytes a minute under load. Here a block costs its
//! `Loc` in memory (32 bytes; a series' first is inline in its entry), and
//! its bytes on disk.
//!
//! On disk: `data_dir/blocks/NNNNNNNN.blk`, rising numbers, appends to the
//! last until it holds [`SEGMENT_BYTES`]. Each block is one frame, framed as
//! the commit log's are (length, CRC-32, kind): kind `BLOCK` (4), then the
//! series id (u32 BE), the block's first and last times (i64 BE), the
//! sequence of the last change it holds (u64 BE, 0 when not known: the
//! series' cut, see below), its point count (varint) and a [`Chunk`].
//!
//! Nothing is rewritten in place, and nothing records a removal. At open the
//! frames are read in the order they were appended, and:
//! - **a block replaces the blocks of its series it overlaps in time.** A
//!   write merges the blocks it overlaps into the block it appends (a clock
//!   set back), the straddling block an age limit cuts is appended again
//!   without its older points, a block moved out of a sparse segment is
//!   appended again whole, and a run of small or medium blocks is
//!   appended again as one ([`Blocks::merge_some`]): each covers what it
//!   replaces. So the blocks of a series never overlap, and a range query
//!   walks them in time order.
//! - **blocks that end before the retention mark go** (`gone_before`, kept
//!   in sled's meta tree): the age and size limits drop whole blocks
//!   that end before a time, and the mark is the latest such time.
//!
//! Each block's frame carries its series' cut: the last sequence in its
//! blocks, after which a reopen replays the series' changes from the log
//! into its head. A block appended again keeps the cut of what it replaces
//! (a merge takes the newer head's), so a series' cut is the highest its
//! frames carry, and sled is not written for it: a block and its cut are on
//! disk together or not at all.
//!
//! A block's bytes are synced before the flush of sled that lets the commit
//! log drop the records the blocks hold: by the store's retention pass in
//! turns of its lock ([`Blocks::begin_sync`], the `fdatasync` without the
//! lock, [`Blocks::finish_sync`]), or in one piece by [`Blocks::sync`]. Until then a crash may lose a block, and the log still has
//! its points. A segment whose blocks
//! have all been replaced or dropped is deleted by the sync, after what
//! replaced them is on disk; one mostly empty is compacted (its blocks
//! appended again) first.
//!
//! The index also keeps a lower bound of the oldest time at rest, so that
//! the minute's retention pass can tell that no block is old enough to go
//! (see [`Blocks::oldest`]), and a ledger of the bytes at rest by the minute
//! their blocks end, so that retention by size knows how much is held and
//! which blocks to drop (see [`Blocks::held`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ferrite_models::Value;
use smallvec::SmallVec;

use super::chunk::{self, Chunk};
use super::commit_log::{HEADER, scan_frames, seal};
use super::{End, StoreError, segment_files};
use crate::time::Micros;

/// Points a series' head gathers before it is cut into a block.
pub const CUT_POINTS: u32 = 120;

/// A block of fewer points than this is small: the retention pass merges
/// runs of a series' small blocks ([`Blocks::merge_some`]).
pub const SMALL_POINTS: u32 = CUT_POINTS / 2;

/// A run of at least this many small blocks is merged even when it holds
/// fewer than [`SMALL_POINTS`] points ([`Blocks::merge_some`]): a series
/// that changes now and then gets a block of a point or two at each cut,
/// and would otherwise keep up to 59 of them, 32 bytes of index each.
pub const MERGE_BLOCKS: usize = 8;

/// Blocks of at least this many points are not merged again: the last of
/// [`TIERS`] merges runs of blocks of fewer into blocks of this many or
/// more (up to twice it).
const LARGE_POINTS: u32 = 8 * CUT_POINTS;

/// A run of medium blocks is merged only while it spans at most this share
/// of its series' history at rest (1/16): retention by size drops whole
/// blocks, so a series' oldest block is what it may drop beyond what it
/// must.
const MERGE_SPAN_SHARE: i64 = 16;

/// The most bytes of frames a run that is merged holds (a series of long
/// texts): a history query reads whole blocks.
const MERGE_BYTES: u64 = 64 * 1024;

/// A segment takes appends until it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 32 * 1024 * 1024;

/// A segment (not the last) whose live blocks take less than this share of
/// it is compacted: they are appended again and it goes.
const COMPACT_BELOW: f64 = 0.25;

/// A segment file's extension.
const EXT: &str = "blk";

/// The frame kind of a block.
const BLOCK: u8 = 4;

/// A block's frame before its chunk: kind, id, first and last time, cut.
const BLOCK_HEAD: usize = 1 + 4 + 8 + 8 + 8;

/// A point: its time and its value.
pub type Point = (Micros, Value);

/// Where a block is, and what the index needs to know of it without
/// reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    start: Micros,
    max_ts: Micros,
    segment: u32,
    offset: u32,
    /// The frame's bytes, header included.
    len: u32,
    count: u32,
}

/// A series' blocks in time order: one inline (most series that change
/// rarely have one), more in one allocation that grows by an eighth (see
/// [`Blocks::place`]).
type Locs = SmallVec<[Loc; 1]>;

struct Segment {
    file: File,
    /// Bytes of whole frames: where the next append goes.
    len: u64,
    /// Bytes of the frames of blocks in the index.
    live: u64,
}

/// Tells one opening of the blocks from another (see [`Blocks::is`]).
static OPENINGS: AtomicU64 = AtomicU64::new(0);

/// The blocks (see the module's docs).
pub struct Blocks {
    dir: PathBuf,
    segments: BTreeMap<u32, Segment>,
    /// [`SEGMENT_BYTES`], but in tests.
    segment_bytes: u64,
    /// Each series' blocks in time order, by series id.
    series: Vec<Locs>,
    /// Segments appended to since the last sync.
    unsynced: BTreeSet<u32>,
    /// Blocks that end before this have gone.
    gone_before: Micros,
    /// No block at rest starts before this (see [`Blocks::oldest`]).
    oldest: Micros,
    /// The earliest start written since the last walk began.
    written: Micros,
    ledger: Ledger,
    opening: u64,
    /// Bytes of frames read to merge them since the blocks were opened.
    merged: u64,
    /// Bytes of frames appended again to compact segments since the
    /// blocks were opened.
    compacted: u64,
    /// A failed append could not be undone: no more appends until a
    /// reopen, which cuts it.
    broken: bool,
}

/// The blocks' bytes by the minute each block ends.
#[derive(Debug, Default)]
struct Ledger {
    by_minute: BTreeMap<i64, u64>,
    /// Their sum.
    total: u64,
}

/// The ledger's unit of time.
const MINUTE: Micros = 60_000_000;

impl Ledger {
    fn book(&mut self, loc: &Loc, added: bool) {
        let bytes = u64::from(loc.len);
        let minute = loc.max_ts.div_euclid(MINUTE);
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

/// The series id and time of a sled key laid out as series id (4 bytes BE)
/// and sign-flipped time (8 bytes BE); `None` for anything else. The blocks
/// were keyed so while they lived in sled, and the store before issue 20
/// keyed each history point the same way.
pub fn split_key(key: &[u8]) -> Option<(u32, Micros)> {
    let id = <[u8; 4]>::try_from(key.get(..4)?).ok()?;
    let ts = <[u8; 8]>::try_from(key.get(4..)?).ok()?;
    Some((u32::from_be_bytes(id), unflip(u64::from_be_bytes(ts))))
}

/// A key in [`split_key`]'s layout.
pub fn key(id: u32, ts: Micros) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..4].copy_from_slice(&id.to_be_bytes());
    key[4..].copy_from_slice(&flip(ts).to_be_bytes());
    key
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

/// A sync begun under the store's lock, to finish without it
/// ([`Blocks::begin_sync`]).
pub struct SyncRound {
    /// The segments appended to: handles of their own.
    files: Vec<(PathBuf, File)>,
    /// Segments that may go once the round is synced.
    pub empty: Vec<u32>,
    /// The retention mark sled may keep once it is.
    pub gone_before: Micros,
}

impl SyncRound {
    /// Syncs the round's segments (no lock needed).
    pub fn sync(&self) -> Result<(), StoreError> {
        for (path, file) in &self.files {
            file.sync_data().map_err(|e| io(path.display(), e))?;
        }
        Ok(())
    }
}

fn io(what: impl std::fmt::Display, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("history blocks, {what}: {e}"))
}

/// A block frame's fields.
struct Parsed<'a> {
    id: u32,
    start: Micros,
    max_ts: Micros,
    cut: u64,
    count: u32,
    body: &'a [u8],
}

/// Reads a block frame's kind and body; `None` if it is not one.
fn parse(kind: u8, body: &[u8]) -> Option<Parsed<'_>> {
    if kind != BLOCK {
        return None;
    }
    let (id, rest) = body.split_first_chunk::<4>()?;
    let (start, rest) = rest.split_first_chunk::<8>()?;
    let (max_ts, rest) = rest.split_first_chunk::<8>()?;
    let (cut, mut rest) = rest.split_first_chunk::<8>()?;
    let count = u32::try_from(chunk::get_varint(&mut rest)?).ok()?;
    Some(Parsed {
        id: u32::from_be_bytes(*id),
        start: i64::from_be_bytes(*start),
        max_ts: i64::from_be_bytes(*max_ts),
        cut: u64::from_be_bytes(*cut),
        count,
        body: rest,
    })
}

/// A block's frame for `points` (in time order, not empty).
fn encode(id: u32, points: &[Point], cut: u64) -> Vec<u8> {
    let chunk = Chunk::of(points);
    let (start, max) = chunk.span();
    let mut out = Vec::with_capacity(HEADER + BLOCK_HEAD + 5 + chunk.bytes().len());
    out.extend_from_slice(&[0u8; HEADER]);
    out.push(BLOCK);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&start.to_be_bytes());
    out.extend_from_slice(&max.to_be_bytes());
    out.extend_from_slice(&cut.to_be_bytes());
    chunk::put_varint(&mut out, u64::from(chunk.len()));
    out.extend_from_slice(chunk.bytes());
    seal(&mut out, 0);
    out
}

/// Where in `locs` (a series' blocks, in time order) the run of blocks that
/// reach into `since..=until` is: blocks do not overlap, so their starts and
/// their ends both rise.
fn overlapping(locs: &[Loc], since: Micros, until: Micros) -> std::ops::Range<usize> {
    let from = locs.partition_point(|l| l.max_ts < since);
    from..locs.partition_point(|l| l.start <= until).max(from)
}

/// A size of block whose runs [`Blocks::merge_some`] merges.
struct Tier {
    /// A block of at least `from` and fewer than `below` points is of it.
    from: u32,
    below: u32,
    /// A run holds at most `most` points (and [`MERGE_BYTES`]),
    most: u32,
    /// and is merged once it holds `enough` points or is `long` blocks long,
    enough: u32,
    long: usize,
    /// and, where this is set, spans at most this share of its series'
    /// history at rest.
    span_share: Option<i64>,
}

/// Small blocks (fewer than [`SMALL_POINTS`], 60) are merged once a run
/// holds 60 points, or is [`MERGE_BLOCKS`] blocks long whatever it holds;
/// medium ones (60 to 959: full cuts of 120, and what the small merge
/// made) once a run holds [`LARGE_POINTS`], 960, and spans at most a
/// sixteenth of its series' history ([`MERGE_SPAN_SHARE`]). What a merge
/// makes is of a later tier (but by the length rule), so a point is merged
/// about once per tier; a large block is not merged again.
const TIERS: [Tier; 2] = [
    Tier {
        from: 0,
        below: SMALL_POINTS,
        most: 2 * SMALL_POINTS,
        enough: SMALL_POINTS,
        long: MERGE_BLOCKS,
        span_share: None,
    },
    Tier {
        from: SMALL_POINTS,
        below: LARGE_POINTS,
        most: 2 * LARGE_POINTS,
        enough: LARGE_POINTS,
        long: usize::MAX,
        span_share: Some(MERGE_SPAN_SHARE),
    },
];

/// Where in `locs` (a series' blocks, in time order) the runs are that
/// [`Blocks::merge_some`] merges, in order, without copying a block's place
/// for a series that has none (most, every pass): adjacent blocks of one
/// [`Tier`], within its limits, and enough of them (a run still short
/// waits for more blocks). A block of another tier ends a run.
fn merge_runs(locs: &[Loc]) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let (Some(first), Some(last)) = (locs.first(), locs.last()) else {
        return runs;
    };
    let history = last.max_ts.saturating_sub(first.start);
    for tier in &TIERS {
        let widest = tier.span_share.map_or(Micros::MAX, |share| history / share);
        let (mut start, mut points, mut bytes) = (0usize, 0u32, 0u64);
        let mut close = |run: std::ops::Range<usize>, points: u32| {
            if run.len() >= 2 && (points >= tier.enough || run.len() >= tier.long) {
                runs.push(run);
            }
        };
        for (at, loc) in locs.iter().enumerate() {
            if loc.count < tier.from || loc.count >= tier.below {
                close(start..at, points);
                (start, points, bytes) = (at + 1, 0, 0);
                continue;
            }
            if points + loc.count > tier.most
                || bytes + u64::from(loc.len) > MERGE_BYTES
                || loc.max_ts.saturating_sub(locs[start].start) > widest
            {
                close(start..at, points);
                (start, points, bytes) = (at, 0, 0);
            }
            points += loc.count;
            bytes += u64::from(loc.len);
        }
        close(start..locs.len(), points);
    }
    runs.sort_by_key(|run| run.start);
    runs
}

/// Gives a series' spare room back once retention or a merge has taken a
/// good part of its blocks (back inline when one is left): a series whose
/// blocks are merged again and again would otherwise keep the room of its
/// longest run.
fn give_room_back(locs: &mut Locs) {
    if locs.capacity() > locs.len() + locs.len() / 4 + 1 {
        locs.shrink_to_fit();
    }
}

/// A block as sled held it (key: [`split_key`]'s layout; value: the last
/// time, flipped, the count as a varint, the chunk): its series, points.
fn from_sled(key: &[u8], value: &[u8]) -> Option<(u32, Vec<Point>)> {
    let (id, _) = split_key(key)?;
    let mut rest = value.get(8..)?;
    let count = u32::try_from(chunk::get_varint(&mut rest)?).ok()?;
    Some((id, chunk::decode(rest, count)?))
}

impl Blocks {
    /// Opens the blocks in `dir` (created if missing), `gone_before` the
    /// retention mark sled kept. Moves the blocks of a store that kept them
    /// in `db`'s `blocks` tree into the files, once. Returns them and each
    /// series' cut as the blocks' frames tell it.
    pub fn open(
        dir: &Path,
        db: &sled::Db,
        gone_before: Micros,
    ) -> Result<(Blocks, HashMap<u32, u64>), StoreError> {
        let (mut blocks, cuts) = Self::open_sized(dir, SEGMENT_BYTES, gone_before)?;
        blocks.move_from_sled(db)?;
        Ok((blocks, cuts))
    }

    fn open_sized(
        dir: &Path,
        segment_bytes: u64,
        gone_before: Micros,
    ) -> Result<(Blocks, HashMap<u32, u64>), StoreError> {
        let numbers = segment_files::numbers(dir, EXT).map_err(|e| io(dir.display(), e))?;
        let mut blocks = Blocks {
            dir: dir.to_path_buf(),
            segments: BTreeMap::new(),
            segment_bytes,
            series: Vec::new(),
            unsynced: BTreeSet::new(),
            gone_before,
            oldest: Micros::MAX,
            written: Micros::MAX,
            ledger: Ledger::default(),
            opening: OPENINGS.fetch_add(1, Ordering::Relaxed),
            merged: 0,
            compacted: 0,
            broken: false,
        };
        let mut cuts: HashMap<u32, u64> = HashMap::new();
        let last = numbers.last().copied();
        for number in numbers {
            let path = blocks.path(number);
            let file = segment_files::open(&path).map_err(|e| io(path.display(), e))?;
            let bytes = std::fs::read(&path).map_err(|e| io(path.display(), e))?;
            blocks.segments.insert(
                number,
                Segment {
                    file,
                    len: 0,
                    live: 0,
                },
            );
            let mut found = Vec::new();
            let whole = scan_frames(&bytes, |offset, len, kind, body| {
                match parse(kind, body) {
                    Some(block) => {
                        if block.cut > 0 {
                            let cut = cuts.entry(block.id).or_default();
                            *cut = (*cut).max(block.cut);
                        }
                        found.push((
                            block.id,
                            Loc {
                                start: block.start,
                                max_ts: block.max_ts,
                                segment: number,
                                offset: offset as u32,
                                len: len as u32,
                                count: block.count,
                            },
                        ));
                    }
                    None => tracing::error!(
                        "history block segment {number}: a frame at byte {offset} is not a block; skipped"
                    ),
                }
                true
            });
            for (id, loc) in found {
                blocks.place(id, loc);
            }
            if let Some(segment) = blocks.segments.get_mut(&number) {
                let last = Some(number) == last;
                segment_files::settle_tail(
                    &segment.file,
                    &path,
                    bytes.len(),
                    whole,
                    last,
                    "history blocks",
                )
                .map_err(|e| io(path.display(), e))?;
                segment.len = whole as u64;
            }
        }
        // What retention dropped before the last close.
        for id in 0..blocks.series.len() {
            blocks.drop_where(id as u32, |loc| loc.max_ts < gone_before);
        }
        blocks.oldest = blocks
            .series
            .iter()
            .filter_map(|locs| locs.first())
            .map(|loc| loc.start)
            .min()
            .unwrap_or(Micros::MAX);
        Ok((blocks, cuts))
    }

    /// Moves the blocks in `db`'s `blocks` tree (the store before this
    /// layout) into the files, syncs them, then drops the tree. A crash half
    /// way moves them all again: a block appended again replaces its copy.
    fn move_from_sled(&mut self, db: &sled::Db) -> Result<(), StoreError> {
        if !db.tree_names().iter().any(|n| n.as_ref() == b"blocks") {
            return Ok(());
        }
        let tree = db.open_tree("blocks")?;
        let mut moved = 0u64;
        for item in tree.iter() {
            let (key, value) = item?;
            match from_sled(&key, &value) {
                Some((id, points)) => {
                    self.append_block(id, &points, 0)?;
                    moved += 1;
                }
                None => tracing::error!("the store skips a history block: key {key:02x?}"),
            }
        }
        self.sync()?;
        drop(tree);
        db.drop_tree("blocks")?;
        db.flush()?;
        tracing::info!(
            "moved {moved} history block(s) from the store's sled tree into block files"
        );
        Ok(())
    }

    fn path(&self, number: u32) -> PathBuf {
        segment_files::path(&self.dir, number, EXT)
    }

    fn locs(&self, id: u32) -> &[Loc] {
        self.series
            .get(id as usize)
            .map_or(&[], |locs| locs.as_slice())
    }

    /// Puts `loc` into series `id`'s index, in place of the blocks it
    /// overlaps.
    fn place(&mut self, id: u32, loc: Loc) {
        let index = id as usize;
        if self.series.len() <= index {
            // A quarter more at a time, not double: series come in one by
            // one, and a doubling from a length a first cut set can leave
            // room for twice as many series as there are.
            let len = self.series.len();
            self.series.reserve_exact((index + 1 - len).max(len / 4));
            self.series.resize_with(index + 1, Locs::new);
        }
        let locs = &mut self.series[index];
        let range = overlapping(locs, loc.start, loc.max_ts);
        if range.is_empty() && locs.len() == locs.capacity() {
            // An eighth more at a time, not double: a doubling leaves a
            // third of the index spare on average, across every series.
            locs.reserve_exact((locs.len() / 8).max(1));
        }
        let at = range.start;
        let replaced: Vec<Loc> = locs.drain(range).collect();
        locs.insert(at, loc);
        for old in replaced {
            self.forget(&old);
        }
        if let Some(segment) = self.segments.get_mut(&loc.segment) {
            segment.live += u64::from(loc.len);
        }
        self.ledger.book(&loc, true);
    }

    /// Takes a block out of the books (it is out of the index).
    fn forget(&mut self, loc: &Loc) {
        if let Some(segment) = self.segments.get_mut(&loc.segment) {
            segment.live = segment.live.saturating_sub(u64::from(loc.len));
        }
        self.ledger.book(loc, false);
    }

    /// Drops series `id`'s blocks that `gone` picks (no allocation when
    /// none is: every series at open, and each one a retention walk trims).
    fn drop_where(&mut self, id: u32, gone: impl Fn(&Loc) -> bool) {
        let Some(locs) = self.series.get_mut(id as usize) else {
            return;
        };
        let mut dropped = Vec::new();
        locs.retain(|loc| {
            let go = gone(loc);
            if go {
                dropped.push(*loc);
            }
            !go
        });
        give_room_back(locs);
        for loc in &dropped {
            self.forget(loc);
        }
    }

    /// Appends a block of `points` (in time order, not empty) to series
    /// `id`, replacing the blocks it overlaps; `cut` the last sequence it
    /// holds (0: not known).
    fn append_block(&mut self, id: u32, points: &[Point], cut: u64) -> Result<(), StoreError> {
        let frame = encode(id, points, cut);
        let (segment, offset) = self.append(&frame)?;
        let (start, max_ts) = (
            points.first().map_or(0, |p| p.0),
            points.last().map_or(0, |p| p.0),
        );
        self.oldest = self.oldest.min(start);
        self.written = self.written.min(start);
        self.place(
            id,
            Loc {
                start,
                max_ts,
                segment,
                offset,
                len: frame.len() as u32,
                count: points.len() as u32,
            },
        );
        Ok(())
    }

    /// Appends a frame; returns its segment and offset. On failure nothing
    /// of it stays.
    fn append(&mut self, frame: &[u8]) -> Result<(u32, u32), StoreError> {
        if self.broken {
            return Err(StoreError::Io(
                "history blocks: an earlier append could not be undone; reopening".into(),
            ));
        }
        let number = match self.segments.last_key_value() {
            Some((number, segment)) if segment.len < self.segment_bytes => *number,
            last => self.begin_segment(last.map_or(1, |(n, _)| n + 1))?,
        };
        let path = self.path(number);
        let Some(segment) = self.segments.get_mut(&number) else {
            return Err(StoreError::Io("history blocks: no segment".into()));
        };
        let start = segment.len;
        if let Err(failed) = segment_files::append(&segment.file, frame, start, false) {
            self.broken = !failed.cut;
            return Err(io(path.display(), failed.error));
        }
        segment.len += frame.len() as u64;
        self.unsynced.insert(number);
        Ok((number, start as u32))
    }

    /// Creates segment `number`, its directory entry synced.
    fn begin_segment(&mut self, number: u32) -> Result<u32, StoreError> {
        let path = self.path(number);
        let file = segment_files::create(&self.dir, &path).map_err(|e| io(path.display(), e))?;
        self.segments.insert(
            number,
            Segment {
                file,
                len: 0,
                live: 0,
            },
        );
        Ok(number)
    }

    /// The points of the block at `loc`.
    fn read(&self, loc: &Loc) -> Result<Vec<Point>, StoreError> {
        Ok(self.read_with_cut(loc)?.0)
    }

    /// The points of the block at `loc`, and the cut its frame carries.
    fn read_with_cut(&self, loc: &Loc) -> Result<(Vec<Point>, u64), StoreError> {
        let corrupt = || StoreError::Corrupt(format!("history block {loc:?}"));
        let segment = self.segments.get(&loc.segment).ok_or_else(corrupt)?;
        let frame = segment_files::read_at(&segment.file, u64::from(loc.offset), loc.len as usize)
            .map_err(|e| io(self.path(loc.segment).display(), e))?;
        let mut read = None;
        scan_frames(&frame, |_, _, kind, body| {
            read = parse(kind, body).and_then(|b| Some((chunk::decode(b.body, b.count)?, b.cut)));
            false
        });
        read.ok_or_else(corrupt)
    }

    /// Makes every block appended so far durable; then deletes the
    /// segments (but the last) none of whose blocks is left, after
    /// compacting the ones that are mostly empty. Returns the retention
    /// mark the blocks on disk now stand for, for sled. All in
    /// one piece: the store's retention pass takes the same steps in turns
    /// of its lock instead ([`Blocks::compact_some`], [`Blocks::begin_sync`],
    /// [`SyncRound::sync`], [`Blocks::finish_sync`]).
    pub fn sync(&mut self) -> Result<Micros, StoreError> {
        while self.compact_some(usize::MAX)? {}
        let round = self.begin_sync()?;
        if let Err(e) = round.sync() {
            self.sync_failed();
            return Err(e);
        }
        self.finish_sync(&round.empty)?;
        Ok(round.gone_before)
    }

    /// Merges runs of a series' adjacent blocks of one of the [`TIERS`]
    /// (small, medium) of the series from `from` on, until about
    /// `max` blocks have been read. Returns the series to go on from, or
    /// `None` when every series has been looked at.
    ///
    /// Why: every block costs the index its 32 bytes however many points it
    /// holds, and the index is the store's memory that grows with the
    /// history held.
    /// - **Small blocks.** The pass cuts a head once it holds back the log's
    ///   tail, so under a steady load of many series each cut holds a few
    ///   minutes of points (about 18 in `store_load`'s long run). A run is
    ///   merged once it adds up to at least [`SMALL_POINTS`] (the merged
    ///   block is not small: its points are written twice in all), or once
    ///   it is [`MERGE_BLOCKS`] blocks long, so a series keeps at most seven
    ///   small blocks in a row. The second rule is for series that change
    ///   now and then, with a point or two at each cut: their merged block
    ///   may still be small and join a later run, so with one point a cut a
    ///   point is written about six times in all (few points, since such
    ///   series change little), where the index would otherwise keep up to
    ///   59 blocks a series.
    /// - **Medium blocks.** A series that changes every second fills a
    ///   head of [`CUT_POINTS`] every two minutes: 720 blocks a day, 32
    ///   bytes of index each. A run of medium blocks (60 to 959 points) is
    ///   merged once it holds [`LARGE_POINTS`] (at most twice that, and
    ///   [`MERGE_BYTES`]), while it spans at most a sixteenth of the
    ///   series' history at rest ([`MERGE_SPAN_SHARE`]): retention by size
    ///   drops whole blocks, so a series whose history is short keeps its
    ///   blocks short. Each point is written once more, and what the index
    ///   keeps of a long history is a block per 960 to 1920 points, an
    ///   eighth to a sixteenth of the cuts.
    ///
    /// The merged block replaces the run as any later block replaces the
    /// earlier ones it overlaps (its span is exactly theirs), with the
    /// highest of their cuts: a crash before it is synced leaves the run.
    /// A run with a block that cannot be read stays as it is (logged): a
    /// damaged block must not stop every pass from syncing.
    pub fn merge_some(&mut self, from: u32, max: usize) -> Result<Option<u32>, StoreError> {
        let mut read = 0usize;
        let mut id = from;
        while (id as usize) < self.series.len() {
            if read >= max {
                return Ok(Some(id));
            }
            let locs = self.locs(id);
            let runs: Vec<Vec<Loc>> = merge_runs(locs)
                .into_iter()
                .map(|run| locs[run].to_vec())
                .collect();
            for run in runs {
                read += run.len();
                self.merged += run.iter().map(|loc| u64::from(loc.len)).sum::<u64>();
                let (mut points, mut cut) = (Vec::new(), 0u64);
                let whole = run.iter().try_for_each(|loc| {
                    let (more, its_cut) = self.read_with_cut(loc)?;
                    points.extend(more);
                    cut = cut.max(its_cut);
                    Ok::<(), StoreError>(())
                });
                match whole {
                    Ok(()) => self.append_block(id, &chunk::in_time_order(points), cut)?,
                    Err(e) => tracing::error!(
                        "history series {id}: a run of blocks is left unmerged: {e}"
                    ),
                }
            }
            if let Some(locs) = self.series.get_mut(id as usize) {
                give_room_back(locs);
            }
            id += 1;
        }
        Ok(None)
    }

    /// Bytes of frames read to merge them since the blocks were opened (a
    /// pass's budget: `MERGE_PASS_BYTES` in the store).
    pub fn merged_bytes(&self) -> u64 {
        self.merged
    }

    /// Segments of `bytes` from the next one on (tests: many segments from
    /// few blocks).
    #[cfg(test)]
    pub(super) fn set_segment_bytes(&mut self, bytes: u64) {
        self.segment_bytes = bytes;
    }

    /// Bytes of frames appended again to compact segments since the blocks
    /// were opened (a pass's budget: `COMPACT_PASS_BYTES` in the store).
    pub fn compacted_bytes(&self) -> u64 {
        self.compacted
    }

    /// Appends again up to `max` blocks of a segment (but the last) whose
    /// live blocks take less than `COMPACT_BELOW` (a quarter) of it; says whether
    /// there may be more to move.
    pub fn compact_some(&mut self, max: usize) -> Result<bool, StoreError> {
        let Some(number) = self.sparse_segment() else {
            return Ok(false);
        };
        let mut moving = Vec::new();
        for (id, locs) in self.series.iter().enumerate() {
            moving.extend(
                locs.iter()
                    .filter(|l| l.segment == number)
                    .map(|l| (id as u32, *l)),
            );
            if moving.len() >= max {
                break;
            }
        }
        moving.truncate(max);
        if moving.is_empty() {
            // Its bytes are booked live with no block in the index: a
            // bookkeeping slip, not a reason to loop.
            tracing::error!("history block segment {number}: counted live, but no block is in it");
            return Ok(false);
        }
        let count = moving.len();
        for (id, loc) in moving {
            let (points, cut) = self.read_with_cut(&loc)?;
            self.append_block(id, &points, cut)?;
            self.compacted += u64::from(loc.len);
        }
        tracing::debug!("history block segment {number}: {count} block(s) moved to compact it");
        Ok(true)
    }

    /// The first segment (but the last) whose live blocks take less than
    /// [`COMPACT_BELOW`] of it, if any is.
    fn sparse_segment(&self) -> Option<u32> {
        let last = self.segments.last_key_value().map(|(n, _)| *n);
        self.segments
            .iter()
            .find(|(number, segment)| {
                Some(**number) != last
                    && segment.live > 0
                    && (segment.live as f64) < segment.len as f64 * COMPACT_BELOW
            })
            .map(|(number, _)| *number)
    }

    /// Begins making what has been appended so far durable: the segments
    /// to sync (handles of their own, so that the sync needs no lock), the
    /// retention mark they stand for, and the segments that may go once they
    /// are synced (none of their blocks is left, and what replaced them was
    /// appended before now).
    pub fn begin_sync(&mut self) -> Result<SyncRound, StoreError> {
        let mut files = Vec::new();
        for number in std::mem::take(&mut self.unsynced) {
            if let Some(segment) = self.segments.get(&number) {
                let path = self.path(number);
                let file = segment
                    .file
                    .try_clone()
                    .map_err(|e| io(path.display(), e))?;
                files.push((path, file));
            }
        }
        let last = self.segments.last_key_value().map(|(n, _)| *n);
        let empty = self
            .segments
            .iter()
            .filter(|(number, segment)| Some(**number) != last && segment.live == 0)
            .map(|(number, _)| *number)
            .collect();
        Ok(SyncRound {
            files,
            empty,
            gone_before: self.gone_before,
        })
    }

    /// Deletes the segments of a round ([`Blocks::begin_sync`]) that is
    /// synced, if none of their blocks has come back (none can: appends go
    /// to the last segment). Returns how many went.
    pub fn finish_sync(&mut self, empty: &[u32]) -> Result<u32, StoreError> {
        let last = self.segments.last_key_value().map(|(n, _)| *n);
        let mut went = 0;
        for number in empty {
            if Some(*number) == last || self.segments.get(number).is_none_or(|s| s.live > 0) {
                continue;
            }
            let path = self.path(*number);
            std::fs::remove_file(&path).map_err(|e| io(path.display(), e))?;
            self.segments.remove(number);
            went += 1;
        }
        Ok(went)
    }

    /// A sync that failed: the pages the kernel could not write may be
    /// gone, so no more appends until a reopen reads what is there.
    pub fn sync_failed(&mut self) {
        self.broken = true;
    }

    /// The bytes at rest (the blocks' frames).
    pub fn held(&self) -> u64 {
        self.ledger.total
    }

    /// The earliest time such that dropping every block that ends before
    /// it frees at least `bytes` (all of them, if there are not so many);
    /// `None` with nothing at rest.
    pub fn ended_before_freeing(&self, bytes: u64) -> Option<Micros> {
        let mut freed = 0u64;
        let mut last = None;
        for (minute, held) in &self.ledger.by_minute {
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
        self.oldest
    }

    /// A walk of every series, calling [`Blocks::trim`] on each, begins:
    /// blocks written from now on are remembered for [`Blocks::settle`].
    /// Returns what tells this opening of the blocks from a later one.
    pub fn walk_begins(&mut self) -> u64 {
        self.written = Micros::MAX;
        self.opening
    }

    /// The walk has looked at every series and `left` is the earliest start
    /// it left behind: that, or an earlier block written during the walk,
    /// is the oldest now.
    pub fn settle(&mut self, left: Micros) {
        self.oldest = left.min(self.written);
    }

    /// Whether `walk` ([`Blocks::walk_begins`]) began on these blocks, not
    /// on those of a store reopened since.
    pub fn is(&self, walk: u64) -> bool {
        self.opening == walk
    }

    /// Writes `points` (in time order, later points winning at equal
    /// times: [`chunk::in_time_order`]'s form) to series `id`, merged with
    /// any block they overlap; `cut` is the last sequence they hold (0: not
    /// known).
    pub fn write(&mut self, id: u32, points: Vec<Point>, cut: u64) -> Result<(), StoreError> {
        let (Some(first), Some(last)) = (points.first(), points.last()) else {
            return Ok(());
        };
        let (min, max) = (first.0, last.0);
        let locs = self.locs(id);
        let overlapping = locs[overlapping(locs, min, max)].to_vec();
        if overlapping.is_empty() {
            return self.append_block(id, &points, cut);
        }
        // Older blocks first, then the new points, so that these win.
        let (mut merged, mut cut) = (Vec::new(), cut);
        for loc in &overlapping {
            let (points, old_cut) = self.read_with_cut(loc)?;
            merged.extend(points);
            cut = cut.max(old_cut);
        }
        merged.extend(points);
        let merged = chunk::in_time_order(merged);
        self.append_block(id, &merged, cut)
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
        let locs = self.locs(id);
        let run = &locs[overlapping(locs, since, until)];
        let within = |p: &Point| p.0 >= since && p.0 <= until;
        let mut blocks: Vec<Vec<Point>> = Vec::new();
        let mut taken = 0;
        let mut each = |loc: &Loc| -> Result<bool, StoreError> {
            let points: Vec<Point> = self.read(loc)?.into_iter().filter(within).collect();
            taken += points.len();
            blocks.push(points);
            Ok(taken >= limit)
        };
        match end {
            End::Oldest => {
                for loc in run {
                    if each(loc)? {
                        break;
                    }
                }
            }
            End::Newest => {
                for loc in run.iter().rev() {
                    if each(loc)? {
                        break;
                    }
                }
                blocks.reverse();
            }
        }
        Ok(blocks.into_iter().flatten().collect())
    }

    /// Series `id`'s latest point at rest.
    pub fn last(&self, id: u32) -> Result<Option<Point>, StoreError> {
        match self.locs(id).last() {
            Some(loc) => Ok(self.read(loc)?.pop()),
            None => Ok(None),
        }
    }

    /// Drops series `id`'s points before `before` (whole blocks, and the
    /// older part of the one that straddles it), then its blocks that end
    /// before `ended_before` (whole: none is cut for it). Returns the points
    /// dropped for each, and the earliest time the series keeps at rest, if
    /// any.
    pub fn trim(
        &mut self,
        id: u32,
        before: Micros,
        ended_before: Micros,
    ) -> Result<Trim, StoreError> {
        let mut trim = Trim::default();
        let mark = before.max(ended_before);
        self.gone_before = self.gone_before.max(mark);
        // Points older than `before` in the blocks that go for size would
        // have gone anyway: counted for age.
        let mut straddling = None;
        let mut for_size = Vec::new();
        for loc in self.locs(id) {
            if loc.max_ts >= mark && loc.start >= before {
                break;
            }
            if loc.max_ts < before {
                trim.by_age += u64::from(loc.count);
            } else if loc.max_ts < ended_before {
                for_size.push(*loc);
            } else {
                straddling = Some(*loc);
            }
        }
        for loc in for_size {
            let old = if loc.start < before {
                self.read(&loc)?.iter().filter(|p| p.0 < before).count() as u64
            } else {
                0
            };
            trim.by_age += old;
            trim.by_size += u64::from(loc.count) - old;
        }
        self.drop_where(id, |loc| loc.max_ts < mark);
        if let Some(loc) = straddling {
            // Keep its newer part, the series' earliest now: appended again,
            // with its cut, it replaces the block.
            let (points, cut) = self.read_with_cut(&loc)?;
            let kept: Vec<Point> = points.iter().filter(|p| p.0 >= before).cloned().collect();
            trim.by_age += (points.len() - kept.len()) as u64;
            self.append_block(id, &kept, cut)?;
        }
        trim.left = self.locs(id).first().map(|l| l.start);
        Ok(trim)
    }

    /// Blocks and points at rest, and the bytes their frames take.
    pub fn stats(&self) -> (u64, u64, u64) {
        let (mut blocks, mut points) = (0u64, 0u64);
        for loc in self.series.iter().flatten() {
            blocks += 1;
            points += u64::from(loc.count);
        }
        (blocks, points, self.ledger.total)
    }

    /// The bytes of the segment files, and the heap bytes of the index.
    pub fn footprint(&self) -> (u64, u64) {
        let files = self.segments.values().map(|s| s.len).sum();
        let index = self.series.capacity() * std::mem::size_of::<Locs>()
            + self
                .series
                .iter()
                .filter(|l| l.spilled())
                .map(|l| l.capacity() * std::mem::size_of::<Loc>())
                .sum::<usize>();
        (files, index as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().expect("tempdir")
    }

    /// Blocks in `dir`, in segments of `segment_bytes`.
    fn open_in(dir: &Path, segment_bytes: u64, gone_before: Micros) -> Blocks {
        Blocks::open_sized(&dir.join("blocks"), segment_bytes, gone_before)
            .expect("blocks")
            .0
    }

    fn blocks() -> (tempfile::TempDir, Blocks) {
        let dir = tmp();
        let blocks = open_in(dir.path(), SEGMENT_BYTES, Micros::MIN);
        (dir, blocks)
    }

    fn ints(range: std::ops::Range<i64>) -> Vec<Point> {
        range.map(|i| (i * 10, Value::Int(i))).collect()
    }

    fn all(blocks: &Blocks, id: u32) -> Vec<Point> {
        blocks
            .range(id, i64::MIN, i64::MAX, usize::MAX, End::Oldest)
            .expect("range")
    }

    /// Series `id`'s blocks' point counts, in time order.
    fn block_counts(blocks: &Blocks, id: u32) -> Vec<u32> {
        blocks.locs(id).iter().map(|l| l.count).collect()
    }

    #[test]
    fn ranges_read_across_blocks_from_either_end() -> Result<(), StoreError> {
        let (_dir, mut blocks) = blocks();
        for part in [0..5, 5..10, 10..15] {
            blocks.write(1, ints(part), 0)?;
        }
        blocks.write(2, ints(0..3), 0)?;
        let ts = |v: Vec<Point>| v.into_iter().map(|p| p.0).collect::<Vec<_>>();
        assert_eq!(ts(blocks.range(1, 35, 65, 100, End::Oldest)?), [40, 50, 60]);
        let oldest = blocks.range(1, 0, i64::MAX, 3, End::Oldest)?;
        assert_eq!(ts(oldest)[..3], [0, 10, 20]);
        let newest = blocks.range(1, 0, i64::MAX, 3, End::Newest)?;
        assert!(ts(newest).ends_with(&[120, 130, 140]));
        assert_eq!(blocks.last(1)?, Some((140, Value::Int(14))));
        assert!(blocks.range(3, 0, i64::MAX, 10, End::Oldest)?.is_empty());
        assert!(blocks.range(1, 141, i64::MAX, 10, End::Oldest)?.is_empty());
        assert!(blocks.range(1, i64::MIN, -1, 10, End::Newest)?.is_empty());
        Ok(())
    }

    #[test]
    fn the_index_keeps_one_block_inline_and_little_spare_room() -> Result<(), StoreError> {
        let (_dir, mut blocks) = blocks();
        blocks.write(1, ints(0..3), 0)?;
        assert!(!blocks.series[1].spilled(), "one block: no allocation");
        // 520 blocks: a doubling vector would have room for 1024.
        for i in 1..520 {
            blocks.write(1, ints(i * 3..i * 3 + 3), 0)?;
        }
        let spare = |b: &Blocks| (b.series[1].len(), b.series[1].capacity());
        let (len, capacity) = spare(&blocks);
        assert_eq!(len, 520);
        assert!(
            capacity <= len + len / 8 + 1,
            "{len} blocks, room for {capacity}"
        );
        let (_, index) = blocks.footprint();
        let wanted = blocks.series.capacity() * std::mem::size_of::<Locs>()
            + capacity * std::mem::size_of::<Loc>();
        assert_eq!(index, wanted as u64);
        // The age limit takes all but the last 20: the room goes with them.
        blocks.trim(1, 500 * 30, Micros::MIN)?;
        let (len, capacity) = spare(&blocks);
        assert_eq!(len, 20);
        assert!(
            capacity <= len + len / 4 + 1,
            "{len} blocks, room for {capacity}"
        );
        assert_eq!(all(&blocks, 1), ints(1500..1560));
        Ok(())
    }

    #[test]
    fn runs_of_small_blocks_merge_into_one_and_stay_merged_across_a_reopen()
    -> Result<(), StoreError> {
        let dir = tmp();
        let mut blocks = open_in(dir.path(), SEGMENT_BYTES, Micros::MIN);
        // Series 1: twelve blocks of 20 points (cuts 1..=12), then a full one.
        for i in 0..12 {
            blocks.write(1, ints(i * 20..i * 20 + 20), i as u64 + 1)?;
        }
        blocks.write(1, ints(240..360), 13)?;
        // Series 2: two small blocks, too few points together to merge yet.
        blocks.write(2, ints(0..10), 0)?;
        blocks.write(2, ints(10..20), 0)?;
        let (before, held) = (all(&blocks, 1), blocks.held());
        assert_eq!(blocks.stats().0, 15);
        // A budget of one block read: one series per call.
        assert_eq!(blocks.merge_some(0, 1)?, Some(2));
        assert_eq!(blocks.merge_some(2, 1)?, None);
        // 6 + 6 small blocks (120 points each run), the full one, series 2's two.
        assert_eq!(blocks.stats().0, 5);
        assert_eq!(block_counts(&blocks, 1), [120, 120, 120]);
        assert_eq!(all(&blocks, 1), before);
        assert_eq!(all(&blocks, 2), ints(0..20));
        assert!(
            blocks.held() < held,
            "one frame's head where there were six"
        );
        let gone = blocks.sync()?;
        assert_eq!(gone, Micros::MIN);
        drop(blocks);
        // The merged frames replace the runs when the files are read again,
        // and carry the runs' highest cuts.
        let (blocks, cuts) =
            Blocks::open_sized(&dir.path().join("blocks"), SEGMENT_BYTES, Micros::MIN)?;
        assert_eq!(blocks.stats().0, 5);
        assert_eq!(all(&blocks, 1), before);
        assert_eq!(cuts.get(&1), Some(&13));
        assert_eq!(block_counts(&blocks, 1), [120, 120, 120]);
        Ok(())
    }

    /// A block of `count` points and `len` bytes, of a series of one point
    /// a second, after `before` points of it.
    fn loc(before: u32, count: u32, len: u32) -> Loc {
        let second = |points: u32| i64::from(points) * 1_000_000;
        Loc {
            start: second(before),
            max_ts: second(before + count) - 1,
            segment: 0,
            offset: 0,
            len,
            count,
        }
    }

    /// Blocks of these counts, of 100 bytes each, of a series of one point a
    /// second, after a week of it in one block (`history` is false: none).
    fn counts_after(history: bool, counts: &[u32]) -> Vec<Loc> {
        let week = 7 * 86_400;
        let mut locs = if history {
            vec![loc(0, week, 100)]
        } else {
            vec![]
        };
        let mut before = week;
        for &count in counts {
            locs.push(loc(before, count, 100));
            before += count;
        }
        locs
    }

    /// One run, as [`merge_runs`] answers it.
    fn one(run: std::ops::Range<usize>) -> Vec<std::ops::Range<usize>> {
        vec![run]
    }

    /// [`merge_runs`] of `counts`, after a week of history, as indexes of
    /// `counts`.
    fn runs_of(counts: &[u32]) -> Vec<std::ops::Range<usize>> {
        let runs = merge_runs(&counts_after(true, counts));
        runs.into_iter().map(|r| r.start - 1..r.end - 1).collect()
    }

    #[test]
    fn a_run_of_eight_small_blocks_merges_whatever_it_holds() {
        assert!(runs_of(&[1; MERGE_BLOCKS - 1]).is_empty());
        assert_eq!(runs_of(&[1; MERGE_BLOCKS]), one(0..MERGE_BLOCKS));
        // A full block ends a run; the points rule still merges two.
        assert_eq!(
            runs_of(&[120, 1, 1, 1, 1, 1, 1, 1, 1, 120, 30, 30]),
            [1..9, 10..12]
        );
        // Whatever the series' history: small blocks have no span limit.
        let short = counts_after(false, &[30, 30]);
        assert_eq!(merge_runs(&short), one(0..2));
    }

    #[test]
    fn runs_of_medium_blocks_merge_once_they_hold_960_points() {
        // Seven full cuts are short of 960; eight make it.
        assert!(runs_of(&[120; 7]).is_empty());
        assert_eq!(runs_of(&[120; 8]), one(0..8));
        assert!(runs_of(&[60; 15]).is_empty());
        // At most 1920 together: then a new run.
        assert_eq!(runs_of(&[120; 17]), one(0..16));
        assert_eq!(runs_of(&[900, 900, 900, 900, 100]), [0..2, 2..5]);
        // 960 or more is large, of no tier: it ends a run, is never merged.
        assert!(runs_of(&[960, 1920, 5000]).is_empty());
        assert_eq!(runs_of(&[480, 960, 480, 480, 30, 30]), [2..4, 4..6]);
        // A block of another tier ends a run: the tiers' runs do not
        // overlap, and come in order.
        assert_eq!(
            runs_of(&[300, 30, 30, 500, 500, 2000, 400, 600]),
            [1..3, 3..5, 6..8]
        );
        // Nor more than MERGE_BYTES of frames (a series of long texts).
        let mut texts = counts_after(true, &[480; 4]);
        texts.iter_mut().skip(1).for_each(|l| l.len = 40 * 1024);
        assert!(merge_runs(&texts).is_empty(), "two make 80 KiB");
        texts.iter_mut().skip(1).for_each(|l| l.len = 30 * 1024);
        assert_eq!(merge_runs(&texts), [1..3, 3..5]);
    }

    #[test]
    fn a_run_of_medium_blocks_spans_at_most_a_sixteenth_of_its_series_history() {
        // No history before eight full cuts (16 minutes at a point a
        // second): a run of them would be the whole of it.
        assert!(merge_runs(&counts_after(false, &[120; 8])).is_empty());
        // After 16 × 960 - 960 seconds of history, the run is a sixteenth.
        let mut locs = counts_after(false, &[15 * 960, 120, 120, 120, 120, 120, 120, 120, 120]);
        // (The first block is large: 14 400 points.)
        assert_eq!(merge_runs(&locs), one(1..9));
        // A second less of history, and the run is a second too wide.
        locs[0].start += 1_000_000;
        assert!(merge_runs(&locs).is_empty());
    }

    #[test]
    fn full_cuts_merge_into_large_blocks_and_stay_merged_across_a_reopen() -> Result<(), StoreError>
    {
        let dir = tmp();
        let mut blocks = open_in(dir.path(), SEGMENT_BYTES, Micros::MIN);
        let pass = |blocks: &mut Blocks| -> Result<(), StoreError> {
            assert_eq!(blocks.merge_some(0, usize::MAX)?, None);
            Ok(())
        };
        // Series 1 has history at rest from long before (a block of 60
        // points, 10 s apart), then full cuts (cut i + 1 for the i-th) of
        // points 10 µs apart, a pass after each.
        let old: Vec<Point> = (0..60)
            .map(|i| (-1_000_000_000 + i * 10_000_000, Value::Int(i)))
            .collect();
        blocks.write(1, old.clone(), 0)?;
        let cut = |blocks: &mut Blocks, i: i64| -> Result<(), StoreError> {
            blocks.write(1, ints(i * 120..i * 120 + 120), i as u64 + 1)?;
            pass(blocks)
        };
        for i in 0..7 {
            cut(&mut blocks, i)?;
        }
        assert_eq!(
            block_counts(&blocks, 1),
            [60, 120, 120, 120, 120, 120, 120, 120]
        );
        // The eighth makes 960 with the seven before it. The old block is
        // medium too, but spans more than a sixteenth of the series'
        // history by itself: never in a run.
        cut(&mut blocks, 7)?;
        assert_eq!(block_counts(&blocks, 1), [60, 960]);
        for i in 8..11 {
            cut(&mut blocks, i)?;
        }
        assert_eq!(block_counts(&blocks, 1), [60, 960, 120, 120, 120]);
        let mut expected = old;
        expected.extend(ints(0..1320));
        assert_eq!(all(&blocks, 1), expected);
        blocks.sync()?;
        drop(blocks);
        let (blocks, cuts) =
            Blocks::open_sized(&dir.path().join("blocks"), SEGMENT_BYTES, Micros::MIN)?;
        assert_eq!(block_counts(&blocks, 1), [60, 960, 120, 120, 120]);
        assert_eq!(all(&blocks, 1), expected);
        assert_eq!(cuts.get(&1), Some(&11));
        // A range inside the large block, from either end.
        assert_eq!(blocks.range(1, 1000, 1090, 5, End::Oldest)?, ints(100..110));
        let newest = blocks.range(1, 0, 9_000, 3, End::Newest)?;
        assert_eq!(newest[newest.len() - 3..], ints(898..901)[..]);
        Ok(())
    }

    #[test]
    fn a_series_that_changes_now_and_then_keeps_at_most_seven_small_blocks()
    -> Result<(), StoreError> {
        let dir = tmp();
        let mut blocks = open_in(dir.path(), SEGMENT_BYTES, Micros::MIN);
        let small = |blocks: &Blocks| -> Vec<u32> {
            let counts = blocks.locs(1).iter().map(|l| l.count);
            counts.filter(|&c| c < SMALL_POINTS).collect()
        };
        // One point a cut, and a pass after each: a series that changes
        // once every few minutes, as the retention pass sees it.
        for i in 0..150 {
            blocks.write(1, ints(i..i + 1), i as u64 + 1)?;
            let mut from = 0;
            while let Some(next) = blocks.merge_some(from, 1024)? {
                from = next;
            }
            let small = small(&blocks);
            assert!(small.len() < MERGE_BLOCKS, "after {i}: {small:?}");
            // A merge gives the room of the run it took back.
            let (len, room) = (blocks.series[1].len(), blocks.series[1].capacity());
            assert!(room <= len + len / 4 + 1, "{len} blocks, room for {room}");
        }
        assert_eq!(all(&blocks, 1), ints(0..150));
        // Two blocks of 60 or more, the rest in at most seven small ones.
        assert!(blocks.stats().0 <= 2 + 7, "{:?}", blocks.stats());
        blocks.sync()?;
        drop(blocks);
        let (blocks, cuts) =
            Blocks::open_sized(&dir.path().join("blocks"), SEGMENT_BYTES, Micros::MIN)?;
        assert_eq!(all(&blocks, 1), ints(0..150));
        assert_eq!(cuts.get(&1), Some(&150));
        assert!(small(&blocks).len() < MERGE_BLOCKS);
        Ok(())
    }

    #[test]
    fn an_overlapping_block_is_merged_and_its_points_win_across_a_reopen() -> Result<(), StoreError>
    {
        let dir = tmp();
        let mut blocks = open_in(dir.path(), SEGMENT_BYTES, Micros::MIN);
        blocks.write(1, ints(0..5), 0)?;
        blocks.write(1, ints(10..15), 0)?;
        // A clock set back: points inside both earlier blocks.
        blocks.write(1, vec![(20, Value::Int(-2)), (105, Value::Int(-1))], 0)?;
        let merged = all(&blocks, 1);
        assert_eq!(merged.len(), 11);
        assert!(merged.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(
            merged.contains(&(20, Value::Int(-2))),
            "the later write wins"
        );
        assert_eq!(blocks.stats().0, 1, "one block now");
        let held = blocks.held();
        drop(blocks);
        // Three frames on disk: the last replaces the other two.
        let blocks = open_in(dir.path(), SEGMENT_BYTES, Micros::MIN);
        assert_eq!(all(&blocks, 1), merged);
        assert_eq!(blocks.stats().0, 1);
        assert_eq!(blocks.held(), held);
        Ok(())
    }

    #[test]
    fn the_oldest_time_at_rest_is_a_lower_bound_that_a_walk_raises() -> Result<(), StoreError> {
        let dir = tmp();
        let mut blocks = open_in(dir.path(), SEGMENT_BYTES, Micros::MIN);
        assert_eq!(blocks.oldest(), Micros::MAX, "nothing at rest");
        blocks.write(1, ints(5..10), 0)?;
        assert_eq!(blocks.oldest(), 50);
        blocks.write(1, ints(10..11), 0)?;
        let walk = blocks.walk_begins();
        let left = blocks.trim(1, 60, Micros::MIN)?.left;
        assert_eq!(left, Some(60));
        // Written during the walk, to a series it has already passed.
        blocks.write(2, ints(7..9), 0)?;
        assert!(blocks.is(walk));
        blocks.settle(left.unwrap_or(Micros::MAX));
        assert_eq!(blocks.oldest(), 60);
        blocks.write(3, ints(1..2), 0)?;
        assert_eq!(blocks.oldest(), 10, "a block written lowers it at once");
        drop(blocks);
        let blocks = open_in(dir.path(), SEGMENT_BYTES, Micros::MIN);
        assert_eq!(blocks.oldest(), 10, "exact at open");
        assert!(!blocks.is(walk), "a walk of the blocks before the reopen");
        Ok(())
    }

    #[test]
    fn trimming_drops_whole_blocks_and_cuts_the_one_that_straddles() -> Result<(), StoreError> {
        let dir = tmp();
        let mut blocks = open_in(dir.path(), SEGMENT_BYTES, Micros::MIN);
        blocks.write(1, ints(0..5), 0)?;
        blocks.write(1, ints(5..10), 0)?;
        blocks.write(2, ints(0..3), 0)?;
        let by_age = |by_age, left| Trim {
            by_age,
            by_size: 0,
            left,
        };
        assert_eq!(blocks.trim(1, 70, Micros::MIN)?, by_age(7, Some(70)));
        assert_eq!(all(&blocks, 1), ints(7..10));
        assert_eq!(blocks.trim(1, 70, 0)?, by_age(0, Some(70)), "nothing more");
        assert_eq!(blocks.trim(3, 70, 0)?, by_age(0, None), "no blocks");
        let gone_before = blocks.sync()?;
        assert_eq!(gone_before, 70);
        drop(blocks);
        // Reopened with the mark sled kept: series 1 as trimmed, and series
        // 2, not trimmed yet, as its trim would leave it.
        let blocks = open_in(dir.path(), SEGMENT_BYTES, gone_before);
        assert_eq!(all(&blocks, 1), ints(7..10));
        assert!(all(&blocks, 2).is_empty());
        // Without the mark, the dropped block would be back: it is what
        // keeps it gone.
        drop(blocks);
        let blocks = open_in(dir.path(), SEGMENT_BYTES, Micros::MIN);
        assert_eq!(
            all(&blocks, 1),
            ints(0..5)
                .into_iter()
                .chain(ints(7..10))
                .collect::<Vec<_>>()
        );
        Ok(())
    }

    #[test]
    fn trimming_by_size_drops_only_whole_blocks_that_end_in_time() -> Result<(), StoreError> {
        let (_dir, mut blocks) = blocks();
        for part in [0..5, 5..10, 10..15] {
            blocks.write(1, ints(part), 0)?;
        }
        // 95 falls between the second block (50..=90) and the third
        // (100..=140): the first two go whole, their points before 20
        // counted as gone for age.
        let trim = blocks.trim(1, 20, 95)?;
        assert_eq!((trim.by_age, trim.by_size, trim.left), (2, 8, Some(100)));
        assert_eq!(all(&blocks, 1), ints(10..15));
        // 130 falls inside the third: it stays whole.
        let trim = blocks.trim(1, 20, 130)?;
        assert_eq!((trim.by_age, trim.by_size, trim.left), (0, 0, Some(100)));
        Ok(())
    }

    #[test]
    fn the_ledger_books_every_block_and_agrees_after_a_reopen() -> Result<(), StoreError> {
        let dir = tmp();
        let mut blocks = open_in(dir.path(), SEGMENT_BYTES, Micros::MIN);
        let minute = |m: i64| m * MINUTE;
        let at = |m: i64, n: i64| -> Vec<Point> {
            (0..n).map(|i| (minute(m) + i, Value::Int(i))).collect()
        };
        assert_eq!(blocks.ended_before_freeing(1), None, "nothing at rest");
        blocks.write(1, at(0, 3), 0)?;
        blocks.write(2, at(1, 3), 0)?;
        blocks.write(2, at(5, 2), 0)?;
        blocks.write(1, at(3, 2), 0)?;
        let held = blocks.held();
        let frames =
            |b: &Blocks| -> u64 { b.series.iter().flatten().map(|l| u64::from(l.len)).sum() };
        assert_eq!(held, frames(&blocks));
        // Series 1's block that ends in minute 0 goes.
        blocks.trim(1, Micros::MIN, minute(1))?;
        assert!(blocks.held() < held);
        assert_eq!(blocks.held(), frames(&blocks));
        // The oldest minute left is minute 1: freeing one byte drops what
        // ends before minute 2; freeing everything, what ends before 6.
        assert_eq!(blocks.ended_before_freeing(1), Some(minute(2)));
        assert_eq!(blocks.ended_before_freeing(u64::MAX), Some(minute(6)));
        // Merges and cuts are booked too.
        blocks.write(2, at(1, 5), 0)?;
        blocks.trim(2, minute(1) + 2, Micros::MIN)?;
        assert_eq!(blocks.held(), frames(&blocks));
        let (held, gone_before) = (blocks.held(), blocks.sync()?);
        drop(blocks);
        let blocks = open_in(dir.path(), SEGMENT_BYTES, gone_before);
        assert_eq!(blocks.held(), held, "the same count from the files");
        Ok(())
    }

    #[test]
    fn a_reopen_cuts_a_torn_append_and_tells_each_series_cut() -> Result<(), StoreError> {
        let dir = tmp();
        let mut blocks = open_in(dir.path(), SEGMENT_BYTES, Micros::MIN);
        blocks.write(1, ints(0..5), 7)?;
        blocks.write(1, ints(5..10), 12)?;
        blocks.write(2, ints(0..5), 9)?;
        blocks.sync()?;
        let path = blocks.path(1);
        drop(blocks);
        // Half of a block appended when the power went.
        let whole = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let torn = encode(2, &ints(5..10), 14);
        let file = File::options().append(true).open(&path).expect("segment");
        file.write_all_at(&torn[..torn.len() / 2], whole)
            .expect("write");
        drop(file);
        let (mut blocks, cuts) =
            Blocks::open_sized(&dir.path().join("blocks"), SEGMENT_BYTES, Micros::MIN)?;
        assert_eq!(cuts, HashMap::from([(1, 12), (2, 9)]));
        assert_eq!(all(&blocks, 2), ints(0..5));
        assert_eq!(std::fs::metadata(&path).map(|m| m.len()).ok(), Some(whole));
        // Appends go on after the cut.
        blocks.write(2, ints(5..10), 14)?;
        drop(blocks);
        let blocks = open_in(dir.path(), SEGMENT_BYTES, Micros::MIN);
        assert_eq!(all(&blocks, 2), ints(0..10));
        Ok(())
    }

    #[test]
    fn a_block_appended_again_keeps_its_cut_when_the_first_copy_has_gone() -> Result<(), StoreError>
    {
        let dir = tmp();
        // A segment a block: each rewrite lands in a new one, and the sync
        // deletes the one it left empty.
        let mut blocks = open_in(dir.path(), 1, Micros::MIN);
        blocks.write(1, ints(0..10), 7)?;
        blocks.write(2, ints(0..10), 9)?;
        // Series 1's block straddles the age limit: appended again.
        blocks.trim(1, 50, Micros::MIN)?;
        // Series 2's merged with a write that knows no cut.
        blocks.write(2, vec![(45, Value::Int(-1))], 0)?;
        blocks.sync()?;
        assert!(!blocks.segments.contains_key(&1), "the first copies went");
        assert!(!blocks.segments.contains_key(&2));
        drop(blocks);
        let (_, cuts) = Blocks::open_sized(&dir.path().join("blocks"), 1, 50)?;
        assert_eq!(cuts, HashMap::from([(1, 7), (2, 9)]));
        Ok(())
    }

    #[test]
    fn empty_segments_go_at_a_sync_and_a_sparse_one_is_compacted() -> Result<(), StoreError> {
        let dir = tmp();
        // Segments of about four blocks.
        let mut blocks = open_in(dir.path(), 200, Micros::MIN);
        for series in 1..=4 {
            blocks.write(series, ints(0..10), 0)?;
        }
        for series in 1..=12 {
            blocks.write(series, ints(100..110), 0)?;
        }
        let numbers = |b: &Blocks| b.segments.keys().copied().collect::<Vec<_>>();
        let before = numbers(&blocks);
        assert!(before.len() >= 4, "{before:?}");
        // Series 1-3 lose their old blocks: the first segment keeps only
        // series 4's, a quarter of it, and is compacted; the rest stay.
        for series in 1..=3 {
            blocks.trim(series, 500, Micros::MIN)?;
        }
        let gone_before = blocks.sync()?;
        assert_eq!(gone_before, 500);
        let after = numbers(&blocks);
        assert!(!after.contains(&before[0]), "{before:?} → {after:?}");
        let expected: Vec<Vec<Point>> = (0..=12).map(|id| all(&blocks, id)).collect();
        assert_eq!(
            expected[4],
            ints(0..10)
                .into_iter()
                .chain(ints(100..110))
                .collect::<Vec<_>>()
        );
        drop(blocks);
        // A reopen without the mark still agrees: what went went with its
        // segment, and the moved block replaces nothing but itself.
        let blocks = open_in(dir.path(), 200, Micros::MIN);
        for (id, points) in expected.iter().enumerate() {
            assert_eq!(&all(&blocks, id as u32), points, "series {id}");
        }
        Ok(())
    }

    #[test]
    fn the_blocks_sled_held_move_into_the_files_once() -> Result<(), StoreError> {
        let dir = tmp();
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .expect("sled");
        {
            // The layout of the blocks in sled: the last time, flipped, the
            // count and the chunk.
            let tree = db.open_tree("blocks")?;
            for (id, part) in [(1, 0..5), (1, 5..10), (2, 0..3)] {
                let points = ints(part);
                let chunk = Chunk::of(&points);
                let mut value = flip(chunk.span().1).to_be_bytes().to_vec();
                chunk::put_varint(&mut value, u64::from(chunk.len()));
                value.extend_from_slice(chunk.bytes());
                tree.insert(key(id, points[0].0), value)?;
            }
            tree.insert(b"junk", b"junk".as_slice())?;
        }
        let (blocks, _) = Blocks::open(&dir.path().join("blocks"), &db, Micros::MIN)?;
        assert_eq!(all(&blocks, 1), ints(0..10));
        assert_eq!(all(&blocks, 2), ints(0..3));
        assert!(!db.tree_names().iter().any(|n| n.as_ref() == b"blocks"));
        let held = blocks.held();
        drop(blocks);
        let (blocks, _) = Blocks::open(&dir.path().join("blocks"), &db, Micros::MIN)?;
        assert_eq!(blocks.held(), held, "moved once");
        assert_eq!(blocks.stats().0, 3);
        Ok(())
    }

    #[test]
    fn a_damaged_block_reads_as_an_error() -> Result<(), StoreError> {
        let (dir, mut blocks) = blocks();
        blocks.write(1, ints(0..5), 0)?;
        let path = dir.path().join("blocks").join("00000001.blk");
        let file = File::options().write(true).open(&path).expect("segment");
        file.write_all_at(&[0xff; 4], 40).expect("write");
        assert!(matches!(
            blocks.range(1, i64::MIN, i64::MAX, 10, End::Oldest),
            Err(StoreError::Corrupt(_))
        ));
        Ok(())
    }

    #[test]
    fn a_damaged_block_leaves_its_run_unmerged_and_the_rest_merges() -> Result<(), StoreError> {
        let (dir, mut blocks) = blocks();
        for id in [1, 2] {
            for i in 0..4 {
                blocks.write(id, ints(i * 20..i * 20 + 20), 0)?;
            }
        }
        // Series 1's first block is the segment's first frame.
        let path = dir.path().join("blocks").join("00000001.blk");
        let file = File::options().write(true).open(&path).expect("segment");
        file.write_all_at(&[0xff; 4], 40).expect("write");
        assert_eq!(blocks.merge_some(0, usize::MAX)?, None);
        assert_eq!(blocks.locs(1).len(), 4, "series 1 as it was");
        assert_eq!(block_counts(&blocks, 2), [80]);
        assert_eq!(all(&blocks, 2), ints(0..80));
        Ok(())
    }

    /// Segment `number`'s file cut to `keep` bytes, as a crash leaves an
    /// append that had not reached the disk.
    fn tear(dir: &Path, number: u32, keep: u64) {
        let path = segment_files::path(&dir.join("blocks"), number, EXT);
        let file = File::options().write(true).open(&path).expect("segment");
        file.set_len(keep).expect("truncate");
    }

    /// The length of segment `number`'s file.
    fn segment_len(dir: &Path, number: u32) -> u64 {
        let path = segment_files::path(&dir.join("blocks"), number, EXT);
        std::fs::metadata(path).expect("segment").len()
    }

    #[test]
    fn a_merge_cut_short_by_a_crash_loses_no_point() -> Result<(), StoreError> {
        // One frame a segment: the run's three blocks in 1, 2 and 3, the
        // merged block in 4.
        let run = |dir: &Path| -> Result<Vec<Point>, StoreError> {
            let mut blocks = open_in(dir, 1, Micros::MIN);
            blocks.write(1, ints(0..20), 1)?;
            blocks.write(1, ints(20..40), 2)?;
            blocks.sync()?;
            blocks.write(1, ints(40..60), 3)?;
            let before = all(&blocks, 1);
            assert_eq!(blocks.merge_some(0, usize::MAX)?, None);
            assert_eq!(block_counts(&blocks, 1), [60]);
            // The crash: nothing synced after the first two blocks.
            drop(blocks);
            Ok(before)
        };
        // The run, a crash with segment `torn` half written, and a reopen:
        // every point is back; the blocks' counts and the series' cut.
        let crash = |torn: u32| -> Result<(Vec<u32>, Option<u64>), StoreError> {
            let dir = tmp();
            let before = run(dir.path())?;
            tear(dir.path(), torn, segment_len(dir.path(), torn) / 2);
            let (blocks, cuts) = Blocks::open_sized(&dir.path().join("blocks"), 1, Micros::MIN)?;
            assert_eq!(all(&blocks, 1), before);
            Ok((block_counts(&blocks, 1), cuts.get(&1).copied()))
        };
        // The merged block torn: the run is back, with its cut.
        assert_eq!(crash(4)?, (vec![20, 20, 20], Some(3)));
        // The run's last block torn but the merged block on disk: the
        // merged block holds every point of the run, and its cut.
        assert_eq!(crash(3)?, (vec![60], Some(3)));
        Ok(())
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_open_without_panicking(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let dir = tmp();
            let path = dir.path().join("blocks");
            std::fs::create_dir_all(&path).expect("dir");
            std::fs::write(path.join("00000001.blk"), &bytes).expect("write");
            let opened = Blocks::open_sized(&path, SEGMENT_BYTES, Micros::MIN);
            if let Ok((blocks, _)) = opened {
                for id in 0..4 {
                    let _ = blocks.range(id, i64::MIN, i64::MAX, 10, End::Newest);
                }
            }
        }
    }
}
