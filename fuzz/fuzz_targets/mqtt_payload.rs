//! MQTT payloads from devices: plain payloads (a JSON document read at a
//! JSON Pointer, or a bare value) for every property of the fixture model,
//! and Sparkplug B payloads (protobuf), each metric converted for every
//! value type.
#![no_main]

use ferrite_fuzz::fixture;
use ferrite_models::model::ValueType;
use ferrite_models::{payload, sparkplug};
use ferrite_proto::sparkplug::Payload;
use libfuzzer_sys::fuzz_target;
use prost::Message;

const TYPES: [ValueType; 4] = [
    ValueType::Bool,
    ValueType::Int,
    ValueType::Float,
    ValueType::String,
];

fuzz_target!(|data: &[u8]| {
    let Some((&choice, body)) = data.split_first() else {
        return;
    };
    if choice % 2 == 0 {
        for (_, property) in &fixture().properties {
            if let Some(mqtt) = &property.mqtt {
                let _ = payload::decode(property.ty, mqtt.json.as_ref(), body);
            }
        }
        for ty in TYPES {
            let _ = payload::decode(ty, None, body);
        }
    } else if let Ok(message) = Payload::decode(body) {
        for metric in &message.metrics {
            for ty in TYPES {
                if let Ok(Some(value)) = sparkplug::metric_value(metric, ty) {
                    // What decoded also encodes, as NCMD/DCMD writes do.
                    let _ = sparkplug::metric_of(sparkplug::datatype_for(ty), &value);
                }
            }
        }
    }
});
