-- shaping_outcome: one delivery attempt's result: count it for AIMD, and fire the response
-- rules whose pattern matched its reply (after their trigger count, cluster-wide).
-- KEYS[1] providers hash   KEYS[2] active actions (zset "rule\tdest" -> expiry ms)
-- KEYS[3] audit stream (one entry per activation)   KEYS[4] activations counter hash
-- ARGV[1] key prefix B (same hash tag)   ARGV[2] reporting node   ARGV[3] domain
-- ARGV[4] provider or ''   ARGV[5] outcome letter d/t/p   ARGV[6] reply ("421 4.7.0 ...")
-- ARGV[7] audit stream length kept (approximate)
-- ARGV[8] A, then A adaptive names: the outcome is counted in B:aimd:NAME ("t:TENTH" (100 ms buckets))
-- then per matched rule, 7 values: rule, dest, action, value, duration ms, trigger count
--   (0: fire on every match), trigger window ms
-- Return: {now ms, then per matched rule: status, expires ms, matches counted}: status is
--   'fired' (activated now), 'active' (already active: not extended, so a flood of replies
--   never prolongs an action past its duration) or 'counted' (below its trigger).
-- An action lives in B:act:DEST (field rule -> "action\tvalue\texpires"), which expires
-- with its last action: nothing outlives its duration, whichever node dies.
-- Cost: O(A + R log M) for R matched rules keeping at most M = trigger count matches.
--!include _shaping_now.lua
local B, node, domain, provider, letter = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now = shaping_now()
if provider ~= '' and redis.call('HGET', KEYS[1], domain) ~= provider then
  redis.call('HSET', KEYS[1], domain, provider)
end
local na = tonumber(ARGV[8])
for i = 1, na do
  local key = B .. ':aimd:' .. ARGV[8 + i]
  redis.call('HINCRBY', key, letter .. ':' .. math.floor(now / 100), 1)
end
local out = {now}
local i = 9 + na
while i <= #ARGV do
  local rule, dest, action, value = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local duration, tn, tw = tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5]), tonumber(ARGV[i + 6])
  i = i + 7
  local act = B .. ':act:' .. dest
  local status, expires, hits = 'fired', now + duration, 1
  local held = redis.call('HGET', act, rule)
  local held_until = held and tonumber(string.match(held, '\t(%d+)$')) or 0
  if held_until > now then
    status, expires = 'active', held_until
  elseif tn > 0 then
    local key = B .. ':hits:' .. rule .. ':' .. dest
    local seq = redis.call('HINCRBY', KEYS[4], 'seq', 1)
    redis.call('ZADD', key, now, now .. ':' .. seq)
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - tw)
    redis.call('ZREMRANGEBYRANK', key, 0, -tn - 1)
    hits = redis.call('ZCARD', key)
    if hits < tn then
      status = 'counted'
      redis.call('PEXPIRE', key, tw)
    else
      redis.call('DEL', key)
    end
  end
  if status == 'fired' then
    redis.call('HSET', act, rule, action .. '\t' .. value .. '\t' .. expires)
    local ttl = redis.call('PTTL', act)
    if ttl < 0 or now + ttl < expires then redis.call('PEXPIREAT', act, expires) end
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
    redis.call('ZADD', KEYS[2], expires, rule .. '\t' .. dest)
    redis.call('HINCRBY', KEYS[4], rule .. '\t' .. action, 1)
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', 'rule', rule, 'action', action,
      'value', value, 'dest', dest, 'node', node, 'reply', ARGV[6], 'at', now,
      'expires', expires)
  end
  out[#out + 1] = status
  out[#out + 1] = expires
  out[#out + 1] = hits
end
return out
