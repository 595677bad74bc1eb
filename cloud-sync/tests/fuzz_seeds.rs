//! Seeds for the fuzz targets (`fuzz/`) that a fuzzer could not easily
//! find by itself: real zstd-compressed sync batches, device-twin patches
//! and Sparkplug B payloads, made by the same code that makes them in
//! service. `FERRITE_WRITE_SEEDS=1 cargo test -p ferrite-sync --test
//! fuzz_seeds` rewrites them under `fuzz/corpus/`; without it the test
//! checks that the committed seeds still decode, so that they keep steering
//! the fuzzers into the decoders as the formats evolve.

use std::path::PathBuf;

use ferrite_models::Value;
use ferrite_proto::sparkplug::Payload;
use ferrite_proto::sync::v1::{Ack, DesiredPatch};
use ferrite_sync::delta::{self, Change, Dictionary};
use ferrite_sync::session::{Applied, Applier};
use prost::Message;

fn corpus(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn changes(n: usize) -> Vec<Change> {
    (0..n)
        .map(|i| Change {
            device: format!("dev-{}", i % 3),
            property: ["temp", "on", "label", "count"][i % 4].to_string(),
            ts_ms: 1_790_000_000_000 + i as i64 * 250,
            value: match i % 4 {
                0 => Value::Float(20.0 + i as f64 * 0.1),
                1 => Value::Bool(i % 2 == 0),
                2 => Value::String(format!("batch {i}")),
                _ => Value::Int(i as i64 * 1000 - 7),
            },
        })
        .collect()
}

/// Every seed, by target: (file name, bytes with the target's choice byte).
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut dictionary = Dictionary::default();
    for (i, n) in [1usize, 12, 200].into_iter().enumerate() {
        let batch = delta::encode("gw", i as u64 + 1, 1, &changes(n), &mut dictionary);
        let mut compressed = vec![0u8];
        compressed.extend(delta::compress(&batch, 3));
        out.push(("sync_batch", format!("seed-batch-{n}.zst"), compressed));
        let mut raw = vec![1u8];
        raw.extend(batch.encode_to_vec());
        out.push(("sync_batch", format!("seed-batch-{n}.pb"), raw));
    }
    let mut patch = DesiredPatch {
        version: 3,
        device: "boiler-1".into(),
        ..Default::default()
    };
    patch
        .properties
        .insert("setpoint".into(), delta::to_wire(&Value::Float(72.5)));
    patch
        .properties
        .insert("mode".into(), delta::to_wire(&Value::String("eco".into())));
    let mut bytes = vec![2u8];
    bytes.extend(patch.encode_to_vec());
    out.push(("sync_batch", "seed-desired.pb".into(), bytes));
    let mut bytes = vec![3u8];
    bytes.extend(Ack { seq: 41 }.encode_to_vec());
    out.push(("sync_batch", "seed-ack.pb".into(), bytes));

    let mut metrics = Vec::new();
    for (name, datatype, value) in [
        (
            "temp",
            ferrite_models::sparkplug::datatype_for(ferrite_models::model::ValueType::Float),
            Value::Float(21.5),
        ),
        (
            "on",
            ferrite_models::sparkplug::datatype_for(ferrite_models::model::ValueType::Bool),
            Value::Bool(true),
        ),
        (
            "count",
            ferrite_models::sparkplug::datatype_for(ferrite_models::model::ValueType::Int),
            Value::Int(-12),
        ),
        (
            "label",
            ferrite_models::sparkplug::datatype_for(ferrite_models::model::ValueType::String),
            Value::String("line 3".into()),
        ),
    ] {
        let mut metric = ferrite_models::sparkplug::metric_of(datatype, &value).expect("metric");
        metric.name = Some(name.into());
        metric.alias = Some(metrics.len() as u64 + 1);
        metrics.push(metric);
    }
    let payload = Payload {
        timestamp: Some(1_790_000_000_000),
        metrics,
        seq: Some(0),
        ..Default::default()
    };
    let mut bytes = vec![1u8];
    bytes.extend(payload.encode_to_vec());
    out.push(("mqtt_payload", "seed-sparkplug-birth.pb".into(), bytes));
    out
}

#[test]
fn committed_seeds_decode_as_they_did_when_made() {
    let write = std::env::var_os("FERRITE_WRITE_SEEDS").is_some();
    for (target, name, bytes) in seeds() {
        let path = corpus(target).join(&name);
        if write {
            std::fs::create_dir_all(corpus(target)).expect("mkdir");
            std::fs::write(&path, &bytes).expect("write seed");
        }
        let committed = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; FERRITE_WRITE_SEEDS=1 makes it", path.display()));
        let (choice, body) = committed.split_first().expect("a choice byte");
        match (target, choice) {
            ("sync_batch", 0) => {
                let batch = delta::decompress(body).expect("a sync seed decompresses");
                let mut cloud = Applier::resuming(batch.continues_after, batch.epoch);
                // The dictionary rides in the first batch only; a later one
                // alone must still decode as far as its own entries go.
                let _ = cloud.apply(&batch);
            }
            ("sync_batch", 1) => {
                let batch = ferrite_proto::sync::v1::DeltaBatch::decode(body).expect("decodes");
                assert!(batch.seq > 0, "a numbered batch");
            }
            ("sync_batch", 2) => {
                DesiredPatch::decode(body).expect("a patch");
            }
            ("sync_batch", _) => {
                Ack::decode(body).expect("an ack");
            }
            _ => {
                let payload = Payload::decode(body).expect("a Sparkplug payload");
                assert_eq!(payload.metrics.len(), 4);
            }
        }
    }
    // The first batch carries its whole dictionary: it applies as new.
    let first = std::fs::read(corpus("sync_batch").join("seed-batch-1.zst")).expect("seed");
    let batch = delta::decompress(&first[1..]).expect("decompress");
    let mut cloud = Applier::resuming(batch.continues_after, batch.epoch);
    assert!(matches!(cloud.apply(&batch), Ok(Applied::New { .. })));
}
