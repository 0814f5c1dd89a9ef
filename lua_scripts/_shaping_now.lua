-- _shaping_now: shared fragment (not a script of its own), included by the shaping scripts.
-- KEYS, ARGV: none of its own.
-- Return: the functions below.
-- shaping_now() -> Redis server time in ms: every node judges expiry by the same clock.
-- shaping_entries(key, now) -> list of {rule, action, value, expires_ms, remaining_ms} of
--   the live actions in one destination's hash (fields rule -> "action\tvalue\texpires");
--   expired entries are skipped, not deleted (the hash expires with its last action).
-- Cost: O(1) for the time; O(A) for A actions on one destination.
local function shaping_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function shaping_entries(key, now)
  local out = {}
  local h = redis.call('HGETALL', key)
  for i = 1, #h, 2 do
    local action, value, expires = string.match(h[i + 1], '^([^\t]*)\t([^\t]*)\t(%d+)$')
    if action and tonumber(expires) > now then
      out[#out + 1] = {h[i], action, value, tonumber(expires), tonumber(expires) - now}
    end
  end
  return out
end
