-- gauge_apply: apply one batch of one node to a gauge table (node view and global view).
-- KEYS[1] seq hash (view id -> last applied seq)   KEYS[2] views hash (view id -> node)
-- KEYS[3] change stream   KEYS[4] global meta hash   KEYS[5] node meta hash
-- KEYS[6] global data hash (key -> count)   KEYS[7] node data hash (key -> count)
-- ARGV[1] view id   ARGV[2] batch seq (> last applied, else the batch is a repeat)
-- ARGV[3] mode: "d" deltas, "s" absolute counts (snapshot), "r" reaping (see _batch.lua)
-- ARGV[4] stream MAXLEN (approximate)   ARGV[5] pub/sub channel
-- ARGV[6..] pairs: key, value (integer)
-- Return: {1, anomalies, seq} when applied; {0, 0, last} when seq was already applied;
--         error "STALE ..." when the view is not registered (stale epoch).
-- Counts never go below zero: a decrement below zero is clamped and counted in 'anom'.
-- Cost: O(P) for P pairs (a few hash commands per pair).
--!include _batch.lua
--!include _gauge_pairs.lua

local repeated = batch_begin()
if repeated then
  if type(repeated) == 'table' then return repeated end
  return {0, 0, repeated}
end

local changes, anomalies = apply_pairs(6, nil)
return batch_finish(changes, anomalies)
