#!/usr/bin/env bash
# Slow consumers, one command:
#   bash bench/slow-consumers.sh       (STALLED=1000 MESSAGES=100000 READERS=10 by default)
# A release server (in memory, --subscriber-stall 5s) gets one room with READERS subscribers
# that read and STALLED subscribers that never read after subscribing (own connections), while
# one publisher sends MESSAGES messages at RATE/s. Run twice, without and with the stalled
# ones, to compare the readers' publish-to-receive latency; prints the server's RSS and how
# the stalled subscribers were closed (a lag marker, then RESOURCE_EXHAUSTED).
set -euo pipefail
cd "$(dirname "$0")/.."
STALLED=${STALLED:-1000}
MESSAGES=${MESSAGES:-100000}
READERS=${READERS:-10}
RATE=${RATE:-2000}
BODY=${BODY:-256}
PORT=${PORT:-50182}
seconds=$(( MESSAGES / RATE ))
cargo build --release --locked --quiet --bin confab
CONFAB=target/release/confab

run() {
  local stalled=$1
  "$CONFAB" serve --listen 127.0.0.1:$PORT --in-memory --subscriber-stall 5s --sends-per-second-max 0 --typing-per-second-max 0 --joins-per-second-max 0 --ws-listen off 2>/dev/null &
  local server=$!
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
  echo "== $READERS readers, $stalled stalled subscribers, $MESSAGES messages of $BODY bytes at $RATE/s"
  "$CONFAB" bench --server http://127.0.0.1:$PORT --scenario fanout --connections 2 \
    --concurrency "$READERS" --stalled "$stalled" --rate "$RATE" --body-bytes "$BODY" \
    --duration "${seconds}s" --warmup 0s --server-pid $server || true
  kill -TERM $server; wait $server || true
}
run 0
run "$STALLED"
