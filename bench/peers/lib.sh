# Shared by compare.sh, cluster-compare.sh and ../compression.sh (sourced,
# not run).

# Checks that the binaries and peers the run needs are there, installing
# Socket.IO's packages when missing. Expects HERALD, BENCH, HERE, TARGETS
# and SOCKUDO.
check_prerequisites() {
  [ -x "$HERALD" ] && [ -x "$BENCH" ] || {
    echo "build first: cargo build --release -p herald -p herald-bench" >&2
    exit 1
  }
  case " $TARGETS " in *" socketio "*)
    [ -d "$HERE/socketio/node_modules/@socket.io/redis-adapter" ] ||
      (cd "$HERE/socketio" && npm ci --no-audit --no-fund)
    ;;
  esac
  case " $TARGETS " in *" sockudo "*)
    [ -n "$SOCKUDO" ] && [ -x "$SOCKUDO" ] || {
      echo "sockudo not found: cargo install sockudo, or SOCKUDO=/path/to/sockudo" >&2
      exit 1
    }
    ;;
  esac
}

# The one server compare.sh and compression.sh run at a time: SPID is its
# pid (empty when none runs). Stops it, at most 10 s gracefully, then kill -9.
stop_server() {
  [ -n "$SPID" ] || return 0
  if kill -0 "$SPID" 2>/dev/null; then
    kill "$SPID" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$SPID" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$SPID" 2>/dev/null || true
  fi
  wait "$SPID" 2>/dev/null || true
  SPID=""
}

# A loopback port nobody listens on. (Not named free_port: cluster-compare.sh
# sources this file after bench/lib/cluster.sh, whose free_port it uses.)
free_loopback_port() {
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  echo "no free port found" >&2
  return 1
}

# Waits (at most 30 s) until something listens on $1, or until SPID exits.
wait_port() {
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
      return 0
    fi
    kill -0 "$SPID" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# After a start: waits until server $1 (SPID) listens on port $2; if it does
# not, shows the end of its log $3, stops it and fails.
await_server() {
  if ! wait_port "$2"; then
    echo "$1 did not listen on $2; log:" >&2
    tail -20 "$3" >&2
    stop_server
    return 1
  fi
}

# Runs herald-bench ($BENCH) with arguments $2...; for run $1 writes the
# command line to $OUT/$1.cmd (the server pid as $SPID), its --json to
# $OUT/$1.json and its stderr to $OUT/$1.err. At most RUN_LIMIT seconds.
run_herald_bench() {
  local name=$1
  shift
  echo "\$ herald-bench $*" | sed "s/--server-pid [0-9]*/--server-pid \$SPID/" \
    >"$OUT/$name.cmd"
  HBENCH_SECRET=$SECRET HBENCH_API_KEY=$API_KEY timeout "$RUN_LIMIT" \
    "$BENCH" "$@" >"$OUT/$name.json" 2>"$OUT/$name.err"
}
