#!/usr/bin/env bash
# Cross-node publish-to-receive latency over Redis or NATS, on loopback:
# starts the broker (a redis-server, or a nats-server with JetStream) and
# two Herald nodes (release builds), puts every subscriber on node A and
# publishes through node B's HTTP API, then stops them all.
#
#   [ENGINE=redis|nats] bench/cluster-latency.sh [CONNS] [EVENTS_PER_S] [DURATION_S]
#
# Defaults: 10,000 subscribers in 10 rooms of 1,000, 20 events/s in all
# (20,000 deliveries/s), 30 s, 100-byte payloads. ROOMS overrides the room
# count (e.g. ROOMS=100 with 200 events/s: rooms of 100, the same
# deliveries/s). ENGINE picks the broker [redis]. Needs redis-server or
# nats-server.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=${1:-10000}
RATE=${2:-20}
DURATION=${3:-30}
TARGET=${CARGO_TARGET_DIR:-target}
WORK=$(mktemp -d /tmp/herald-cluster-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# shellcheck source=lib/cluster.sh
. bench/lib/cluster.sh

cargo build --release -q -p herald -p herald-bench

start_broker

start_node() { # id port
  write_node_config "$1" "$2" <<EOF
[namespaces.bench]
join = "any"
send = "any"
EOF
  "$TARGET/release/herald" serve --config "$WORK/$1.toml" >"$WORK/$1.log" 2>&1 &
  PIDS+=($!)
}
APORT=$(free_port)
BPORT=$(free_port)
start_node bench-a "$APORT"
APID=${PIDS[-1]}
start_node bench-b "$BPORT"
wait_ready "$APORT"
wait_ready "$BPORT"

"$TARGET/release/herald-bench" --url "http://127.0.0.1:$APORT" \
  --publish-url "http://127.0.0.1:$BPORT" --server-pid "$APID" \
  --secret "$SECRET" --api-key "$KEY" \
  fanout --conns "$CONNS" --rooms "${ROOMS:-$((CONNS / 1000 > 0 ? CONNS / 1000 : 1))}" \
  --rate "$RATE" --duration "$DURATION" --payload 100
print_store
