#!/bin/sh
# Runs a ferrite binary under heaptrack, in the load benches' place
# (FERRITE_BIN), and passes SIGTERM on to it so that the bench's stop ends
# the recording. See docs/gateway.md, "Where the memory goes".
#
#   FERRITE=target/heap/release/ferrite OUT=/tmp/ht/ferrite \
#   FERRITE_BIN=gateway/benches/heaptrack.sh \
#   cargo bench -p ferrite-gateway --bench modbus_load
set -eu
: "${FERRITE:?the ferrite binary to record (built with symbols)}"
: "${OUT:=/tmp/heaptrack-ferrite}"
heaptrack -o "$OUT" "$FERRITE" "$@" &
pid=$!
trap 'pkill -TERM -x ferrite; wait "$pid"' TERM
wait "$pid"
