//! The two ends of the uplink's bookkeeping, free of I/O, so that
//! exactly-once can be tested on its own.
//!
//! - [`Batcher`] (gateway): cuts the outbox into numbered, compressed
//!   batches, each a contiguous run of outbox sequences, and learns from
//!   acknowledgements which dictionary entries the cloud has.
//! - [`Applier`] (control plane): applies a batch only if it continues
//!   exactly where the last applied one ended. A batch it already has (MQTT
//!   QoS 1 may deliver twice) is acknowledged again and not applied; a batch
//!   that leaves a gap or overlaps is refused with the sequence to resume
//!   from, which the gateway learns through `Resume` after every connect.
//!
//! Batches are checked against outbox (change) sequences rather than batch
//! numbers, so batches cut differently after a gateway restart still apply
//! exactly once.

use crate::delta::{self, Change, DeltaError, Dictionary};
use crate::outbox::{OutboxAccess, OutboxError};
use crate::wire::DeltaBatch;

/// A batch ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// Batch number.
    pub seq: u64,
    /// The outbox sequences it carries, inclusive.
    pub changes: std::ops::RangeInclusive<u64>,
    /// Dictionary entries that existed when it was encoded: all of them are
    /// known to the cloud once it acknowledges this batch.
    pub dictionary_len: usize,
    /// The zstd-compressed DeltaBatch.
    pub bytes: Vec<u8>,
    /// Cut by a cap rather than by the end of the outbox: more is waiting.
    pub full: bool,
}

/// Cuts the outbox into batches.
pub struct Batcher {
    gateway: String,
    next_seq: u64,
    dictionary: Dictionary,
    /// Most changes per batch.
    pub max_points: usize,
    /// Largest compressed batch; a larger one is cut in half.
    pub max_bytes: usize,
    /// zstd level.
    pub level: i32,
    /// The session its batches belong to (see `Hello.epoch`).
    pub epoch: u64,
}

impl Batcher {
    /// A batcher for `gateway`, numbering from 1.
    pub fn new(gateway: &str) -> Batcher {
        Batcher {
            gateway: gateway.to_string(),
            next_seq: 1,
            dictionary: Dictionary::default(),
            max_points: 32_768,
            max_bytes: 64 * 1024,
            level: 3,
            epoch: 0,
        }
    }

    /// The next batch, starting at outbox sequence `from`; `None` if the
    /// outbox holds nothing from there.
    pub fn next(
        &mut self,
        outbox: &dyn OutboxAccess,
        from: u64,
    ) -> Result<Option<Outgoing>, OutboxError> {
        let max_points = self.max_points.max(1);
        let mut entries = outbox.read(from, max_points)?;
        let mut full = entries.len() == max_points;
        loop {
            let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
                return Ok(None);
            };
            let range = first.0..=last.0;
            // A contiguous run only: a gap means entries were dropped over
            // the budget while being read; send up to it.
            if let Some(gap) = entries.windows(2).position(|w| w[1].0 != w[0].0 + 1) {
                entries.truncate(gap + 1);
                continue;
            }
            let changes: Vec<Change> = entries.iter().map(|(_, c)| c.clone()).collect();
            let mut batch = delta::encode(
                &self.gateway,
                self.next_seq,
                *range.start(),
                &changes,
                &mut self.dictionary,
            );
            batch.epoch = self.epoch;
            batch.continues_after = from.saturating_sub(1);
            batch.outbox_last = outbox.last()?;
            let bytes = delta::compress(&batch, self.level);
            if bytes.len() > self.max_bytes && entries.len() > 1 {
                entries.truncate(entries.len() / 2);
                full = true;
                continue;
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            return Ok(Some(Outgoing {
                seq,
                changes: range,
                dictionary_len: self.dictionary.len(),
                bytes,
                full,
            }));
        }
    }

    /// The cloud acknowledged `batch`: its dictionary entries need not ride
    /// along any more. (The caller trims the outbox up to the batch's last
    /// change.)
    pub fn acknowledged(&mut self, batch: &Outgoing) {
        self.dictionary.acknowledge(batch.dictionary_len);
    }
}

/// What the control plane does with a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// New changes, in outbox order per property: store them, then
    /// acknowledge `last_change`.
    New {
        /// The changes.
        changes: Vec<Change>,
        /// The last outbox sequence now applied.
        last_change: u64,
        /// Changes before this batch that the gateway dropped over its
        /// outbox budget (they will never come).
        dropped: u64,
    },
    /// Already applied (a redelivery): acknowledge again, store nothing.
    Duplicate {
        /// The last outbox sequence applied so far.
        last_change: u64,
    },
    /// Not the continuation: the gateway must resume after `last_change`.
    OutOfOrder {
        /// The last outbox sequence applied so far.
        last_change: u64,
    },
    /// From an older session (epoch) of the gateway, which has since said
    /// Hello again: ignore it. Its dictionary is not this session's.
    Stale,
}

