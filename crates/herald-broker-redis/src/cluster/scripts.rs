//! The registry's Lua scripts. Each touches keys of one hash slot only, so
//! they run unchanged on Redis Cluster.
//!
//! Times that decide liveness come from the server's `TIME` inside the
//! script that reads or writes the nodes set: every node compares against
//! the same clock (the one holding that key), so skew between the nodes'
//! clocks can never declare a live node dead.

use fred::clients::Client;
use fred::error::Error;
use fred::interfaces::LuaInterface;
use fred::types::FromValue;
use herald_engine_kit::telemetry::Command;
use parking_lot::Mutex;

/// `KEYS[1]` nodes set; `ARGV[1]` node id. Scores the node with the
/// server's time; returns 1 when it was not in the set (newly added).
const HEARTBEAT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZADD', KEYS[1], string.format('%.0f', now), ARGV[1])
"#;

/// `KEYS[1]` nodes set; `ARGV[1]` silence (ms) after which a node is dead.
/// Returns `{live count, live ids..., dead ids...}`.
const NODES_BY_AGE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cut = string.format('%.0f', now - tonumber(ARGV[1]))
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. cut, '+inf')
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cut)
local out = {tostring(#live)}
for _, id in ipairs(live) do out[#out + 1] = id end
for _, id in ipairs(dead) do out[#out + 1] = id end
return out
"#;

/// `KEYS[1]` nodes set; `ARGV[1]` node id, `ARGV[2]` silence (ms). Returns
/// 1 when the node is still listed and still silent (checked again by the
/// reaper once it holds the node's reaper lock).
const NODE_IS_DEAD: &str = r#"
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if tonumber(score) <= now - tonumber(ARGV[2]) then return 1 end
return 0
"#;

/// `KEYS[1]` the user's connections, `KEYS[2]` the user's lock (same slot).
/// `ARGV`: connection id, record JSON, policy, max per user, lock TTL (ms).
/// Returns `{'refused'}`, or `{'ok', displaced...}` where each displaced
/// entry is a record's JSON, or `#<id>` for a lock holder without a record.
const ADMIT: &str = r#"
local hash, lock = KEYS[1], KEYS[2]
local id, rec, policy, max = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local out = {'ok'}
local others = redis.call('HLEN', hash) - redis.call('HEXISTS', hash, id)
if policy == 'reject' then
  if others >= max then return {'refused'} end
elseif policy == 'evict_oldest' then
  local excess = others - max + 1
  if excess > 0 then
    local all = redis.call('HGETALL', hash)
    local list = {}
    for i = 1, #all, 2 do
      if all[i] ~= id then
        local ok, r = pcall(cjson.decode, all[i + 1])
        local at = 0
        if ok and type(r) == 'table' then at = tonumber(r.connected_at) or 0 end
        list[#list + 1] = {all[i], all[i + 1], at}
      end
    end
    table.sort(list, function(a, b)
      if a[3] ~= b[3] then return a[3] < b[3] end
      return a[1] < b[1]
    end)
    for i = 1, math.min(excess, #list) do
      redis.call('HDEL', hash, list[i][1])
      out[#out + 1] = list[i][2]
    end
  end
elseif policy == 'exclusive' then
  local all = redis.call('HGETALL', hash)
  local gone = {}
  for i = 1, #all, 2 do
    if all[i] ~= id then
      redis.call('HDEL', hash, all[i])
      gone[all[i]] = true
      out[#out + 1] = all[i + 1]
    end
  end
  local prev = redis.call('SET', lock, id, 'PX', ARGV[5], 'GET')
  if prev and prev ~= id and not gone[prev] then out[#out + 1] = '#' .. prev end
end
redis.call('HSET', hash, id, rec)
return out
"#;

/// `KEYS[1]` the user's connections; `ARGV` connection id, record JSON.
/// Rewrites the record only while it is registered (a removed or displaced
/// connection must not come back); returns 1 when it was.
const REWRITE: &str = r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"#;

/// `KEYS` locks (one slot); `ARGV[1]` TTL (ms), `ARGV[2..]` the connection
/// each lock should name. Renews a lock that names its connection, takes
/// one nobody holds (it expired, or Redis lost it), and reports 0 for a
/// lock another connection took over.
const RENEW_LOCKS: &str = r#"
local out = {}
for i, key in ipairs(KEYS) do
  local id = ARGV[i + 1]
  local v = redis.call('GET', key)
  if v == id then
    redis.call('PEXPIRE', key, ARGV[1])
    out[i] = 1
  elseif not v then
    redis.call('SET', key, id, 'PX', ARGV[1])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"#;

/// `KEYS[1]` a lock; `ARGV[1]` a connection id. Deletes the lock only while
/// it names that connection.
const RELEASE_LOCK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// One script, run by `EVALSHA` once its hash is known. The crate's fred
/// build has no SHA-1, so the hash comes from the server (`SCRIPT LOAD`);
/// on `NOSCRIPT` (another cluster master, or a restarted server) the body
/// goes with `EVAL`, which also caches it there. Each run is timed as the
/// script's command (`herald_broker_command_duration_seconds`).
pub(super) struct LuaScript {
    body: &'static str,
    sha: Mutex<Option<String>>,
    command: Command,
}

impl LuaScript {
    fn new(body: &'static str, command: &'static str) -> Self {
        let command = Command::new("redis", command);
        command.register();
        Self {
            body,
            sha: Mutex::new(None),
            command,
        }
    }

    /// Runs the script with `keys` (one slot) and `args`, timed.
    pub(super) async fn run<R: FromValue>(
        &self,
        client: &Client,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<R, Error> {
        self.command
            .time(self.run_untimed(client, keys, args))
            .await
    }

    async fn run_untimed<R: FromValue>(
        &self,
        client: &Client,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<R, Error> {
        let sha = self.sha.lock().clone();
        match sha {
            Some(sha) => match client.evalsha(sha, keys.clone(), args.clone()).await {
                // NOSCRIPT means it did not run: sending the body runs it once.
                Err(e) if e.details().starts_with("NOSCRIPT") => {}
                other => return other,
            },
            None => {
                if let Ok(sha) = client.script_load::<String, _>(self.body).await {
                    *self.sha.lock() = Some(sha);
                }
            }
        }
        client.eval(self.body, keys, args).await
    }
}

/// Every script of the registry.
pub(super) struct Scripts {
    pub(super) heartbeat: LuaScript,
    pub(super) nodes_by_age: LuaScript,
    pub(super) node_is_dead: LuaScript,
    pub(super) admit: LuaScript,
    pub(super) rewrite: LuaScript,
    pub(super) renew_locks: LuaScript,
    pub(super) release_lock: LuaScript,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Self {
            heartbeat: LuaScript::new(HEARTBEAT, "heartbeat"),
            nodes_by_age: LuaScript::new(NODES_BY_AGE, "nodes_read"),
            node_is_dead: LuaScript::new(NODE_IS_DEAD, "node_check"),
            admit: LuaScript::new(ADMIT, "registry_admit"),
            rewrite: LuaScript::new(REWRITE, "registry_rewrite"),
            renew_locks: LuaScript::new(RENEW_LOCKS, "lock_renew"),
            release_lock: LuaScript::new(RELEASE_LOCK, "lock_release"),
        }
    }
}
