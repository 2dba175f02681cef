#!/usr/bin/env bash
# Cross-node fan-out over Redis for Herald and both peers, one after the
# other: for each server, starts a redis-server and two instances A and B
# sharing it (Herald's Redis broker, Socket.IO's Redis adapter, Sockudo's
# Redis adapter), puts every subscriber on A, publishes through B's HTTP
# API, reads A's CPU and RSS, and stops everything. Loopback only; each
# step bounded in time.
#
#   bench/peers/cluster-compare.sh
#   ROOMS=100 RATE=200 bench/peers/cluster-compare.sh
#
# Environment: CONNS (10000), ROOMS (10), RATE (20 events/s), DURATION
# (30 s), PAYLOAD (100 B), TARGETS ("herald socketio sockudo"), SOCKUDO
# (the sockudo binary; default: on PATH), SERVER_BIN (the herald binary;
# default target/release/herald, e.g. an older build for a before/after
# run), OUT (results folder; default target/peers-cluster-<time>). Prints
# compare.sh's table (fan-out rows).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
HERE="$ROOT/bench/peers"
CONNS=${CONNS:-10000}
ROOMS=${ROOMS:-10}
RATE=${RATE:-20}
DURATION=${DURATION:-30}
PAYLOAD=${PAYLOAD:-100}
TARGETS=${TARGETS:-herald socketio sockudo}
OUT=${OUT:-$ROOT/target/peers-cluster-$(date +%Y%m%d-%H%M%S)}
SOCKUDO=${SOCKUDO:-$(command -v sockudo || true)}
RUN_LIMIT=900
HERALD=${SERVER_BIN:-$ROOT/target/release/herald}
BENCH="$ROOT/target/release/herald-bench"
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/herald-peers-cluster.XXXXXX)
PIDS=()

# Stops what was started, last first: the nodes before their Redis.
stop_all() {
  local i p
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    p=${PIDS[i]}
    kill "$p" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  PIDS=()
}
trap 'stop_all; rm -rf "$WORK"' EXIT INT TERM

# shellcheck source=../lib/cluster.sh
. bench/lib/cluster.sh

command -v redis-server >/dev/null || { echo "needs redis-server" >&2; exit 1; }

# Starts instance $2 (a or b) of server $1 on port $3; sets SPID.
start_instance() {
  local target=$1 name=$2 port=$3 log="$OUT/$1-$2.log"
  case "$target" in
    herald)
      write_node_config "bench-$name" "$port" <<EOT
[namespaces.bench]
join = "any"
send = "any"
EOT
      "$HERALD" serve --config "$WORK/bench-$name.toml" >"$log" 2>&1 &
      ;;
    socketio)
      (cd "$HERE/socketio" && PORT=$port HS256_SECRET=$SECRET REDIS_URL="redis://127.0.0.1:$RPORT" exec node server.js) >"$log" 2>&1 &
      ;;
    sockudo)
      python3 - "$HERE/sockudo/config.json" "$WORK/sockudo-$name.json" "$RPORT" <<'PY'
import json, sys
config = json.load(open(sys.argv[1]))
url = f"redis://127.0.0.1:{sys.argv[3]}/0"
config["adapter"] = {"driver": "redis", "redis": {
    "requests_timeout": 5000, "prefix": "sockudo_adapter:", "cluster_mode": False,
    "redis_pub_options": {"url": url}, "redis_sub_options": {"url": url}}}
# A clustered Sockudo refuses a node-local cache (its idempotency and
# authorization state must be shared); REDIS_URL points it at this Redis.
config["cache"] = {"driver": "redis", "redis": {"prefix": "sockudo_cache:", "cluster_mode": False}}
json.dump(config, open(sys.argv[2], "w"))
PY
      (cd "$WORK" && PORT=$port HOST=127.0.0.1 REDIS_URL="redis://127.0.0.1:$RPORT/0" \
        exec "$SOCKUDO" --config "$WORK/sockudo-$name.json") >"$log" 2>&1 &
      ;;
  esac
  SPID=$!
  PIDS+=("$SPID")
  wait_listening "$port" "$SPID" || {
    echo "$target $name did not listen on $port; log:" >&2
    tail -20 "$log" >&2
    return 1
  }
}

# shellcheck source=lib.sh
. "$HERE/lib.sh"
check_prerequisites

echo "date: $(date -u +%FT%TZ); herald $(git rev-parse --short HEAD); conns=$CONNS rooms=$ROOMS rate=$RATE duration=$DURATION payload=$PAYLOAD" |
  tee "$OUT/versions.txt"
for target in $TARGETS; do
  RPORT=$(free_port)
  redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" >"$OUT/$target-redis.log" &
  PIDS+=($!)
  wait_listening "$RPORT"
  APORT=$(free_port)
  BPORT=$(free_port)
  echo "== $target: A on $APORT, B on $BPORT, redis on $RPORT (load: $(cut -d' ' -f1-3 /proc/loadavg))"
  if start_instance "$target" a "$APORT" && APID=$SPID && start_instance "$target" b "$BPORT"; then
    [ "$target" = herald ] && wait_ready "$APORT" && wait_ready "$BPORT"
    args=(--url "http://127.0.0.1:$APORT" --publish-url "http://127.0.0.1:$BPORT"
      --target "$target" --server-pid "$APID" --json
      fanout --conns "$CONNS" --rooms "$ROOMS" --rate "$RATE" --duration "$DURATION" --payload "$PAYLOAD")
    echo "\$ herald-bench ${args[*]}" | sed "s/--server-pid [0-9]*/--server-pid \$A_PID/" >"$OUT/fanout-$target.cmd"
    HBENCH_SECRET=$SECRET HBENCH_API_KEY=$KEY timeout "$RUN_LIMIT" \
      "$BENCH" "${args[@]}" >"$OUT/fanout-$target.json" 2>"$OUT/fanout-$target.err" ||
      echo "   bench exited $?"
  fi
  stop_all
done

python3 "$HERE/table.py" "$OUT" | grep -v '^| idle' | tee "$OUT/table.md"
echo "results in $OUT"
