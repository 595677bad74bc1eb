//! Delta batches: a run of changes → [`DeltaBatch`] → protobuf → zstd, and
//! back.
//!
//! Edge links are metered, so the encoding works for its bytes:
//! - devices and properties travel once, as dictionary entries, and then
//!   as small ids;
//! - points are grouped per property and laid out column by column (keys,
//!   counts, encodings, times, values); times and numbers are deltas within
//!   the group;
//! - floats that are short decimals (sensor readings: 21.4 °C, 230.1 V) go as
//!   scaled integer deltas, exactly; other floats as they are;
//! - zstd then squeezes the runs the columns line up.
//!
//! Timestamps travel in milliseconds.

use std::collections::{BTreeMap, HashMap};

use ferrite_models::Value;
use ferrite_proto::sync::v1::{DeltaBatch, DictEntry};
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
    /// (the next one) or repeat a known entry exactly. Entries that start at
    /// id 0 start a new dictionary: a gateway that restarted numbers afresh.
    pub fn learn(&mut self, entries: &[DictEntry]) -> Result<(), DeltaError> {
        if entries.first().is_some_and(|e| e.id == 0) {
            *self = Dictionary::default();
        }
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
    // Groups by key, sorted (so keys go as small deltas); points in outbox
    // order within each.
    let mut by_key: BTreeMap<u32, Vec<&Change>> = BTreeMap::new();
    for change in changes {
        let key = dictionary.id(&change.device, &change.property);
        by_key.entry(key).or_default().push(change);
    }
    let mut batch = DeltaBatch {
        gateway_id: gateway.to_string(),
        seq,
        first_change,
        base_ts_ms,
        dictionary: dictionary.unacknowledged(),
        points: u32::try_from(changes.len()).unwrap_or(u32::MAX),
        ..DeltaBatch::default()
    };
    let mut prev_key = 0;
    for (key, points) in by_key {
        // A property's type is fixed by its model; should one mix types
        // anyway, each run of one type becomes its own group.
        let mut start = 0;
        for i in 1..=points.len() {
            let boundary = i == points.len()
                || std::mem::discriminant(&points[i].value)
                    != std::mem::discriminant(&points[start].value);
            if boundary {
                batch.key_deltas.push(key - prev_key);
                prev_key = key;
                encode_group(&mut batch, base_ts_ms, &points[start..i]);
                start = i;
            }
        }
    }
    batch
}

/// Codes of [`DeltaBatch::encodings`]; `DECIMAL + d` for d decimals.
const BOOL: u32 = 0;
const INT: u32 = 1;
const FLOAT: u32 = 2;
const STRING: u32 = 3;
const DECIMAL: u32 = 4;

