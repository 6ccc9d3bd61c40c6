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
-- ARGV[5+3i]   last offset emitted for key i
-- ARGV[6+3i]   that batch's first offset
-- ARGV[7+3i]   that batch's last_ts, Unix ms
-- Returns      n, or the error "STALE <generation>" when fenced off.
--
-- flushed:{key} is a hash: topic_id, partition, offset (the last offset of the key emitted),
-- last_ts (that batch's last fragment timestamp).
--
-- Invariants: a key's flushed watermark only moves forward within one incarnation of one
-- partition. It starts over when the record is of another partition (the key moved after the
-- topic was repartitioned), of another topic id (the topic was recreated), at or above the high
-- watermark (it cannot describe this log), older than this batch by more than the tolerance
-- while naming a higher offset (another log under the same name), or in the format from before
-- topic ids. A pending
-- summary is deleted only if it describes this batch's window or an older one, never a newer
-- window of the same key that opened meanwhile.
local gen = redis.call('HGET', KEYS[1], 'generation')
if gen ~= ARGV[1] then
  return redis.error_reply('STALE ' .. tostring(gen))
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local partition = ARGV[2]
local topic_id = ARGV[5]
local high = tonumber(ARGV[6])
local tolerance = tonumber(ARGV[7])
local n = (#KEYS - 1) / 2
for i = 1, n do
  local key = KEYS[2 * i]
  local last = tonumber(ARGV[5 + 3 * i])
  local last_ts = tonumber(ARGV[7 + 3 * i])
  local kind = redis.call('TYPE', key)['ok']
  local forward = true
  if kind == 'hash' then
    local cur = redis.call('HMGET', key, 'topic_id', 'partition', 'offset', 'last_ts')
    local same_topic = cur[1] == topic_id or cur[1] == '' or topic_id == ''
    local o = tonumber(cur[3])
    local older_log = tolerance >= 0 and tonumber(cur[4]) and last_ts > tonumber(cur[4]) + tolerance
    if same_topic and cur[2] == partition and o and o < high and last <= o and not older_log then
      forward = false
    end
  elseif kind ~= 'none' then
    redis.call('DEL', key)
  end
  if forward then
    redis.call('HSET', key, 'topic_id', topic_id, 'partition', partition,
      'offset', ARGV[5 + 3 * i], 'last_ts', ARGV[7 + 3 * i])
  end
  redis.call('PEXPIRE', key, ARGV[3])
  local pend = redis.call('HMGET', KEYS[2 * i + 1], 'partition', 'first_offset')
  if pend[1] == partition and tonumber(pend[2]) and tonumber(pend[2]) <= last then
    redis.call('DEL', KEYS[2 * i + 1])
  end
end
return n
