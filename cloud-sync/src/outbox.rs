//! The outbox: changes waiting for the control plane's acknowledgement, in
//! sled, in order.
//!
//! Each change gets the next sequence number (rising across restarts: the
//! high-water mark is kept beside the entries). Entries go only when the
//! control plane acknowledges them ([`Outbox::acknowledge`]), or when the
//! outbox is over its disk budget: then the oldest go first, and
//! [`Outbox::dropped`] counts them, so that a loss is never silent.
//!
//! The outbox does not flush: it lives in the gateway's one sled `Db`, and
//! the store's commit makes a batch of history and outbox entries durable
//! together.

use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU64, Ordering};

use ferrite_models::Value;

use crate::delta::Change;
use crate::wire::JournalEvent;

/// Outbox failures.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// sled failed (a full disk, say).
    #[error("outbox I/O failed: {0}")]
    Io(#[from] sled::Error),
    /// Another store's files failed (the gateway's commit log).
    #[error("outbox storage failed: {0}")]
    Storage(String),
    /// An entry does not decode.
    #[error("corrupt outbox entry {0}")]
    Corrupt(u64),
}

/// The outbox on two sled trees: `outbox` (sequence → change) and
/// `outbox_meta` (the next sequence number).
pub struct Outbox {
    entries: sled::Tree,
    meta: sled::Tree,
    /// The next sequence number, and the bytes the entries take.
    state: Mutex<(u64, u64)>,
    budget: u64,
    dropped: AtomicU64,
}

/// The tree beside the entries, and its keys (u64, big-endian, each). The
/// gateway's store keeps the same tree and keys, so that a data dir written
/// with this outbox upgrades in place.
pub const META_TREE: &str = "outbox_meta";
/// The next sequence number to hand out.
pub const NEXT: &[u8] = b"next";
/// The highest sequence the control plane acknowledged.
pub const ACKED: &[u8] = b"acked";
/// The highest desired-state version applied.
pub const DESIRED: &[u8] = b"desired_version";
/// The newest config bundle version handled.
pub const CONFIG: &[u8] = b"config_version";

/// The u64 at `key` of the meta tree, if any.
pub fn meta_u64(meta: &sled::Tree, key: &[u8]) -> Result<Option<u64>, OutboxError> {
    Ok(meta
        .get(key)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes))
}

impl Outbox {
    /// Opens the outbox in `db`, keeping at most `budget` bytes of entries.
    pub fn open(db: &sled::Db, budget: u64) -> Result<Outbox, OutboxError> {
        let entries = db.open_tree("outbox")?;
        let meta = db.open_tree(META_TREE)?;
        let stored = meta_u64(&meta, NEXT)?.unwrap_or(1);
        let last = entries
            .last()?
            .and_then(|(k, _)| <[u8; 8]>::try_from(k.as_ref()).ok())
            .map_or(0, u64::from_be_bytes);
        let mut bytes = 0u64;
        for item in entries.iter() {
            let (k, v) = item?;
            bytes += (k.len() + v.len()) as u64;
        }
        Ok(Outbox {
            entries,
            meta,
            state: Mutex::new((stored.max(last + 1), bytes)),
            budget,
            dropped: AtomicU64::new(0),
        })
    }

    /// Appends `changes` in order; returns the sequence of the first. Over
    /// the budget, the oldest entries make room.
    pub fn append(&self, changes: &[Change]) -> Result<u64, OutboxError> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let first = state.0;
        let mut buf = Vec::new();
        for change in changes {
            buf.clear();
            encode(change, &mut buf);
            self.entries.insert(state.0.to_be_bytes(), buf.as_slice())?;
            state.1 += 8 + buf.len() as u64;
            state.0 += 1;
        }
        self.meta.insert(NEXT, &state.0.to_be_bytes())?;
        while state.1 > self.budget {
            let Some((k, v)) = self.entries.pop_min()? else {
                break;
            };
            state.1 = state.1.saturating_sub((k.len() + v.len()) as u64);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        Ok(first)
    }

    /// The newest `n` entries, newest first.
    pub fn newest(&self, n: usize) -> Result<Vec<(u64, Change)>, OutboxError> {
        self.entries.iter().rev().take(n).map(entry).collect()
    }

    /// Up to `max` entries from sequence `from` on, in order.
    pub fn read(&self, from: u64, max: usize) -> Result<Vec<(u64, Change)>, OutboxError> {
        self.entries
            .range(from.to_be_bytes()..)
            .take(max)
            .map(entry)
            .collect()
    }

