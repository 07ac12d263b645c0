#!/usr/bin/env bash
# The cluster tests: installs the pinned nats-server (scripts/nats-server.sh), then runs the
# JetStream log client's tests and the `confab serve --nats` end-to-end tests. Each test starts
# its own 3-server JetStream cluster on loopback (temporary storage, free ports), and the e2e
# tests 2–3 `confab serve` nodes over it; every process is killed when its test ends.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== nats-server (pinned 2.14.6)"
source scripts/nats-server.sh
"$CONFAB_NATS_SERVER" --version
echo "== cluster tests (JetStream log client against a real 3-server cluster)"
# Two tests at a time: each runs three nats-servers that fsync every write.
cargo test -p confab-actors --features cluster --lib --test cluster --locked -- --test-threads=2
echo "== cluster e2e (confab serve --nats nodes over a real 3-server cluster)"
cargo test --test cluster_e2e --locked
