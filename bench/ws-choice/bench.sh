#!/usr/bin/env bash
# Runs the ws-choice measurements: for each stack (axum, fastws, and the extra "raw" variant), a fresh server per run,
#   memory:     10,000 idle connections                     (x REPEAT)
#   throughput: 2,000 connections x 200 broadcasts, 1 burst  (x REPEAT)
#   lockstep:   2,000 connections x 200 broadcasts, 1 per POST, waiting for all deliveries (x REPEAT)
#   nodelay:    the throughput run again with TCP_NODELAY on the server's sockets (x REPEAT)
# Loopback only; every client phase and every server is bounded in time.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release -j 2 >&2
BIN=./target/release/ws-choice
REPEAT=${REPEAT:-2}
PORT=${PORT_BASE:-19200}
OUT=${OUT:-results-raw.txt}
: > "$OUT"

run() { # stack label client-args...
  local stack=$1 label=$2; shift 2
  PORT=$((PORT + 1))
  "$BIN" server --stack "$stack" --port "$PORT" --max-secs 600 ${SERVER_ARGS:-} >/dev/null 2>&1 &
  local sp=$!
  for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
  echo "## $label: $BIN server --stack $stack --port $PORT --max-secs 600 ${SERVER_ARGS:-}  ;  $BIN client --port $PORT --server-pid $sp $*" | tee -a "$OUT"
  timeout 300 "$BIN" client --port "$PORT" --server-pid "$sp" --label "$stack/$label" "$@" 2>&1 | tee -a "$OUT" || true
  kill "$sp" 2>/dev/null || true
  wait "$sp" 2>/dev/null || true
  sleep 2
}

for r in $(seq 1 "$REPEAT"); do
  for stack in ${STACKS:-axum fastws raw}; do
    run "$stack" "memory#$r"     --conns 10000 --frames 0
    run "$stack" "throughput#$r" --conns 2000 --frames 200
    run "$stack" "lockstep#$r"   --conns 2000 --frames 200 --burst 1
    SERVER_ARGS=--nodelay run "$stack" "nodelay#$r" --conns 2000 --frames 200
  done
done
grep "^RESULT" "$OUT" >&2
