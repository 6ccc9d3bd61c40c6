-- flush.lua — record batches the output topic acknowledged.
--
-- KEYS[1]      {prefix}:owner:{topic}:{partition}
-- KEYS[2i]     {prefix}:flushed:{key i}                           (i = 1..n)
-- KEYS[2i+1]   {prefix}:pending:{key i}
-- ARGV[1]      the caller's generation
-- ARGV[2]      partition
-- ARGV[3]      TTL of flushed keys, ms (retention; refreshed on every flush)
-- ARGV[4]      TTL of the owner key, ms (refreshed)
-- ARGV[5]      the input topic's id (base64), or "" when unknown
-- ARGV[6]      the partition's high watermark
-- ARGV[7]      timestamp tolerance, ms, as in admit.lua; -1 = do not compare timestamps
-- ARGV[4+4i]   last offset emitted for key i
-- ARGV[5+4i]   that batch's first offset
-- ARGV[6+4i]   that batch's last_ts, Unix ms
-- ARGV[7+4i]   that batch's id (for `follows` after a restart or handoff)
-- Returns      n, or the error "STALE <generation>" when fenced off.
--
-- flushed:{key} is a hash: topic_id, partition, offset (the last offset of the key emitted),
-- last_ts (that batch's last fragment timestamp), batch_id (that batch's id).
--
-- Invariants: a key's flushed watermark only moves forward within one incarnation of one
-- partition. It starts over when the record cannot describe this log (prelude.lua's `judge`,
-- shared with admit.lua: another partition — the key moved after the topic was repartitioned —,
-- another topic id, an offset beyond the high watermark, or older than this batch by more than the
-- tolerance while naming a higher offset), or is in the format from before topic ids. A pending
-- summary is deleted only if it describes this batch's window or an older one, never a newer
-- window of the same key that opened meanwhile.
local gen = redis.call('HGET', KEYS[1], 'generation')
if gen ~= ARGV[1] then
  return redis.error_reply('STALE ' .. tostring(gen))
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local n = (#KEYS - 1) / 2
for i = 1, n do
  local key = KEYS[2 * i]
  local last = tonumber(ARGV[4 + 4 * i])
  local last_ts = tonumber(ARGV[6 + 4 * i])
  local kind = redis.call('TYPE', key)['ok']
  local forward = true
  if kind == 'hash' then
    local cur = redis.call('HMGET', key, 'topic_id', 'partition', 'offset', 'last_ts')
    forward = judge(cur[1], cur[2], tonumber(cur[3]), tonumber(cur[4]), last, last_ts) ~= 'covers'

  elseif kind ~= 'none' then
    redis.call('DEL', key)
  end
  if forward then
    redis.call('HSET', key, 'topic_id', topic_id, 'partition', partition,
      'offset', ARGV[4 + 4 * i], 'last_ts', ARGV[6 + 4 * i], 'batch_id', ARGV[7 + 4 * i])
  end
  redis.call('PEXPIRE', key, ARGV[3])
  local pend = redis.call('HMGET', KEYS[2 * i + 1], 'partition', 'first_offset')
  if pend[1] == partition and tonumber(pend[2]) and tonumber(pend[2]) <= last then
    redis.call('DEL', KEYS[2 * i + 1])
  end
end
return n
