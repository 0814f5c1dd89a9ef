-- gauge_cache_apply: apply one batch of one node to a replicated gauge cache (node view and
-- global view, as gauge_apply), note each entry's last change, then drop the entries whose
-- ttl has passed and the oldest beyond maxelems from every view.
-- KEYS[1] seq hash   KEYS[2] views hash ("r": the reaping hash)   KEYS[3] change stream
-- KEYS[4] global meta hash   KEYS[5] node meta hash   KEYS[6] global data hash (key -> count)
-- KEYS[7] node data hash   KEYS[8] last change zset (key -> Redis ms)
-- KEYS[9] conf hash (ttl_ms, maxelems)   KEYS[10] views hash   KEYS[11] reaping hash
-- ARGV[1] view id   ARGV[2] batch seq   ARGV[3] mode "d", "s" or "r" (see _batch.lua)
-- ARGV[4] stream MAXLEN (approximate)   ARGV[5] pub/sub channel
-- ARGV[6] prefix of the node view keys ("ns:{name}:n:")   ARGV[7..] pairs: key, value
-- Return: {1, anomalies, seq} when applied; {0, 0, last} when seq was already applied;
--         error "STALE ..." when the view is not registered (stale epoch).
-- Reaping (mode "r") is not a change: it leaves the last change times as they are.
-- Cost: O(P log N) for P pairs, plus the drops (see _gauge_cache_drop.lua).
--!include _batch.lua
--!include _gauge_pairs.lua
--!include _gauge_cache_drop.lua

local repeated = batch_begin()
if repeated then
  if type(repeated) == 'table' then return repeated end
  return {0, 0, repeated}
end

local now = gc_now()
local changes, anomalies = apply_pairs(7, function(key, global)
  if global == 0 then
    redis.call('ZREM', KEYS[8], key)
  elseif mode ~= 'r' then
    redis.call('ZADD', KEYS[8], now, key)
  end
end)
local reply = batch_finish(changes, anomalies)
if mode ~= 'r' then
  gc_purge({meta = KEYS[4], data = KEYS[6], changed = KEYS[8], conf = KEYS[9],
            views = KEYS[10], reaping = KEYS[11], stream = KEYS[3], prefix = ARGV[6],
            maxlen = ARGV[4]}, now)
end
return reply
