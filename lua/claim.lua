-- claim.lua — take ownership of an input partition, with a fencing generation.
--
-- KEYS[1]  {prefix}:owner:{topic}:{partition}   hash: instance, generation, claimed_at_us, topic_id
-- ARGV[1]  instance id of the caller
-- ARGV[2]  TTL of the owner key, ms (refreshed here and by every fenced write)
-- ARGV[3]  "assign": Kafka just gave the caller this partition; take it unconditionally.
--          "resume": the caller kept the partition through a Redis outage; take it only if the
--          key is gone or still names the caller.
-- ARGV[4]  the input topic's Kafka topic id (base64), or "" when the cluster did not say
-- Returns  the caller's new generation (integer), or 0 when a "resume" finds another owner.
--
-- Invariant: generations only grow, even when the key expired or Redis lost it: the new one is
-- max(previous + 1, Redis server time in microseconds). A claim is a round trip, so claims never
-- come faster than one per microsecond and the clock stays ahead of the counter. (Microseconds
-- since 1970 stay below 2^53, exact in Lua's doubles.) Every other script refuses a write that
-- does not carry the current generation, so a stale ("zombie") owner cannot touch the new
-- owner's state. The topic id says which incarnation of the topic the owner reads: a topic
-- deleted and created again under the same name has another one.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cur = redis.call('HMGET', KEYS[1], 'instance', 'generation')
if ARGV[3] == 'resume' and cur[1] and cur[1] ~= ARGV[1] then
  return 0
end
local gen = math.max((tonumber(cur[2]) or 0) + 1, now)
redis.call('HSET', KEYS[1], 'instance', ARGV[1], 'generation', string.format('%.0f', gen),
  'claimed_at_us', string.format('%.0f', now), 'topic_id', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return gen
