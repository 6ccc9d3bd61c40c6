-- pending.lua — publish the summaries of open windows, so any process can ask "is this user
-- mid-burst, and when will the batch go out?", and delete those of windows that went out.
--
-- KEYS[1]      {prefix}:{group}:{<topic>/<partition>}:owner
-- KEYS[1+i]    …:pending:{key i} of an open window                   (i = 1..n)
-- KEYS[1+n+j]  …:pending:{key j} of a key whose window went out and that has no open window now
-- ARGV[1]      the caller's generation
-- ARGV[2]      the caller's instance id
-- ARGV[3]      partition
-- ARGV[4]      TTL of pending keys, ms: max wait + grace + a margin
-- ARGV[5]      TTL of the owner key, ms (refreshed)
-- ARGV[6]      n
-- ARGV[7+5(i-1) .. 11+5(i-1)]  for key i: first_ts, last_ts, count, flush_at, first_offset
-- Returns      the number of keys written or deleted, or the error "STALE <generation>" when
--              fenced off.
--
-- Invariant: the TTL is refreshed on every write, so a key lives at least max wait + grace past
-- its window's latest fragment: it only cleans up after a dead owner and never decides a flush.
-- The owner alone writes a partition's summaries, and it asks to delete one only when the key has
-- no open window (so a newer window's summary is never deleted).
local gen = redis.call('HGET', KEYS[1], 'generation')
if gen ~= ARGV[1] then
  return redis.error_reply('STALE ' .. tostring(gen))
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
local n = tonumber(ARGV[6])
if n > 0 then
  local t = redis.call('TIME')
  local now = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  for i = 1, n do
    local a = 7 + 5 * (i - 1)
    redis.call('HSET', KEYS[1 + i],
      'first_ts', ARGV[a], 'last_ts', ARGV[a + 1], 'count', ARGV[a + 2], 'flush_at', ARGV[a + 3],
      'first_offset', ARGV[a + 4], 'partition', ARGV[3], 'owner', ARGV[2], 'updated_at', now)
    redis.call('PEXPIRE', KEYS[1 + i], ARGV[4])
  end
end
-- One DEL per 500 keys (unpack's stack stays small).
for first = 2 + n, #KEYS, 500 do
  redis.call('DEL', unpack(KEYS, first, math.min(first + 499, #KEYS)))
end
return #KEYS - 1
