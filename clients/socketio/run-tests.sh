#!/usr/bin/env bash
# Socket.IO compatibility: Herald's /socket.io/ endpoint against the real
# clients, installed here from their registries and pinned:
#   - socket.io-client 4.8 on Node (package-lock.json), run with node --test;
#   - python-socketio's AsyncClient (requirements.txt) in .venv, run with pytest.
# The suites start their own herald nodes (and a redis-server for the cluster
# recovery test) on free loopback ports with their own configs, and stop
# them; the trap below kills any they left behind (each registers its pid
# in $SIO_TEST_PIDS). The node binary is $HERALD_BIN, else
# ../../target/debug/herald (built with `cargo build -p herald` when missing).
# Fails on the first failing suite.
set -euo pipefail
cd "$(dirname "$0")"

log() { printf '\n== clients/socketio: %s\n' "$*"; }

apt_install() {
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    log "installing $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "$@" >/dev/null
  else
    echo "clients/socketio: needs $*; install it" >&2
    exit 1
  fi
}

command -v npm >/dev/null 2>&1 || apt_install nodejs npm
if ! node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)'; then
  echo "clients/socketio: needs Node 20 or newer; found $(node --version)" >&2
  exit 1
fi
python=${PYTHON:-python3}
command -v "$python" >/dev/null 2>&1 || apt_install python3 python3-venv
command -v redis-server >/dev/null 2>&1 || apt_install redis-server

if [ -z "${HERALD_BIN:-}" ]; then
  if [ ! -x ../../target/debug/herald ]; then
    log "cargo build -p herald"
    (cd ../.. && cargo build -p herald)
  fi
  HERALD_BIN="$(cd ../.. && pwd)/target/debug/herald"
fi
export HERALD_BIN

SIO_TEST_PIDS=$(mktemp -d)
export SIO_TEST_PIDS
cleanup() {
  # Whatever a suite started and did not stop (a crash, a timeout).
  for f in "$SIO_TEST_PIDS"/*; do
    [ -e "$f" ] || continue
    kill -9 "$(basename "$f")" 2>/dev/null || true
  done
  rm -rf "$SIO_TEST_PIDS"
}
trap cleanup EXIT

log "npm ci"
npm ci --no-audit --no-fund

if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  rm -rf .venv
  if ! "$python" -m venv .venv 2>/dev/null; then
    apt_install python3-venv
    rm -rf .venv
    "$python" -m venv .venv
  fi
fi
log "pip install -r requirements.txt"
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt

log "socket.io-client (node --test)"
npm test

log "python-socketio (pytest)"
.venv/bin/python -m pytest -q -p no:cacheprovider tests
