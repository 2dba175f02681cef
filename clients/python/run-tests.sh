#!/usr/bin/env bash
# Tests herald-sdk (Python): a virtual environment in .venv with the test
# dependencies, `pip install .` (the way users install it), mypy --strict,
# then pytest against real herald nodes and redis-server on loopback.
# The node binary is $HERALD_BIN, else ../../target/debug/herald (built with
# `cargo build -p herald` when missing). Installs python3-venv and
# redis-server (and nats-server) with apt when they are missing and we are root.
set -euo pipefail
cd "$(dirname "$0")"

log() { printf '\n== clients/python: %s\n' "$*"; }

apt_install() {
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    log "installing $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "$@" >/dev/null
  else
    echo "clients/python: needs $*; install it" >&2
    exit 1
  fi
}

python=${PYTHON:-python3}
command -v "$python" >/dev/null 2>&1 || apt_install python3 python3-venv
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null; then
  echo "clients/python: needs Python 3.9 or newer as \$PYTHON or python3" >&2
  exit 1
fi
command -v redis-server >/dev/null 2>&1 || apt_install redis-server
# tests/test_bridge.py publishes to NATS as a Python service would.
command -v nats-server >/dev/null 2>&1 || apt_install nats-server

if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  rm -rf .venv
  if ! "$python" -m venv .venv 2>/dev/null; then
    apt_install python3-venv
    rm -rf .venv
    "$python" -m venv .venv
  fi
fi

if [ -z "${HERALD_BIN:-}" ]; then
  if [ ! -x ../../target/debug/herald ]; then
    log "cargo build -p herald"
    (cd ../.. && cargo build -p herald)
  fi
  HERALD_BIN="$(cd ../.. && pwd)/target/debug/herald"
fi
export HERALD_BIN

log "pip install (test dependencies, then the package itself)"
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --force-reinstall .

log "mypy --strict (package and example)"
.venv/bin/python -m mypy --strict src examples

log "pytest"
# src/ is not on sys.path here: the tests import the installed package.
.venv/bin/python -m pytest -q -p no:cacheprovider tests
