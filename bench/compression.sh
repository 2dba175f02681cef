#!/usr/bin/env bash
# Issue #19's compression benchmark, side by side in one run: rooms of
# 1,000, ~1 KiB agent events (`--payload-kind agent`), and per target the
# bytes on the wire and the server's CPU per delivery:
#
#   floor             herald-bench floor: the kernel's CPU per loopback send
#   herald            Herald /ws, compression off (no [compression] section)
#   herald-deflate    Herald /ws, [compression] enabled: compress-once
#   socketio          Node's Socket.IO, perMessageDeflate off (its default)
#   socketio-deflate  Node's Socket.IO, perMessageDeflate on (per connection)
#
# (also herald-socketio and herald-socketio-deflate: Herald's /socket.io/
# endpoint through the same Socket.IO client, compression off and on.)
#
# The client is the same everywhere: every connection offers
# permessage-deflate (`--deflate`) and inflates what comes compressed, so only
# the server's setting differs; "negotiated" in the table shows who accepted.
# Each server is started fresh for each run on a free loopback port and
# stopped right after; every server this script started is stopped on exit.
# Targets run in turn, ROUNDS times, and the table shows medians with each
# round's value. Loopback only; every step is bounded in time (a run at most
# RUN_LIMIT seconds, ~30 s each with the defaults: ~5 minutes in all).
#
#   cargo build --release -p herald -p herald-bench
#   bench/compression.sh
#   ROUNDS=1 DURATION=5 CONNS=2000 ROOMS=2 bench/compression.sh
#
# Environment: CONNS (5000), ROOMS (5: rooms of 1,000), RATE (4 events/s
# over all rooms = 4,000 deliveries/s: what Node's Socket.IO keeps up with
# when it compresses per connection, ~150 µs of CPU per delivery here; at
# 20/s it falls seconds behind), DURATION (15 s), PAYLOAD (1024 B of agent
# event), ROUNDS (2), MIN_BYTES (256: Herald's compression.min_bytes and Socket.IO's
# threshold), LEVEL (6: zlib level on both), FLOOR_PAYLOAD (1200 B: about a
# Herald event frame of a 1 KiB event), TARGETS (the five above), SERVER_BIN
# (default target/release/herald), BENCH_BIN (default
# target/release/herald-bench), OUT (default target/compression-<time>).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
HERE="$ROOT/bench/peers"
CONNS=${CONNS:-5000}
ROOMS=${ROOMS:-5}
RATE=${RATE:-4}
DURATION=${DURATION:-15}
PAYLOAD=${PAYLOAD:-1024}
ROUNDS=${ROUNDS:-2}
MIN_BYTES=${MIN_BYTES:-256}
LEVEL=${LEVEL:-6}
FLOOR_PAYLOAD=${FLOOR_PAYLOAD:-1200}
TARGETS=${TARGETS:-floor herald herald-deflate socketio socketio-deflate}
OUT=${OUT:-$ROOT/target/compression-$(date +%Y%m%d-%H%M%S)}
RUN_LIMIT=${RUN_LIMIT:-180}
SOCKUDO="" # compare.sh's prerequisites check reads it

SECRET=bench-secret-0123456789abcdef0123456789
API_KEY=bench-admin-key-0123456789
HERALD=${SERVER_BIN:-$ROOT/target/release/herald}
BENCH=${BENCH_BIN:-$ROOT/target/release/herald-bench}

for v in CONNS ROOMS DURATION PAYLOAD ROUNDS MIN_BYTES LEVEL FLOOR_PAYLOAD RUN_LIMIT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "$v must be a whole number, got '${!v}'" >&2; exit 2; }
done
[[ $RATE =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "RATE must be a number, got '$RATE'" >&2; exit 2; }
for t in $TARGETS; do
  case "$t" in
    floor | herald | herald-deflate | socketio | socketio-deflate | herald-socketio | herald-socketio-deflate) ;;
    *) echo "unknown target '$t' in TARGETS" >&2; exit 2 ;;
  esac
done

mkdir -p "$OUT"
SPID=""
# shellcheck source=peers/lib.sh
. "$HERE/lib.sh"

