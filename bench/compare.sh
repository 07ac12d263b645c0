#!/usr/bin/env bash
# confab against grpc-go on the seed's ChatService, side by side, one command:
#   bash bench/compare.sh            (ROUNDS=3 DURATION=10s by default)
# Builds the Go reference peer from ../shared/peers (copied to target/peers; its build.sh
# installs Go from Debian packages) and confab in release, starts three servers on loopback --
# the Go echo (the seed's demo: no room work, a ceiling), the Go rooms server
# (PEER_SEMANTICS=rooms: confab's chat-room job written the way a Go team would, the peer
# confab is measured against) and confab -- and runs the same load client against each,
# alternating A B C A B C for ROUNDS rounds:
#   unary       the Go peer's own load client: SayHello, 1 connection x 64 callers
#   pingpong-1  confab bench: ChatStream send / wait for it back, 1 stream
#   pingpong-64 confab bench: the same, 64 streams on 1 connection
#   room-64     confab bench: 64 ChatStreams in ONE room on 1 connection, each waiting for its
#               own message (every message goes to all 64); not run against the Go echo,
#               which has no rooms
# (The Go client's bidi mode checks for the demo's "Echo:" text and puts all streams in one
# room, so pingpong uses confab bench, whose one-room-per-stream ping-pong runs on both.)
# confab runs --in-memory, like the Go peer, which keeps nothing. A round whose machine steal time
# exceeds STEAL_MAX percent is rerun (up to 3 times), not quoted. Prints each round, then the
# medians and the confab/Go ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
STEAL_MAX=${STEAL_MAX:-10}
work="$root/target/compare"
mkdir -p "$work"

if [ ! -x target/peers/go/bin/client ] || [ ! -x target/peers/go/bin/server ]; then
  rm -rf target/peers
  cp -r ../shared/peers target/peers
  chmod -R u+w target/peers
  bash target/peers/go/build.sh
fi
cargo build --release --locked --quiet --bin confab
GO_CLIENT=target/peers/go/bin/client
CONFAB=target/release/confab

PEER_ADDR=127.0.0.1:50171 target/peers/go/bin/server 2>/dev/null &
go_pid=$!
PEER_SEMANTICS=rooms PEER_ADDR=127.0.0.1:50173 target/peers/go/bin/server 2>/dev/null &
rooms_pid=$!
"$CONFAB" serve --listen 127.0.0.1:50172 --in-memory --sends-per-second-max 0 --typing-per-second-max 0 --joins-per-second-max 0 >/dev/null 2>&1 &
confab_pid=$!
trap 'kill $go_pid $rooms_pid $confab_pid 2>/dev/null || true' EXIT
for port in 50171 50172 50173; do
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
done

steal_ticks() { awk '/^cpu /{print $9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }

# run SCENARIO SERVER -> prints "rate p99_ms"; reruns when steal is high.
run() {
  local scenario=$1 server=$2 port pid out attempt
  case $server in
    go) port=50171; pid=$go_pid ;;
    rooms) port=50173; pid=$rooms_pid ;;
    *) port=50172; pid=$confab_pid ;;
  esac
  for attempt in 1 2 3; do
    read -r s0 t0 < <(steal_ticks)
    case $scenario in
      unary)
        # The client exits 1 if any reply was wrong; the errors column shows that.
        out=$("$GO_CLIENT" -load -rpc=unary -conns=1 -streams=64 -duration="$DURATION" -addr=127.0.0.1:$port -server-pid=$pid || true)
        out=$(head -1 <<<"$out")
        rate=$(sed -n 's/.*msgs\/s=\([0-9.]*\).*/\1/p' <<<"$out")
        p50=$(sed -n 's/.* p50=\([0-9.]*\)us.*/\1/p' <<<"$out" | awk '{printf "%.3f", $1/1000}')
        p99=$(sed -n 's/.* p99=\([0-9.]*\)us.*/\1/p' <<<"$out" | awk '{printf "%.3f", $1/1000}')
        errors=$(sed -n 's/.*errors=\([0-9]*\).*/\1/p' <<<"$out")
        ;;
      pingpong-1|pingpong-64|room-64)
        local kind=pingpong
        if [ "$scenario" = room-64 ]; then kind=pingpong-room; fi
        out=$("$CONFAB" bench --scenario $kind --concurrency "${scenario##*-}" --connections 1 \
          --duration "$DURATION" --server http://127.0.0.1:$port --server-pid $pid --json || true)
        rate=$(sed -n 's/.*"rate":\([0-9.]*\).*/\1/p' <<<"$out")
        p50=$(sed -n 's/.*"p50_ms":\([0-9.]*\).*/\1/p' <<<"$out")
        p99=$(sed -n 's/.*"p99_ms":\([0-9.]*\).*/\1/p' <<<"$out")
        errors=$(sed -n 's/.*"errors":\([0-9]*\).*/\1/p' <<<"$out")
        ;;
    esac
    read -r s1 t1 < <(steal_ticks)
    steal=$(( (s1 - s0) * 100 / ( (t1 - t0) > 0 ? (t1 - t0) : 1 ) ))
    if [ "$steal" -le "$STEAL_MAX" ]; then
      echo "$rate $p50 $p99 $errors $steal"
      return
    fi
    echo "  (steal ${steal}% on $scenario/$server: rerun)" >&2
  done
  echo "$rate $p50 $p99 $errors $steal"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

declare -A rates p50s p99s
for scenario in unary pingpong-1 pingpong-64 room-64; do
  for round in $(seq 1 "$ROUNDS"); do
    for server in go rooms confab; do
      if [ "$scenario" = room-64 ] && [ "$server" = go ]; then continue; fi
      read -r rate p50 p99 errors steal < <(run "$scenario" "$server")
      printf '%-12s round %d %-7s %10.0f /s  p50 %7.3f ms  p99 %7.3f ms  errors %s  steal %s%%\n' \
        "$scenario" "$round" "$server" "$rate" "$p50" "$p99" "$errors" "$steal"
      rates[$scenario.$server]+="$rate "
      p50s[$scenario.$server]+="$p50 "
      p99s[$scenario.$server]+="$p99 "
    done
  done
done

echo
printf '| scenario | Go echo /s | Go rooms /s | confab /s | confab/Go rooms | confab/Go echo | Go rooms p50 ms | confab p50 ms | Go rooms p99 ms | confab p99 ms |\n|---|---|---|---|---|---|---|---|---|---|\n'
med() { tr ' ' '\n' <<<"$1" | { grep . || true; } | median; }
for scenario in unary pingpong-1 pingpong-64 room-64; do
  go_rate=$(med "${rates[$scenario.go]:-}")
  rooms_rate=$(med "${rates[$scenario.rooms]}")
  confab_rate=$(med "${rates[$scenario.confab]}")
  ratio_rooms=$(awk -v a="$confab_rate" -v b="$rooms_rate" 'BEGIN {printf "%.2f", (b > 0) ? a / b : 0}')
  ratio_echo=$(awk -v a="$confab_rate" -v b="$go_rate" 'BEGIN {printf "%.2f", (b > 0) ? a / b : 0}')
  printf '| %s | %.0f | %.0f | %.0f | %s | %s | %.3f | %.3f | %.3f | %.3f |\n' "$scenario" "$go_rate" "$rooms_rate" \
    "$confab_rate" "$ratio_rooms" "$ratio_echo" "$(med "${p50s[$scenario.rooms]}")" "$(med "${p50s[$scenario.confab]}")" \
    "$(med "${p99s[$scenario.rooms]}")" "$(med "${p99s[$scenario.confab]}")"
done
