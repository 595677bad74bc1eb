//! Modbus register encoding: model bindings ↔ raw registers and coils.
//!
//! Pure functions, shared by the gateway's driver (decode reads, encode
//! writes) and the simulator (the other way round), so both sides agree by
//! construction and the round-trip tests exercise both.
//!
//! Byte order: a value's big-endian bytes are named A (most significant), B,
//! C, D, ... `ABCD` sends them as they are. `CDAB` reverses the order of the
//! 16-bit words, `BADC` swaps the two bytes of each word, `DCBA` does both
//! (little-endian). The same rule scales to 64-bit values.

use crate::model::{Format, ModbusBinding, ValueType, WordOrder};
use crate::value::Value;

/// Why registers could not become a value, or a value registers.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    /// Fewer registers than the format needs.
    #[error("expected {expected} registers, got {got}")]
    Short {
        /// Registers the format spans.
        expected: usize,
        /// Registers available.
        got: usize,
    },
    /// A float register pair holds NaN or infinity.
    #[error("the device returned a non-finite float")]
    NotFinite,
    /// The value does not fit the register format.
    #[error("{value} does not fit format {format}")]
    DoesNotFit {
        /// The raw value after scale and offset.
        value: String,
        /// The format.
        format: Format,
    },
    /// The value's type does not match the binding.
    #[error("a {0} value cannot be written to this binding")]
    WrongType(&'static str),
    /// A read's answer holds another number of values than asked for.
    #[error("asked for {asked} values, the answer holds {got}")]
    WrongCount {
        /// Values asked for.
        asked: usize,
        /// Values in the answer.
        got: usize,
    },
}

/// The `count` values a read asked for, from the answer's `items`, or why
/// the answer is malformed. Bits come packed in whole bytes, so up to 7
/// padding bits may follow them; registers must match exactly. (A Modbus
/// client library may only `debug_assert!` this.)
pub fn answered<T>(mut items: Vec<T>, count: u16, bits: bool) -> Result<Vec<T>, CodecError> {
    let asked = usize::from(count);
    let ok = if bits {
        (asked..asked + 8).contains(&items.len())
    } else {
        items.len() == asked
    };
    if !ok {
        return Err(CodecError::WrongCount {
            asked,
            got: items.len(),
        });
    }
    items.truncate(asked);
    Ok(items)
}

/// What a write puts on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum Encoded {
    /// One coil (FC 05).
    Coil(bool),
    /// Registers from the binding's address (FC 06 for one, FC 16 for more).
    Registers(Vec<u16>),
    /// One bit of a register: read, change the bit, write back.
    Bit {
        /// Which bit.
        bit: u8,
        /// Its new state.
        on: bool,
    },
}

/// Reorders register bytes between wire order and big-endian.
/// The transform is its own inverse.
fn reorder(bytes: &mut [u8], order: WordOrder) {
    let swap_words = matches!(order, WordOrder::CDAB | WordOrder::DCBA);
    let swap_bytes = matches!(order, WordOrder::BADC | WordOrder::DCBA);
    if swap_words {
        let words = bytes.len() / 2;
        for i in 0..words / 2 {
            let (a, b) = (2 * i, 2 * (words - 1 - i));
            bytes.swap(a, b);
            bytes.swap(a + 1, b + 1);
        }
    }
    if swap_bytes {
        bytes.chunks_exact_mut(2).for_each(|w| w.swap(0, 1));
    }
}

fn to_bytes(registers: &[u16]) -> Vec<u8> {
    registers.iter().flat_map(|r| r.to_be_bytes()).collect()
}

fn to_registers(bytes: &[u8]) -> Vec<u16> {
    bytes
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
        .collect()
}

