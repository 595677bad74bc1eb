//! REST write bodies (`PUT .../properties/{name}` with `{"value": V}`):
//! parsed as the API parses them, then checked against every property of
//! the fixture model (access, type, limits) as every write is; a value that
//! passes must encode for its Modbus binding, as the driver then does.
#![no_main]

use ferrite_fuzz::fixture;
use ferrite_models::codec;
use ferrite_models::value::check_write;
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;

/// The API's write body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteBody {
    value: serde_json::Value,
}

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<WriteBody>(data) else {
        return;
    };
    for (name, property) in &fixture().properties {
        if let Ok(value) = check_write(name, property, &body.value) {
            if let Some(binding) = &property.modbus {
                let _ = codec::encode(binding, &value);
            }
        }
    }
});