    /// The control plane has every change up to and including `seq`: they
    /// go. Returns how many.
    pub fn acknowledge(&self, seq: u64) -> Result<u64, OutboxError> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut removed = 0;
        while let Some((k, v)) = self.entries.first()? {
            let at = <[u8; 8]>::try_from(k.as_ref()).map_or(u64::MAX, u64::from_be_bytes);
            if at > seq {
                break;
            }
            self.entries.remove(&k)?;
            state.1 = state.1.saturating_sub((k.len() + v.len()) as u64);
            removed += 1;
        }
        if seq > self.acknowledged()? {
            self.meta.insert(ACKED, &seq.to_be_bytes())?;
        }
        Ok(removed)
    }

    /// The highest sequence the control plane has acknowledged (0 before the
    /// first acknowledgement). Kept beside the entries, so it survives
    /// restarts with them.
    pub fn acknowledged(&self) -> Result<u64, OutboxError> {
        Ok(meta_u64(&self.meta, ACKED)?.unwrap_or(0))
    }

    /// The newest sequence handed out (0 if none yet).
    pub fn last(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .saturating_sub(1)
    }

    /// The highest desired-state version of the device twin applied here.
    pub fn desired_version(&self) -> Result<u64, OutboxError> {
        Ok(meta_u64(&self.meta, DESIRED)?.unwrap_or(0))
    }

    /// Records that desired-state `version` is applied.
    pub fn set_desired_version(&self, version: u64) -> Result<(), OutboxError> {
        self.meta.insert(DESIRED, &version.to_be_bytes())?;
        Ok(())
    }

    /// The newest config bundle version handled here (applied or refused).
    pub fn config_version(&self) -> Result<u64, OutboxError> {
        Ok(meta_u64(&self.meta, CONFIG)?.unwrap_or(0))
    }

    /// Records that config bundle `version` is handled.
    pub fn set_config_version(&self, version: u64) -> Result<(), OutboxError> {
        self.meta.insert(CONFIG, &version.to_be_bytes())?;
        Ok(())
    }

    /// Entries waiting.
    pub fn backlog(&self) -> usize {
        self.entries.len()
    }

    /// Bytes the waiting entries take.
    pub fn bytes(&self) -> u64 {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).1
    }

    /// Entries dropped to stay within the budget since opening.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// What the uplink needs from wherever the outbox lives: the gateway keeps it
/// inside its store, behind the store's lock, so that the uplink reads only
/// what a commit has made durable.
pub trait OutboxAccess: Send + Sync + 'static {
    /// Up to `max` entries from sequence `from` on, in order.
    fn read(&self, from: u64, max: usize) -> Result<Vec<(u64, Change)>, OutboxError>;
    /// The control plane has every change up to `seq`.
    fn acknowledge(&self, seq: u64) -> Result<(), OutboxError>;
    /// The highest acknowledged sequence.
    fn acknowledged(&self) -> Result<u64, OutboxError>;
    /// The newest sequence handed out.
    fn last(&self) -> Result<u64, OutboxError>;
    /// The highest desired-state version applied.
    fn desired_version(&self) -> Result<u64, OutboxError>;
    /// Records (durably, before it returns) that `version` is applied.
    fn set_desired_version(&self, version: u64) -> Result<(), OutboxError>;
    /// The newest config bundle version handled.
    fn config_version(&self) -> Result<u64, OutboxError>;
    /// Records (durably, before it returns) that config bundle `version`
    /// is handled.
    fn set_config_version(&self, version: u64) -> Result<(), OutboxError>;
    /// Up to `max` journal events after sequence `seq`, in order, for the
    /// control plane. None by default: an outbox without a journal.
    fn events_after(&self, _seq: u64, _max: usize) -> Result<Vec<JournalEvent>, OutboxError> {
        Ok(Vec::new())
    }
    /// The highest journal event sequence the control plane acknowledged.
    fn events_acked(&self) -> Result<u64, OutboxError> {
        Ok(0)
    }
    /// The control plane has every journal event up to `seq`.
    fn acknowledge_events(&self, _seq: u64) -> Result<(), OutboxError> {
        Ok(())
    }
}

impl OutboxAccess for Outbox {
    fn read(&self, from: u64, max: usize) -> Result<Vec<(u64, Change)>, OutboxError> {
        Outbox::read(self, from, max)
    }
    fn acknowledge(&self, seq: u64) -> Result<(), OutboxError> {
        Outbox::acknowledge(self, seq).map(drop)
    }
    fn acknowledged(&self) -> Result<u64, OutboxError> {
        Outbox::acknowledged(self)
    }
    fn last(&self) -> Result<u64, OutboxError> {
        Ok(Outbox::last(self))
    }
    fn desired_version(&self) -> Result<u64, OutboxError> {
        Outbox::desired_version(self)
    }
    fn set_desired_version(&self, version: u64) -> Result<(), OutboxError> {
        Outbox::set_desired_version(self, version)?;
        self.meta.flush()?;
        Ok(())
    }
    fn config_version(&self) -> Result<u64, OutboxError> {
        Outbox::config_version(self)
    }
    fn set_config_version(&self, version: u64) -> Result<(), OutboxError> {
        Outbox::set_config_version(self, version)?;
        self.meta.flush()?;
        Ok(())
    }
}

