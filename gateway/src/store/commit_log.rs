//! The commit log: the store's write-ahead log, and the outbox the uplink
//! and the northbound read, in append-only segment files of its own.
//!
//! A group commit is one append and one `fdatasync`: its frames (the names
//! of series seen for the first time, its commit records, the audit entries
//! of the writes it confirms) written in one piece at the end of the last
//! segment. sled, which held the records before, rewrote the leaf they were
//! appended to every few inserts (hundreds of bytes written per change
//! stored, where a record costs about 13); here a change costs its record's
//! bytes and the frame's 9.
//!
//! A frame: its length (u32 LE, of what follows the 8-byte header), a CRC-32
//! of what follows (u32 LE), a kind byte (1 a record, 2 a name, 3 an audit
//! entry; the high bit set on the last frame of a commit), then the body:
//! - record: the sequence number of its first change (u64 BE), then the
//!   record ([`super::record`]);
//! - name: the series id (u32 BE), the device name's length (u16 BE), the
//!   device name, then the property name;
//! - audit entry: its number (u64 BE), its time (i64 BE), its JSON.
//!
//! A commit is on disk whole or not at all: at open, the frames after the
//! last one that ends a commit (a crash mid-append), or from the first that
//! does not read (a torn or damaged write), are cut off the last segment. A
//! failed append cuts what it wrote before it returns.
//!
//! A segment is `NNNNNNNN.log` (rising numbers); appends go to the last one,
//! and a new one begins once it holds [`SEGMENT_BYTES`]. A segment goes as a
//! whole, once every record in it has gone ([`CommitLog::drop_before`]); the
//! store makes what its name and audit frames carry durable in sled first.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::{StoreError, segment_files};
use crate::time::Micros;

/// A segment takes appends until it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;

/// A segment file's extension.
const EXT: &str = "log";

/// Bytes before a frame's kind: its length and its CRC.
pub(super) const HEADER: usize = 8;

/// A frame longer than this is damage, not a commit (a commit of 10 000
/// changes is about 200 KB of frames).
const MAX_FRAME: usize = 64 * 1024 * 1024;

const RECORD: u8 = 1;
const NAME: u8 = 2;
const AUDIT: u8 = 3;
/// On a commit's last frame.
const END: u8 = 0x80;

/// What a commit appends.
#[derive(Debug, Clone, Copy)]
pub enum Frame<'a> {
    /// A series seen for the first time, before the records that use it.
    Name {
        /// Its id.
        id: u32,
        /// Its device's name.
        device: &'a str,
        /// Its property's name.
        property: &'a str,
    },
    /// A commit record.
    Record {
        /// The sequence number of its first change.
        first: u64,
        /// The record ([`super::record`]).
        bytes: &'a [u8],
    },
    /// A confirmed write's audit entry.
    Audit {
        /// Its number in the audit log.
        seq: u64,
        /// When it was made.
        ts: Micros,
        /// Its JSON.
        body: &'a [u8],
    },
}

/// What a replay reads back, in the order it was appended: a [`Frame`],
/// owned, and for a record where its frame is.
#[derive(Debug, Clone, PartialEq)]
pub enum Replayed {
    /// [`Frame::Name`].
    Name {
        /// Its id.
        id: u32,
        /// Its device's name.
        device: String,
        /// Its property's name.
        property: String,
    },
    /// [`Frame::Record`].
    Record {
        /// The sequence number of its first change.
        first: u64,
        /// The record.
        bytes: Vec<u8>,
        /// Where it is.
        at: At,
    },
    /// [`Frame::Audit`].
    Audit {
        /// Its number in the audit log.
        seq: u64,
        /// When it was made.
        ts: Micros,
        /// Its JSON.
        body: Vec<u8>,
    },
}

/// Where a record's frame is: for reading it back ([`CommitLog::read`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    segment: u32,
    offset: u32,
    len: u32,
}

struct Segment {
    file: File,
    /// Bytes of whole commits in it: where the next append goes.
    len: u64,
    /// One past the last change of its records (0: none).
    records_end: u64,
}

/// The open commit log (see the module's docs).
pub struct CommitLog {
    dir: PathBuf,
    segments: BTreeMap<u32, Segment>,
    /// [`SEGMENT_BYTES`], but in tests.
    segment_bytes: u64,
    /// A failed append could not cut what it wrote: no more appends until
    /// a reopen, which cuts it.
    broken: bool,
}

fn io(what: impl std::fmt::Display, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("commit log, {what}: {e}"))
}

