//! A commit record: one group commit's changes, the one value the `log`
//! tree gets per commit.
//!
//! Layout: a version byte, a flags byte, the count of points (varint), the
//! series id of each point (varints), then the points' times and values as a
//! [`Chunk`] in commit order. The record's key is the sequence number of its
//! first point; the others follow one by one.

use ferrite_models::Value;

use super::StoreError;
use super::chunk::{self, Chunk};
use crate::time::Micros;

const VERSION: u8 = 1;

/// Flag: the points are history already (a record converted from the old
/// outbox): they only wait for the control plane.
const OUTBOX_ONLY: u8 = 1;

/// A decoded commit record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The points are already in history blocks (a flag byte of the record).
    pub outbox_only: bool,
    /// Each point's series id.
    pub ids: Vec<u32>,
    /// Each point's time and value, in commit order.
    pub points: Vec<(Micros, Value)>,
}

/// Encodes a record of `points` (series id, time, value).
pub fn encode<'a>(
    outbox_only: bool,
    points: impl ExactSizeIterator<Item = (u32, Micros, &'a Value)> + Clone,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + points.len() * 8);
    out.push(VERSION);
    out.push(if outbox_only { OUTBOX_ONLY } else { 0 });
    chunk::put_varint(&mut out, points.len() as u64);
    for (id, _, _) in points.clone() {
        chunk::put_varint(&mut out, u64::from(id));
    }
    let mut values = Chunk::new();
    for (_, ts, value) in points {
        values.push(ts, value);
    }
    out.extend_from_slice(values.bytes());
    out
}

/// The count of changes a record holds, read without decoding the rest.
pub fn count(bytes: &[u8]) -> Option<u64> {
    let mut rest = bytes.get(2..)?;
    chunk::get_varint(&mut rest)
}

/// Decodes a record; a record that does not decode is corrupt.
pub fn decode(key: u64, bytes: &[u8]) -> Result<Record, StoreError> {
    let corrupt = || StoreError::Corrupt(format!("commit record {key}"));
    let [version, flags, rest @ ..] = bytes else {
        return Err(corrupt());
    };
    if *version != VERSION {
        return Err(StoreError::Corrupt(format!(
            "commit record {key}: version {version} (this gateway reads {VERSION})"
        )));
    }
    let mut rest = rest;
    let count = chunk::get_varint(&mut rest)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(corrupt)?;
    let mut ids = Vec::with_capacity((count as usize).min(rest.len()));
    for _ in 0..count {
        let id = chunk::get_varint(&mut rest)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(corrupt)?;
        ids.push(id);
    }
    let points = chunk::decode_in_arrival_order(rest, count).ok_or_else(corrupt)?;
    Ok(Record {
        outbox_only: flags & OUTBOX_ONLY != 0,
        ids,
        points,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_in_commit_order() -> Result<(), StoreError> {
        let values = [Value::Float(1.5), Value::Int(3), Value::String("x".into())];
        let points = [
            (7u32, 30i64, &values[0]),
            (2, 10, &values[1]),
            (900, 20, &values[2]),
        ];
        let bytes = encode(false, points.iter().copied());
        let record = decode(1, &bytes)?;
        assert!(!record.outbox_only);
        assert_eq!(record.ids, [7, 2, 900]);
        assert_eq!(
            record.points,
            [
                (30, values[0].clone()),
                (10, values[1].clone()),
                (20, values[2].clone())
            ]
        );
        assert!(decode(1, &encode(true, points.iter().copied()))?.outbox_only);
        Ok(())
    }

    #[test]
    fn junk_and_other_versions_are_corrupt() {
        assert!(decode(1, &[]).is_err());
        assert!(decode(1, &[2, 0, 0]).is_err(), "a future version");
        assert!(decode(1, &[1, 0, 5, 1]).is_err(), "short");
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_or_are_refused_without_panicking(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)
        ) {
            let _ = decode(1, &bytes);
        }
    }
}
