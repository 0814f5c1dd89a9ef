-- _gauge_pairs: shared fragment (not a script of its own), included after _batch.lua by
-- gauge_apply and gauge_cache_apply: applies key/value pairs to a node view and the global
-- view of a gauge table.
-- KEYS: uses KEYS[4] global meta, KEYS[5] node meta, KEYS[6] global data hash,
--       KEYS[7] node data hash (key -> count); 'n' in each meta counts the keys.
-- ARGV: the pairs key, value (integer) from ARGV[first] on.
-- Return: apply_pairs(first, touched) returns the changes (flat key, eff list) and the
--         anomalies; touched(key, new global count), if given, is called for each change.
-- Cost: O(P) for P pairs (a few hash commands per pair).
local function apply_pairs(first, touched)
  local anomalies = 0
  local changes = {}
  for i = first, #ARGV, 2 do
    local key = ARGV[i]
    local cur = tonumber(redis.call('HGET', KEYS[7], key) or '0')
    local eff, anom = effective(cur, tonumber(ARGV[i + 1]))
    anomalies = anomalies + anom
    if eff ~= 0 then
      local global = 0
      for v = 0, 1 do
        local data, meta = KEYS[6 + v], KEYS[4 + v]
        local new = redis.call('HINCRBY', data, key, eff)
        local old = new - eff
        if new == 0 then
          redis.call('HDEL', data, key)
          redis.call('HINCRBY', meta, 'n', -1)
        elseif old == 0 then
          redis.call('HINCRBY', meta, 'n', 1)
        end
        if v == 0 then global = new end
      end
      changes[#changes + 1] = key
      changes[#changes + 1] = eff
      if touched then touched(key, global) end
    end
  end
  return changes, anomalies
end