fn encode_group(batch: &mut DeltaBatch, base_ts_ms: i64, points: &[&Change]) {
    batch
        .counts
        .push(u32::try_from(points.len()).unwrap_or(u32::MAX));
    let mut prev_ts = base_ts_ms;
    for p in points {
        batch.ts_deltas.push(p.ts_ms.wrapping_sub(prev_ts));
        prev_ts = p.ts_ms;
    }
    let mut ints = Vec::new();
    let mut floats = Vec::new();
    for p in points {
        match &p.value {
            Value::Bool(b) => batch.bools.push(*b),
            Value::Int(i) => ints.push(*i),
            Value::Float(f) => floats.push(*f),
            Value::String(t) => batch.strings.push(t.clone()),
        }
    }
    let encoding = match points.first().map(|p| &p.value) {
        Some(Value::Bool(_)) | None => BOOL,
        Some(Value::Int(_)) => INT,
        Some(Value::String(_)) => STRING,
        Some(Value::Float(_)) => match decimals_of(&floats) {
            Some((decimals, scaled)) => {
                ints = scaled;
                DECIMAL + decimals
            }
            None => {
                batch.floats.append(&mut floats);
                FLOAT
            }
        },
    };
    batch.encodings.push(encoding);
    batch.ints.extend(deltas(&ints));
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
    let bad = |what: &str| DeltaError::Inconsistent(what.to_string());
    dictionary.learn(&batch.dictionary)?;
    let groups = batch.key_deltas.len();
    if batch.counts.len() != groups || batch.encodings.len() != groups {
        return Err(bad("the group columns differ in length"));
    }
    let total: u64 = batch.counts.iter().map(|c| u64::from(*c)).sum();
    if total != u64::from(batch.points) || batch.ts_deltas.len() as u64 != total {
        return Err(bad("the point counts disagree"));
    }
    let mut out = Vec::with_capacity(batch.ts_deltas.len());
    let mut bools = batch.bools.iter();
    let mut ints = batch.ints.iter();
    let mut floats = batch.floats.iter();
    let mut strings = batch.strings.iter();
    let mut times = batch.ts_deltas.iter();
    let mut key = 0u32;
    for g in 0..groups {
        key = key
            .checked_add(batch.key_deltas[g])
            .ok_or_else(|| bad("a key overflows"))?;
        let (device, property) = dictionary
            .name(key)
            .cloned()
            .ok_or_else(|| DeltaError::Inconsistent(format!("unknown id {key}")))?;
        let encoding = batch.encodings[g];
        let decimals = encoding.checked_sub(DECIMAL);
        if decimals.is_some_and(|d| d > MAX_DECIMALS) {
            return Err(DeltaError::Inconsistent(format!(
                "unknown encoding {encoding}"
            )));
        }
        let factor = 10f64.powi(i32::try_from(decimals.unwrap_or(0)).unwrap_or(0));
        let (mut ts, mut acc) = (batch.base_ts_ms, 0i64);
        for _ in 0..batch.counts[g] {
            // Wrapping: the inverse of the encoder's wrapping differences.
            ts = ts.wrapping_add(*times.next().ok_or_else(|| bad("too few times"))?);
            let mut number = || -> Result<i64, DeltaError> {
                acc = acc.wrapping_add(*ints.next().ok_or_else(|| bad("too few numbers"))?);
                Ok(acc)
            };
            let value = match encoding {
                BOOL => Value::Bool(*bools.next().ok_or_else(|| bad("too few bools"))?),
                INT => Value::Int(number()?),
                FLOAT => Value::Float(*floats.next().ok_or_else(|| bad("too few floats"))?),
                STRING => Value::String(
                    strings
                        .next()
                        .ok_or_else(|| bad("too few strings"))?
                        .clone(),
                ),
                // Exact below 2^53, which the encoder guarantees; a foreign
                // batch beyond it only loses precision.
                _ => Value::Float(number()? as f64 / factor),
            };
            out.push(Change {
                device: device.clone(),
                property: property.clone(),
                ts_ms: ts,
                value,
            });
        }
    }
    let left = bools.next().is_some()
        || ints.next().is_some()
        || floats.next().is_some()
        || strings.next().is_some();
    if left {
        return Err(bad("values left over"));
    }
    Ok(out)
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

/// A value as the twin's messages carry it.
pub fn to_wire(value: &Value) -> crate::wire::Value {
    use crate::wire::value::Kind;
    let kind = match value {
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Int(i) => Kind::IntValue(*i),
        Value::Float(f) => Kind::FloatValue(*f),
        Value::String(s) => Kind::StringValue(s.clone()),
    };
    crate::wire::Value { kind: Some(kind) }
}

/// A value from the twin's messages; `None` if it carries none.
pub fn from_wire(value: &crate::wire::Value) -> Option<Value> {
    use crate::wire::value::Kind;
    Some(match value.kind.as_ref()? {
        Kind::BoolValue(b) => Value::Bool(*b),
        Kind::IntValue(i) => Value::Int(*i),
        Kind::FloatValue(f) => Value::Float(*f),
        Kind::StringValue(s) => Value::String(s.clone()),
    })
}

/// The size of an MQTT 3.1.1 PUBLISH packet with this topic and payload.
pub fn publish_packet_bytes(topic: usize, payload: usize, qos1: bool) -> usize {
    let remaining = 2 + topic + usize::from(qos1) * 2 + payload;
    let length_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + length_bytes + remaining
}

/// What `change` would cost sent the naive way, the yardstick of the
/// benchmark and of the control plane's `/api/v1/stats`: one QoS 0 MQTT
/// message per change, topic `GATEWAY/DEVICE/PROPERTY`, payload
/// `{"value":V,"ts":"2026-11-27T10:00:00.000Z"}`.
pub fn naive_json_bytes(gateway: &str, change: &Change) -> usize {
    let topic = gateway.len() + change.device.len() + change.property.len() + 2;
    let value = match &change.value {
        Value::Bool(b) => b.to_string().len(),
        Value::Int(i) => i.to_string().len(),
        Value::Float(f) => serde_json_free_number(*f).len(),
        Value::String(s) => s.len() + 2 + s.chars().filter(|c| matches!(c, '"' | '\\')).count(),
    };
    // {"value": V ,"ts":" 24 "}
    let payload = 9 + value + 7 + 24 + 2;
    publish_packet_bytes(topic, payload, false)
}

/// A float as JSON writes it (shortest round-trip form; `null` if not
/// finite).
fn serde_json_free_number(f: f64) -> String {
    if !f.is_finite() {
        return "null".into();
    }
    let text = format!("{f}");
    if text.contains(['.', 'e']) {
        text
    } else {
        format!("{text}.0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn naive_json_size_matches_the_text_it_stands_for() {
        let c = change("boiler-1", "temperature", 0, Value::Float(21.5));
        let text = r#"{"value":21.5,"ts":"2026-11-27T10:00:00.000Z"}"#;
        let topic = "gw-01/boiler-1/temperature";
        assert_eq!(
            naive_json_bytes("gw-01", &c),
            publish_packet_bytes(topic.len(), text.len(), false)
        );
        let s = change("a", "b", 0, Value::String("x\"y".into()));
        let text = r#"{"value":"x\"y","ts":"2026-11-27T10:00:00.000Z"}"#;
        assert_eq!(
            naive_json_bytes("g", &s),
            publish_packet_bytes("g/a/b".len(), text.len(), false)
        );
    }

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
        assert_eq!(batch.encodings, [DECIMAL + 1, FLOAT]);
        assert_eq!(batch.ints, [214, 1]);
        assert_eq!(batch.floats, [0.1 + 0.2], "not a short decimal");
        assert_eq!(batch.counts, [2, 1]);
        assert_eq!(batch.ts_deltas, [0, 1, 0]);
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
        let good = encode("gw", 1, 1, &[change("a", "t", 0, Value::Int(1))], &mut dict);
        let broken = |edit: &dyn Fn(&mut DeltaBatch)| {
            let mut batch = good.clone();
            edit(&mut batch);
            decode(&batch, &mut Dictionary::default()).is_err()
        };
        assert!(!broken(&|_| {}), "the unbroken batch decodes");
        assert!(broken(&|b| b.ts_deltas.push(5)), "times without values");
        assert!(broken(&|b| b.ints.push(5)), "values left over");
        assert!(broken(&|b| b.bools.push(true)), "values of another column");
        assert!(broken(&|b| b.points = 2), "a wrong point count");
        assert!(broken(&|b| b.key_deltas[0] = 7), "an unknown id");
        assert!(broken(&|b| b.encodings[0] = 99), "an unknown encoding");
        assert!(
            broken(&|b| b.counts.push(0)),
            "group columns of different lengths"
        );
        assert!(broken(&|b| b.encodings[0] = BOOL), "a column too short");
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
