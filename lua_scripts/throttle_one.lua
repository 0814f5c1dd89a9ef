-- throttle_one: decide one request on one limit (the common case: a single caller, a
-- single throttle), as throttle_acquire would, without its tables and loops.
-- KEYS[1] the throttle's window hash (see _window.lua)   KEYS[2] the deciding node's share
-- ARGV[1] N (0 = unlimited)   ARGV[2] period ms   ARGV[3] bucket ms   ARGV[4] cost >= 0
-- ARGV[5] flags: 1 = force (count even over the limit, as Momentum's inc)
-- Return: {Redis time of the decision (ms), allowed (1/0), retry_after_ms (0 when
--   allowed, -1 when the cost can never fit), remaining (N - used, -1 when unlimited)}:
--   throttle_acquire's reply for one request.
-- Same guarantee as throttle_acquire: never over-admits in any sliding window.
-- Cost: O(1) amortized (three fields read, one HSET, one HINCRBY); a refusal reads the
--   window's buckets (B <= 11) to say when to retry.
--!include _window.lua
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n, p, w, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local L = window_open(KEYS[1], p, w, now)
L.n, L.p, L.w = n, p, w
if n > 0 and L.used + cost > n and tonumber(ARGV[5]) ~= 1 then
  local retry = window_retry_after(L, cost, now)
  window_write(L, p + w)  -- only when window_open dropped old buckets
  return {now, 0, retry, n - L.used}
end
L.used, L.add = L.used + cost, cost
window_write(L, p + w)
window_share(KEYS[2], L, cost, p + w)
return {now, 1, 0, n > 0 and n - L.used or -1}
