-- gauge_cache_get: one entry of a replicated gauge cache's global view, honouring its ttl.
-- KEYS[1] global data hash   KEYS[2] last change zset   KEYS[3] conf hash (ttl_ms)
-- ARGV[1] key
-- Return: the count; 0 when the entry is absent or unchanged for longer than its ttl
--         (the purge removes it later).
-- Cost: O(log N).
local value = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if value == 0 then return 0 end
local ttl = tonumber(redis.call('HGET', KEYS[3], 'ttl_ms') or '0')
if ttl > 0 then
  local changed = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]) or '0')
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if changed <= now - ttl then return 0 end
end
return value
