//! A series' points, compressed: what a history block and a series' head
//! hold.
//!
//! Each point is its time and its value, each encoded against the point
//! before, in the spirit of Gorilla (Pelkonen et al., VLDB 2015) but byte-
//! rather than bit-aligned, which keeps the codec short and the decoder fast:
//! - time: the first as it is, then the delta of deltas, zigzag varints
//!   (one byte for a steady poll);
//! - float: XOR with the previous float's bits; one header byte holds the
//!   count of zero bytes on either side, then the bytes between (one byte in
//!   all for an unchanged value);
//! - int: the zigzag varint of the difference;
//! - bool: the tag alone; text: its length and bytes.
//!
//! Points are kept in arrival order; [`Chunk::points`] and [`decode`] sort
//! them by time, and of two points at the same time keep the later one (a
//! second write at one time replaces the first, as a key would).

use ferrite_models::Value;
use smallvec::SmallVec;

use crate::time::Micros;

/// Bytes a chunk keeps inline before it allocates: the first point of any
/// number fits (its time, 8 bytes as a varint, and at most 9 for a float,
/// 11 for an int), and a steady series' head holds just that point.
const INLINE: usize = 24;

/// Appends points to a byte buffer.
#[derive(Debug, Default, Clone)]
pub struct Chunk {
    /// Inline up to [`INLINE`] bytes (32 with its length, 8 more than a
    /// `Vec`): most series are steady, and a steady series' head holds one
    /// point, for a long time, that would take an allocation of 48 bytes.
    bytes: SmallVec<[u8; INLINE]>,
    state: Cursor,
    count: u32,
    /// Whether no point came earlier than the one before it. Then the span
    /// is the first time and the last, so it is not kept (a series' head is
    /// a chunk, and there is one per series: 16 bytes each).
    in_order: bool,
}

/// What each point is encoded against: the point before it.
#[derive(Debug, Default, Clone, Copy)]
struct Cursor {
    ts: Micros,
    delta: i64,
    float_bits: u64,
    int: i64,
}

const BOOL_FALSE: u8 = 0;
const BOOL_TRUE: u8 = 1;
const INT: u8 = 2;
const TEXT: u8 = 3;
/// Floats: this bit set, then 3 bits of leading and 3 of trailing zero bytes.
const FLOAT: u8 = 0x80;
/// The XOR has 8 zero bytes: the same float again.
const FLOAT_SAME: u8 = 4;

impl Chunk {
    /// An empty chunk.
    pub fn new() -> Chunk {
        Chunk::default()
    }

    /// Adds a point.
    pub fn push(&mut self, ts: Micros, value: &Value) {
        // The first time as it is; then the change of the step.
        let delta = if self.count == 0 {
            put_varint(&mut self.bytes, zigzag(ts));
            self.in_order = true;
            0
        } else {
            self.in_order &= ts >= self.state.ts;
            let delta = ts.wrapping_sub(self.state.ts);
            put_varint(
                &mut self.bytes,
                zigzag(delta.wrapping_sub(self.state.delta)),
            );
            delta
        };
        self.state.ts = ts;
        self.state.delta = delta;
        match value {
            Value::Bool(b) => self.bytes.push(if *b { BOOL_TRUE } else { BOOL_FALSE }),
            Value::Int(i) => {
                self.bytes.push(INT);
                put_varint(&mut self.bytes, zigzag(i.wrapping_sub(self.state.int)));
                self.state.int = *i;
            }
            Value::Float(f) => {
                let bits = f.to_bits();
                let xor = bits ^ self.state.float_bits;
                self.state.float_bits = bits;
                if xor == 0 {
                    self.bytes.push(FLOAT_SAME);
                } else {
                    let leading = xor.leading_zeros() / 8;
                    let trailing = xor.trailing_zeros() / 8;
                    self.bytes
                        .push(FLOAT | ((leading as u8) << 3) | trailing as u8);
                    let be = xor.to_be_bytes();
                    self.bytes
                        .extend_from_slice(&be[leading as usize..8 - trailing as usize]);
                }
            }
            Value::String(s) => {
                self.bytes.push(TEXT);
                put_varint(&mut self.bytes, s.len() as u64);
                self.bytes.extend_from_slice(s.as_bytes());
            }
        }
        self.count += 1;
    }

