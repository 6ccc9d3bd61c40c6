-- flush.lua — record batches the output topic acknowledged (at_least_once: in exactly_once the
-- state topic keeps these records, in the same transaction as the batches).
--
-- KEYS[1]      {prefix}:{group}:{<topic>/<partition>}:owner
-- KEYS[1+i]    …:flushed:{key i}                                     (i = 1..n)
-- ARGV[1]      the caller's generation
-- ARGV[2]      partition
-- ARGV[3]      TTL of flushed keys, ms (retention; refreshed on every flush)
-- ARGV[4]      TTL of the owner key, ms (refreshed)
-- ARGV[5]      the input topic's id (base64), or "" when unknown
-- ARGV[6]      the partition's high watermark (one past the last offset that exists)
-- ARGV[7]      how far, in ms, a batch's timestamp may lie past a record's last_ts for the
--              record to still describe it; -1 = do not compare timestamps (arrival time)
-- ARGV[4+4i]   last offset emitted for key i
-- ARGV[5+4i]   that batch's first offset
-- ARGV[6+4i]   that batch's last_ts, Unix ms
-- ARGV[7+4i]   that batch's id (for `follows` after a restart or handoff)
-- Returns      n, or the error "STALE <generation>" when fenced off.
--
-- flushed:{key} is a hash: topic_id, partition, offset (the last offset of the key emitted),
-- last_ts (that batch's last fragment timestamp), batch_id (that batch's id).
--
-- Invariant: a key's flushed watermark only moves forward within one incarnation of one
-- partition; a record that cannot describe this log (src/io/store/judge.rs states the rule, and
-- `judge` below applies it alike) never holds it back, it is overwritten.
local gen = redis.call('HGET', KEYS[1], 'generation')
if gen ~= ARGV[1] then
  return redis.error_reply('STALE ' .. tostring(gen))
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])

local partition = ARGV[2]
local topic_id = ARGV[5]
local high = tonumber(ARGV[6])
local tolerance = tonumber(ARGV[7])

-- Whether the record (tid, p, o, last_ts) covers input at `offset` with timestamp `ts`, and
-- can describe this log.
local function covers(tid, p, o, last_ts, offset, ts)
  if p ~= partition or not o then
    return false
  end
  local known = tid and tid ~= '' and topic_id ~= ''
  if known and tid ~= topic_id then
    return false
  end
  if not known and o >= high then
    return false
  end
  if offset > o then
    return false
  end
  return not (tolerance >= 0 and last_ts and ts > last_ts + tolerance)
end

local n = #KEYS - 1
for i = 1, n do
  local key = KEYS[1 + i]
  local last = tonumber(ARGV[4 + 4 * i])
  local last_ts = tonumber(ARGV[6 + 4 * i])
  local cur = redis.pcall('HMGET', key, 'topic_id', 'partition', 'offset', 'last_ts')
  if cur.err then
    -- Not a hash (nothing lull writes): it describes nothing, and goes.
    redis.call('DEL', key)
    cur = {}
  end
  if not covers(cur[1], cur[2], tonumber(cur[3]), tonumber(cur[4]), last, last_ts) then
    redis.call('HSET', key, 'topic_id', topic_id, 'partition', partition,
      'offset', ARGV[4 + 4 * i], 'last_ts', ARGV[6 + 4 * i], 'batch_id', ARGV[7 + 4 * i])
  end
  redis.call('PEXPIRE', key, ARGV[3])
end
return n