impl CommitLog {
    /// Opens the log in `dir` (created if missing) and reads it back:
    /// `each` gets the frames of every whole commit, in the order they were
    /// appended. An unfinished commit at the end is cut off. Each segment
    /// is read once, so a long outbox costs one read at start, and nothing
    /// can be appended before the log has been read.
    pub fn open(
        dir: &Path,
        each: impl FnMut(Replayed) -> Result<(), StoreError>,
    ) -> Result<CommitLog, StoreError> {
        Self::open_sized(dir, SEGMENT_BYTES, each)
    }

    fn open_sized(
        dir: &Path,
        segment_bytes: u64,
        mut each: impl FnMut(Replayed) -> Result<(), StoreError>,
    ) -> Result<CommitLog, StoreError> {
        let numbers = segment_files::numbers(dir, EXT).map_err(|e| io(dir.display(), e))?;
        let mut log = CommitLog {
            dir: dir.to_path_buf(),
            segments: BTreeMap::new(),
            segment_bytes,
            broken: false,
        };
        let last = numbers.last().copied();
        for number in numbers {
            let path = log.path(number);
            let file = segment_files::open(&path).map_err(|e| io(path.display(), e))?;
            let bytes = std::fs::read(&path).map_err(|e| io(path.display(), e))?;
            let mut records_end = 0u64;
            let mut failed = None;
            let whole = scan(&bytes, |offset, len, kind, body| {
                if failed.is_some() {
                    return;
                }
                let at = At {
                    segment: number,
                    offset: offset as u32,
                    len: len as u32,
                };
                match read_frame(kind, body, at) {
                    Some(frame) => {
                        if let Replayed::Record { first, bytes, .. } = &frame {
                            records_end = records_end.max(first + record_count(bytes));
                        }
                        if let Err(e) = each(frame) {
                            failed = Some(e);
                        }
                    }
                    None => tracing::error!(
                        "commit log segment {number}: a frame at byte {offset} does not read; skipped"
                    ),
                }
            });
            if let Some(e) = failed {
                return Err(e);
            }
            let last = Some(number) == last;
            segment_files::settle_tail(&file, &path, bytes.len(), whole, last, "commit log")
                .map_err(|e| io(path.display(), e))?;
            log.segments.insert(
                number,
                Segment {
                    file,
                    len: whole as u64,
                    records_end,
                },
            );
        }
        Ok(log)
    }

    /// A log of no segments that takes no appends: the store's until
    /// [`CommitLog::open`] has read its own back into it.
    pub fn unopened() -> CommitLog {
        CommitLog {
            dir: PathBuf::new(),
            segments: BTreeMap::new(),
            segment_bytes: SEGMENT_BYTES,
            broken: true,
        }
    }

    fn path(&self, number: u32) -> PathBuf {
        segment_files::path(&self.dir, number, EXT)
    }

