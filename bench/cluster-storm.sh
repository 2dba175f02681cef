#!/usr/bin/env bash
# Reconnect storm across a 3-node Redis cluster, on loopback (issue #5:
# "the 15,000 clients of one node of a 3-node Redis cluster cut off at once
# (that node restarted) reconnect to the others and resume").
#
#   bench/cluster-storm.sh [CONNS] [EVENTS_PER_S] [DURATION_S]
#
# Starts a redis-server and three release Herald nodes A, B, C (redis
# broker, namespace `benchstore` with history 1,000 / 10 min), puts every
# client on A, publishes through B's HTTP API, and once every client is in
# its room (the bench's --ready-file) SIGKILLs A and restarts it on the same
# port. The clients reconnect to B and C (client i to B or C by i mod 2, the
# other one after a failure) and resume their rooms with `since`; the bench
# measures from the first disconnect it sees until every client is back.
# Prints the bench's summary; its --json goes to $OUT. Stops everything it
# started on exit.
#
# Defaults: 15,000 clients in 15 rooms of 1,000, 20 events/s in all (20,000
# deliveries/s), 60 s of publishing with the kill at 20 s, 100-byte
# payloads. Needs redis-server (7.0 or newer). Environment: ROOMS (15),
# HISTORY_SIZE (1000; a small one shows resumes refused and events
# missed), OUT (JSON result, default /tmp/herald-cluster-storm-<time>.json),
# KEEP=1 keeps the logs and configs in the work directory.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=${1:-15000}
RATE=${2:-20}
DURATION=${3:-60}
ROOMS=${ROOMS:-15}
HISTORY_SIZE=${HISTORY_SIZE:-1000}
OUT=${OUT:-/tmp/herald-cluster-storm-$(date +%Y%m%d-%H%M%S).json}
TARGET=${CARGO_TARGET_DIR:-target}
WORK=$(mktemp -d /tmp/herald-cluster-storm.XXXXXX)
PIDS=()
RPID=
cleanup() {
  # The bench and the nodes first (they leave the cluster through Redis),
  # then Redis.
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    [ "${PIDS[i]}" = "$RPID" ] || kill "${PIDS[i]}" 2>/dev/null || true
  done
  for p in "${PIDS[@]}"; do [ "$p" = "$RPID" ] || wait "$p" 2>/dev/null || true; done
  [ -z "$RPID" ] || kill "$RPID" 2>/dev/null || true
  wait 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

command -v redis-server >/dev/null || { echo "needs redis-server" >&2; exit 1; }
# shellcheck source=lib/cluster.sh
. bench/lib/cluster.sh
now_ms() { date +%s%3N; }
# Kernel TCP counters that show a connect storm hitting its limits.
tcp_counters() {
  awk '/^TcpExt:/ { if (!h) { split($0, k); h = 1 } else { split($0, v)
    for (i = 2; i <= NF; i++) if (k[i] ~ /^(ListenOverflows|ListenDrops|TCPReqQFullDrop|SyncookiesSent|TCPSynRetrans|TCPTimeouts|TCPAbortOnMemory)$/) printf "%s=%s ", k[i], v[i] } }' /proc/net/netstat
}

# Herald does not raise its own open-file limit: give the nodes the hard one.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((CONNS + 500)) ]; then
  echo "warning: open-file limit $(ulimit -n) is below $CONNS clients + 500" >&2
fi

nice -n 10 cargo build --release -q -p herald -p herald-bench

RPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" >"$WORK/redis.log" &
RPID=$!
PIDS+=("$RPID")
for _ in $(seq 50); do
  redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break
  sleep 0.1
done

