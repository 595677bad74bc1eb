#!/usr/bin/env bash
# Records which functions a running gateway runs, hottest first, into
# gateway/code-layout/ferrite.order, which the linker uses to place them
# together (gateway/build.rs; docs/deploy.md, "Code layout").
#
#   gateway/code-layout/record.sh            # from the repository's root
#
# It builds the shipped binary with its symbols kept (the same code and
# the same names as the stripped one: only the symbol table differs), the
# simulator and the `modbus_load` bench (without LTO), then runs the
# gateway under valgrind's callgrind three times:
#   1. the image's config (no devices): start, 20 s idle, a few API calls;
#   2. `modbus_load` at its default shape, 1000 devices × 100 registers,
#      10% changing, REST writes, for 75 s (so that the store's minute
#      pass runs too): a box polling PLCs (callgrind.sh); under callgrind
#      some polls time out, and their error paths are recorded too;
#   3. the demo's project against `ferrite-sim` (Modbus TCP, OPC UA, MQTT
#      JSON and Sparkplug B, rules): 60 s of polls, reads, writes, history.
# The list is phase 1's functions, then phase 2's others, then phase 3's,
# each by instructions run (self cost), so that what an idle gateway runs
# is packed the tightest, and what a polling one runs next to it.
#
# Needs valgrind (Debian's package), curl, and the demo's ports free (8080,
# 1883 and its devices': phases 1 and 3 use the configs as they are).
# Takes ~25 minutes cold (three builds), ~5 once built. BENCH_TARGET_DIR:
# where the bench is built (default: the target dir).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
TRIPLE=x86_64-unknown-linux-gnu
IDLE_S=${IDLE_S:-20}
BUSY_S=${BUSY_S:-60}

echo "== the shipped build, symbols kept"
# The symbols are kept by RUSTFLAGS, whose `-C strip=none` comes after the
# profile's `strip`: a profile setting would change cargo's `-C metadata`,
# and with it the hash in every function's name, so the list would name
# functions the shipped build does not have. RUSTFLAGS do not enter it.
RUSTFLAGS='-C target-feature=+crt-static -C relocation-model=static -C strip=none' \
  cargo build --target "$TRIPLE" --profile release-small -p ferrite-gateway \
  --no-default-features --features modbus,opcua,mqtt
FERRITE="$TARGET_DIR/$TRIPLE/release-small/ferrite"
echo "== the simulator"
cargo build -p ferrite-sim --bin ferrite-sim
SIM="$TARGET_DIR/debug/ferrite-sim"
echo "== the modbus_load bench, without LTO"
BENCH=$(cd gateway && CARGO_TARGET_DIR=${BENCH_TARGET_DIR:-$TARGET_DIR} CARGO_INCREMENTAL=0 \
  CARGO_PROFILE_BENCH_STRIP=none CARGO_PROFILE_BENCH_LTO=off CARGO_PROFILE_BENCH_CODEGEN_UNITS=16 \
  cargo bench -p ferrite-gateway --bench modbus_load --no-run --message-format=json |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "modbus_load" and m.get("executable"):
        print(m["executable"])')

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# Runs the gateway under callgrind until the API answers, then for $2
# seconds while $3 (a shell function) calls the API, then stops it with
# SIGTERM (callgrind writes its file as the process exits).
profile() {
  local config=$1 seconds=$2 calls=$3 out=$4
  valgrind --tool=callgrind --demangle=no --dump-line=no --dump-instr=no \
    --callgrind-out-file="$out" "$FERRITE" run --config "$config" \
    >"$out.log" 2>&1 &
  local pid=$! up=
  for _ in $(seq 600); do
    curl -sf -o /dev/null http://127.0.0.1:8080/healthz && { up=1; break; }
    sleep 0.5
  done
  if [[ -z $up ]]; then
    # A list from a gateway that never served would order start-up only.
    echo "the gateway did not answer on 127.0.0.1:8080 within 300 s:" >&2
    tail -20 "$out.log" >&2
    kill -TERM "$pid" 2>/dev/null || true
    exit 1
  fi
  local end=$((SECONDS + seconds))
  while ((SECONDS < end)); do "$calls"; sleep 1; done
  kill -TERM "$pid"
  wait "$pid" || true
}

idle_calls() {
  curl -s -o /dev/null http://127.0.0.1:8080/readyz || true
  curl -s -o /dev/null http://127.0.0.1:8080/api/v1/devices || true
}

busy_calls() {
  local api=http://127.0.0.1:8080/api/v1
  curl -s -o /dev/null "$api/devices" || true
  curl -s -o /dev/null "$api/devices/boiler-1" || true
  curl -s -o /dev/null "$api/devices/boiler-1/properties/temperature/history?limit=100" || true
  curl -s -o /dev/null -X PUT -H 'content-type: application/json' \
    -d '{"value": 70}' "$api/devices/boiler-1/properties/setpoint" || true
  curl -s -o /dev/null http://127.0.0.1:8080/metrics || true
}

echo "== 1: idle (the image's config), ${IDLE_S} s"
mkdir -p "$WORK/idle/models" "$WORK/idle/devices" "$WORK/idle/rules"
sed "s|^data_dir = .*|data_dir = \"$WORK/idle/data\"|" packaging/image/ferrite.toml \
  >"$WORK/idle/ferrite.toml"
profile "$WORK/idle/ferrite.toml" "$IDLE_S" idle_calls "$WORK/idle.cg"

echo "== 2: modbus_load, 1000 devices, 75 s"
(cd gateway && FERRITE="$FERRITE" OUT="$WORK/modbus.cg" \
  FERRITE_BIN="$ROOT/gateway/code-layout/callgrind.sh" \
  DEVICES=1000 CHANGE_PERCENT=10 SECONDS=75 "$BENCH" --bench | tail -4)

echo "== 3: the demo's devices, ${BUSY_S} s"
cp -r examples/demo "$WORK/demo"
rm -rf "$WORK/demo/data"
"$SIM" --config "$WORK/demo/sim.toml" >"$WORK/sim.log" 2>&1 &
PIDS+=($!)
sleep 2
profile "$WORK/demo/ferrite.toml" "$BUSY_S" busy_calls "$WORK/busy.cg"

python3 "$ROOT/gateway/code-layout/order.py" "$WORK/idle.cg" "$WORK/modbus.cg" "$WORK/busy.cg" \
  >"$ROOT/gateway/code-layout/ferrite.order"
wc -l "$ROOT/gateway/code-layout/ferrite.order"