    /// Appends one commit's `frames` and syncs them; returns where each
    /// record went, in order. On failure nothing of it stays.
    pub fn append(&mut self, frames: &[Frame<'_>]) -> Result<Vec<At>, StoreError> {
        if self.broken {
            return Err(StoreError::Io(
                "commit log: an earlier append could not be undone; reopening".into(),
            ));
        }
        if frames.is_empty() {
            return Ok(Vec::new());
        }
        let number = match self.segments.last_key_value() {
            Some((number, segment)) if segment.len < self.segment_bytes => *number,
            last => self.begin_segment(last.map_or(1, |(n, _)| n + 1))?,
        };
        let mut buf = Vec::new();
        let mut places = Vec::new();
        let mut records_end = 0u64;
        for (i, frame) in frames.iter().enumerate() {
            let end = if i + 1 == frames.len() { END } else { 0 };
            let start = buf.len();
            buf.extend_from_slice(&[0u8; HEADER]);
            match frame {
                Frame::Record { first, bytes } => {
                    buf.push(RECORD | end);
                    buf.extend_from_slice(&first.to_be_bytes());
                    buf.extend_from_slice(bytes);
                    records_end = records_end.max(first + record_count(bytes));
                    places.push(start);
                }
                Frame::Name {
                    id,
                    device,
                    property,
                } => {
                    let device_len = u16::try_from(device.len()).map_err(|_| {
                        StoreError::Corrupt(format!("a device name of {} bytes", device.len()))
                    })?;
                    buf.push(NAME | end);
                    buf.extend_from_slice(&id.to_be_bytes());
                    buf.extend_from_slice(&device_len.to_be_bytes());
                    buf.extend_from_slice(device.as_bytes());
                    buf.extend_from_slice(property.as_bytes());
                }
                Frame::Audit { seq, ts, body } => {
                    buf.push(AUDIT | end);
                    buf.extend_from_slice(&seq.to_be_bytes());
                    buf.extend_from_slice(&ts.to_be_bytes());
                    buf.extend_from_slice(body);
                }
            }
            seal(&mut buf, start);
        }
        let path = self.path(number);
        let Some(segment) = self.segments.get_mut(&number) else {
            return Err(StoreError::Io("commit log: no segment".into()));
        };
        let start = segment.len;
        if let Err(failed) = segment_files::append(&segment.file, &buf, start, true) {
            self.broken = !failed.cut;
            return Err(io(path.display(), failed.error));
        }
        segment.len += buf.len() as u64;
        segment.records_end = segment.records_end.max(records_end);
        Ok(places
            .into_iter()
            .map(|place| At {
                segment: number,
                offset: (start + place as u64) as u32,
                len: (HEADER + frame_len(&buf[place..])) as u32,
            })
            .collect())
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
                records_end: 0,
            },
        );
        Ok(number)
    }

    /// The record at `at`, as appended (without its first sequence).
    pub fn read(&self, at: At) -> Result<Vec<u8>, StoreError> {
        let corrupt = || StoreError::Corrupt(format!("commit log frame {at:?}"));
        let segment = self.segments.get(&at.segment).ok_or_else(corrupt)?;
        let frame = segment_files::read_at(&segment.file, u64::from(at.offset), at.len as usize)
            .map_err(|e| io(self.path(at.segment).display(), e))?;
        let mut record = None;
        scan_frames(&frame, |_, _, kind, body| {
            if kind & !END == RECORD {
                record = split_record(body).map(|(_, r)| r.to_vec());
            }
            true
        });
        record.ok_or_else(corrupt)
    }

    /// Deletes the segments (but the last) whose records all come before
    /// `seq`; returns how many went. What their name and audit frames
    /// carried must be durable elsewhere first.
    pub fn drop_before(&mut self, seq: u64) -> Result<u32, StoreError> {
        let Some(last) = self.segments.last_key_value().map(|(n, _)| *n) else {
            return Ok(0);
        };
        let doomed: Vec<u32> = self
            .segments
            .iter()
            .take_while(|(number, segment)| **number != last && segment.records_end <= seq)
            .map(|(number, _)| *number)
            .collect();
        for number in &doomed {
            let path = self.path(*number);
            std::fs::remove_file(&path).map_err(|e| io(path.display(), e))?;
            self.segments.remove(number);
        }
        Ok(doomed.len() as u32)
    }

    /// The bytes of its segments.
    pub fn bytes(&self) -> u64 {
        self.segments.values().map(|s| s.len).sum()
    }

    /// One past the last change of its records (0 for none).
    pub fn records_end(&self) -> u64 {
        self.segments
            .values()
            .map(|s| s.records_end)
            .max()
            .unwrap_or(0)
    }

    /// Its segments' numbers, oldest first.
    #[cfg(test)]
    fn segments(&self) -> Vec<u32> {
        self.segments.keys().copied().collect()
    }
}