/// ts (8, BE) + device (1 + n) + property (1 + n) + the value's stored form
/// ([`Value::encode_into`]).
fn encode(change: &Change, out: &mut Vec<u8>) {
    out.extend_from_slice(&change.ts_ms.to_be_bytes());
    for name in [&change.device, &change.property] {
        let bytes = &name.as_bytes()[..name.len().min(255)];
        out.push(u8::try_from(bytes.len()).unwrap_or(255));
        out.extend_from_slice(bytes);
    }
    change.value.encode_into(out);
}

/// An outbox record as its sequence and change.
fn entry(item: sled::Result<(sled::IVec, sled::IVec)>) -> Result<(u64, Change), OutboxError> {
    let (k, v) = item?;
    let seq = <[u8; 8]>::try_from(k.as_ref())
        .map(u64::from_be_bytes)
        .map_err(|_| OutboxError::Corrupt(0))?;
    Ok((seq, decode(&v).ok_or(OutboxError::Corrupt(seq))?))
}

fn decode(bytes: &[u8]) -> Option<Change> {
    let ts_ms = i64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    let mut rest = &bytes[8..];
    let mut name = || -> Option<String> {
        let (len, tail) = rest.split_first()?;
        let text = tail.get(..usize::from(*len))?;
        rest = &tail[usize::from(*len)..];
        String::from_utf8(text.to_vec()).ok()
    };
    let device = name()?;
    let property = name()?;
    let value = Value::decode(rest)?;
    Some(Change {
        device,
        property,
        ts_ms,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(n: i64) -> Change {
        Change {
            device: "boiler-1".into(),
            property: "temperature".into(),
            ts_ms: 1_000 + n,
            value: Value::Float(20.0 + n as f64 / 10.0),
        }
    }

    fn db() -> (tempfile::TempDir, sled::Db) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .expect("sled");
        (dir, db)
    }

    #[test]
    fn changes_come_back_in_order_until_acknowledged() -> Result<(), OutboxError> {
        let (_dir, db) = db();
        let outbox = Outbox::open(&db, u64::MAX)?;
        let all: Vec<Change> = (0..10).map(change).collect();
        assert_eq!(outbox.append(&all[..4])?, 1);
        assert_eq!(outbox.append(&all[4..])?, 5);
        let read = outbox.read(1, 100)?;
        assert_eq!(read.len(), 10);
        assert!(
            read.iter()
                .enumerate()
                .all(|(i, (seq, c))| *seq == i as u64 + 1 && *c == all[i])
        );
        assert_eq!(
            outbox
                .read(8, 2)?
                .iter()
                .map(|(s, _)| *s)
                .collect::<Vec<_>>(),
            [8, 9]
        );
        assert_eq!(outbox.acknowledge(6)?, 6);
        assert_eq!(outbox.backlog(), 4);
        assert_eq!(
            outbox.read(0, 100)?[0].0,
            7,
            "nothing acknowledged comes back"
        );
        assert_eq!(outbox.acknowledge(6)?, 0, "a repeated ack is harmless");
        Ok(())
    }

    #[test]
    fn numbering_keeps_rising_across_a_reopen_even_when_empty() -> Result<(), OutboxError> {
        let (_dir, db) = db();
        let outbox = Outbox::open(&db, u64::MAX)?;
        outbox.append(&[change(0), change(1), change(2)])?;
        outbox.acknowledge(3)?;
        drop(outbox);
        // What a restart sees: the same trees, a fresh outbox.
        let outbox = Outbox::open(&db, u64::MAX)?;
        assert_eq!(outbox.backlog(), 0);
        assert_eq!(outbox.append(&[change(3)])?, 4, "not 1 again");
        Ok(())
    }

    #[test]
    fn over_the_budget_the_oldest_go_and_are_counted() -> Result<(), OutboxError> {
        let (_dir, db) = db();
        let one = {
            let mut buf = Vec::new();
            encode(&change(0), &mut buf);
            8 + buf.len() as u64
        };
        let outbox = Outbox::open(&db, one * 5)?;
        outbox.append(&(0..8).map(change).collect::<Vec<_>>())?;
        assert_eq!(outbox.backlog(), 5);
        assert_eq!(outbox.dropped(), 3);
        assert_eq!(outbox.read(0, 1)?[0].0, 4, "the oldest went");
        assert!(outbox.bytes() <= one * 5);
        Ok(())
    }

    #[test]
    fn every_value_type_round_trips_and_junk_is_refused() {
        for value in [
            Value::Bool(true),
            Value::Int(-7),
            Value::Float(2.5),
            Value::String("ü".into()),
        ] {
            let c = Change { value, ..change(0) };
            let mut buf = Vec::new();
            encode(&c, &mut buf);
            assert_eq!(decode(&buf), Some(c));
        }
        assert_eq!(decode(&[1, 2, 3]), None);
        assert_eq!(decode(&[0; 8]), None);
        let mut buf = Vec::new();
        encode(&change(0), &mut buf);
        buf.push(0);
        assert_eq!(decode(&buf), None, "a float with a stray byte");
    }
}
