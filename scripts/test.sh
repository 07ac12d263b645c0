#!/usr/bin/env bash
# The one test command (README: "Run all tests"): formatting, lints with warnings denied,
# every test of every crate (unit, integration, property, doc), the cluster tests against a real
# 3-server nats-server cluster, the interop test against a
# client nobody here wrote, the browser test of the web chat, and the docs without warnings.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== rustfmt"
cargo fmt --all -- --check
echo "== clippy (warnings denied)"
cargo clippy --workspace --all-targets --locked -- -D warnings
# The cluster e2e tests are `test = false` (they need nats-server), which --all-targets skips.
cargo clippy --workspace --test cluster_e2e --locked -- -D warnings
echo "== the engine core depends on no runtime, actor or wire crate"
if cargo tree -p confab-engine -e normal --locked | grep -E "tokio|kameo|prost|tonic"; then
  echo "confab-engine must stay sans-IO: the crates above crept into its dependency tree" >&2
  exit 1
fi
echo "== the client crate depends on no server crate"
if cargo tree -p confab-client -e normal,build --locked | grep -E "kameo|confab-engine|confab-actors"; then
  echo "confab-client must speak the wire protocol only: the crates above crept into its dependency tree" >&2
  exit 1
fi
# The confab binary turns the actors crate's `cluster` feature on, so the workspace's tests
# include the JetStream tests (actors/tests/cluster/): the pinned nats-server comes first.
echo "== nats-server (pinned 2.14.6, for the cluster tests)"
source scripts/nats-server.sh
"$CONFAB_NATS_SERVER" --version
echo "== tests"
cargo test --workspace --locked
echo "== embedding example (a workspace of its own: the engine through one dependency)"
embed=(--locked --manifest-path examples/embed/Cargo.toml)
cargo fmt --manifest-path examples/embed/Cargo.toml -- --check
CARGO_TARGET_DIR=target cargo clippy "${embed[@]}" -- -D warnings
CARGO_TARGET_DIR=target cargo run --quiet "${embed[@]}"
echo "== cluster e2e (confab serve --nats nodes over a real 3-server cluster)"
cargo test --test cluster_e2e --locked
echo "== interop (Python grpcio peer client against confab serve)"
bash scripts/interop.sh
echo "== browser (two headless Chromium pages chat through confab serve's web page)"
bash scripts/browser.sh
echo "== docs (warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
echo "== all checks passed"