/// Fills in the header of the frame that begins at `start` of `buf` (its
/// [`HEADER`] bytes reserved, its kind and body after them, to the end).
pub(super) fn seal(buf: &mut [u8], start: usize) {
    let len = buf.len() - start - HEADER;
    let crc = crc32fast::hash(&buf[start + HEADER..]);
    buf[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    buf[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
}

/// The body length a frame's header gives.
fn frame_len(frame: &[u8]) -> usize {
    frame
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, |b| u32::from_le_bytes(b) as usize)
}

/// Calls `each(offset, frame length, kind, body)` for each frame that reads
/// (its length in bounds, its CRC right), until one does not or `each`
/// says stop; returns the bytes read.
pub(super) fn scan_frames(
    bytes: &[u8],
    mut each: impl FnMut(usize, usize, u8, &[u8]) -> bool,
) -> usize {
    let mut offset = 0;
    while bytes.len() - offset > HEADER {
        let len = frame_len(&bytes[offset..]);
        let crc = <[u8; 4]>::try_from(&bytes[offset + 4..offset + HEADER])
            .map(u32::from_le_bytes)
            .unwrap_or(0);
        let Some(frame) = bytes.get(offset + HEADER..offset + HEADER + len) else {
            break;
        };
        if len == 0 || len > MAX_FRAME || crc32fast::hash(frame) != crc {
            break;
        }
        if !each(offset, HEADER + len, frame[0], &frame[1..]) {
            break;
        }
        offset += HEADER + len;
    }
    offset
}

/// Calls `each(offset, frame length, kind, body)` for every frame of each
/// whole commit; returns the bytes of the whole commits.
fn scan(bytes: &[u8], mut each: impl FnMut(usize, usize, u8, &[u8])) -> usize {
    let mut pending: Vec<(usize, usize)> = Vec::new();
    let mut whole = 0;
    scan_frames(bytes, |offset, len, kind, _| {
        pending.push((offset, len));
        if kind & END != 0 {
            for (offset, len) in pending.drain(..) {
                let frame = &bytes[offset + HEADER..offset + len];
                each(offset, len, frame[0] & !END, &frame[1..]);
            }
            whole = offset + len;
        }
        true
    });
    whole
}

fn split_record(body: &[u8]) -> Option<(u64, &[u8])> {
    let (first, record) = body.split_first_chunk::<8>()?;
    Some((u64::from_be_bytes(*first), record))
}

fn record_count(record: &[u8]) -> u64 {
    super::record::count(record).unwrap_or(0)
}

fn read_frame(kind: u8, body: &[u8], at: At) -> Option<Replayed> {
    match kind {
        RECORD => {
            let (first, record) = split_record(body)?;
            Some(Replayed::Record {
                first,
                bytes: record.to_vec(),
                at,
            })
        }
        NAME => {
            let (id, rest) = body.split_first_chunk::<4>()?;
            let (device_len, rest) = rest.split_first_chunk::<2>()?;
            let device_len = u16::from_be_bytes(*device_len) as usize;
            let device = std::str::from_utf8(rest.get(..device_len)?).ok()?;
            let property = std::str::from_utf8(rest.get(device_len..)?).ok()?;
            Some(Replayed::Name {
                id: u32::from_be_bytes(*id),
                device: device.to_string(),
                property: property.to_string(),
            })
        }
        AUDIT => {
            let (seq, rest) = body.split_first_chunk::<8>()?;
            let (ts, body) = rest.split_first_chunk::<8>()?;
            Some(Replayed::Audit {
                seq: u64::from_be_bytes(*seq),
                ts: i64::from_be_bytes(*ts),
                body: body.to_vec(),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrite_models::Value;

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().expect("tempdir")
    }

    /// A record of `count` changes of series 0.
    fn record(count: usize) -> Vec<u8> {
        let value = Value::Int(7);
        super::super::record::encode(false, (0..count).map(|i| (0u32, i as Micros, &value)))
    }

    /// Opens the log in `dir` with segments of `size` bytes: the log, and
    /// what it read back.
    fn open_all(dir: &Path, size: u64) -> Result<(CommitLog, Vec<Replayed>), StoreError> {
        let mut frames = Vec::new();
        let log = CommitLog::open_sized(dir, size, |frame| {
            frames.push(frame);
            Ok(())
        })?;
        Ok((log, frames))
    }

    /// Opens the log in `dir`: the log, and the first sequences of the
    /// records it read back.
    fn open_firsts(dir: &Path, size: u64) -> Result<(CommitLog, Vec<u64>), StoreError> {
        let (log, frames) = open_all(dir, size)?;
        let firsts = frames
            .into_iter()
            .filter_map(|frame| match frame {
                Replayed::Record { first, .. } => Some(first),
                _ => None,
            })
            .collect();
        Ok((log, firsts))
    }

    fn open(dir: &Path) -> Result<CommitLog, StoreError> {
        CommitLog::open(dir, |_| Ok(()))
    }

    #[test]
    fn commits_read_back_in_order_across_segments_and_reopens() -> Result<(), StoreError> {
        let dir = tmp();
        let bytes = record(2);
        {
            let mut log = open_all(dir.path(), 100)?.0;
            let at = log.append(&[
                Frame::Name {
                    id: 0,
                    device: "boiler-1",
                    property: "temperature",
                },
                Frame::Record {
                    first: 1,
                    bytes: &bytes,
                },
                Frame::Audit {
                    seq: 9,
                    ts: -5,
                    body: b"{}",
                },
            ])?;
            assert_eq!(log.read(at[0])?, bytes);
            for first in (3..40).step_by(2) {
                log.append(&[Frame::Record {
                    first,
                    bytes: &bytes,
                }])?;
            }
            assert!(log.segments().len() > 3, "{:?}", log.segments());
        }
        let (log, frames) = open_all(dir.path(), 100)?;
        assert_eq!(
            frames[0],
            Replayed::Name {
                id: 0,
                device: "boiler-1".into(),
                property: "temperature".into()
            }
        );
        assert_eq!(
            frames[2],
            Replayed::Audit {
                seq: 9,
                ts: -5,
                body: b"{}".to_vec()
            }
        );
        assert_eq!(
            open_firsts(dir.path(), 100)?.1,
            (1..40).step_by(2).collect::<Vec<u64>>()
        );
        assert_eq!(log.records_end(), 41);
        for frame in frames {
            if let Replayed::Record {
                bytes: read, at, ..
            } = frame
            {
                assert_eq!(read, bytes);
                assert_eq!(log.read(at)?, bytes);
            }
        }
        Ok(())
    }

    #[test]
    fn an_unfinished_commit_or_a_damaged_frame_at_the_end_is_cut_at_open() -> Result<(), StoreError>
    {
        let dir = tmp();
        let bytes = record(1);
        let path = dir.path().join("00000001.log");
        let whole = {
            let mut log = open(dir.path())?;
            log.append(&[Frame::Record {
                first: 1,
                bytes: &bytes,
            }])?;
            std::fs::metadata(&path).expect("segment").len()
        };
        // A commit of two frames with only its first on disk, then one
        // whose last byte is damaged.
        let mut log = open(dir.path())?;
        log.append(&[
            Frame::Record {
                first: 2,
                bytes: &bytes,
            },
            Frame::Record {
                first: 3,
                bytes: &bytes,
            },
        ])?;
        let two = std::fs::read(&path).expect("segment");
        drop(log);
        let half = whole as usize + (two.len() - whole as usize) / 2;
        std::fs::write(&path, &two[..half]).expect("write");
        let (log, firsts) = open_firsts(dir.path(), SEGMENT_BYTES)?;
        assert_eq!(firsts, [1]);
        assert_eq!(std::fs::metadata(&path).expect("segment").len(), whole);
        drop(log);
        let mut damaged = two.clone();
        *damaged.last_mut().expect("bytes") ^= 0xff;
        std::fs::write(&path, &damaged).expect("write");
        let (mut log, firsts) = open_firsts(dir.path(), SEGMENT_BYTES)?;
        assert_eq!(firsts, [1], "a frame whose CRC fails ends the log");
        log.append(&[Frame::Record {
            first: 2,
            bytes: &bytes,
        }])?;
        drop(log);
        assert_eq!(open_firsts(dir.path(), SEGMENT_BYTES)?.1, [1, 2]);
        Ok(())
    }

    #[test]
    fn a_segment_goes_once_all_its_records_have_gone_and_the_last_never() -> Result<(), StoreError>
    {
        let dir = tmp();
        let bytes = record(10);
        let mut log = open_all(dir.path(), 1)?.0;
        for first in [1u64, 11, 21] {
            log.append(&[Frame::Record {
                first,
                bytes: &bytes,
            }])?;
        }
        assert_eq!(log.segments(), [1, 2, 3], "one commit each");
        assert_eq!(log.drop_before(20)?, 1, "11-20 is not all before 20");
        assert_eq!(log.segments(), [2, 3]);
        assert_eq!(log.drop_before(u64::MAX)?, 1);
        assert_eq!(log.segments(), [3], "appends go to the last");
        assert!(!dir.path().join("00000001.log").exists());
        drop(log);
        assert_eq!(open_firsts(dir.path(), 1)?.1, [21]);
        Ok(())
    }

    #[test]
    fn a_read_of_a_damaged_frame_is_an_error() -> Result<(), StoreError> {
        let dir = tmp();
        let bytes = record(3);
        let mut log = open(dir.path())?;
        let at = log.append(&[Frame::Record {
            first: 1,
            bytes: &bytes,
        }])?;
        let path = dir.path().join("00000001.log");
        let mut on_disk = std::fs::read(&path).expect("segment");
        on_disk[20] ^= 1;
        std::fs::write(&path, &on_disk).expect("write");
        assert!(matches!(log.read(at[0]), Err(StoreError::Corrupt(_))));
        Ok(())
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_open_without_panicking(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)
        ) {
            let dir = tmp();
            std::fs::write(dir.path().join("00000001.log"), &bytes).expect("write");
            open(dir.path()).expect("open");
        }
    }
}
