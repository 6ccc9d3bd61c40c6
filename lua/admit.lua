-- admit.lua — decide, for a chunk of fragments of one partition, which are new.
--
-- KEYS[1]      {prefix}:owner:{topic}:{partition}
-- KEYS[2i]     {prefix}:flushed:{key of fragment i}              (i = 1..n)
-- KEYS[2i+1]   {prefix}:event:{event_id of fragment i}, or KEYS[2i] again when it has none
-- ARGV[1]      the caller's generation
-- ARGV[2]      partition
-- ARGV[3]      TTL of event keys, ms
-- ARGV[4]      TTL of the owner key, ms (refreshed)
-- ARGV[3+2i]   offset of fragment i
-- ARGV[4+2i]   "1" if fragment i has an event id, else "0"
-- Returns      {v_1, ..., v_n}: 0 = new; 1 = already emitted in a batch (offset <= the key's
--              flushed watermark on this partition): skip; 2 = duplicate event id first seen at
--              another offset: drop. Or the error "STALE <generation>" when fenced off.
--
-- Invariants: an event key records "partition:offset" of the first sighting (SET NX), so a replay
-- of that same offset is never a duplicate; TTLs of touched event keys are refreshed.
local gen = redis.call('HGET', KEYS[1], 'generation')
if gen ~= ARGV[1] then
  return redis.error_reply('STALE ' .. tostring(gen))
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local partition = ARGV[2]
local out = {}
local n = (#KEYS - 1) / 2
for i = 1, n do
  local offset = tonumber(ARGV[3 + 2 * i])
  local verdict = 0
  local flushed = redis.call('GET', KEYS[2 * i])
  if flushed then
    local p, o = string.match(flushed, '^(%-?%d+):(%-?%d+)$')
    if p == partition and offset <= tonumber(o) then
      verdict = 1
    end
  end
  if verdict == 0 and ARGV[4 + 2 * i] == '1' then
    local here = partition .. ':' .. ARGV[3 + 2 * i]
    if not redis.call('SET', KEYS[2 * i + 1], here, 'NX', 'PX', ARGV[3]) then
      if redis.call('GET', KEYS[2 * i + 1]) ~= here then
        verdict = 2
      end
      redis.call('PEXPIRE', KEYS[2 * i + 1], ARGV[3])
    end
  end
  out[i] = verdict
end
return out
