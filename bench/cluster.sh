#!/usr/bin/env bash
# What cluster mode costs (issue 15, item 10), in one run, the configurations alternated per
# round (A B C, A B C, …) so the noise of this shared machine falls on all of them alike:
#   single   one `confab serve` with the durable local store (redb, group commit, fsync)
#   cluster  3 `confab serve --nats` nodes over a 3-server JetStream cluster (R3), nats-server's
#            default sync_interval (2m: an acknowledged append is on a quorum, in memory)
#   always   the same with `sync_interval: always` (fsynced on a quorum before the
#            acknowledgement; what scripts/cluster-up.sh runs)
# Scenarios, each against every configuration (the cluster's clients spread over its nodes):
#   send-hot    unary Send, 64 callers, one room (every node appends to the same subject)
#   send-rooms  unary Send, 64 callers over 64 rooms (spread over the shard streams)
#   fanout      one publisher at RATE msgs/s on node 1, SUBSCRIBERS subscribers of its room
#               spread over the nodes (in a cluster 2/3 of them read through the log's feed)
# Usage: bash bench/cluster.sh [ROUNDS (3)]   (DURATION=10s RATE=500 SUBSCRIBERS=300)
# CONFAB_BIN=PATH uses that release binary instead of building one. Prints every round, then
# medians and the cluster/single ratios. Everything binds 127.0.0.1 and stops on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
DURATION=${DURATION:-10s}; RATE=${RATE:-500}; SUBSCRIBERS=${SUBSCRIBERS:-300}
grpc_port=50451; web_port=8451; nats_port=4451; route_port=6451; monitor_port=8461

if [ -n "${CONFAB_BIN:-}" ]; then
  confab=$(cd "$(dirname "$CONFAB_BIN")" && pwd)/$(basename "$CONFAB_BIN")
else
  echo "== building confab (release, once)" >&2
  cargo build --release --locked --bin confab >&2
  confab=$PWD/target/release/confab
fi
source scripts/nats-server.sh >&2
unlimited="--sends-per-second-max 0 --typing-per-second-max 0 --joins-per-second-max 0"
work=$(mktemp -d "${TMPDIR:-/tmp}/confab-bench-cluster.XXXXXX")
server_pid=""
stop_server() {
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}
trap 'stop_server; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

# Starts a configuration; sets `servers` (the gRPC addresses, comma-separated).
start() {
  local config=$1 tick
  rm -rf "$work/data"
  case $config in
    single)
      # shellcheck disable=SC2086
      "$confab" serve --data-dir "$work/data" --listen 127.0.0.1:$grpc_port --ws-listen off $unlimited \
        >"$work/out" 2>"$work/log" &
      servers="http://127.0.0.1:$grpc_port"
      ;;
    cluster | always)
      local sync=2m
      [ "$config" = always ] && sync=always
      CONFAB_BIN=$confab NATS_SYNC_INTERVAL=$sync CONFAB_SERVE_ARGS="$unlimited" CONFAB_CLUSTER_UP_FOR=3600 \
        GRPC_PORT=$grpc_port WEB_PORT=$web_port NATS_PORT=$nats_port NATS_ROUTE_PORT=$route_port \
        NATS_MONITOR_PORT=$monitor_port bash scripts/cluster-up.sh >"$work/out" 2>"$work/log" &
      servers=$(printf 'http://127.0.0.1:%d,' $grpc_port $((grpc_port + 1)) $((grpc_port + 2)))
      servers=${servers%,}
      ;;
  esac
  server_pid=$!
  for ((tick = 0; ; tick++)); do
    grep -qE '^(confab listening on|A 3-node confab cluster is up)' "$work/out" 2>/dev/null && return 0
    if ((tick >= 600)) || ! kill -0 "$server_pid" 2>/dev/null; then
      echo "bench/cluster.sh: $config did not start:" >&2
      cat "$work/out" "$work/log" >&2
      exit 1
    fi
    sleep 0.1
  done
}

# One measurement: prints "rate p50_ms p99_ms errors".
measure() {
  local scenario=$1 out
  local args=(--server "$servers" --duration "$DURATION" --warmup 2s --json)
  local connections=$(( $(tr -cd , <<<"$servers" | wc -c) + 1 ))
  case $scenario in
    send-hot) args+=(--scenario unary-send --concurrency 64 --connections "$connections") ;;
    send-rooms) args+=(--scenario unary-send --concurrency 64 --rooms 64 --connections "$connections") ;;
    fanout) args+=(--scenario fanout --concurrency "$SUBSCRIBERS" --rate "$RATE" --connections "$connections") ;;
  esac
  out=$("$confab" bench "${args[@]}" 2>/dev/null || true)
  python3 -c '
import json, sys
try:
    r = json.loads(sys.argv[1])
except ValueError:
    print("0 0 0 failed"); sys.exit()
print(r["rate"], r["p50_ms"], r["p99_ms"], r["errors"])' "$out"
}

declare -A rates p99s
scenarios=(send-hot send-rooms fanout)
configs=(single cluster always)
printf '%-11s %-5s %-8s %12s %10s %10s %7s\n' scenario round config "per second" "p50 ms" "p99 ms" errors
for round in $(seq "$rounds"); do
  for config in "${configs[@]}"; do
    start "$config"
    for scenario in "${scenarios[@]}"; do
      read -r rate p50 p99 errors < <(measure "$scenario")
      printf '%-11s %-5s %-8s %12.0f %10s %10s %7s\n' "$scenario" "$round" "$config" "$rate" "$p50" "$p99" "$errors"
      rates[$scenario.$config]+="$rate "
      p99s[$scenario.$config]+="$p99 "
    done
    stop_server
  done
done

median() { tr ' ' '\n' | { grep . || true; } | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
echo
echo "medians of $rounds rounds (fanout: deliveries/s over all nodes; per node = / 3 in a cluster)"
printf '%-11s %-8s %12s %10s %14s\n' scenario config "per second" "p99 ms" "vs single"
for scenario in "${scenarios[@]}"; do
  single=$(median <<<"${rates[$scenario.single]}")
  for config in "${configs[@]}"; do
    rate=$(median <<<"${rates[$scenario.$config]}")
    p99=$(median <<<"${p99s[$scenario.$config]}")
    printf '%-11s %-8s %12.0f %10.2f %13.2fx\n' "$scenario" "$config" "$rate" "$p99" \
      "$(awk -v a="$rate" -v b="$single" 'BEGIN {print (b > 0) ? a / b : 0}')"
  done
done
