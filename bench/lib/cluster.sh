# Shared by the cluster benchmark scripts (sourced, not run): free loopback
# ports, readiness, and the config of a bench node on the Redis broker.
# Expects WORK (a scratch folder) and RPORT (the redis-server port) to be set
# before write_node_config is called.

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

# Writes $WORK/$1.toml: node id $1 on port $2, the bench's secret and admin
# key, the Redis broker on $RPORT; the rest of stdin (namespace tables) is
# appended.
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
kind = "redis"
redis_url = "redis://127.0.0.1:$RPORT"
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