trap stop_server EXIT INT TERM

# Starts server $1 on port $2 with its log in $3; SPID is the server's own
# pid (exec), so that /proc figures are the server's.
start_server() {
  local target=$1 port=$2 log=$3 dir
  case "$target" in
    herald*)
      dir=$(mktemp -d)
      sed "s/^listen = .*/listen = \"127.0.0.1:$port\"/" "$HERE/herald.toml" >"$dir/bench.toml"
      case "$target" in *-deflate)
        printf '\n[compression]\nenabled = true\nmin_bytes = %s\nlevel = %s\n' \
          "$MIN_BYTES" "$LEVEL" >>"$dir/bench.toml"
        ;;
      esac
      "$HERALD" serve --config "$dir/bench.toml" >"$log" 2>&1 &
      ;;
    socketio)
      (cd "$HERE/socketio" && PORT=$port HS256_SECRET=$SECRET exec node server.js) >"$log" 2>&1 &
      ;;
    socketio-deflate)
      (cd "$HERE/socketio" && PORT=$port HS256_SECRET=$SECRET PERMESSAGE_DEFLATE=1 \
        DEFLATE_THRESHOLD=$MIN_BYTES DEFLATE_LEVEL=$LEVEL exec node server.js) >"$log" 2>&1 &
      ;;
  esac
  SPID=$!
  await_server "$target" "$port" "$log"
}

run_bench() {
  local target=$1 port=$2 name=$3
  local args=(--json)
  case "$target" in
    floor) args+=(floor --conns 1000 --events 200 --payload "$FLOOR_PAYLOAD") ;;
    *)
      args+=(--url "http://127.0.0.1:$port" --server-pid "$SPID" --deflate)
      case "$target" in
        herald-socketio*) args+=(--target socketio --socketio-server herald) ;;
        socketio*) args+=(--target socketio) ;;
        *) args+=(--target herald) ;;
      esac
      args+=(fanout --conns "$CONNS" --rooms "$ROOMS" --rate "$RATE" --duration "$DURATION"
        --payload "$PAYLOAD" --payload-kind agent)
      ;;
  esac
  run_herald_bench "$name" "${args[@]}"
}

case " $TARGETS " in *" socketio"*) TARGETS_FOR_CHECK="socketio" ;; *) TARGETS_FOR_CHECK="" ;; esac
TARGETS_ALL=$TARGETS
TARGETS=$TARGETS_FOR_CHECK check_prerequisites
TARGETS=$TARGETS_ALL

{
  echo "date: $(date -u +%FT%TZ)"
  echo "herald: $(git -C "$ROOT" rev-parse --short HEAD) $(git -C "$ROOT" status --porcelain | grep -c . || true) files changed in the tree"
  case " $TARGETS " in *" socketio"*)
    echo "socket.io: $(cd "$HERE/socketio" && node -p 'require("socket.io/package.json").version') on node $(node --version)"
    ;;
  esac
  echo "cpus: $(nproc); conns=$CONNS rooms=$ROOMS rate=$RATE duration=$DURATION payload=$PAYLOAD (agent) min_bytes=$MIN_BYTES level=$LEVEL floor_payload=$FLOOR_PAYLOAD rounds=$ROUNDS"
} | tee "$OUT/versions.txt"

for round in $(seq 1 "$ROUNDS"); do
  for target in $TARGETS; do
    name=$target.r$round
    port=""
    echo "== round $round: $target (load: $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$OUT/runs.txt"
    if [ "$target" = floor ]; then
      run_bench floor "" "$name" || echo "   bench exited $?" | tee -a "$OUT/runs.txt"
    else
      port=$(free_loopback_port)
      if start_server "$target" "$port" "$OUT/$name.server.log"; then
        run_bench "$target" "$port" "$name" || echo "   bench exited $?" | tee -a "$OUT/runs.txt"
        stop_server
      fi
    fi
  done
done

python3 - "$OUT" <<'PY' | tee "$OUT/table.md"
import glob, json, os, statistics, sys

