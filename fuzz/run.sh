#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60) and prints, per
# target, the inputs tried and what was found. Exits non-zero on any crash,
# hang (over 10 s on one input) or out-of-memory. New corpus entries go to a
# scratch folder; the committed corpus (corpus/TARGET) is read, not changed.
#
#   fuzz/run.sh 30            # as CI does (with FUZZ_JOBS=2)
#   fuzz/run.sh 600 sync_batch
#   fuzz/run.sh --build       # install cargo-fuzz if missing, build, run nothing
#
# FUZZ_JOBS (default 1) targets run side by side; libFuzzer uses one core
# per target.
#
# Stable Rust is enough: cargo-fuzz builds with sanitizer coverage; without
# a sanitizer (our code forbids `unsafe`, but for one mallopt call at
# start, so what there is to find are panics, hangs and blow-ups, which
# libFuzzer catches by itself).
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH="${1:-60}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(config_and_models modbus_response mqtt_payload sync_batch rest_body)
JOBS="${FUZZ_JOBS:-1}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  # A debug build of the tool: it only drives cargo and libFuzzer, and
  # compiles in a fraction of the release build's time.
  cargo install cargo-fuzz --locked --version 0.13.2 --debug
fi
cargo fuzz build --sanitizer none 2>&1 | tail -1
[ "$SECONDS_EACH" = --build ] && exit 0

SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
# One target: its log, and its exit status in TARGET.rc.
fuzz_one() {
  local target=$1 rc=0
  mkdir -p "$SCRATCH/$target"
  cargo fuzz run --sanitizer none "$target" "$SCRATCH/$target" "corpus/$target" -- \
      -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$SCRATCH/$target.log" 2>&1 || rc=$?
  echo "$rc" >"$SCRATCH/$target.rc"
}
running=0
for target in "${TARGETS[@]}"; do
  fuzz_one "$target" &
  running=$((running + 1))
  if [ "$running" -ge "$JOBS" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait || true

failed=0
printf '%-20s %12s %10s %8s %s\n' target inputs seconds corpus result
for target in "${TARGETS[@]}"; do
  log="$SCRATCH/$target.log"
  if [ "$(cat "$SCRATCH/$target.rc" 2>/dev/null)" = 0 ]; then
    result=ok
  else
    result=FAILED
    failed=1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  corpus=$(grep -oE 'corp: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
  printf '%-20s %12s %10s %8s %s\n' "$target" "${runs:-?}" "$SECONDS_EACH" "${corpus:-?}" "$result"
  if [ "$result" = FAILED ]; then
    grep -E 'panicked|ERROR|SUMMARY|Test unit written|artifact' -A3 "$log" | head -40
  fi
done
exit "$failed"
