#!/usr/bin/env bash
# Writes the hand-made seeds into corpus/ (seed-* files). The fuzzers'
# own finds sit beside them, named by hash. Run from anywhere; `cargo fuzz
# cmin` renames or drops seeds, so run this again after it.
set -euo pipefail
cd "$(dirname "$0")"
C=corpus
mkdir -p $C/{config_and_models,modbus_response,mqtt_payload,sync_batch,rest_body}
# Model, device and rule files (choice byte 0: YAML) and configs (1: TOML).
for f in ../examples/demo/models/*.yaml ../examples/demo/devices/*.yaml ../examples/demo/rules/*.yaml; do
  { printf '\x00'; cat "$f"; } > "$C/config_and_models/seed-$(basename "$(dirname "$f")")-$(basename "$f")"
done
{ printf '\x01'; cat ../examples/demo/ferrite.toml; } > $C/config_and_models/seed-demo.toml
{ printf '\x01'; cat ../packaging/ferrite.toml; } > $C/config_and_models/seed-packaged.toml
# Write bodies.
printf '{"value": 42}' > $C/rest_body/seed-int
printf '{"value": 12.5}' > $C/rest_body/seed-float
printf '{"value": true}' > $C/rest_body/seed-bool
printf '{"value": "hello"}' > $C/rest_body/seed-string
printf '{"value": 1e400}' > $C/rest_body/seed-huge
# Modbus answers. Choice byte: bit 0 RTU, bits 1-3 register count / 4,
# bit 3 coils, high nibble the unit. TCP: MBAP header, function, data.
printf '\x10\x00\x00\x00\x00\x00\x05\x01\x03\x02\x12\x34' > $C/modbus_response/seed-tcp-1reg
printf '\x12\x00\x00\x00\x00\x00\x0d\x01\x03\x0a\x00\x01\x00\x02\x00\x03\x00\x04\x00\x05' > $C/modbus_response/seed-tcp-5reg
printf '\x10\x00\x00\x00\x00\x00\x03\x01\x83\x02' > $C/modbus_response/seed-tcp-exception
printf '\x18\x00\x00\x00\x00\x00\x04\x01\x01\x01\x05' > $C/modbus_response/seed-tcp-coils
# RTU: unit, function, data, CRC-16/MODBUS (little-endian).
printf '\x11\x01\x03\x02\x12\x34\xb5\x33' > $C/modbus_response/seed-rtu-1reg
printf '\x11\x01\x83\x02\xc0\xf1' > $C/modbus_response/seed-rtu-exception
# Plain MQTT payloads (choice 0).
printf '\x00{"a":[{"level":42.5}]}' > $C/mqtt_payload/seed-json
printf '\x0042' > $C/mqtt_payload/seed-bare-int
printf '\x00true' > $C/mqtt_payload/seed-bare-bool
# Sync batches, twin patches and a Sparkplug birth, made by the real code.
FERRITE_WRITE_SEEDS=1 cargo test -q -p ferrite-sync --test fuzz_seeds --manifest-path ../Cargo.toml
