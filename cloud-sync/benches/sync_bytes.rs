//! Bytes on the wire per changed point: Ferrite's delta batches against
//! naive JSON (one MQTT message per reading), on the same data. Prints
//! figures; asserts nothing.
//!
//! ```sh
//! cargo bench -p ferrite-sync --bench sync_bytes
//! # other sizes: DEVICES=20 SECONDS=600 cargo bench -p ferrite-sync --bench sync_bytes
//! ```
//!
//! The data: DEVICES devices polled every second for SECONDS, each with ten
//! properties like a plant's: six one-decimal floats on random walks
//! (temperatures, humidity, voltage), two two-decimal floats (pressure,
//! power factor), an energy counter (int) and a running flag (bool, flips
//! rarely). As the gateway does, a reading becomes a change only when it
//! moves past its deadband. The same changes are then sent both ways:
//! - naive: one MQTT 3.1.1 PUBLISH (QoS 0) per change, topic
//!   `gw-01/DEVICE/PROPERTY`, payload `{"value":V,"ts":"RFC 3339"}`;
//! - Ferrite: one PUBLISH (QoS 1, topic `ferrite/v1/gw/gw-01/up/batch`) per batch,
//!   payload a zstd-compressed DeltaBatch, batches cut every 1 s and every
//!   10 s; the dictionary goes in the first batch only (acknowledged).
//!
//! Both count the whole MQTT packet (fixed header, topic, packet id,
//! payload), not TCP/IP.

use std::time::Instant;

use ferrite_models::Value;
use ferrite_sync::delta::{
    Change, Dictionary, compress, decode, decompress, encode, naive_json_bytes,
    publish_packet_bytes,
};
use ferrite_sync::topics::{self, Up};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator (xorshift), so runs compare.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// -1, 0 or 1, and sometimes ±2.
    fn step(&mut self) -> i64 {
        match self.next() % 10 {
            0 => -2,
            1..=3 => -1,
            4..=5 => 0,
            6..=8 => 1,
            _ => 2,
        }
    }
}

fn main() {
    let devices = env("DEVICES", 20);
    let seconds = env("SECONDS", 600);
    println!("sync_bytes: {devices} devices × 10 properties, polled every 1 s for {seconds} s");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    // Per property: kind, current scaled value, deadband (scaled), last sent.
    #[derive(Clone, Copy)]
    enum Kind {
        Dec1,
        Dec2,
        Counter,
        Flag,
    }
    let kinds = [
        Kind::Dec1,
        Kind::Dec1,
        Kind::Dec1,
        Kind::Dec1,
        Kind::Dec1,
        Kind::Dec1,
        Kind::Dec2,
        Kind::Dec2,
        Kind::Counter,
        Kind::Flag,
    ];
    let names = [
        "t_in", "t_out", "t_flow", "t_return", "humidity", "voltage", "pressure", "pf", "energy",
        "running",
    ];
    let mut state: Vec<Vec<(i64, i64)>> = (0..devices)
        .map(|_| {
            kinds
                .iter()
                .map(|k| match k {
                    Kind::Dec1 => (215, 215),
                    Kind::Dec2 => (150, 150),
                    Kind::Counter => (1_200_000, 1_200_000),
                    Kind::Flag => (1, 1),
                })
                .collect()
        })
        .collect();
    let t0: i64 = 1_795_000_000_000;
    let mut per_second: Vec<Vec<Change>> = Vec::with_capacity(seconds);
    let mut readings = 0usize;
    for sec in 0..seconds {
        let ts = t0 + i64::try_from(sec).unwrap_or(0) * 1000;
        let mut changes = Vec::new();
        for (d, props) in state.iter_mut().enumerate() {
            for (p, (now, sent)) in props.iter_mut().enumerate() {
                readings += 1;
                let (value, deadband, moved) = match kinds[p] {
                    Kind::Dec1 => {
                        *now += rng.step();
                        (Value::Float(*now as f64 / 10.0), 2, 0)
                    }
                    Kind::Dec2 => {
                        *now += rng.step();
                        (Value::Float(*now as f64 / 100.0), 2, 0)
                    }
                    Kind::Counter => {
                        *now += 3 + i64::try_from(rng.next() % 3).unwrap_or(0);
                        (Value::Int(*now), 0, 1)
                    }
                    Kind::Flag => {
                        if rng.next().is_multiple_of(300) {
                            *now = 1 - *now;
                        }
                        (Value::Bool(*now == 1), 0, 1)
                    }
                };
                if (*now - *sent).abs() >= deadband.max(moved) {
                    *sent = *now;
                    changes.push(Change {
                        device: format!("d{d:02}"),
                        property: names[p].to_string(),
                        ts_ms: ts,
                        value,
                    });
                }
            }
        }
        per_second.push(changes);
    }
    let points: usize = per_second.iter().map(Vec::len).sum();
    println!("  readings {readings}, changes past the deadband {points}");

    let naive: usize = per_second
        .iter()
        .flatten()
        .map(|c| naive_json_bytes("gw-01", c))
        .sum();
    println!(
        "  naive JSON, one message per change      {:>10} bytes  {:>6.2} B/point",
        naive,
        naive as f64 / points as f64
    );

    for window in [1usize, 10] {
        let mut dict = Dictionary::default();
        let mut cloud = Dictionary::default();
        let mut wire = 0usize;
        let mut seq = 0u64;
        let mut first = 1u64;
        let mut checked = 0usize;
        let started = Instant::now();
        for chunk in per_second.chunks(window) {
            let changes: Vec<Change> = chunk.iter().flatten().cloned().collect();
            if changes.is_empty() {
                continue;
            }
            seq += 1;
            let batch = encode("gw-01", seq, first, &changes, &mut dict);
            first += changes.len() as u64;
            let bytes = compress(&batch, 3);
            wire += publish_packet_bytes(topics::up("gw-01", Up::Batch).len(), bytes.len(), true);
            // The cloud acknowledges, and the dictionary need not ride again.
            dict.acknowledge(dict.len());
            let back =
                decode(&decompress(&bytes).expect("decompress"), &mut cloud).expect("decode");
            checked += back.len();
        }
        let elapsed = started.elapsed();
        assert_eq!(checked, points, "every point decodes");
        println!(
            "  Ferrite, batches every {window:>2} s (zstd 3)     {:>10} bytes  {:>6.2} B/point  {:>5.1}% less  ({:.0} points/s encoded, compressed, decoded on one core)",
            wire,
            wire as f64 / points as f64,
            100.0 * (1.0 - wire as f64 / naive as f64),
            points as f64 / elapsed.as_secs_f64()
        );
    }
}
