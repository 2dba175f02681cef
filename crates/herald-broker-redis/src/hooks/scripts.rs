//! The webhook scripts. Every key they touch carries the `{hooks}` hash
//! tag ([`crate::keys::Keys::hooks_stream`]), so each runs on one Redis
//! Cluster shard, and a transition and its event are one atomic step.
//!
//! Events are appended with `XADD <stream> * t <time_ms> b <json>`, the
//! stream then trimmed to its bound (counting what that drops); an empty
//! body means the kind is not enabled and nothing is appended.

/// `emit(t, body)`: appends one event to `KEYS[1]` (the stream), keeping
/// it at most `ARGV[1]` long: what that trims (unsent events) is added to
/// the counter `KEYS[2]`. Shared by the scripts that append (a macro, so
/// `concat!` can put it in front of them).
macro_rules! emit_lua {
    () => {
        r#"
local function emit(t, body)
  if body ~= '' then
    redis.call('XADD', KEYS[1], '*', 't', t, 'b', body)
    if redis.call('XLEN', KEYS[1]) > tonumber(ARGV[1]) then
      redis.call('INCRBY', KEYS[2], redis.call('XTRIM', KEYS[1], 'MAXLEN', ARGV[1]))
    end
  end
end
"#
    };
}

/// `KEYS[1]` stream, `KEYS[2]` trimmed counter; `ARGV[1]` max length,
/// then pairs `time_ms, json`.
/// Appends them in order, all or none.
pub(super) const APPEND: &str = concat!(
    emit_lua!(),
    r#"
for i = 2, #ARGV - 1, 2 do emit(ARGV[i], ARGV[i + 1]) end
return 1
"#
);

/// A connection arrives (`open`: its user's set gains it; `user.online`
/// on 0 -> 1) and/or joins rooms (`room.occupied` on a room's 0 -> 1).
/// In `join` mode the connection must still be in its user's set: a join
/// racing with the connection's removal must not leave a member behind.
///
/// `KEYS[1]` stream, `KEYS[2]` trimmed counter, `KEYS[3]` the user's set,
/// `KEYS[4..]` room sets. `ARGV[1]` max length, `ARGV[2]` connection id,
/// `ARGV[3]` time_ms, `ARGV[4]` `open` | `join`, `ARGV[5]` user.online JSON, `ARGV[5 + j]`
/// room.occupied JSON of the j-th room. Returns 0 when a `join` found the
/// connection gone, 1 otherwise.
pub(super) const ENTER: &str = concat!(
    emit_lua!(),
    r#"
local conn, t = ARGV[2], ARGV[3]
if ARGV[4] == 'join' then
  if redis.call('SISMEMBER', KEYS[3], conn) == 0 then return 0 end
elseif redis.call('SADD', KEYS[3], conn) == 1 and redis.call('SCARD', KEYS[3]) == 1 then
  emit(t, ARGV[5])
end
for i = 4, #KEYS do
  if redis.call('SADD', KEYS[i], conn) == 1 and redis.call('SCARD', KEYS[i]) == 1 then
    emit(t, ARGV[i + 2])
  end
end
return 1
"#
);

/// A connection goes (`close`: out of its user's set, `user.offline` on
/// 1 -> 0) and/or leaves rooms (`room.vacated` on 1 -> 0). `member.left`
/// and `connection.closed` bodies (given by the reaper only) are appended
/// only when this call is the one that removed the connection, so a
/// record reaped twice is reported once.
///
/// `KEYS[1]` stream, `KEYS[2]` trimmed counter, `KEYS[3]` the user's set,
/// `KEYS[4..]` room sets. `ARGV[1]` max length, `ARGV[2]` connection id,
/// `ARGV[3]` time_ms, `ARGV[4]` `close` | `leave`, `ARGV[5]` connection.closed JSON,
/// `ARGV[6]` user.offline JSON, then for the j-th room member.left JSON
/// and room.vacated JSON. Returns 1 when `close` removed the connection.
pub(super) const EXIT: &str = concat!(
    emit_lua!(),
    r#"
local conn, t = ARGV[2], ARGV[3]
local live = 1
if ARGV[4] == 'close' then live = redis.call('SREM', KEYS[3], conn) end
for i = 4, #KEYS do
  if redis.call('SREM', KEYS[i], conn) == 1 then
    if live == 1 then emit(t, ARGV[2 * i - 1]) end
    if redis.call('SCARD', KEYS[i]) == 0 then emit(t, ARGV[2 * i]) end
  end
end
if live == 1 and ARGV[4] == 'close' then
  emit(t, ARGV[5])
  if redis.call('SCARD', KEYS[3]) == 0 then emit(t, ARGV[6]) end
end
return live
"#
);

/// `KEYS[1]` lease, `KEYS[2]` stream, `KEYS[3]` trimmed counter;
/// `ARGV[1]` this process's token, `ARGV[2]` TTL (ms). Renews the lease
/// when it names the token, takes it when nobody holds it. Returns
/// `{held (0/1), stream length, events trimmed unsent since the holder
/// last asked}` (the holder takes the count, so each is reported once).
pub(super) const LEASE: &str = r#"
local held = 0
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  held = 1
elseif not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  held = 1
end
local trimmed = 0
if held == 1 then trimmed = tonumber(redis.call('GETDEL', KEYS[3]) or '0') end
return {held, redis.call('XLEN', KEYS[2]), trimmed}
"#;

/// `KEYS[1]` lease; `ARGV[1]` token. Gives the lease up if held.
pub(super) const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// `KEYS[1]` lease, `KEYS[2]` cursor, `KEYS[3]` stream; `ARGV[1]` token,
/// `ARGV[2]` count. Up to `count` entries after the cursor (XRANGE's
/// reply), or nil when the token does not hold the lease.
pub(super) const READ: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
local cur = redis.call('GET', KEYS[2])
local from = '-'
if cur then from = '(' .. cur end
return redis.call('XRANGE', KEYS[3], from, '+', 'COUNT', ARGV[2])
"#;

/// `KEYS[1]` lease, `KEYS[2]` cursor, `KEYS[3]` stream; `ARGV[1]` token,
/// `ARGV[2]` the newest entry id acknowledged. Moves the cursor forward
/// only (never back), only while the token holds the lease (a deposed
/// holder's late ack changes nothing), and trims what lies behind it.
/// Returns 1 when the token held the lease, 0 otherwise.
pub(super) const ACK: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local ms, seq = string.match(ARGV[2], '^(%d+)-(%d+)$')
if not ms then return redis.error_reply('ERR bad outbox entry id ' .. ARGV[2]) end
local cur = redis.call('GET', KEYS[2])
if cur then
  local cms, cseq = string.match(cur, '^(%d+)-(%d+)$')
  if cms then
    local a, b = tonumber(cms), tonumber(ms)
    if a > b or (a == b and tonumber(cseq) >= tonumber(seq)) then return 1 end
  end
end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('XTRIM', KEYS[3], 'MINID', ms .. '-' .. string.format('%d', tonumber(seq) + 1))
return 1
"#;
