
-- Publishes one event, atomically: offset, history and announcement in one
-- step, so offset order is channel order (see broker/publish.rs).
-- KEYS: 1 meta hash, 2 stream, 3 channel, 4 idempotency record (optional)
-- ARGV: 1 epoch to create when the room has none,
--       2 the publication JSON after its opening brace,
--       3 history size, 4 history ttl (ms), 5 now (ms),
--       6 meta idle ttl (ms), 7 idempotency ttl (ms)
-- Returns {epoch, offset, duplicate (0/1)}.

-- Drops entries whose time is up from the head of the stream. Bounded per
-- call; whatever is left goes on the next publish (reads skip it anyway).
local function trim_expired(stream, now)
  local count = 1
  for _ = 1, 64 do
    local head = redis.call('XRANGE', stream, '-', '+', 'COUNT', count)
    if #head == 0 then
      return
    end
    for _, entry in ipairs(head) do
      if expires_at(entry) > now then
        redis.call('XTRIM', stream, 'MINID', entry[1])
        return
      end
    end
    local last = tonumber(string.sub(head[#head][1], 3))
    redis.call('XTRIM', stream, 'MINID', string.format('0-%d', last + 1))
    count = 64
  end
end

local meta, stream, channel, idem = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if idem then
  local first = redis.call('GET', idem)
  if first then
    local sp = string.find(first, ' ', 1, true)
    return {string.sub(first, 1, sp - 1), tonumber(string.sub(first, sp + 1)), 1}
  end
end

local size, ttl, now = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local epoch = ensure_epoch(meta, stream, ARGV[1], ARGV[6])
local offset = redis.call('HINCRBY', meta, 'offset', 1)
local message = string.format('p{"o":%d,"e":"%s",', offset, epoch) .. ARGV[2]

trim_expired(stream, now)
if size > 0 and ttl > 0 then
  local id = string.format('0-%d', offset)
  local expires = string.format('%d', now + ttl)
  local added = redis.pcall('XADD', stream, 'MAXLEN', '=', size, id, 'm', message, 'x', expires)
  if type(added) == 'table' and added.err then
    -- The stream holds ids at or above this offset: it outlived its meta
    -- (an eviction). Its entries are of no use to this epoch.
    redis.call('DEL', stream)
    redis.call('XADD', stream, 'MAXLEN', '=', size, id, 'm', message, 'x', expires)
  end
  redis.call('PEXPIRE', stream, ttl)
end
redis.call('PEXPIRE', meta, ARGV[6])
if idem then
  redis.call('SET', idem, epoch .. ' ' .. string.format('%d', offset), 'PX', ARGV[7])
end
redis.call('SPUBLISH', channel, message)
return {epoch, offset, 0}
