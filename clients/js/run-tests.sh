#!/usr/bin/env bash
# Builds and tests @herald/client: install (from package-lock.json), build,
# type-check, unit tests, then end-to-end tests against a real herald node
# (built with `cargo build -p herald` when target/debug/herald is missing)
# and in headless Chromium (/usr/bin/chromium, or $CHROMIUM).
# Needs Node 20+, npm, cargo, and chromium. Fails on the first failure.
set -euo pipefail
cd "$(dirname "$0")"

log() { printf '\n== clients/js: %s\n' "$*"; }

chromium_bin="${CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$chromium_bin" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    log "installing chromium"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
  else
    echo "clients/js: $chromium_bin not found; install Debian's chromium or set CHROMIUM" >&2
    exit 1
  fi
fi

if [ ! -x ../../target/debug/herald ] && [ -z "${HERALD_BIN:-}" ]; then
  log "cargo build -p herald"
  (cd ../.. && cargo build -p herald)
fi

log "npm ci"
npm ci --no-audit --no-fund

log "npm run build"
npm run build

log "npm run typecheck"
npm run typecheck

log "npm test (unit)"
npm test

log "npm run test:e2e"
npm run test:e2e
