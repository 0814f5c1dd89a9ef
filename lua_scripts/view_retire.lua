-- view_retire: a view stops being live and is queued for reaping, atomically, so a batch
-- from it that arrives later is refused (STALE) and never counted.
-- KEYS[1] views hash (live views)   KEYS[2] reaping hash (views being reaped)
-- ARGV[1] view id   ARGV[2] node name
-- Return: 1 when the view was live, 0 otherwise. Either way the view is queued for
-- reaping (a view that holds nothing is simply closed by the reaper).
-- Cost: O(1).
local was_live = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return was_live