/// Decodes a register value. `registers` starts at the binding's address.
pub fn decode_registers(
    b: &ModbusBinding,
    ty: ValueType,
    registers: &[u16],
) -> Result<Value, CodecError> {
    let format = b.format();
    let width = format.registers() as usize;
    if registers.len() < width {
        return Err(CodecError::Short {
            expected: width,
            got: registers.len(),
        });
    }
    if let Some(bit) = b.bit {
        return Ok(Value::Bool(registers[0] >> bit & 1 == 1));
    }
    let order = b.order();
    if let Format::String(n) = format {
        let mut bytes = to_bytes(&registers[..width]);
        // Text keeps byte pairs in order; only BADC (and DCBA) swap them.
        if matches!(order, WordOrder::BADC | WordOrder::DCBA) {
            bytes.chunks_exact_mut(2).for_each(|w| w.swap(0, 1));
        }
        bytes.truncate(usize::from(n));
        let end = bytes.iter().position(|&c| c == 0).unwrap_or(bytes.len());
        return Ok(Value::String(
            String::from_utf8_lossy(&bytes[..end]).into_owned(),
        ));
    }
    // Numbers take at most four registers: decoded on the stack, since a
    // poll decodes every point it reads.
    let mut buffer = [0u8; 8];
    let bytes = &mut buffer[..width * 2];
    for (pair, register) in bytes.chunks_exact_mut(2).zip(registers) {
        pair.copy_from_slice(&register.to_be_bytes());
    }
    reorder(bytes, order);
    let raw = match format {
        Format::Bool => return Ok(Value::Bool(registers[0] != 0)),
        Format::U16 => Raw::Int(i128::from(u16::from_be_bytes([bytes[0], bytes[1]]))),
        Format::I16 => Raw::Int(i128::from(i16::from_be_bytes([bytes[0], bytes[1]]))),
        Format::U32 => Raw::Int(i128::from(u32::from_be_bytes(arr(bytes)))),
        Format::I32 => Raw::Int(i128::from(i32::from_be_bytes(arr(bytes)))),
        Format::U64 => Raw::Int(i128::from(u64::from_be_bytes(arr(bytes)))),
        Format::I64 => Raw::Int(i128::from(i64::from_be_bytes(arr(bytes)))),
        Format::F32 => Raw::Float(f64::from(f32::from_be_bytes(arr(bytes)))),
        Format::F64 => Raw::Float(f64::from_be_bytes(arr(bytes))),
        // Handled above; kept total rather than panicking.
        Format::String(_) => return Err(CodecError::WrongType("string")),
    };
    scale_in(b, ty, raw)
}

fn arr<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

enum Raw {
    Int(i128),
    Float(f64),
}

fn scale_in(b: &ModbusBinding, ty: ValueType, raw: Raw) -> Result<Value, CodecError> {
    let scaled = b.scale.is_some() || b.offset.is_some();
    let value = match raw {
        // Integers without scaling stay exact, even 64-bit ones.
        Raw::Int(i) if !scaled && ty == ValueType::Int => {
            return i64::try_from(i)
                .map(Value::Int)
                .map_err(|_| CodecError::DoesNotFit {
                    value: i.to_string(),
                    format: b.format(),
                });
        }
        Raw::Int(i) => i as f64,
        Raw::Float(f) => f,
    };
    if !value.is_finite() {
        return Err(CodecError::NotFinite);
    }
    let value = value * b.scale.unwrap_or(1.0) + b.offset.unwrap_or(0.0);
    // 650 × 0.1 is 65.00000000000001 in binary floating point; round to the
    // precision the scale and offset carry, which is all the device meant.
    let value = if scaled {
        round_to(value, decimals(b.scale).max(decimals(b.offset)))
    } else {
        value
    };
    Ok(match ty {
        ValueType::Int => Value::Int(value.round() as i64),
        ValueType::Bool => Value::Bool(value != 0.0),
        ValueType::Float | ValueType::String => Value::Float(value),
    })
}

/// Fraction digits of a scale or offset as written (0.1 → 1, 0.25 → 2):
/// those of its shortest decimal form, at most 12. Every scaled point of
/// every poll asks, so it is found by arithmetic: the fewest digits `d` for
/// which the decimal nearest to `x` with `d` of them reads back as `x`
/// (`m / 10^d` is correctly rounded, as parsing it would be). Past 2^53,
/// where that quotient is no longer exact, it counts what `{x}` prints.
fn decimals(x: Option<f64>) -> i32 {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    let Some(x) = x.filter(|x| x.is_finite()) else {
        return 0;
    };
    let mut factor = 1.0;
    for digits in 0..=12 {
        let scaled = x * factor;
        if scaled.abs() >= EXACT {
            return printed_decimals(x);
        }
        if scaled.round() / factor == x {
            return digits;
        }
        factor *= 10.0;
    }
    12
}