/// The control plane's state for one gateway.
#[derive(Debug, Clone, Default)]
pub struct Applier {
    dictionary: Dictionary,
    last_change: u64,
    epoch: u64,
}

impl Applier {
    /// For the session `epoch` (from the gateway's Hello), starting after
    /// `last_change` (from the control plane's store).
    pub fn resuming(last_change: u64, epoch: u64) -> Applier {
        Applier {
            dictionary: Dictionary::default(),
            last_change,
            epoch,
        }
    }

    /// The session it belongs to.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The last outbox sequence applied.
    pub fn last_change(&self) -> u64 {
        self.last_change
    }

    /// Decides about `batch` and, if it is new, decodes it.
    pub fn apply(&mut self, batch: &DeltaBatch) -> Result<Applied, DeltaError> {
        let last_change = self.last_change;
        let end = batch
            .first_change
            .checked_add(u64::from(batch.points))
            .and_then(|e| e.checked_sub(1))
            .ok_or_else(|| DeltaError::Inconsistent("an empty or overflowing batch".into()))?;
        if end <= last_change {
            // Its dictionary may be an older one: leave ours alone.
            return Ok(Applied::Duplicate { last_change });
        }
        if batch.epoch != self.epoch {
            return Ok(Applied::Stale);
        }
        if batch.continues_after != last_change || batch.first_change <= last_change {
            return Ok(Applied::OutOfOrder { last_change });
        }
        let changes = delta::decode(batch, &mut self.dictionary)?;
        self.last_change = end;
        Ok(Applied::New {
            changes,
            last_change: end,
            dropped: batch.first_change - last_change - 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use ferrite_models::Value;

    use super::*;
    use crate::outbox::Outbox;

    /// Devices in runs: d0 ×10, d1 ×10, d2 ×10, d0 ×10, ..., shifted at
    /// 45, so that a batcher starting at change 61 meets them in another
    /// order than one starting at 1 (and numbers them differently).
    fn change(n: i64) -> Change {
        Change {
            device: format!("d{}", (n / 10 + n / 45) % 3),
            property: "t".into(),
            ts_ms: 1_000 * n,
            value: Value::Float(20.0 + n as f64 / 10.0),
        }
    }

    fn outbox() -> (tempfile::TempDir, Outbox) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .expect("sled");
        (dir, Outbox::open(&db, u64::MAX).expect("outbox"))
    }

    fn decompress(o: &Outgoing) -> DeltaBatch {
        delta::decompress(&o.bytes).expect("decompress")
    }

    #[test]
    fn every_change_arrives_once_in_order_across_redeliveries_and_a_restart() {
        let (_dir, outbox) = outbox();
        let all: Vec<Change> = (0..100).map(change).collect();
        outbox.append(&all).expect("append");
        let mut gateway = Batcher::new("gw");
        gateway.max_points = 30;
        let mut cloud = Applier::default();
        let mut received = Vec::new();
        let mut from = 1;

        // First batch: applied, and delivered twice (QoS 1).
        let b1 = gateway.next(&outbox, from).expect("read").expect("batch");
        assert_eq!(b1.changes, 1..=30);
        let applied = cloud.apply(&decompress(&b1)).expect("apply");
        let Applied::New {
            changes,
            last_change,
            dropped: 0,
        } = applied
        else {
            panic!("{applied:?}")
        };
        received.extend(changes);
        assert_eq!(last_change, 30);
        assert_eq!(
            cloud.apply(&decompress(&b1)).expect("again"),
            Applied::Duplicate { last_change: 30 }
        );
        gateway.acknowledged(&b1);
        outbox.acknowledge(30).expect("trim");
        from = 31;

        // Second batch: applied, but its ack is lost, and the gateway
        // restarts: a new batcher (numbering and dictionary from scratch)
        // cuts differently, from its last acknowledged change.
        let b2 = gateway.next(&outbox, from).expect("read").expect("batch");
        let Applied::New { changes, .. } = cloud.apply(&decompress(&b2)).expect("apply") else {
            panic!()
        };
        received.extend(changes);
        let mut restarted = Batcher::new("gw");
        restarted.max_points = 45;
        let b2_again = restarted.next(&outbox, from).expect("read").expect("batch");
        assert_eq!(b2_again.changes, 31..=75);
        // Overlaps what the cloud has: refused, with where to resume.
        assert_eq!(
            cloud.apply(&decompress(&b2_again)).expect("apply"),
            Applied::OutOfOrder { last_change: 60 }
        );
        // Resume after 60 (what Hello/Resume tells the gateway).
        let mut resumed = Batcher::new("gw");
        resumed.max_points = 45;
        let mut first_after = true;
        while let Some(b) = resumed
            .next(&outbox, cloud.last_change() + 1)
            .expect("read")
        {
            if first_after {
                let dictionary = decompress(&b).dictionary;
                assert_eq!(
                    dictionary[0].device, "d1",
                    "numbered afresh: {dictionary:?}"
                );
                first_after = false;
            }
            match cloud.apply(&decompress(&b)).expect("apply") {
                Applied::New {
                    changes,
                    last_change,
                    dropped: 0,
                } => {
                    received.extend(changes);
                    resumed.acknowledged(&b);
                    outbox.acknowledge(last_change).expect("trim");
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(cloud.last_change(), 100);
        // Every change once; per property in order.
        assert_eq!(received.len(), 100);
        for d in 0..3 {
            assert!(all.iter().any(|c| c.device == format!("d{d}")));
            let sent: Vec<&Change> = all.iter().filter(|c| c.device == format!("d{d}")).collect();
            let got: Vec<&Change> = received
                .iter()
                .filter(|c| c.device == format!("d{d}"))
                .collect();
            assert_eq!(sent, got);
        }
        assert_eq!(outbox.backlog(), 0);
    }

    #[test]
    fn a_gap_is_refused_and_the_dictionary_stops_riding_once_acknowledged() {
        let (_dir, outbox) = outbox();
        // Three devices among the first four changes.
        let changes: Vec<Change> = (0..10)
            .map(|n| Change {
                device: format!("d{}", n % 3),
                ..change(n)
            })
            .collect();
        outbox.append(&changes).expect("append");
        let mut gateway = Batcher::new("gw");
        gateway.max_points = 4;
        let first = gateway.next(&outbox, 1).expect("read").expect("batch");
        assert_eq!(decompress(&first).dictionary.len(), 3);
        let second = gateway.next(&outbox, 5).expect("read").expect("batch");
        assert_eq!(
            decompress(&second).dictionary.len(),
            3,
            "not acknowledged yet"
        );
        let mut cloud = Applier::default();
        assert_eq!(
            cloud.apply(&decompress(&second)).expect("apply"),
            Applied::OutOfOrder { last_change: 0 },
            "1..=4 is missing"
        );
        gateway.acknowledged(&first);
        let third = gateway.next(&outbox, 9).expect("read").expect("batch");
        assert!(decompress(&third).dictionary.is_empty());
        assert_eq!(gateway.next(&outbox, 11).expect("read"), None);
    }

    #[test]
    fn changes_dropped_at_the_edge_are_counted_and_old_sessions_ignored() {
        let (_dir, outbox) = outbox();
        outbox
            .append(&(0..10).map(change).collect::<Vec<_>>())
            .expect("append");
        // 1..=4 vanish without the cloud having them (as when the outbox
        // drops its oldest over the budget).
        outbox.acknowledge(4).expect("drop");
        let mut gateway = Batcher::new("gw");
        gateway.epoch = 9;
        let b = gateway.next(&outbox, 1).expect("read").expect("batch");
        assert_eq!(b.changes, 5..=10);
        let mut old_session = Applier::resuming(0, 8);
        assert_eq!(
            old_session.apply(&decompress(&b)).expect("apply"),
            Applied::Stale
        );
        let mut cloud = Applier::resuming(0, 9);
        let Applied::New {
            changes, dropped, ..
        } = cloud.apply(&decompress(&b)).expect("apply")
        else {
            panic!("not applied")
        };
        assert_eq!((changes.len(), dropped), (6, 4));
    }

    #[test]
    fn a_batch_over_the_byte_cap_is_cut() {
        let (_dir, outbox) = outbox();
        let noisy: Vec<Change> = (0..2000)
            .map(|n| Change {
                value: Value::String(format!(
                    "{:x}",
                    (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                )),
                ..change(n)
            })
            .collect();
        outbox.append(&noisy).expect("append");
        let mut gateway = Batcher::new("gw");
        gateway.max_bytes = 4096;
        let b = gateway.next(&outbox, 1).expect("read").expect("batch");
        assert!(b.bytes.len() <= 4096, "{} bytes", b.bytes.len());
        assert!(*b.changes.end() < 2000, "cut: {:?}", b.changes);
    }
}
