-- view_retire: a view stops being live and is queued for reaping, atomically, so a batch
-- from it that arrives later is refused (STALE) and never counted.
-- KEYS[1] views hash (live views)   KEYS[2] reaping hash (views being reaped)
-- ARGV[1] view id   ARGV[2] node name
-- Return: 1 when the view was live and is now being reaped, 0 otherwise.
-- Cost: O(1).
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  return 1
end
return 0