    /// Points pushed.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// Whether no point was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The earliest and latest time pushed (meaningless when empty).
    pub fn span(&self) -> (Micros, Micros) {
        if self.count == 0 {
            return (0, 0);
        }
        if self.in_order {
            // The first time is the chunk's first varint, as it is.
            let first = get_varint(&mut self.bytes.as_slice()).map_or(0, unzigzag);
            return (first, self.state.ts);
        }
        // Points out of order (rare: a time set back): read them.
        let times = decode_in_arrival_order(&self.bytes, self.count)
            .unwrap_or_default()
            .into_iter()
            .map(|(ts, _)| ts);
        times.fold((Micros::MAX, Micros::MIN), |(min, max), ts| {
            (min.min(ts), max.max(ts))
        })
    }

    /// The encoded points.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Heap bytes held (none while the bytes fit inline).
    pub fn heap_bytes(&self) -> usize {
        if self.bytes.spilled() {
            self.bytes.capacity()
        } else {
            0
        }
    }

    /// The points, by time (see the module's note on equal times).
    pub fn points(&self) -> Vec<(Micros, Value)> {
        // What this chunk encoded always decodes.
        decode(&self.bytes, self.count).unwrap_or_default()
    }

    /// A chunk of `points` (already in time order, as [`decode`] returns).
    pub fn of(points: &[(Micros, Value)]) -> Chunk {
        let mut chunk = Chunk::new();
        for (ts, value) in points {
            chunk.push(*ts, value);
        }
        chunk
    }
}

/// Reads `count` points of a chunk's bytes, sorted by time; `None` if the
/// bytes are not `count` points.
pub fn decode(bytes: &[u8], count: u32) -> Option<Vec<(Micros, Value)>> {
    decode_in_arrival_order(bytes, count).map(in_time_order)
}

/// [`decode`], with the points in the order they were pushed.
pub fn decode_in_arrival_order(mut bytes: &[u8], count: u32) -> Option<Vec<(Micros, Value)>> {
    // Not more points than bytes: a corrupt count must not allocate.
    let mut points = Vec::with_capacity((count as usize).min(bytes.len()));
    let mut state = Cursor::default();
    for i in 0..count {
        let read = unzigzag(get_varint(&mut bytes)?);
        if i == 0 {
            state.ts = read;
        } else {
            state.delta = state.delta.wrapping_add(read);
            state.ts = state.ts.wrapping_add(state.delta);
        }
        let (tag, rest) = bytes.split_first()?;
        bytes = rest;
        let value = match *tag {
            BOOL_FALSE => Value::Bool(false),
            BOOL_TRUE => Value::Bool(true),
            INT => {
                state.int = state.int.wrapping_add(unzigzag(get_varint(&mut bytes)?));
                Value::Int(state.int)
            }
            TEXT => {
                let len = usize::try_from(get_varint(&mut bytes)?).ok()?;
                let text = bytes.get(..len)?;
                bytes = &bytes[len..];
                Value::String(String::from_utf8(text.to_vec()).ok()?)
            }
            FLOAT_SAME => Value::Float(f64::from_bits(state.float_bits)),
            header if header & FLOAT != 0 => {
                let leading = usize::from((header >> 3) & 7);
                let trailing = usize::from(header & 7);
                let n = 8usize.checked_sub(leading + trailing).filter(|n| *n > 0)?;
                let mut be = [0u8; 8];
                be[leading..leading + n].copy_from_slice(bytes.get(..n)?);
                bytes = &bytes[n..];
                state.float_bits ^= u64::from_be_bytes(be);
                Value::Float(f64::from_bits(state.float_bits))
            }
            _ => return None,
        };
        points.push((state.ts, value));
    }
    bytes.is_empty().then_some(points)
}

