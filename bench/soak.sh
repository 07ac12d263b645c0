#!/usr/bin/env bash
# Soak: ten minutes of mixed load on loopback against a release confab server, one command:
#   bash bench/soak.sh                 (DURATION=10m CLIENTS=200 ROOMS=20 RATE=2000 by default)
# `confab bench --scenario mix` runs CLIENTS Session clients in ROOMS rooms sending RATE
# messages/s in all; each client disconnects at random (exponential, mean DISCONNECT_EVERY)
# and resumes after the last message it saw, checking its room's order all along (no gap
# without a lag marker, no repeat, exact resume). The server keeps durable history in a fresh
# data directory. Prints the server's RSS before and after, peak RSS, CPU, errors, order
# violations and reconnects, and fails if any error or order violation occurred.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10m}
CLIENTS=${CLIENTS:-200}
ROOMS=${ROOMS:-20}
RATE=${RATE:-2000}
DISCONNECT_EVERY=${DISCONNECT_EVERY:-20s}
PORT=${PORT:-50181}
work=target/soak
rm -rf "$work" && mkdir -p "$work"

cargo build --release --locked --quiet --bin confab
CONFAB=target/release/confab
"$CONFAB" serve --listen 127.0.0.1:$PORT --data-dir "$work/data" --ws-listen off 2>"$work/server.log" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done

echo "soak: $CLIENTS clients in $ROOMS rooms, $RATE msg/s, disconnect every ~$DISCONNECT_EVERY, for $DURATION"
# The server's RSS once a minute, to tell a plateau (retained history filling up) from a leak.
( while kill -0 $server 2>/dev/null; do
    sleep 60
    awk -v t="$(date +%T)" '/^VmRSS/{print "soak: " t " server rss " $2 " KiB"}' /proc/$server/status 2>/dev/null
  done ) >&2 &
sampler=$!
trap 'kill $server $sampler 2>/dev/null || true' EXIT
"$CONFAB" bench --server http://127.0.0.1:$PORT --scenario mix --connections 8 \
  --concurrency "$CLIENTS" --rooms "$ROOMS" --rate "$RATE" --body-bytes 64 \
  --disconnect-every "$DISCONNECT_EVERY" --duration "$DURATION" --warmup 2s \
  --server-pid $server --json | tee "$work/report.json"
kill -TERM $server
wait $server || { echo "soak: the server did not stop cleanly" >&2; exit 1; }
kill $sampler 2>/dev/null || true
trap - EXIT
python3 - "$work/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"soak: {r['operations']} deliveries at {r['rate']:.0f}/s, p99 {r['p99_ms']} ms, "
      f"errors {r['errors']}, order violations {r['order_violations']}, reconnects {r['reconnects']}, "
      f"lag events {r['lag_events']}")
print(f"server: rss {r['server_rss_before_kib']} KiB at start, {r['server_rss_kib']} KiB at the end, "
      f"peak {r['server_peak_rss_kib']} KiB, cpu {r['server_cpu_seconds']:.0f} s")
sys.exit(1 if r['errors'] or r['order_violations'] else 0)
PY
