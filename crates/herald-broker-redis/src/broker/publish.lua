-- Publishes one event, atomically: offset, history and announcement in one
-- step, so offset order is channel order (see broker/publish.rs).
-- KEYS: 1 meta hash, 2 stream, 3 channel, 4 idempotency record (optional)
-- ARGV: 1 epoch to create when the room has none (the engine epoch),
--       2 the publication JSON after its opening brace,
--       3 history size, 4 history ttl (ms), 5 now (ms),
--       6 meta idle ttl (ms), 7 idempotency ttl (ms),
--       8 history byte budget of the room (0: none),
--       9 a random epoch, for a room whose stream outlived its meta
-- Returns {epoch, offset, duplicate (0/1), trimmed for size, trimmed for
-- the byte budget, trimmed for age}.
--
-- The meta hash's `bytes` field is the size of the messages the stream
-- holds: added on XADD, taken off for every entry trimmed here.

-- Drops entries whose time is up from the head of the stream. Bounded per
-- call; whatever is left goes on the next publish (reads skip it anyway).
-- Returns how many went.
local function trim_expired(meta, stream, now)
  local count, freed, dropped = 1, 0, 0
  for _ = 1, 64 do
    local head = redis.call('XRANGE', stream, '-', '+', 'COUNT', count)
    if #head == 0 then
      break
    end
    local keep = nil
    for _, entry in ipairs(head) do
      if expires_at(entry) > now then
        keep = entry[1]
        break
      end
      freed = freed + #(field(entry, 'm') or '')
      dropped = dropped + 1
    end
    if keep then
      redis.call('XTRIM', stream, 'MINID', keep)
      break
    end
    local last = tonumber(string.sub(head[#head][1], 3))
    redis.call('XTRIM', stream, 'MINID', string.format('0-%d', last + 1))
    count = 64
  end
  if freed > 0 then
    redis.call('HINCRBY', meta, 'bytes', -freed)
  end
  return dropped
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
local max_bytes = tonumber(ARGV[8])
-- A stream without its meta is a previous life of the room (its meta was
-- evicted or deleted): positions of that life may be in the engine epoch,
-- so this life gets an epoch of its own.
local fresh = ARGV[1]
if redis.call('EXISTS', meta) == 0 and redis.call('EXISTS', stream) == 1 then
  fresh = ARGV[9]
end
local epoch = ensure_epoch(meta, stream, fresh, ARGV[6])
local offset = redis.call('HINCRBY', meta, 'offset', 1)
local message = string.format('p{"o":%d,"e":"%s",', offset, epoch) .. ARGV[2]

-- The stream expired on its own (its ttl): it held nothing any more.
if redis.call('EXISTS', stream) == 0 then
  redis.call('HSET', meta, 'bytes', 0)
end
local by_ttl = trim_expired(meta, stream, now)
local by_size, by_bytes = 0, 0
if size > 0 and ttl > 0 then
  local id = string.format('0-%d', offset)
  local expires = string.format('%d', now + ttl)
  local added = redis.pcall('XADD', stream, id, 'm', message, 'x', expires)
  if type(added) == 'table' and added.err then
    -- The stream holds ids at or above this offset: it outlived its meta
    -- (an eviction). Its entries are of no use to this epoch.
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'bytes', 0)
    redis.call('XADD', stream, id, 'm', message, 'x', expires)
  end
  -- Oldest first, past the size and then the byte budget. The new entry
  -- may go too (larger than the whole budget): what stays is always a
  -- contiguous run, so a read never skips a hole unnoticed.
  local bytes = redis.call('HINCRBY', meta, 'bytes', #message)
  local len = redis.call('XLEN', stream)
  while len > size or (max_bytes > 0 and bytes > max_bytes) do
    local head = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
    if #head == 0 then
      redis.call('HSET', meta, 'bytes', 0)
      break
    end
    if len > size then
      by_size = by_size + 1
    else
      by_bytes = by_bytes + 1
    end
    bytes = redis.call('HINCRBY', meta, 'bytes', -#(field(head[1], 'm') or ''))
    redis.call('XDEL', stream, head[1][1])
    len = len - 1
  end
  redis.call('PEXPIRE', stream, ttl)
end
redis.call('PEXPIRE', meta, ARGV[6])
if idem then
  redis.call('SET', idem, epoch .. ' ' .. string.format('%d', offset), 'PX', ARGV[7])
end
redis.call('SPUBLISH', channel, message)
return {epoch, offset, 0, by_size, by_bytes, by_ttl}
