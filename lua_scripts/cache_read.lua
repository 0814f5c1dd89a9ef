-- cache_read: read pairs of a replicated cache with their write stamps and remaining ttl.
-- KEYS[1] values hash   KEYS[2] write order zset   KEYS[3] expiry zset   KEYS[4] meta hash
-- KEYS[5] change stream
-- ARGV[1..] the keys to read
-- A pair whose expiry time has passed reads as absent (cache_set removes it later).
-- Return: {wseq, last stream id, v1, st1, ttl1, v2, st2, ttl2, ...}: v false when absent,
--         ttl the remaining ms (0 = never expires); wseq is the cache's last write stamp.
-- Cost: O(K log N) for K keys, plus O(1) for the stream's last id.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = redis.call('XREVRANGE', KEYS[5], '+', '-', 'COUNT', 1)
local last_id = '0-0'
if #last > 0 then last_id = last[1][1] end
local out = {tonumber(redis.call('HGET', KEYS[4], 'wseq') or '0'), last_id}
for i = 1, #ARGV do
  local k = ARGV[i]
  local value = redis.call('HGET', KEYS[1], k)
  local expiry = redis.call('ZSCORE', KEYS[3], k)
  local ttl = 0
  if expiry then ttl = tonumber(expiry) - now end
  if value and expiry and ttl <= 0 then value = false end
  out[#out + 1] = value
  out[#out + 1] = tonumber(redis.call('ZSCORE', KEYS[2], k) or '0')
  out[#out + 1] = ttl
end
return out
