-- gauge_cache_purge: drop the entries of a replicated gauge cache whose ttl has passed and
-- the oldest beyond maxelems, from the global view and every node view (run by the leader,
-- so entries expire even when nothing is written).
-- KEYS[1] global meta hash   KEYS[2] global data hash   KEYS[3] last change zset
-- KEYS[4] conf hash (ttl_ms, maxelems)   KEYS[5] views hash   KEYS[6] reaping hash
-- KEYS[7] change stream
-- ARGV[1] prefix of the node view keys ("ns:{name}:n:")   ARGV[2] stream MAXLEN
-- Return: {expired, evicted}
-- Cost: see _gauge_cache_drop.lua (at most 64 entries dropped per call).
--!include _gauge_cache_drop.lua

return gc_purge({meta = KEYS[1], data = KEYS[2], changed = KEYS[3], conf = KEYS[4],
                 views = KEYS[5], reaping = KEYS[6], stream = KEYS[7], prefix = ARGV[1],
                 maxlen = ARGV[2]}, gc_now())