/// Sorts points by time; of equal times the later pushed stays.
pub fn in_time_order(mut points: Vec<(Micros, Value)>) -> Vec<(Micros, Value)> {
    if points.windows(2).all(|w| w[0].0 < w[1].0) {
        return points;
    }
    // Stable: equal times keep their order, and the last of each run wins.
    points.sort_by_key(|(ts, _)| *ts);
    let mut out: Vec<(Micros, Value)> = Vec::with_capacity(points.len());
    for point in points {
        match out.last_mut() {
            Some(last) if last.0 == point.0 => *last = point,
            _ => out.push(point),
        }
    }
    out
}

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

/// LEB128, as protobuf writes it, onto any byte buffer: a `Vec`, or a
/// chunk's bytes (which prost cannot write to).
pub fn put_varint(out: &mut impl Extend<u8>, value: u64) {
    let mut buf = [0u8; 10];
    let room = buf.len();
    let mut rest = &mut buf[..];
    prost::encoding::encode_varint(value, &mut rest);
    let written = room - rest.len();
    out.extend(buf[..written].iter().copied());
}

/// Reads a varint and advances `bytes` past it.
pub fn get_varint(bytes: &mut &[u8]) -> Option<u64> {
    prost::encoding::decode_varint(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_value_round_trips_in_time_order() {
        let points = vec![
            (1_000_000, Value::Float(21.5)),
            (2_000_000, Value::Float(21.5)),
            (3_000_000, Value::Float(-0.0)),
            (3_000_001, Value::Float(f64::NAN)),
            (4_000_000, Value::Int(-7)),
            (5_000_000, Value::Int(i64::MAX)),
            (6_000_000, Value::Int(i64::MIN)),
            (7_000_000, Value::Bool(true)),
            (8_000_000, Value::String("hé".into())),
            (9_000_000, Value::Float(1e300)),
            (i64::MAX, Value::Bool(false)),
        ];
        let chunk = Chunk::of(&points);
        let back = chunk.points();
        assert_eq!(back.len(), points.len());
        for ((t1, v1), (t2, v2)) in points.iter().zip(&back) {
            assert_eq!(t1, t2);
            match (v1, v2) {
                (Value::Float(a), Value::Float(b)) => assert_eq!(a.to_bits(), b.to_bits()),
                _ => assert_eq!(v1, v2),
            }
        }
        assert_eq!(chunk.span(), (1_000_000, i64::MAX));
    }

    #[test]
    fn a_steady_poll_of_a_steady_float_costs_two_bytes_a_point() {
        let mut chunk = Chunk::new();
        for i in 0..1000 {
            chunk.push(1_700_000_000_000_000 + i * 1_000_000, &Value::Float(230.1));
        }
        // The first point pays 17 bytes, the second 4 (its step).
        assert!(
            chunk.bytes().len() <= 2 * 1000 + 24,
            "{}",
            chunk.bytes().len()
        );
    }

    #[test]
    fn points_out_of_order_come_back_sorted_and_a_repeated_time_keeps_the_last() {
        let chunk = Chunk::of(&[
            (30, Value::Int(3)),
            (10, Value::Int(1)),
            (20, Value::Int(2)),
            (10, Value::Int(9)),
        ]);
        assert_eq!(
            chunk.points(),
            [
                (10, Value::Int(9)),
                (20, Value::Int(2)),
                (30, Value::Int(3))
            ]
        );
        assert_eq!(chunk.span(), (10, 30));
    }

    #[test]
    fn the_span_is_right_whatever_the_order() {
        let mut chunk = Chunk::new();
        assert_eq!(chunk.span(), (0, 0), "empty");
        let mut expect = (Micros::MAX, Micros::MIN);
        // In order, the same time twice, a time set back, then on again.
        for ts in [-5, 100, 100, 250, 40, -20, 900, 910] {
            chunk.push(ts, &Value::Int(ts));
            expect = (expect.0.min(ts), expect.1.max(ts));
            assert_eq!(chunk.span(), expect, "after {ts}");
        }
        let steady = Chunk::of(&[
            (i64::MIN, Value::Bool(true)),
            (i64::MAX, Value::Bool(false)),
        ]);
        assert_eq!(steady.span(), (i64::MIN, i64::MAX));
    }

    #[test]
    fn a_chunk_is_small_enough_to_hold_one_per_series() {
        // Its bytes (32, with 24 inline), its cursor (32) and its count.
        assert!(
            std::mem::size_of::<Chunk>() <= 72,
            "{}",
            std::mem::size_of::<Chunk>()
        );
    }

    #[test]
    fn the_first_point_of_a_steady_series_needs_no_allocation() {
        // A time as it comes (micros since 1970, 8 bytes as a varint) and
        // the values a register or a tag gives.
        let ts = 1_780_000_000_000_000;
        for value in [
            Value::Int(65_535),
            Value::Int(i64::MIN),
            Value::Bool(true),
            Value::Float(f64::from(21.37_f32)),
            Value::Float(21.37),
            Value::Float(-f64::MAX),
        ] {
            let chunk = Chunk::of(&[(ts, value.clone())]);
            assert_eq!(
                chunk.heap_bytes(),
                0,
                "{value:?}: {} bytes",
                chunk.bytes().len()
            );
            assert_eq!(chunk.points(), [(ts, value)]);
        }
        // More than fits goes to the heap, and reads back whole.
        let points: Vec<_> = (0..40)
            .map(|i| (ts + i * 1_000_000, Value::Int(i)))
            .collect();
        let chunk = Chunk::of(&points);
        assert!(chunk.heap_bytes() >= chunk.bytes().len());
        assert_eq!(chunk.points(), points);
    }

    #[test]
    fn the_bytes_are_the_format_on_disk() {
        // Blocks and their files hold these bytes: where they sit in memory
        // must not change them. The time 1 000 000 as a zigzag varint, an
        // int of 5; a step of 1 000 000 (its delta of deltas), an int up 2;
        // then the same step (0) and a float whose XOR keeps 3 bytes
        // (no zero byte before them, 5 after).
        let chunk = Chunk::of(&[
            (1_000_000, Value::Int(5)),
            (2_000_000, Value::Int(7)),
            (3_000_000, Value::Float(21.5)),
        ]);
        assert_eq!(
            chunk.bytes(),
            [
                128,
                137,
                122,
                INT,
                10, //
                128,
                137,
                122,
                INT,
                4, //
                0,
                FLOAT | 5,
                0x40,
                0x35,
                0x80,
            ]
        );
    }

    #[test]
    fn junk_does_not_decode() {
        let chunk = Chunk::of(&[(1, Value::Float(2.5)), (2, Value::Int(4))]);
        assert!(decode(chunk.bytes(), 3).is_none(), "fewer points than said");
        assert!(decode(chunk.bytes(), 1).is_none(), "bytes left over");
        assert!(decode(&[0, 9], 1).is_none(), "an unknown tag");
        assert!(
            decode(&[0, FLOAT | (4 << 3) | 4], 1).is_none(),
            "no bytes between"
        );
        assert!(decode(&[0, TEXT, 200], 1).is_none(), "text past the end");
        assert!(decode(&[0xff; 12], u32::MAX).is_none());
    }

    fn value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            // Compared by bits below: NaN and -0.0 included.
            any::<u64>().prop_map(|bits| Value::Float(f64::from_bits(bits))),
            ".{0,12}".prop_map(Value::String),
        ]
    }

    fn same(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
            _ => a == b,
        }
    }

    proptest::proptest! {
        #[test]
        fn any_points_round_trip_in_arrival_order(
            points in proptest::collection::vec((proptest::prelude::any::<i64>(), value()), 0..64)
        ) {
            let chunk = Chunk::of(&points);
            let back = decode_in_arrival_order(chunk.bytes(), chunk.len()).expect("decodes");
            proptest::prop_assert_eq!(back.len(), points.len());
            for ((t1, v1), (t2, v2)) in points.iter().zip(&back) {
                proptest::prop_assert_eq!(t1, t2);
                proptest::prop_assert!(same(v1, v2), "{v1:?} != {v2:?}");
            }
        }

        #[test]
        fn any_bytes_decode_or_are_refused_without_panicking(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            count in 0u32..100,
        ) {
            let _ = decode(&bytes, count);
        }
    }
}
