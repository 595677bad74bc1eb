#!/usr/bin/env bash
# Idle memory of gateway binaries, the image's config (no devices):
# VmRSS, RssAnon and RssFile from /proc/PID/status at 10 and 40 s after
# the API answers. Binaries given alternate, RUNS rounds of each.
#
#   gateway/code-layout/idle_rss.sh BINARY [BINARY ...]
#
# Each binary is read whole first so that all of its pages are in the page
# cache, as they are on a box that has run it before.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RUNS=${RUNS:-3}
PORT=${PORT:-18080}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
figures() {
  awk '/^(VmRSS|RssAnon|RssFile):/ {printf "%s %.1f  ", $1, $2 / 1024}' "/proc/$1/status"
}
for round in $(seq "$RUNS"); do
  for bin in "$@"; do
    cat "$bin" >/dev/null
    rm -rf "$WORK/data"
    mkdir -p "$WORK/models" "$WORK/devices" "$WORK/rules"
    sed -e "s|^data_dir = .*|data_dir = \"$WORK/data\"|" \
        -e "s|^listen = .*|listen = \"127.0.0.1:$PORT\"|" \
        "$ROOT/packaging/image/ferrite.toml" >"$WORK/ferrite.toml"
    "$bin" run --config "$WORK/ferrite.toml" >"$WORK/log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
      curl -sf -o /dev/null "http://127.0.0.1:$PORT/healthz" && break
      sleep 0.1
    done
    sleep 10
    at10=$(figures "$pid")
    sleep 30
    at40=$(figures "$pid")
    kill -TERM "$pid"
    wait "$pid" || true
    echo "round $round $(basename "$bin"): 10 s: $at10| 40 s: $at40"
  done
done
