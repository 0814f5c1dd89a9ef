-- cache_set: write one pair of a replicated cache, expire and evict, publish every change.
-- KEYS[1] values hash (key -> value)   KEYS[2] write order zset (key -> write stamp)
-- KEYS[3] expiry zset (key -> expiry time, Redis ms; keys without ttl are absent)
-- KEYS[4] meta hash (wseq: last write stamp, sets, evicted, expired)   KEYS[5] change stream
-- ARGV[1] key   ARGV[2] value   ARGV[3] ttl in ms (0 = never expires)
-- ARGV[4] max_size (-1 = unbounded)   ARGV[5] stream MAXLEN (approximate)
-- ARGV[6] origin: the name of the writing node
-- Stream entries, in the order applied: op "d" (key k removed, why = "expired" or
-- "evicted", st = the write stamp it is removed at) and op "s" (k set to v, t = ttl ms, at = Redis ms, st = its
-- write stamp, o = origin). Every "s" has st = previous st + 1, so a reader sees a gap.
-- Return: {stamp, now_ms, evicted, expired}
-- Cost: O(log N) for the write plus O(log N) per removed pair; at most 32 expired pairs
-- and 32 evicted pairs per call, so one call is short whatever the size of the cache.
local key, value, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local max_size, maxlen = tonumber(ARGV[4]), ARGV[5]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function remove(k, stamp, why)
  redis.call('HDEL', KEYS[1], k)
  redis.call('ZREM', KEYS[2], k)
  redis.call('ZREM', KEYS[3], k)
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', maxlen, '*', 'op', 'd', 'k', k, 'st', stamp,
    'why', why)
end

local before = tonumber(redis.call('HGET', KEYS[4], 'wseq') or '0')
local expired = 0
for _, k in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 32)) do
  remove(k, before, 'expired')
  expired = expired + 1
end

local stamp = redis.call('HINCRBY', KEYS[4], 'wseq', 1)
redis.call('HINCRBY', KEYS[4], 'sets', 1)
redis.call('HSET', KEYS[1], key, value)
redis.call('ZADD', KEYS[2], stamp, key)
if ttl > 0 then
  redis.call('ZADD', KEYS[3], now + ttl, key)
else
  redis.call('ZREM', KEYS[3], key)
end
redis.call('XADD', KEYS[5], 'MAXLEN', '~', maxlen, '*',
  'op', 's', 'k', key, 'v', value, 't', ttl, 'at', now, 'st', stamp, 'o', ARGV[6])

local evicted = 0
if max_size > 0 then
  local over = redis.call('ZCARD', KEYS[2]) - max_size
  if over > 32 then over = 32 end
  if over > 0 then
    local popped = redis.call('ZPOPMIN', KEYS[2], over)
    for i = 1, #popped, 2 do
      remove(popped[i], stamp, 'evicted')
      evicted = evicted + 1
    end
  end
end
if evicted > 0 then redis.call('HINCRBY', KEYS[4], 'evicted', evicted) end
if expired > 0 then redis.call('HINCRBY', KEYS[4], 'expired', expired) end
return {stamp, now, evicted, expired}
