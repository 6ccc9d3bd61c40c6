-- flush.lua — record batches the output topic acknowledged.
--
-- KEYS[1]      {prefix}:owner:{topic}:{partition}
-- KEYS[2i]     {prefix}:flushed:{key i}                           (i = 1..n)
-- KEYS[2i+1]   {prefix}:pending:{key i}
-- ARGV[1]      the caller's generation
-- ARGV[2]      partition
-- ARGV[3]      TTL of flushed keys, ms (retention; refreshed on every flush)
-- ARGV[4]      TTL of the owner key, ms (refreshed)
-- ARGV[3+2i]   last offset emitted for key i
-- ARGV[4+2i]   that batch's first offset
-- Returns      n, or the error "STALE <generation>" when fenced off.
--
-- Invariants: a key's flushed watermark ("partition:offset") only moves forward on one partition
-- (a key that moved partition, after the topic was repartitioned, starts over there); a pending
-- summary is deleted only if it describes this batch's window or an older one, never a newer
-- window of the same key that opened meanwhile.
local gen = redis.call('HGET', KEYS[1], 'generation')
if gen ~= ARGV[1] then
  return redis.error_reply('STALE ' .. tostring(gen))
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local partition = ARGV[2]
local n = (#KEYS - 1) / 2
for i = 1, n do
  local last = tonumber(ARGV[3 + 2 * i])
  local cur = redis.call('GET', KEYS[2 * i])
  local p, o
  if cur then
    p, o = string.match(cur, '^(%-?%d+):(%-?%d+)$')
  end
  if p ~= partition or last > tonumber(o) then
    redis.call('SET', KEYS[2 * i], partition .. ':' .. ARGV[3 + 2 * i], 'PX', ARGV[3])
  else
    redis.call('PEXPIRE', KEYS[2 * i], ARGV[3])
  end
  local pend = redis.call('HMGET', KEYS[2 * i + 1], 'partition', 'first_offset')
  if pend[1] == partition and tonumber(pend[2]) and tonumber(pend[2]) <= last then
    redis.call('DEL', KEYS[2 * i + 1])
  end
end
return n