/// Fraction digits of `{x}`, at most 12, counted as it is formatted.
fn printed_decimals(x: f64) -> i32 {
    /// Counts the characters after the decimal point of what is written.
    struct FractionDigits {
        after_point: bool,
        count: i32,
    }
    impl std::fmt::Write for FractionDigits {
        fn write_str(&mut self, text: &str) -> std::fmt::Result {
            for c in text.chars() {
                if self.after_point {
                    self.count += 1;
                } else if c == '.' {
                    self.after_point = true;
                }
            }
            Ok(())
        }
    }
    let mut digits = FractionDigits {
        after_point: false,
        count: 0,
    };
    let _ = std::fmt::Write::write_fmt(&mut digits, format_args!("{x}"));
    digits.count.min(12)
}

fn round_to(value: f64, decimals: i32) -> f64 {
    let factor = 10f64.powi(decimals);
    let rounded = (value * factor).round() / factor;
    if rounded.is_finite() { rounded } else { value }
}

/// Decodes a coil or discrete input.
pub fn decode_bit(on: bool) -> Value {
    Value::Bool(on)
}

/// Encodes a value for writing to the binding.
pub fn encode(b: &ModbusBinding, value: &Value) -> Result<Encoded, CodecError> {
    if b.table.is_bits() {
        return match value {
            Value::Bool(on) => Ok(Encoded::Coil(*on)),
            _ => Err(CodecError::WrongType(kind(value))),
        };
    }
    if let Some(bit) = b.bit {
        return match value {
            Value::Bool(on) => Ok(Encoded::Bit { bit, on: *on }),
            _ => Err(CodecError::WrongType(kind(value))),
        };
    }
    let format = b.format();
    let order = b.order();
    let mut bytes: Vec<u8> = match (format, value) {
        (Format::String(n), Value::String(s)) => {
            let mut bytes = s.as_bytes().to_vec();
            if bytes.len() > usize::from(n) {
                return Err(CodecError::DoesNotFit {
                    value: format!("{} bytes of text", bytes.len()),
                    format,
                });
            }
            bytes.resize(format.registers() as usize * 2, 0);
            if matches!(order, WordOrder::BADC | WordOrder::DCBA) {
                bytes.chunks_exact_mut(2).for_each(|w| w.swap(0, 1));
            }
            return Ok(Encoded::Registers(to_registers(&bytes)));
        }
        (Format::String(_), other)
        | (Format::Bool, other @ (Value::String(_) | Value::Float(_) | Value::Int(_))) => {
            return Err(CodecError::WrongType(kind(other)));
        }
        (Format::Bool, Value::Bool(on)) => return Ok(Encoded::Registers(vec![u16::from(*on)])),
        (_, Value::String(_) | Value::Bool(_)) => return Err(CodecError::WrongType(kind(value))),
        (Format::F32, v) => (scale_out(b, v)? as f32).to_be_bytes().to_vec(),
        (Format::F64, v) => scale_out(b, v)?.to_be_bytes().to_vec(),
        (_, v) => {
            let raw = integer_out(b, v)?;
            let fits = |lo: i128, hi: i128| (lo..=hi).contains(&raw);
            let too_big = || CodecError::DoesNotFit {
                value: raw.to_string(),
                format,
            };
            match format {
                Format::U16 if fits(0, i128::from(u16::MAX)) => (raw as u16).to_be_bytes().to_vec(),
                Format::I16 if fits(i128::from(i16::MIN), i128::from(i16::MAX)) => {
                    (raw as i16).to_be_bytes().to_vec()
                }
                Format::U32 if fits(0, i128::from(u32::MAX)) => (raw as u32).to_be_bytes().to_vec(),
                Format::I32 if fits(i128::from(i32::MIN), i128::from(i32::MAX)) => {
                    (raw as i32).to_be_bytes().to_vec()
                }
                Format::U64 if fits(0, i128::from(u64::MAX)) => (raw as u64).to_be_bytes().to_vec(),
                Format::I64 if fits(i128::from(i64::MIN), i128::from(i64::MAX)) => {
                    (raw as i64).to_be_bytes().to_vec()
                }
                _ => return Err(too_big()),
            }
        }
    };
    reorder(&mut bytes, order);
    Ok(Encoded::Registers(to_registers(&bytes)))
}

