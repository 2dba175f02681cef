-- Helpers shared by the broker's scripts. A stream entry is
-- `0-<offset>  m <message>  x <expires at, ms>`.

local function field(entry, name)
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == name then
      return fields[i + 1]
    end
  end
  return nil
end

local function expires_at(entry)
  return tonumber(field(entry, 'x') or '0')
end

-- Creates the room's epoch when it has none. A stream left over from an
-- earlier life is deleted first: its offsets belong to another epoch.
local function ensure_epoch(meta, stream, fresh, idle_ms)
  local epoch = redis.call('HGET', meta, 'epoch')
  if epoch then
    return epoch, false
  end
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'epoch', fresh, 'offset', 0)
  redis.call('PEXPIRE', meta, idle_ms)
  return fresh, true
end