write_config() { # id port
  write_node_config "$1" "$2" <<EOF
[namespaces.benchstore]
join = "any"
send = "any"
history_size = $HISTORY_SIZE
history_ttl = "10m"
EOF
}
start_node() { # id port; sets NODE_PID
  "$TARGET/release/herald" serve --config "$WORK/$1.toml" >>"$WORK/$1.log" 2>&1 &
  NODE_PID=$!
  PIDS+=("$NODE_PID")
}
APORT=$(free_port)
BPORT=$(free_port)
CPORT=$(free_port)
for n in a:"$APORT" b:"$BPORT" c:"$CPORT"; do write_config "storm-${n%%:*}" "${n#*:}"; done
start_node storm-a "$APORT"; APID=$NODE_PID
start_node storm-b "$BPORT"; BPID=$NODE_PID
start_node storm-c "$CPORT"; CPID=$NODE_PID
wait_ready "$APORT"
wait_ready "$BPORT"
wait_ready "$CPORT"

echo "machine: $(nproc) cores; $(uptime)"
echo "redis :$RPORT pid $RPID; A :$APORT pid $APID; B :$BPORT pid $BPID; C :$CPORT pid $CPID"
B_URL="http://127.0.0.1:$BPORT"
C_URL="http://127.0.0.1:$CPORT"
READY="$WORK/ready"
set -x
"$TARGET/release/herald-bench" --url "http://127.0.0.1:$APORT" --publish-url "$B_URL" \
  --secret "$SECRET" --api-key "$KEY" --json-file "$OUT" \
  storm --cut server --conns "$CONNS" --rooms "$ROOMS" --rate "$RATE" \
  --duration "$DURATION" --payload 100 --reconnect-url "$B_URL,$C_URL" \
  --ready-file "$READY" --watch-pid "b=$BPID" --watch-pid "c=$CPID" \
  --watch-pid "redis=$RPID" &
{ set +x; } 2>/dev/null
BENCH=$!
PIDS+=("$BENCH")

# Wait for every client to be in (bounded: the ramp's 300 s plus a third
# of the publishing), then kill A and restart it on the same port.
for _ in $(seq $(((300 + DURATION) * 10))); do
  [ -e "$READY" ] && break
  kill -0 "$BENCH" 2>/dev/null || break
  sleep 0.1
done
if [ ! -e "$READY" ]; then
  echo "the bench never signalled ready" >&2
  exit 1
fi
A_CPU=$(awk '{print ($14 + $15) / 100}' "/proc/$APID/stat")
TCP_BEFORE=$(tcp_counters)
echo
echo "load before the kill: $(cut -d' ' -f1-3 /proc/loadavg); busiest processes (recent %CPU):"
top -b -n 2 -d 1 -w 200 | awk '/^top -/{n++} n==2 && /^ *[0-9]/ && $9 > 5 {print "  " $1, $9 "%", $12}' | head -8
KILL_MS=$(now_ms)
kill -KILL "$APID"
wait "$APID" 2>/dev/null || true
EXIT_MS=$(($(now_ms) - KILL_MS))
LEFT=()
for p in "${PIDS[@]}"; do [ "$p" = "$APID" ] || LEFT+=("$p"); done
PIDS=("${LEFT[@]}")
echo
echo "SIGKILL of node A (pid $APID, $A_CPU CPU-s used so far) at $KILL_MS ms; it was gone $EXIT_MS ms later"
start_node storm-a "$APORT"; APID=$NODE_PID
wait_ready "$APORT"
echo "node A restarted on :$APORT (pid $APID), ready $(($(now_ms) - KILL_MS)) ms after the kill"

rc=0
wait "$BENCH" || rc=$?
echo "machine after: $(uptime)"
echo "kernel TCP counters before the kill: $TCP_BEFORE"
echo "                  after the bench:   $(tcp_counters)"
if [ -s "$OUT" ]; then
  python3 - "$OUT" "$KILL_MS" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))["figures"]
first = r.get("first_cut_unix_ms")
if first is not None:
    print(f"first disconnect seen {first - int(sys.argv[2])} ms after the SIGKILL")
EOF
  echo "JSON: $OUT"
fi
exit "$rc"
