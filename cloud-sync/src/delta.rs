//! Delta batches: a run of changes → [`DeltaBatch`] → protobuf → zstd, and
//! back.
//!
//! Edge links are metered, so the encoding works for its bytes:
//! - devices and properties travel once, as dictionary entries, and then
//!   as small ids;
//! - points are grouped per property into columns (times, then values), and
//!   times and numbers are deltas within the series;
//! - floats that are short decimals (sensor readings: 21.4 °C, 230.1 V) go as
//!   scaled integer deltas, exactly; other floats as they are;
//! - zstd then squeezes the runs the columns line up.
//!
//! Timestamps travel in milliseconds.

use std::collections::HashMap;

use ferrite_models::Value;
use ferrite_proto::sync::v1::{DeltaBatch, DictEntry, Series};
use prost::Message;

/// Largest batch, decompressed, that [`decompress`] accepts: a guard
/// against zstd bombs.
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// Most digits after the point a float may have to go as a scaled integer.
pub const MAX_DECIMALS: u32 = 6;

/// One change to sync.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Device name.
    pub device: String,
    /// Property name.
    pub property: String,
    /// When it was read, in milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// The new value.
    pub value: Value,
}

/// Why a batch cannot be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeltaError {
    /// zstd refused the bytes, or they decompress to more than
    /// [`MAX_BATCH_BYTES`].
    #[error("the batch does not decompress: {0}")]
    Compression(String),
    /// The protobuf does not decode.
    #[error("the batch does not decode: {0}")]
    Protobuf(String),
    /// The batch contradicts itself (columns of different lengths, an
    /// unknown id, an overflow).
    #[error("the batch is inconsistent: {0}")]
    Inconsistent(String),
}

/// The ids of device properties, as one side of the link knows them. The
/// gateway assigns ids; the cloud learns them from the batches.
#[derive(Debug, Clone, Default)]
pub struct Dictionary {
    ids: HashMap<(String, String), u32>,
    names: Vec<(String, String)>,
    /// How many entries (from id 0) the other side has acknowledged.
    acked: usize,
}

impl Dictionary {
    /// The id of `device.property`, assigning the next one if new.
    pub fn id(&mut self, device: &str, property: &str) -> u32 {
        if let Some(id) = self.ids.get(&(device.to_string(), property.to_string())) {
            return *id;
        }
        let id = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        self.ids
            .insert((device.to_string(), property.to_string()), id);
        self.names.push((device.to_string(), property.to_string()));
        id
    }

    /// The name of `id`.
    pub fn name(&self, id: u32) -> Option<&(String, String)> {
        self.names.get(usize::try_from(id).ok()?)
    }

