#!/usr/bin/env bash
# The browser test: starts `confab serve` on free loopback ports, drives two headless Chromium
# pages through its web chat (tests/browser/chat.test.mjs, playwright-core over the Debian
# chromium), and stops the server. Installs chromium (and node) with apt when missing, and the
# npm packages from the committed lock file. Artifacts (screenshots) go to
# $CARGO_TARGET_DIR/browser-test (default target/browser-test).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
target="${CARGO_TARGET_DIR:-$root/target}"
artifacts="$target/browser-test"

apt_install() {
  # Run once per machine at most: the package lists are only needed for an install.
  if [ -z "${apt_updated:-}" ]; then apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "installing chromium and chromium-driver with apt"
  apt_install chromium chromium-driver
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "installing nodejs and npm with apt"
  apt_install nodejs npm
fi
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

cargo build --quiet --locked --bin confab
rm -rf "$artifacts"
mkdir -p "$artifacts"
"$target/debug/confab" serve --listen 127.0.0.1:0 --ws-listen 127.0.0.1:0 --in-memory --shutdown-grace 5s \
  >"$artifacts/server.out" 2>"$artifacts/server.log" &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
# A second server with --tokens, for the token test (the token must never be in a URL).
token="browser-test-token-$RANDOM$RANDOM"
echo "$token carol" >"$artifacts/tokens"
"$target/debug/confab" serve --listen 127.0.0.1:0 --ws-listen 127.0.0.1:0 --in-memory --shutdown-grace 5s \
  --tokens "$artifacts/tokens" >"$artifacts/server-tokens.out" 2>"$artifacts/server-tokens.log" &
token_server=$!
trap 'kill "$server" "$token_server" 2>/dev/null || true' EXIT

# The page's URL once the server at $1 (its stdout file) printed it.
page_url() {
  local url=""
  for _ in $(seq 1 100); do
    url=$(sed -n 's|^confab web chat on \(http://[0-9.:]*/\) .*|\1|p' "$1")
    [ -n "$url" ] && break
    sleep 0.1
  done
  echo "$url"
}
url=$(page_url "$artifacts/server.out")
[ -n "$url" ] || { echo "server did not start:"; cat "$artifacts/server.log"; exit 1; }
token_url=$(page_url "$artifacts/server-tokens.out")
[ -n "$token_url" ] || { echo "server with --tokens did not start:"; cat "$artifacts/server-tokens.log"; exit 1; }
echo "confab web chat on $url (and with --tokens on $token_url)"

CONFAB_WEB_URL="$url" CONFAB_WEB_TOKEN_URL="$token_url" CONFAB_WEB_TOKEN="$token" BROWSER_ARTIFACTS="$artifacts" \
  CHROMIUM="$(command -v chromium)" node --test --test-reporter=spec tests/browser/chat.test.mjs
kill "$token_server"

# The server must stop cleanly on SIGTERM within its grace period (open sockets closed).
kill -TERM "$server"
status=0
wait "$server" || status=$?
trap - EXIT
[ "$status" -eq 0 ] || { echo "confab serve exited with $status on SIGTERM:"; cat "$artifacts/server.log"; exit 1; }
echo "browser test passed; screenshots in $artifacts"
