#!/usr/bin/env bash
# Interop test with clients nobody here wrote: the Python (grpcio) peer client from
# ../shared/peers against `confab serve`, plus confab-semantics checks written with grpcio.
#  - the peer's own client must PASS SayHello and UploadStream exactly (its BroadcastMessages and
#    ChatStream checks encode the seed's demo echo semantics, which confab replaces by a room);
#  - tests/interop/confab_semantics.py checks BroadcastMessages and ChatStream as confab defines
#    them, both ending with status OK;
#  - the server then gets SIGTERM and must exit 0 within its shutdown grace.
# Installs what it needs: python3-venv (apt, if missing) and the peer's pinned pip packages into
# target/interop/venv. Prints "N passed, M failed"; exit 0 only if all pass.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
peers="$root/../shared/peers"
work="$root/target/interop"
mkdir -p "$work"

python=${PYTHON:-python3}
if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends python3 python3-venv
  python=/usr/bin/python3
fi
if [ ! -x "$work/venv/bin/python" ]; then
  "$python" -m venv "$work/venv"
fi
"$work/venv/bin/pip" install -q --disable-pip-version-check -r "$peers/python/requirements.txt"
mkdir -p "$work/gen"
"$work/venv/bin/python" -m grpc_tools.protoc -I"$root/proto/chat" \
  --python_out="$work/gen" --grpc_python_out="$work/gen" "$root/proto/chat/chat.proto"

cargo build --quiet --locked --bin confab
log="$work/server.log"
rm -rf "$work/data"
"$root/target/debug/confab" serve --listen 127.0.0.1:0 --data-dir "$work/data" --shutdown-grace 5s \
  >"$work/server.out" 2>"$log" &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
address=""
for _ in $(seq 1 100); do
  address=$(sed -n 's/^confab listening on \([0-9.:]*\) .*/\1/p' "$work/server.out")
  [ -n "$address" ] && break
  sleep 0.1
done
[ -n "$address" ] || { echo "server did not start:"; cat "$log"; exit 1; }
echo "confab serving on $address"

passed=0; failed=0
check() { # name, condition
  if eval "$2"; then echo "PASS $1"; passed=$((passed + 1)); else echo "FAIL $1"; failed=$((failed + 1)); fi
}

export PEER_ADDR="$address" PEER_TIMEOUT_S=10 PYTHONPATH="$work/gen"
peer_out=$("$work/venv/bin/python" "$peers/python/client.py" || true)
echo "$peer_out" | sed 's/^/  peer client: /'
check "peer client SayHello exact reply" 'grep -q "^PASS SayHello" <<<"$peer_out"'
check "peer client UploadStream exact reply" 'grep -q "^PASS UploadStream" <<<"$peer_out"'

semantics_out=$("$work/venv/bin/python" "$root/tests/interop/confab_semantics.py" || true)
echo "$semantics_out" | sed 's/^/  confab semantics: /'
check "grpcio BroadcastMessages replays the room, ends OK" 'grep -q "^PASS BroadcastMessages" <<<"$semantics_out"'
check "grpcio ChatStream live room, ends OK" 'grep -q "^PASS ChatStream" <<<"$semantics_out"'

kill -TERM "$server"
status=0
for _ in $(seq 1 100); do kill -0 "$server" 2>/dev/null || break; sleep 0.1; done
wait "$server" || status=$?
trap - EXIT
check "SIGTERM stops the server cleanly" '[ "$status" -eq 0 ]'

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