/// Applies the inverse of scale and offset.
fn scale_out(b: &ModbusBinding, value: &Value) -> Result<f64, CodecError> {
    let v = value.as_f64().ok_or(CodecError::WrongType(kind(value)))?;
    Ok((v - b.offset.unwrap_or(0.0)) / b.scale.unwrap_or(1.0))
}

fn integer_out(b: &ModbusBinding, value: &Value) -> Result<i128, CodecError> {
    match value {
        // Exact path for big integers without scaling.
        Value::Int(i) if b.scale.is_none() && b.offset.is_none() => Ok(i128::from(*i)),
        _ => {
            let raw = scale_out(b, value)?.round();
            if !raw.is_finite() || raw.abs() > 1.8e19 {
                return Err(CodecError::DoesNotFit {
                    value: raw.to_string(),
                    format: b.format(),
                });
            }
            Ok(raw as i128)
        }
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Bool(_) => "bool",
        Value::Int(_) => "int",
        Value::Float(_) => "float",
        Value::String(_) => "string",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Table;

    #[test]
    fn a_scales_fraction_digits_are_those_of_its_shortest_decimal_form() {
        // What `decimals` counted when it formatted a String.
        let written = |x: f64| {
            format!("{x}")
                .split_once('.')
                .map_or(0, |(_, frac)| frac.len() as i32)
                .min(12)
        };
        let mut scales = vec![
            0.1,
            0.25,
            1.0,
            100.0,
            0.001,
            -0.5,
            -0.0,
            1e-7,
            1.5e-10,
            1e21,
            3.0e-5,
            0.3,
            2.675,
            273.15,
            1.0 / 3.0,
            12_345_678.123_456_79,
            // Past 2^53 once scaled: counted as printed.
            1_234_567_890.123_456_7,
            f64::MAX,
            f64::MIN_POSITIVE,
        ];
        // Scales and offsets of every size and precision a model may write.
        for i in 1..20_000 {
            let i = f64::from(i);
            scales.extend([
                i * 0.001,
                i * 0.37,
                -i * 0.0125,
                1.0 / i,
                i * 1e-9,
                i * 1234.5,
            ]);
        }
        for x in scales {
            assert_eq!(decimals(Some(x)), written(x), "scale {x}");
        }
        assert_eq!(decimals(Some(f64::NAN)), 0);
        assert_eq!(decimals(Some(f64::INFINITY)), 0);
        assert_eq!(decimals(Some(0.1)), 1);
        assert_eq!(decimals(Some(0.25)), 2);
        assert_eq!(decimals(Some(1e-7)), 7);
        assert_eq!(decimals(Some(1.0 / 3.0)), 12);
        assert_eq!(decimals(None), 0);
    }

    fn binding(format: Format, order: WordOrder) -> ModbusBinding {
        ModbusBinding {
            table: Table::Holding,
            address: 0,
            format: Some(format),
            order: Some(order),
            bit: None,
            scale: None,
            offset: None,
        }
    }

    #[test]
    fn byte_orders_follow_the_abcd_naming() {
        // 0x11223344 as f32 bits, seen on the wire in each order.
        let value = f32::from_bits(0x1122_3344);
        let cases = [
            (WordOrder::ABCD, [0x1122, 0x3344]),
            (WordOrder::CDAB, [0x3344, 0x1122]),
            (WordOrder::BADC, [0x2211, 0x4433]),
            (WordOrder::DCBA, [0x4433, 0x2211]),
        ];
        for (order, wire) in cases {
            let b = binding(Format::F32, order);
            assert_eq!(
                encode(&b, &Value::Float(f64::from(value))),
                Ok(Encoded::Registers(wire.to_vec())),
                "{order:?}"
            );
            assert_eq!(
                decode_registers(&b, ValueType::Float, &wire),
                Ok(Value::Float(f64::from(value)))
            );
        }
    }

    #[test]
    fn sixty_four_bit_values_round_trip_in_every_order() {
        for order in [
            WordOrder::ABCD,
            WordOrder::CDAB,
            WordOrder::BADC,
            WordOrder::DCBA,
        ] {
            for (format, value) in [
                (Format::U64, Value::Int(0x0102_0304_0506_0708)),
                (Format::I64, Value::Int(-1_234_567_890_123)),
                (Format::F64, Value::Float(-12_345.678_9)),
                (Format::I32, Value::Int(-70_000)),
                (Format::U32, Value::Int(4_000_000_000)),
                (Format::I16, Value::Int(-2)),
                (Format::U16, Value::Int(65535)),
            ] {
                let b = binding(format, order);
                let ty = if matches!(value, Value::Float(_)) {
                    ValueType::Float
                } else {
                    ValueType::Int
                };
                let Ok(Encoded::Registers(regs)) = encode(&b, &value) else {
                    panic!("{format} {order:?}")
                };
                assert_eq!(regs.len(), format.registers() as usize);
                assert_eq!(
                    decode_registers(&b, ty, &regs),
                    Ok(value.clone()),
                    "{format} {order:?}"
                );
            }
        }
        // ABCD is plain big-endian.
        let b = binding(Format::U64, WordOrder::ABCD);
        assert_eq!(
            encode(&b, &Value::Int(0x0102_0304_0506_0708)),
            Ok(Encoded::Registers(vec![0x0102, 0x0304, 0x0506, 0x0708]))
        );
        let b = binding(Format::U64, WordOrder::CDAB);
        assert_eq!(
            encode(&b, &Value::Int(0x0102_0304_0506_0708)),
            Ok(Encoded::Registers(vec![0x0708, 0x0506, 0x0304, 0x0102]))
        );
    }

    #[test]
    fn scale_and_offset_apply_both_ways() {
        let mut b = binding(Format::I16, WordOrder::ABCD);
        b.scale = Some(0.1);
        b.offset = Some(-40.0);
        assert_eq!(
            decode_registers(&b, ValueType::Float, &[650]),
            Ok(Value::Float(25.0))
        );
        b.offset = None;
        assert_eq!(
            decode_registers(&b, ValueType::Float, &[781]),
            Ok(Value::Float(78.1))
        );
        b.offset = Some(-40.0);
        assert_eq!(
            encode(&b, &Value::Float(25.0)),
            Ok(Encoded::Registers(vec![650]))
        );
        assert!(matches!(
            encode(&b, &Value::Float(4000.0)),
            Err(CodecError::DoesNotFit { .. })
        ));
        let unsigned = binding(Format::U16, WordOrder::ABCD);
        assert!(encode(&unsigned, &Value::Int(-1)).is_err());
    }

    #[test]
    fn strings_bits_and_coils() {
        let b = binding(Format::String(5), WordOrder::ABCD);
        assert_eq!(
            encode(&b, &Value::String("AB".into())),
            Ok(Encoded::Registers(vec![0x4142, 0, 0]))
        );
        assert_eq!(
            decode_registers(&b, ValueType::String, &[0x4142, 0x4300, 0]),
            Ok(Value::String("ABC".into()))
        );
        let swapped = binding(Format::String(4), WordOrder::BADC);
        assert_eq!(
            decode_registers(&swapped, ValueType::String, &[0x4241, 0x4443]),
            Ok(Value::String("ABCD".into()))
        );
        assert!(encode(&b, &Value::String("too long".into())).is_err());
        let mut bit = binding(Format::U16, WordOrder::ABCD);
        bit.bit = Some(3);
        assert_eq!(
            decode_registers(&bit, ValueType::Bool, &[0b1000]),
            Ok(Value::Bool(true))
        );
        assert_eq!(
            encode(&bit, &Value::Bool(false)),
            Ok(Encoded::Bit { bit: 3, on: false })
        );
        let mut coil = binding(Format::Bool, WordOrder::ABCD);
        coil.table = Table::Coil;
        assert_eq!(encode(&coil, &Value::Bool(true)), Ok(Encoded::Coil(true)));
        assert!(encode(&coil, &Value::Int(1)).is_err());
        assert!(
            decode_registers(
                &binding(Format::F32, WordOrder::ABCD),
                ValueType::Float,
                &[0x7fc0, 0]
            )
            .is_err()
        );
        assert!(matches!(
            decode_registers(&b, ValueType::String, &[1]),
            Err(CodecError::Short { .. })
        ));
    }
}
