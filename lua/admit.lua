-- admit.lua — decide, for a chunk of fragments of one partition, which are new.
--
-- KEYS[1]      {prefix}:owner:{topic}:{partition}
-- KEYS[2i]     {prefix}:flushed:{key of fragment i}              (i = 1..n)
-- KEYS[2i+1]   {prefix}:event:{event_id of fragment i}, or KEYS[2i] again when it has none
-- ARGV[1]      the caller's generation
-- ARGV[2]      partition
-- ARGV[3]      TTL of event keys, ms
-- ARGV[4]      TTL of the owner key, ms (refreshed)
-- ARGV[5]      the input topic's id (base64), or "" when unknown
-- ARGV[6]      the partition's high watermark (one past the last offset that exists)
-- ARGV[7]      how far, in ms, a fragment's timestamp may lie past the record's last_ts for the
--              record to still describe it; -1 = do not compare timestamps (arrival time)
-- ARGV[5+3i]   offset of fragment i
-- ARGV[6+3i]   "1" if fragment i has an event id, else "0"
-- ARGV[7+3i]   timestamp of fragment i, Unix ms
-- Returns      {{v_1, ..., v_n}, {i, batch_id, last_ts, ...}}. The second list names, for the
--              first new fragment of each key whose flushed record describes this log, the key's
--              last batch (for `follows` after a restart or handoff). Verdicts: 0 = new; 1 = already emitted in a batch (offset <= the key's
--              flushed watermark on this partition): skip; 2 = duplicate event id first seen at
--              another offset: drop; 3 = new, and the key's flushed record belongs to another
--              incarnation of the topic (another topic id): ignored; 4 = new, and the key's
--              flushed record names an offset at or above the high watermark (it cannot have
--              been read from this log; judged only when an identity is unknown): ignored; 5 = new, and the record would skip this
--              fragment although the fragment is newer than the record's last fragment by more
--              than ARGV[7] (a log without topic ids replaced under the same name, e.g. a dev
--              cluster): ignored. Or the error "STALE <generation>" when fenced off.
--
-- flushed:{key} is a hash {topic_id, partition, offset, last_ts, ...}; an event key holds
-- "topic_id:partition:offset" of the first sighting. Values written before topic ids existed
-- (a "partition:offset" string) are read as records of an unknown topic id.
--
-- Invariants: a record is used to skip or drop only if it can describe this log (prelude.lua's
-- `judge`, shared with flush.lua); anything else is ignored, never trusted, so a recreated topic
-- can never lose fragments. An event key records the first
-- sighting (SET NX), so a replay of that same offset is never a duplicate; TTLs of touched event
-- keys are refreshed.
local gen = redis.call('HGET', KEYS[1], 'generation')
if gen ~= ARGV[1] then
  return redis.error_reply('STALE ' .. tostring(gen))
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])

-- flushed:{key} as (topic_id, partition, offset, last_ts, batch_id), nil or false where absent;
-- a legacy "partition:offset" string (HMGET fails on it) has neither topic id, timestamp nor id.
-- Read once per key per call (a chunk often holds several fragments of one key, and nothing here
-- writes these records).
local records = {}
local function flushed(key)
  local r = records[key]
  if not r then
    local got = redis.pcall('HMGET', key, 'topic_id', 'partition', 'offset', 'last_ts', 'batch_id')
    if got.err then
      local p, o = string.match(redis.call('GET', key), '^(%-?%d+):(%-?%d+)$')
      r = {p = p, o = tonumber(o)}
    else
      r = {tid = got[1], p = got[2], o = tonumber(got[3]), last_ts = tonumber(got[4]), id = got[5]}
    end
    records[key] = r
  end
  return r.tid, r.p, r.o, r.last_ts, r.id
end

-- prelude.lua's judgement as admit's verdicts.
local VERDICTS = {after = 0, covers = 1, other_topic = 3, beyond_high = 4, newer = 5}

local out = {}
local seeds = {}
local seeded = {}
local n = (#KEYS - 1) / 2
for i = 1, n do
  local offset = tonumber(ARGV[5 + 3 * i])
  local ts = tonumber(ARGV[7 + 3 * i])
  local tid, p, o, last_ts, batch_id = flushed(KEYS[2 * i])
  local verdict = VERDICTS[judge(tid, p, o, last_ts, offset, ts)]
  if (verdict == 0 or verdict >= 3) and ARGV[6 + 3 * i] == '1' then
    local here = topic_id .. ':' .. partition .. ':' .. ARGV[5 + 3 * i]
    if not redis.call('SET', KEYS[2 * i + 1], here, 'NX', 'PX', ARGV[3]) then
      local seen = redis.call('GET', KEYS[2 * i + 1])
      local et, ep, eo = string.match(seen, '^(.*):(%-?%d+):(%-?%d+)$')
      if not ep then
        ep, eo = string.match(seen, '^(%-?%d+):(%-?%d+)$')
      end
      local stale = other_topic(et)
        or (unknown_identity(et) and ep == partition and tonumber(eo) and tonumber(eo) >= high)
      if stale then
        -- A sighting in an older incarnation of the topic: this one is the first here.
        redis.call('SET', KEYS[2 * i + 1], here, 'PX', ARGV[3])
      elseif not (ep == partition and eo == ARGV[5 + 3 * i]) then
        verdict = 2
      else
        redis.call('PEXPIRE', KEYS[2 * i + 1], ARGV[3])
      end
    end
  end
  out[i] = verdict
  if verdict == 0 and o and not seeded[KEYS[2 * i]] then
    seeded[KEYS[2 * i]] = true
    if type(batch_id) == 'string' and last_ts and not other_topic(tid) then
      seeds[#seeds + 1] = tostring(i)
      seeds[#seeds + 1] = batch_id
      seeds[#seeds + 1] = tostring(last_ts)
    end
  end
end
return {out, seeds}
