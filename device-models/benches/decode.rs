//! What decoding one Modbus point costs: every poll decodes every point it
//! reads, 100 000 a second in NG Gateway's S3 shape. Prints nanoseconds a
//! point; asserts nothing.
//!
//! ```sh
//! cargo bench -p ferrite-models --bench decode
//! ```

use std::hint::black_box;
use std::time::Instant;

use ferrite_models::codec::decode_registers;
use ferrite_models::model::{Format, ModbusBinding, Table, ValueType, WordOrder};

/// Points decoded for each figure.
const POINTS: u32 = 5_000_000;

fn main() {
    let binding = |format, order, scale| ModbusBinding {
        table: Table::Holding,
        address: 0,
        format: Some(format),
        order: Some(order),
        bit: None,
        scale,
        offset: None,
    };
    let cases = [
        (
            "f32, ABCD",
            binding(Format::F32, WordOrder::ABCD, None),
            ValueType::Float,
        ),
        (
            "u16",
            binding(Format::U16, WordOrder::ABCD, None),
            ValueType::Int,
        ),
        (
            "u16 × 0.1",
            binding(Format::U16, WordOrder::ABCD, Some(0.1)),
            ValueType::Float,
        ),
        (
            "i32, CDAB × 0.01",
            binding(Format::I32, WordOrder::CDAB, Some(0.01)),
            ValueType::Float,
        ),
        (
            "f64, DCBA",
            binding(Format::F64, WordOrder::DCBA, None),
            ValueType::Float,
        ),
    ];
    for (name, binding, ty) in &cases {
        let mut registers = [0x4142u16, 0x4344, 0x4546, 0x4748];
        let started = Instant::now();
        for i in 0..POINTS {
            registers[1] = i as u16;
            let _ = black_box(decode_registers(
                black_box(binding),
                *ty,
                black_box(&registers),
            ));
        }
        let ns = started.elapsed().as_nanos() as f64 / f64::from(POINTS);
        println!("{name:<18} {ns:>6.1} ns a point");
    }
}