    /// The other side has every entry below `count`.
    pub fn acknowledge(&mut self, count: usize) {
        self.acked = self.acked.max(count.min(self.names.len()));
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Learns entries sent by the other side. An id must come in order
    /// (the next one) or repeat a known entry exactly.
    pub fn learn(&mut self, entries: &[DictEntry]) -> Result<(), DeltaError> {
        for e in entries {
            match self.name(e.id) {
                Some((d, p)) if *d == e.device && *p == e.property => {}
                Some((d, p)) => {
                    return Err(DeltaError::Inconsistent(format!(
                        "id {} is {d}.{p}, not {}.{}",
                        e.id, e.device, e.property
                    )));
                }
                None if e.id as usize == self.names.len() => {
                    self.id(&e.device, &e.property);
                }
                None => {
                    return Err(DeltaError::Inconsistent(format!(
                        "id {} skips ahead of {}",
                        e.id,
                        self.names.len()
                    )));
                }
            }
        }
        Ok(())
    }

    fn unacknowledged(&self) -> Vec<DictEntry> {
        self.names
            .iter()
            .enumerate()
            .skip(self.acked)
            .map(|(id, (device, property))| DictEntry {
                id: u32::try_from(id).unwrap_or(u32::MAX),
                device: device.clone(),
                property: property.clone(),
            })
            .collect()
    }
}

/// Builds the batch `seq` of `gateway` from `changes` (in outbox order;
/// `first_change` is the outbox sequence of the first). Dictionary entries
/// the cloud has not acknowledged ride along.
pub fn encode(
    gateway: &str,
    seq: u64,
    first_change: u64,
    changes: &[Change],
    dictionary: &mut Dictionary,
) -> DeltaBatch {
    let base_ts_ms = changes.first().map_or(0, |c| c.ts_ms);
    // Series in order of first appearance; points in outbox order.
    let mut order: Vec<u32> = Vec::new();
    let mut by_key: HashMap<u32, Vec<&Change>> = HashMap::new();
    for change in changes {
        let key = dictionary.id(&change.device, &change.property);
        by_key
            .entry(key)
            .or_insert_with(|| {
                order.push(key);
                Vec::new()
            })
            .push(change);
    }
    let mut series = Vec::with_capacity(order.len());
    for key in order {
        let points = by_key.remove(&key).unwrap_or_default();
        // A property's type is fixed by its model; should a series mix
        // types anyway, each run of one type becomes its own series, which
        // keeps the order within the property.
        let mut run_start = 0;
        for i in 1..=points.len() {
            let boundary = i == points.len()
                || std::mem::discriminant(&points[i].value)
                    != std::mem::discriminant(&points[run_start].value);
            if boundary {
                series.push(encode_series(key, base_ts_ms, &points[run_start..i]));
                run_start = i;
            }
        }
    }
    DeltaBatch {
        gateway_id: gateway.to_string(),
        seq,
        first_change,
        base_ts_ms,
        dictionary: dictionary.unacknowledged(),
        series,
        points: u32::try_from(changes.len()).unwrap_or(u32::MAX),
    }
}

fn encode_series(key: u32, base_ts_ms: i64, points: &[&Change]) -> Series {
    let mut s = Series {
        key,
        ..Series::default()
    };
    let mut prev_ts = base_ts_ms;
    for p in points {
        s.ts_delta_ms.push(p.ts_ms.wrapping_sub(prev_ts));
        prev_ts = p.ts_ms;
    }
    match points.first().map(|p| &p.value) {
        Some(Value::Bool(_)) => {
            s.bools = points
                .iter()
                .filter_map(|p| match p.value {
                    Value::Bool(b) => Some(b),
                    _ => None,
                })
                .collect();
        }
        Some(Value::Int(_)) => {
            let ints: Vec<i64> = points
                .iter()
                .filter_map(|p| match p.value {
                    Value::Int(i) => Some(i),
                    _ => None,
                })
                .collect();
            s.int_deltas = deltas(&ints);
        }
        Some(Value::Float(_)) => {
            let floats: Vec<f64> = points
                .iter()
                .filter_map(|p| match p.value {
                    Value::Float(f) => Some(f),
                    _ => None,
                })
                .collect();
            match decimals_of(&floats) {
                Some((decimals, scaled)) => {
                    s.decimals = decimals;
                    s.decimal_deltas = deltas(&scaled);
                }
                None => s.floats = floats,
            }
        }
        Some(Value::String(_)) => {
            s.strings = points
                .iter()
                .filter_map(|p| match &p.value {
                    Value::String(t) => Some(t.clone()),
                    _ => None,
                })
                .collect();
        }
        None => {}
    }
    s
}

fn deltas(values: &[i64]) -> Vec<i64> {
    let mut prev = 0i64;
    values
        .iter()
        .map(|v| {
            let d = v.wrapping_sub(prev);
            prev = *v;
            d
        })
        .collect()
}

/// The fewest decimals (up to [`MAX_DECIMALS`]) with which every value is
/// exactly `scaled / 10^decimals`, and the scaled values.
fn decimals_of(values: &[f64]) -> Option<(u32, Vec<i64>)> {
    'decimals: for decimals in 0..=MAX_DECIMALS {
        let factor = 10f64.powi(i32::try_from(decimals).ok()?);
        let mut scaled = Vec::with_capacity(values.len());
        for v in values {
            let s = (v * factor).round();
            // Exact round trip, within the integers f64 holds exactly.
            if !s.is_finite() || s.abs() > 9.0e15 || s / factor != *v {
                continue 'decimals;
            }
            // `s` is a whole number below 2^53 here, so the cast is exact.
            #[allow(clippy::cast_possible_truncation)]
            scaled.push(s as i64);
        }
        return Some((decimals, scaled));
    }
    None
}

/// Reads a batch back into changes, learning its dictionary entries.
pub fn decode(batch: &DeltaBatch, dictionary: &mut Dictionary) -> Result<Vec<Change>, DeltaError> {
    dictionary.learn(&batch.dictionary)?;
    let mut out = Vec::with_capacity(batch.points as usize);
    for s in &batch.series {
        let (device, property) = dictionary
            .name(s.key)
            .cloned()
            .ok_or_else(|| DeltaError::Inconsistent(format!("unknown id {}", s.key)))?;
        let n = s.ts_delta_ms.len();
        let values = series_values(s)?;
        if values.len() != n {
            return Err(DeltaError::Inconsistent(format!(
                "series {} has {n} times but {} values",
                s.key,
                values.len()
            )));
        }
        let mut ts = batch.base_ts_ms;
        for (delta, value) in s.ts_delta_ms.iter().zip(values) {
            // The inverse of the encoder's wrapping differences.
            ts = ts.wrapping_add(*delta);
            out.push(Change {
                device: device.clone(),
                property: property.clone(),
                ts_ms: ts,
                value,
            });
        }
    }
    if out.len() != batch.points as usize {
        return Err(DeltaError::Inconsistent(format!(
            "the batch says {} points but holds {}",
            batch.points,
            out.len()
        )));
    }
    Ok(out)
}