out = sys.argv[1]
NAMES = {
    "herald": "Herald /ws, compression off",
    "herald-deflate": "Herald /ws, compress-once",
    "herald-socketio": "Herald /socket.io/, off",
    "herald-socketio-deflate": "Herald /socket.io/, compress-once",
    "socketio": "Node Socket.IO, perMessageDeflate off",
    "socketio-deflate": "Node Socket.IO, perMessageDeflate on",
}

def rounds(target):
    docs = []
    for p in sorted(glob.glob(os.path.join(out, f"{target}.r*.json"))):
        try:
            with open(p) as f:
                docs.append(json.load(f))
        except (OSError, ValueError):
            docs.append(None)
    return docs

def get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d

def fig(target, *keys):
    return [get(d, "figures", *keys) for d in rounds(target)]

def med(vals):
    nums = [v for v in vals if isinstance(v, (int, float))]
    return statistics.median(nums) if nums else None

def show(vals, fmt):
    m = med(vals)
    if m is None:
        return "n/a"
    each = "; ".join(fmt.format(v) if isinstance(v, (int, float)) else "n/a" for v in vals)
    return f"{fmt.format(m)} ({each})" if len(vals) > 1 else fmt.format(m)

def ratio(a, b):
    """Per round a/b, and their median."""
    return [x / y if isinstance(x, (int, float)) and isinstance(y, (int, float)) and y else None
            for x, y in zip(a, b)]

floor = fig("floor", "writer_cpu_us_per_send")
print("| target | bytes per delivery | server CPU µs per delivery | deliveries | lost | deflate negotiated | bad events | latency p50 / p99 ms |")
print("|---|---|---|---|---|---|---|---|")
if any(v is not None for v in floor):
    print(f"| kernel floor (one send, {get(rounds('floor')[0], 'params', 'payload')} B frame) | | {show(floor, '{:.2f}')} | | | | | |")
for t, label in NAMES.items():
    docs = rounds(t)
    if not docs:
        continue
    errs = [sum((get(d, "figures", "failures", "error_frames") or {}).values()) if d else None for d in docs]
    lost = [get(d, "figures", "delivery", "lost") for d in docs]
    print(f"| {label} | {show(fig(t, 'wire', 'bytes_per_delivery'), '{:,.0f}')} "
          f"| {show(fig(t, 'server', 'cpu_us_per_delivery'), '{:.2f}')} "
          f"| {show(fig(t, 'deliveries'), '{:,.0f}')} | {show(lost, '{:,.0f}')} "
          f"| {show(fig(t, 'wire', 'deflate_negotiated'), '{:,.0f}')} | {show(errs, '{:,.0f}')} "
          f"| {show(fig(t, 'delivery', 'latency_ms', 'p50'), '{:.1f}')} / {show(fig(t, 'delivery', 'latency_ms', 'p99'), '{:.1f}')} |")

print()
print("| ratio (per round, median) | value |")
print("|---|---|")
def line(label, vals, fmt="{:.2f}×"):
    if any(v is not None for v in vals):
        print(f"| {label} | {show(vals, fmt)} |")
for off, on, who in [("herald", "herald-deflate", "Herald /ws"),
                     ("herald-socketio", "herald-socketio-deflate", "Herald /socket.io/"),
                     ("socketio", "socketio-deflate", "Node Socket.IO")]:
    line(f"{who}: bytes off ÷ compressed (fewer bytes)", ratio(fig(off, "wire", "bytes_per_delivery"), fig(on, "wire", "bytes_per_delivery")))
    line(f"{who}: CPU compressed ÷ off", ratio(fig(on, "server", "cpu_us_per_delivery"), fig(off, "server", "cpu_us_per_delivery")))
line("Herald off ÷ kernel floor (CPU per delivery)", ratio(fig("herald", "server", "cpu_us_per_delivery"), floor))
line("Herald compress-once ÷ kernel floor", ratio(fig("herald-deflate", "server", "cpu_us_per_delivery"), floor))
line("Socket.IO perMessageDeflate CPU ÷ Herald compress-once CPU", ratio(fig("socketio-deflate", "server", "cpu_us_per_delivery"), fig("herald-deflate", "server", "cpu_us_per_delivery")))
PY
echo "results in $OUT"
