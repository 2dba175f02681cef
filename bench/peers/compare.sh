#!/usr/bin/env bash
# Runs the same herald-bench `idle` and `fanout` commands against Herald
# (release build, memory broker, the config of docs/benchmarks.md) over its
# own protocol at /ws (target `herald`) and over Socket.IO at /socket.io/
# (target `herald-socketio`: `--target socketio --socketio-server herald`;
# `herald-socketio-norecovery`: the same with `socketio.recovery = false`,
# like Node's server, whose connectionStateRecovery is off),
# Node's Socket.IO (bench/peers/socketio, the same Socket.IO client) and
# Sockudo (bench/peers/sockudo), one after another on free loopback ports.
# Each server is started fresh for each scenario and stopped right after
# it; every server this script started is stopped on exit. herald-bench
# reads each server's RSS and CPU from /proc (--server-pid). Loopback only;
# every step is bounded in time.
#
#   bench/peers/compare.sh                 # 10,000 connections, as in the docs
#   CONNS=2000 DURATION=10 bench/peers/compare.sh
#   TARGETS="herald herald-socketio socketio" ROUNDS=3 bench/peers/compare.sh
#
# Environment: CONNS (10000), ROOMS (10), HOLD (10 s), RATE (20 events/s),
# DURATION (30 s), PAYLOAD (100 B), TARGETS ("herald herald-socketio
# socketio sockudo"; also herald-socketio-norecovery), SCENARIOS ("idle
# fanout"), ROUNDS (1: with more, the targets run in alternation round
# after round and the table shows medians), SOCKUDO (the sockudo binary;
# default: on PATH),
# SERVER_BIN (the herald binary; default target/release/herald, e.g. an
# older build for a before/after run),
# OUT (results folder; default target/peers-<time>). Each run's --json goes
# to $OUT/<scenario>-<target>.json (.r<round>.json with ROUNDS > 1) and a
# table is printed at the end.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE="$ROOT/bench/peers"
CONNS=${CONNS:-10000}
ROOMS=${ROOMS:-10}
HOLD=${HOLD:-10}
RATE=${RATE:-20}
DURATION=${DURATION:-30}
PAYLOAD=${PAYLOAD:-100}
TARGETS=${TARGETS:-herald herald-socketio socketio sockudo}
SCENARIOS=${SCENARIOS:-idle fanout}
ROUNDS=${ROUNDS:-1}
OUT=${OUT:-$ROOT/target/peers-$(date +%Y%m%d-%H%M%S)}
SOCKUDO=${SOCKUDO:-$(command -v sockudo || true)}
RUN_LIMIT=900 # seconds one bench run may take

SECRET=bench-secret-0123456789abcdef0123456789
API_KEY=bench-admin-key-0123456789
HERALD=${SERVER_BIN:-$ROOT/target/release/herald}
BENCH="$ROOT/target/release/herald-bench"

mkdir -p "$OUT"
SPID=""
# shellcheck source=lib.sh
. "$HERE/lib.sh"

trap stop_server EXIT INT TERM

# Starts server $1 on port $2 with its log in $3; sets SPID to the
# server's own pid (exec, so that /proc figures are the server's).
start_server() {
  local target=$1 port=$2 log=$3 dir
  case "$target" in
    herald | herald-socketio | herald-socketio-norecovery)
      dir=$(mktemp -d)
      sed "s/^listen = .*/listen = \"127.0.0.1:$port\"/" "$HERE/herald.toml" >"$dir/bench.toml"
      if [ "$target" = herald-socketio-norecovery ]; then
        printf '\n[socketio]\nrecovery = false\n' >>"$dir/bench.toml"
      fi
      "$HERALD" serve --config "$dir/bench.toml" >"$log" 2>&1 &
      ;;
    socketio)
      (cd "$HERE/socketio" && PORT=$port HS256_SECRET=$SECRET exec node server.js) >"$log" 2>&1 &
      ;;
    sockudo)
      dir=$(mktemp -d)
      (cd "$dir" && PORT=$port HOST=127.0.0.1 exec "$SOCKUDO" --config "$HERE/sockudo/config.json") >"$log" 2>&1 &
      ;;
  esac
  SPID=$!
  await_server "$target" "$port" "$log"
}

run_bench() {
  local target=$1 scenario=$2 port=$3 name=$4
  local args=(--url "http://127.0.0.1:$port" --server-pid "$SPID" --json)
  case "$target" in
    herald-socketio*) args+=(--target socketio --socketio-server herald) ;;
    *) args+=(--target "$target") ;;
  esac
  case "$scenario" in
    idle) args+=(idle --conns "$CONNS" --rooms "$ROOMS" --hold "$HOLD") ;;
    fanout) args+=(fanout --conns "$CONNS" --rooms "$ROOMS" --rate "$RATE"
      --duration "$DURATION" --payload "$PAYLOAD") ;;
  esac
  run_herald_bench "$name" "${args[@]}"
}

check_prerequisites

{
  echo "date: $(date -u +%FT%TZ)"
  echo "herald: $(git -C "$ROOT" rev-parse --short HEAD) $(git -C "$ROOT" status --porcelain | grep -c . || true) files changed in the tree"
  echo "socket.io: $(cd "$HERE/socketio" && node -p 'require("socket.io/package.json").version') on node $(node --version)"
  [ -n "$SOCKUDO" ] && echo "sockudo: $("$SOCKUDO" --version 2>/dev/null || echo '?')"
  echo "cpus: $(nproc); conns=$CONNS rooms=$ROOMS hold=$HOLD rate=$RATE duration=$DURATION payload=$PAYLOAD rounds=$ROUNDS"
} | tee "$OUT/versions.txt"

for round in $(seq 1 "$ROUNDS"); do
  for scenario in $SCENARIOS; do
    for target in $TARGETS; do
      name=$scenario-$target
      [ "$ROUNDS" -gt 1 ] && name=$name.r$round
      port=$(free_loopback_port)
      echo "== round $round: $scenario / $target on 127.0.0.1:$port (load: $(cut -d' ' -f1-3 /proc/loadavg))" \
        | tee -a "$OUT/runs.txt"
      if start_server "$target" "$port" "$OUT/$name.server.log"; then
        run_bench "$target" "$scenario" "$port" "$name" || echo "   bench exited $?" | tee -a "$OUT/runs.txt"
        stop_server
      fi
      echo "   load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/runs.txt"
    done
  done
done

python3 "$HERE/table.py" "$OUT" | tee "$OUT/table.md"
echo "results in $OUT"
