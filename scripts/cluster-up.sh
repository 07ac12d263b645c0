#!/usr/bin/env bash
# A three-node confab cluster on this machine, for a person to try: installs the pinned
# nats-server (scripts/nats-server.sh), builds confab once (release), starts a 3-server NATS
# JetStream cluster and three `confab serve --nats` nodes on 127.0.0.1, prints where each node
# listens, and stops everything it started on Ctrl-C (or when it exits for any reason).
#
# Ports (override with the environment): NATS clients 4222-4224 (NATS_PORT), NATS routes
# 6222-6224 (NATS_ROUTE_PORT), NATS monitoring 8222-8224 (NATS_MONITOR_PORT), confab gRPC
# 50051-50053 (GRPC_PORT), confab web pages 8081-8083 (WEB_PORT).
# CONFAB_CLUSTER_UP_FOR=SECONDS stops it after that long instead of waiting for Ctrl-C;
# CONFAB_BIN=PATH runs that confab binary instead of building the release one.
# CONFAB_SERVE_ARGS adds flags to every node's `confab serve` (bench/cluster.sh turns the rate
# limits off with it). NATS_SYNC_INTERVAL sets JetStream's `sync_interval` (default `always`:
# every acknowledged append is fsynced on a quorum; nats-server's own default, 2m, leaves the
# durability to replication alone; bench/cluster.sh measures both).
# Everything lives in a temporary directory (JetStream storage, logs), removed on exit: each run
# starts an empty cluster.
set -euo pipefail
cd "$(dirname "$0")/.."

nats_port=${NATS_PORT:-4222}
route_port=${NATS_ROUTE_PORT:-6222}
monitor_port=${NATS_MONITOR_PORT:-8222}
grpc_port=${GRPC_PORT:-50051}
web_port=${WEB_PORT:-8081}
sync_interval=${NATS_SYNC_INTERVAL:-always}
nodes=3
# Bounds on every wait, in tenths of a second.
ready_wait_max=600

source scripts/nats-server.sh
if [ -n "${CONFAB_BIN:-}" ]; then
  confab=$(cd "$(dirname "$CONFAB_BIN")" && pwd)/$(basename "$CONFAB_BIN")
else
  echo "== building confab (release, once)"
  cargo build --release --locked --bin confab
  confab=$PWD/target/release/confab
fi

dir=$(mktemp -d "${TMPDIR:-/tmp}/confab-cluster.XXXXXX")
pids=()
stop_all() {
  local status=$?
  trap - EXIT INT TERM
  echo
  echo "== stopping (pids ${pids[*]:-none})"
  # The confab nodes first (newest first), so they stop before the log they write to.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  done
  # A failure keeps the logs to read; a stop by Ctrl-C (130) or the timer removes everything.
  if ((status != 0 && status != 130)); then
    echo "logs kept in $dir" >&2
  else
    rm -rf "$dir"
  fi
}
trap stop_all EXIT
trap 'exit 130' INT TERM

urls=$(for ((i = 0; i < 3; i++)); do printf 'nats://127.0.0.1:%d,' $((nats_port + i)); done)
urls=${urls%,}
routes=$(for ((i = 0; i < 3; i++)); do printf 'nats-route://127.0.0.1:%d, ' $((route_port + i)); done)
routes=${routes%, }

echo "== nats-server: 3-server JetStream cluster (data and logs in $dir)"
for ((i = 0; i < 3; i++)); do
  name=nats$((i + 1))
  cat >"$dir/$name.conf" <<CONF
server_name: $name
listen: 127.0.0.1:$((nats_port + i))
http: 127.0.0.1:$((monitor_port + i))
jetstream { store_dir: "$dir/$name", sync_interval: "$sync_interval" }
cluster { name: confab-up, listen: 127.0.0.1:$((route_port + i)), routes: [$routes] }
CONF
  "$CONFAB_NATS_SERVER" -c "$dir/$name.conf" >"$dir/$name.log" 2>&1 &
  pids+=($!)
done
# Ready when every server reports JetStream healthy (current with a meta leader).
for ((i = 0; i < 3; i++)); do
  for ((tick = 0; ; tick++)); do
    curl -sf "http://127.0.0.1:$((monitor_port + i))/healthz" >/dev/null 2>&1 && break
    if ((tick >= ready_wait_max)) || ! kill -0 "${pids[i]}" 2>/dev/null; then
      echo "cluster-up: nats$((i + 1)) is not healthy; its log:" >&2
      cat "$dir/nats$((i + 1)).log" >&2
      exit 1
    fi
    sleep 0.1
  done
done

echo "== confab: $nodes nodes (--nats $urls)"
# One after another: the first creates the streams, the others find them.
for ((i = 0; i < nodes; i++)); do
  name=node$((i + 1))
  # shellcheck disable=SC2086
  "$confab" serve --nats "$urls" --node-id "$name" ${CONFAB_SERVE_ARGS:-} \
    --listen "127.0.0.1:$((grpc_port + i))" --ws-listen "127.0.0.1:$((web_port + i))" \
    >"$dir/$name.out" 2>"$dir/$name.log" &
  pids+=($!)
  pid=$!
  for ((tick = 0; ; tick++)); do
    grep -q '^confab listening on' "$dir/$name.out" 2>/dev/null && break
    if ((tick >= ready_wait_max)) || ! kill -0 "$pid" 2>/dev/null; then
      echo "cluster-up: $name did not start; its log:" >&2
      cat "$dir/$name.log" >&2
      exit 1
    fi
    sleep 0.1
  done
done

echo
echo "A 3-node confab cluster is up (JetStream sync_interval: $sync_interval)."
echo "Any node serves any room; a message acknowledged by one"
if [ "$sync_interval" = always ]; then
  echo "is on a quorum of the NATS servers (fsynced), and every node delivers it."
else
  echo "is on a quorum of the NATS servers (in memory; fsynced within $sync_interval), and every node delivers it."
fi
for ((i = 0; i < nodes; i++)); do
  printf '  node%d: gRPC 127.0.0.1:%d   web page http://127.0.0.1:%d/\n' $((i + 1)) $((grpc_port + i)) $((web_port + i))
done
echo
echo "Chat through two different nodes, in two terminals:"
echo "  $confab chat --server http://127.0.0.1:$grpc_port --room lobby --user alice"
echo "  $confab chat --server http://127.0.0.1:$((grpc_port + 1)) --room lobby --user bob"
echo "or open http://127.0.0.1:$web_port/ and http://127.0.0.1:$((web_port + 2))/ in two browser tabs."
echo "Logs: $dir/node*.log, $dir/nats*.log (removed on exit). Ctrl-C stops everything."

if [ -n "${CONFAB_CLUSTER_UP_FOR:-}" ]; then
  # In the background and waited for, so a TERM runs the trap at once, not after the sleep.
  sleep "$CONFAB_CLUSTER_UP_FOR" &
  pids+=($!)
  wait $!
else
  # Until Ctrl-C; or until a process dies by itself, which is reported.
  while true; do
    for pid in "${pids[@]}"; do
      if ! kill -0 "$pid" 2>/dev/null; then
        echo "cluster-up: process $pid stopped by itself" >&2
        exit 1
      fi
    done
    sleep 1
  done
fi