fn series_values(s: &Series) -> Result<Vec<Value>, DeltaError> {
    let columns = [
        !s.bools.is_empty(),
        !s.int_deltas.is_empty(),
        !s.decimal_deltas.is_empty(),
        !s.floats.is_empty(),
        !s.strings.is_empty(),
    ];
    if columns.iter().filter(|c| **c).count() > 1 {
        return Err(DeltaError::Inconsistent(format!(
            "series {} has more than one value column",
            s.key
        )));
    }
    // The inverse of the encoder's wrapping differences.
    let undelta = |d: &[i64]| -> Result<Vec<i64>, DeltaError> {
        let mut acc = 0i64;
        Ok(d.iter()
            .map(|d| {
                acc = acc.wrapping_add(*d);
                acc
            })
            .collect())
    };
    Ok(if !s.bools.is_empty() {
        s.bools.iter().map(|b| Value::Bool(*b)).collect()
    } else if !s.int_deltas.is_empty() {
        undelta(&s.int_deltas)?
            .into_iter()
            .map(Value::Int)
            .collect()
    } else if !s.decimal_deltas.is_empty() {
        if s.decimals > MAX_DECIMALS {
            return Err(DeltaError::Inconsistent(format!(
                "{} decimals is more than {MAX_DECIMALS}",
                s.decimals
            )));
        }
        let factor = 10f64.powi(i32::try_from(s.decimals).unwrap_or(0));
        undelta(&s.decimal_deltas)?
            .into_iter()
            // Exact below 2^53, which the encoder guarantees; a foreign
            // batch beyond it only loses precision.
            .map(|v| Value::Float(v as f64 / factor))
            .collect()
    } else if !s.floats.is_empty() {
        s.floats.iter().map(|f| Value::Float(*f)).collect()
    } else {
        s.strings.iter().cloned().map(Value::String).collect()
    })
}

/// Protobuf, then zstd at `level` (3 is zstd's default; 19 its strongest).
pub fn compress(batch: &DeltaBatch, level: i32) -> Vec<u8> {
    let raw = batch.encode_to_vec();
    // Compressing an in-memory buffer only fails on an invalid level, which
    // zstd clamps; keep the raw frame as a (still valid) fallback.
    zstd::bulk::compress(&raw, level)
        .unwrap_or_else(|_| zstd::bulk::compress(&raw, 0).unwrap_or_default())
}

