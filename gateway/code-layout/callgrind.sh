#!/bin/sh
# Runs a ferrite binary under callgrind in the load benches' place
# (FERRITE_BIN), and passes SIGTERM on to it so that the bench's stop ends
# the recording (callgrind writes OUT as the process exits). record.sh uses
# it for its second phase.
#
#   FERRITE=path/to/ferrite OUT=/tmp/modbus.cg \
#   FERRITE_BIN=gateway/code-layout/callgrind.sh \
#   DEVICES=50 SECONDS=30 cargo bench -p ferrite-gateway --bench modbus_load
set -eu
: "${FERRITE:?the ferrite binary to record (built with symbols)}"
: "${OUT:=/tmp/callgrind-ferrite.cg}"
valgrind --tool=callgrind --demangle=no --dump-line=no --dump-instr=no \
  --callgrind-out-file="$OUT" "$FERRITE" "$@" &
pid=$!
trap 'kill -TERM "$pid"; wait "$pid"' TERM
wait "$pid"
