//! What crosses the uplink: zstd-compressed DeltaBatches as the control
//! plane receives them (decompressed within its bound, then applied to a
//! session as `ferrite-cloud` does), and the messages the gateway receives
//! (Resume, Ack, and device-twin DesiredPatches whose values become writes).
#![no_main]

use ferrite_proto::sync::v1::{Ack, DeltaBatch, DesiredPatch, Resume};
use ferrite_sync::delta::{self, Dictionary};
use ferrite_sync::session::Applier;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&choice, body)) = data.split_first() else {
        return;
    };
    match choice % 4 {
        0 => {
            if let Ok(batch) = delta::decompress(body) {
                apply(&batch);
            }
        }
        1 => {
            // Uncompressed, so the fuzzer reaches the protobuf and column
            // decoding directly.
            if let Ok(batch) = DeltaBatch::decode(body) {
                apply(&batch);
            }
        }
        2 => {
            if let Ok(patch) = DesiredPatch::decode(body) {
                for value in patch.properties.values() {
                    if let Some(value) = delta::from_wire(value) {
                        let _ = serde_json::to_value(&value);
                    }
                }
            }
        }
        _ => {
            let _ = Resume::decode(body);
            let _ = Ack::decode(body);
        }
    }
});

fn apply(batch: &DeltaBatch) {
    let mut session = Applier::resuming(batch.continues_after, batch.epoch);
    let _ = session.apply(batch);
    // And from a fresh dictionary, as after a restart of the control plane.
    let _ = delta::decode(batch, &mut Dictionary::default());
}
