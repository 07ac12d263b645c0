#!/usr/bin/env bash
# Two confab builds against each other, A B A B, with one load client:
#   A=old/confab B=target/release/confab bash bench/ab.sh SCENARIO CONCURRENCY [ROUNDS]
# Each round starts a fresh `serve --in-memory --sends-per-second-max 0` of A, loads it with
# `confab bench` (the CLIENT binary, default A, so both servers meet the same client) for
# DURATION (6s), stops it, then does the same for B. A_FLAGS / B_FLAGS add server flags (a newer
# build may need flags an older one does not know, for example to turn its other rates off).
# Prints every round; take the medians. Used to check that a change costs nothing measurable
# (BENCHMARKS.md) where the noise of this shared machine hides a few percent.
set -euo pipefail
scenario=${1:?scenario}; concurrency=${2:?concurrency}; rounds=${3:-3}
A=${A:?A=path of the first confab}; B=${B:?B=path of the second confab}
CLIENT=${CLIENT:-$A}; DURATION=${DURATION:-6s}; PORT=${PORT:-50391}
for _ in $(seq "$rounds"); do
  for which in A B; do
    if [ "$which" = A ]; then bin=$A; flags=${A_FLAGS:-}; else bin=$B; flags=${B_FLAGS:-}; fi
    # shellcheck disable=SC2086
    "$bin" serve --in-memory --sends-per-second-max 0 $flags --listen 127.0.0.1:"$PORT" --ws-listen off >/dev/null 2>&1 &
    pid=$!
    sleep 0.7
    if ! kill -0 "$pid" 2>/dev/null; then echo "$which: the server did not start (is port $PORT free?)" >&2; exit 1; fi
    out=$("$CLIENT" bench --scenario "$scenario" --concurrency "$concurrency" --server "http://127.0.0.1:$PORT" \
      --duration "$DURATION" --warmup 1s 2>&1 | tail -1)
    echo "$which $out"
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done
