#!/usr/bin/env bash
# Tests the Go server SDK: gofmt, go vet, then go test -v (tests and the
# runnable Example functions) against real herald nodes and redis-server
# on loopback. The node binary is $HERALD_BIN, else ../../target/debug/herald
# (built with `cargo build -p herald` when missing). Installs golang-go
# (Debian's Go 1.19) and redis-server with apt when missing and we are root.
# Standard library only: no module download happens.
set -euo pipefail
cd "$(dirname "$0")"

log() { printf '\n== clients/go: %s\n' "$*"; }

missing=()
command -v go >/dev/null 2>&1 || missing+=(golang-go)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "clients/go: needs ${missing[*]}; install them" >&2
    exit 1
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
# Nothing to fetch (standard library only); never reach for a proxy.
export GOPROXY=off GOTOOLCHAIN=local
# go needs a build cache; without HOME it cannot place one.
if [ -z "${HOME:-}" ]; then
  export GOCACHE="${TMPDIR:-/tmp}/herald-go-cache" GOPATH="${TMPDIR:-/tmp}/herald-gopath"
fi

log "gofmt"
unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
  echo "clients/go: not gofmt-formatted: $unformatted" >&2
  exit 1
fi

log "go vet"
go vet ./...

log "go test"
go test -count=1 -v ./...
