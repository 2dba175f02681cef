# Shared by the cluster benchmark scripts (sourced, not run): free loopback
# ports, readiness, the broker server and the config of a bench node on it.
# ENGINE picks the broker: redis (default) or nats. Expects WORK (a scratch
# folder) to be set, and RPORT (the redis-server port) or NPORT (the
# nats-server port) before write_node_config is called; start_broker sets
# them.

ENGINE=${ENGINE:-redis}
case "$ENGINE" in
  redis | nats) ;;
  *) echo "ENGINE must be redis or nats, not $ENGINE" >&2; exit 2 ;;
esac

SECRET=bench-secret-0123456789abcdef0123456789
KEY=bench-admin-key-0123456789

# A loopback port nobody listens on.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits (at most 20 s) until the node on port $1 answers /ready with 200.
wait_ready() {
  for _ in $(seq 200); do
    curl -fs "http://127.0.0.1:$1/ready" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "node on $1 never became ready" >&2
  return 1
}

# Starts the broker server of $ENGINE on a free loopback port, its data in
# $WORK, and appends its pid to PIDS: redis-server without persistence
# (sets RPORT), or nats-server with JetStream, its file store in
# $WORK/nats (sets NPORT, and NMPORT for its monitoring port). Waits until
# it listens.
start_broker() {
  if [ "$ENGINE" = nats ]; then
    NPORT=$(free_port)
    NMPORT=$(free_port)
    nats-server -a 127.0.0.1 -p "$NPORT" -m "$NMPORT" -js -sd "$WORK/nats" >"$WORK/nats.log" 2>&1 &
    PIDS+=($!)
    wait_listening "$NPORT" "${PIDS[-1]}" || { echo "nats-server did not start" >&2; return 1; }
  else
    RPORT=$(free_port)
    redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" >"$WORK/redis.log" &
    PIDS+=($!)
    wait_listening "$RPORT" "${PIDS[-1]}" || { echo "redis-server did not start" >&2; return 1; }
  fi
}

# The [broker] lines of a node on $ENGINE.
broker_config() {
  if [ "$ENGINE" = nats ]; then
    printf 'kind = "nats"\nnats_url = "nats://127.0.0.1:%s"\n' "$NPORT"
  else
    printf 'kind = "redis"\nredis_url = "redis://127.0.0.1:%s"\n' "$RPORT"
  fi
}

# Writes $WORK/$1.toml: node id $1 on port $2, the bench's secret and admin
# key, the broker of $ENGINE (broker_config); the rest of stdin (namespace
# tables) is appended.
write_node_config() {
  {
    cat <<EOT
[server]
listen = "127.0.0.1:$2"
node_id = "$1"
[auth]
hs256_secret = "$SECRET"
[[auth.api_keys]]
key = "$KEY"
scopes = ["admin"]
[limits]
max_connections = 100000
[broker]
$(broker_config)
EOT
    cat
  } >"$WORK/$1.toml"
}

# Waits (at most 30 s) until something listens on port $1; fails early if
# process $2 (when given) has exited.
wait_listening() {
  for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    if [ -n "${2:-}" ] && ! kill -0 "$2" 2>/dev/null; then return 1; fi
    sleep 0.1
  done
  return 1
}

# With ENGINE=nats: the JetStream streams' messages and bytes, from
# nats-server's monitoring port (what the store holds after a run).
print_store() {
  [ "$ENGINE" = nats ] || return 0
  curl -fs "http://127.0.0.1:$NMPORT/jsz?streams=1" | python3 -c '
import json, sys
for account in json.load(sys.stdin).get("account_details", []):
    for d in account.get("stream_detail", []):
        name, n, size = d["name"], d["state"]["messages"], d["state"]["bytes"]
        print("stream %s: %d messages, %d bytes (%.0f B each)" % (name, n, size, size / n if n else 0))
'
}
