
-- Reads a room's position and stored events after an offset. Writes
-- nothing: a room without a stream answers the engine epoch and offset 0,
-- so reads of unknown rooms cannot fill Redis with keys.
-- KEYS: 1 meta hash, 2 stream
-- ARGV: 1 the engine epoch, 2 since, 3 limit, 4 now (ms)
-- Returns {epoch, offset, message...}: unexpired messages after `since`.

local meta, stream = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  return {ARGV[1], 0}
end
local offset = tonumber(redis.call('HGET', meta, 'offset') or '0')
local out = {epoch, offset}
local since, limit, now = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if limit > 0 and since < offset then
  local from = '(0-' .. ARGV[2]
  while #out - 2 < limit do
    local batch = redis.call('XRANGE', stream, from, '+', 'COUNT', limit - (#out - 2))
    if #batch == 0 then
      break
    end
    for _, entry in ipairs(batch) do
      if expires_at(entry) > now then
        out[#out + 1] = field(entry, 'm')
      end
      from = '(' .. entry[1]
    end
  end
end
return out
