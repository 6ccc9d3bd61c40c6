-- prelude.lua — the stale-record rule, written once and put in front of admit.lua and flush.lua
-- (src/io/store/scripts.rs joins them), which both pass the same four arguments:
--
-- ARGV[2]      partition
-- ARGV[5]      the input topic's id (base64), or "" when unknown
-- ARGV[6]      the partition's high watermark (one past the last offset that exists)
-- ARGV[7]      how far, in ms, input's timestamp may lie past a record's last_ts for the record
--              to still describe it; -1 = do not compare timestamps (arrival time)
--
-- A key's flushed record (topic_id, partition, offset, last_ts) says "input of this key up to
-- offset was emitted". It is used — to skip input, or to keep the record from moving — only if it
-- can describe this log: the same partition, the same topic id when both are known, an offset
-- below the high watermark when an identity is unknown (with identities on both sides the high
-- watermark is not trusted: it steps back for a moment when a partition's leader changes), and
-- input no newer than the record's last fragment by more than the tolerance (another log under
-- the same name, e.g. a replaced dev cluster). Anything else is ignored, never trusted, so a
-- recreated topic can never lose fragments.
local partition = ARGV[2]
local topic_id = ARGV[5]
local high = tonumber(ARGV[6])
local tolerance = tonumber(ARGV[7])

-- Whether a record of topic id `tid` comes from another incarnation of the topic.
local function other_topic(tid)
  return tid ~= nil and tid ~= false and tid ~= '' and topic_id ~= '' and tid ~= topic_id
end

-- Whether the record or the live topic lacks an identity.
local function unknown_identity(tid)
  return topic_id == '' or not tid or tid == ''
end

-- What a key's flushed record (tid, p, o, last_ts) says of input at `offset` with timestamp
-- `ts`: 'covers' (emitted already), 'after' (not covered: newer input, or no record of this
-- partition), or why the record cannot describe this log: 'other_topic', 'beyond_high' (an
-- offset this log does not have), 'newer' (input newer than the record by more than the
-- tolerance).
local function judge(tid, p, o, last_ts, offset, ts)
  if p ~= partition or not o then
    return 'after'
  end
  if other_topic(tid) then
    return 'other_topic'
  end
  if unknown_identity(tid) and o >= high then
    return 'beyond_high'
  end
  if offset > o then
    return 'after'
  end
  if tolerance >= 0 and last_ts and ts > last_ts + tolerance then
    return 'newer'
  end
  return 'covers'
end

