-- The engine's current epoch: new room streams start in it, and reads of a
-- room without a stream report it. Replaced when less than ARGV[3] ms of
-- its life is left (or it has no expiry), so a node that checked it may
-- use it for a while without it expiring meanwhile.
-- KEYS: 1 the epoch key
-- ARGV: 1 a fresh epoch, 2 its life (ms), 3 the least life left (ms)
-- Returns the epoch.

local ttl = redis.call('PTTL', KEYS[1])
if ttl < tonumber(ARGV[3]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
return redis.call('GET', KEYS[1])
