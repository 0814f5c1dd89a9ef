-- _vip_now: shared fragment of the duravip_* scripts: Redis server time in ms, and the
-- reservation of an address (a handoff to one node, until a deadline).
-- KEYS / ARGV: none of its own (the including script passes the handoff hash key).
-- Return: now_ms() -> Redis time in ms; reserved_for() -> the node an address is reserved
--         for, or ''.   Cost: O(1).
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- The node an address is reserved for ('' when none or expired), from the handoff hash.
local function reserved_for(handoff, address, now)
  local h = redis.call('HGET', handoff, address)
  if not h then return '' end
  local to, deadline = string.match(h, '^(%S+) (%d+)$')
  if to == nil or tonumber(deadline) <= now then return '' end
  return to
end