/// zstd, then protobuf; at most [`MAX_BATCH_BYTES`] decompressed.
pub fn decompress(bytes: &[u8]) -> Result<DeltaBatch, DeltaError> {
    let raw = zstd::bulk::decompress(bytes, MAX_BATCH_BYTES)
        .map_err(|e| DeltaError::Compression(e.to_string()))?;
    DeltaBatch::decode(raw.as_slice()).map_err(|e| DeltaError::Protobuf(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn change(device: &str, property: &str, ts_ms: i64, value: Value) -> Change {
        Change {
            device: device.into(),
            property: property.into(),
            ts_ms,
            value,
        }
    }

    fn round_trip(changes: &[Change]) -> Vec<Change> {
        let mut gateway = Dictionary::default();
        let batch = encode("gw", 1, 1, changes, &mut gateway);
        let bytes = compress(&batch, 3);
        let mut cloud = Dictionary::default();
        decode(&decompress(&bytes).expect("decompress"), &mut cloud).expect("decode")
    }

    /// What decode gives: the changes, grouped per property in order of
    /// first appearance (per-property order is what the cloud keeps).
    fn grouped(changes: &[Change]) -> Vec<Change> {
        let mut keys: Vec<(String, String)> = Vec::new();
        for c in changes {
            let k = (c.device.clone(), c.property.clone());
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        keys.iter()
            .flat_map(|(d, p)| {
                changes
                    .iter()
                    .filter(move |c| c.device == *d && c.property == *p)
            })
            .cloned()
            .collect()
    }

    #[test]
    fn every_type_round_trips_and_order_holds_per_property() {
        let changes = vec![
            change("b", "t", 1_000, Value::Float(21.5)),
            change("b", "on", 1_000, Value::Bool(true)),
            change("m", "e", 1_001, Value::Int(1_200_000)),
            change("b", "t", 2_000, Value::Float(21.7)),
            change("b", "name", 2_000, Value::String("boiler ü".into())),
            change("m", "e", 2_001, Value::Int(1_199_999)),
            change("b", "x", 3_000, Value::Float(1.0 / 3.0)),
            change("b", "t", 0, Value::Float(-40.05)),
        ];
        assert_eq!(round_trip(&changes), grouped(&changes));
    }

    #[test]
    fn short_decimals_go_as_scaled_integers_and_others_exactly() {
        let mut dict = Dictionary::default();
        let batch = encode(
            "gw",
            1,
            1,
            &[
                change("a", "t", 0, Value::Float(21.4)),
                change("a", "t", 1, Value::Float(21.5)),
                change("a", "u", 0, Value::Float(0.1 + 0.2)),
            ],
            &mut dict,
        );
        assert_eq!(batch.series[0].decimals, 1);
        assert_eq!(batch.series[0].decimal_deltas, [214, 1]);
        assert_eq!(batch.series[1].floats, [0.1 + 0.2], "not a short decimal");
    }

    #[test]
    fn the_dictionary_rides_along_until_acknowledged() {
        let mut dict = Dictionary::default();
        let first = encode("gw", 1, 1, &[change("a", "t", 0, Value::Int(1))], &mut dict);
        assert_eq!(first.dictionary.len(), 1);
        let again = encode("gw", 2, 2, &[change("a", "t", 1, Value::Int(2))], &mut dict);
        assert_eq!(again.dictionary.len(), 1, "not acknowledged yet");
        dict.acknowledge(1);
        let later = encode("gw", 3, 3, &[change("a", "t", 2, Value::Int(3))], &mut dict);
        assert!(later.dictionary.is_empty());
        // A cloud that missed the entry cannot read the batch.
        let mut cloud = Dictionary::default();
        assert!(matches!(
            decode(&later, &mut cloud),
            Err(DeltaError::Inconsistent(_))
        ));
        assert!(decode(&first, &mut cloud).is_ok());
        assert!(decode(&later, &mut cloud).is_ok());
    }

    #[test]
    fn hostile_batches_are_errors() {
        assert!(matches!(
            decompress(b"not zstd"),
            Err(DeltaError::Compression(_))
        ));
        // A bomb: 64 MiB of zeros compresses to a few KiB.
        let bomb = zstd::bulk::compress(&vec![0u8; 64 * 1024 * 1024], 19).expect("compress");
        assert!(matches!(decompress(&bomb), Err(DeltaError::Compression(_))));
        let garbage = zstd::bulk::compress(&[0xff; 64], 3).expect("compress");
        assert!(matches!(decompress(&garbage), Err(DeltaError::Protobuf(_))));
        let mut dict = Dictionary::default();
        let mut batch = encode("gw", 1, 1, &[change("a", "t", 0, Value::Int(1))], &mut dict);
        batch.series[0].ts_delta_ms.push(5);
        assert!(
            decode(&batch, &mut Dictionary::default()).is_err(),
            "times without values"
        );
        batch.series[0].ts_delta_ms.pop();
        batch.series[0].bools.push(true);
        assert!(
            decode(&batch, &mut Dictionary::default()).is_err(),
            "two value columns"
        );
        batch.series[0].bools.clear();
        batch.points = 2;
        assert!(
            decode(&batch, &mut Dictionary::default()).is_err(),
            "a wrong point count"
        );
        batch.points = 1;
        batch.series[0].key = 7;
        assert!(
            decode(&batch, &mut Dictionary::default()).is_err(),
            "an unknown id"
        );
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            any::<f64>()
                .prop_filter("NaN never equals itself", |f| !f.is_nan())
                .prop_map(Value::Float),
            (-100_000i64..100_000).prop_map(|i| Value::Float(i as f64 / 10.0)),
            ".{0,8}".prop_map(Value::String),
        ]
    }

    proptest! {
        #[test]
        fn any_changes_round_trip(
            raw in proptest::collection::vec((0u8..4, 0u8..3, any::<i64>(), value()), 0..60)
        ) {
            let changes: Vec<Change> = raw
                .into_iter()
                .map(|(d, p, ts, v)| change(&format!("d{d}"), &format!("p{p}"), ts, v))
                .collect();
            prop_assert_eq!(round_trip(&changes), grouped(&changes));
        }

        #[test]
        fn any_bytes_are_an_error_or_a_batch_never_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(batch) = decompress(&bytes) {
                let _ = decode(&batch, &mut Dictionary::default());
            }
            let _ = DeltaBatch::decode(bytes.as_slice()).map(|b| decode(&b, &mut Dictionary::default()));
        }
    }
}
