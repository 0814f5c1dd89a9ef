-- throttle_acquire: decide many throttle requests at once, each all-or-nothing.
-- KEYS[1..K] one window hash per limit (see _window.lua), all in one hash slot
-- KEYS[K+1..2K] the deciding node's share of each window (what it admitted)
-- ARGV[1] K   ARGV[2..1+3K] per limit: N (0 = unlimited), period ms, bucket ms
-- then per request: flags (1 = force: count even over the limit, as Momentum's inc),
--   m (limits named), m pairs (limit number 1..K, cost); a negative cost -c is a probe:
--   the limit must have room for c more (besides the costs counted), nothing is counted
--   for it (the policy service's bytes quotas at a transaction's first request)
-- Return: flat: the Redis time of the decision (ms), then per request: allowed (1/0), retry_after_ms (0 when allowed, -1 when the
--   cost can never fit), then for each of its m limits the remaining budget (N - used,
--   may be negative after a forced count; -1 for an unlimited limit)
-- Time is Redis server time (TIME). A request is admitted when, for every limit, the
-- counts of all buckets that overlap the window (now - period, now], the oldest one in
-- full, plus the cost stay within N: never over-admits in any sliding window.
-- One request on one limit takes throttle_one.lua, the same decision for less work.
-- Cost: O(K + R * m) for R requests (reads 3 fields per limit, running sum in _window.lua);
--   a refused request reads its limits' buckets (B <= 11) to say when to retry.
--!include _window.lua
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local K = tonumber(ARGV[1])
local limits = {}
for k = 1, K do
  local base = 2 + 3 * (k - 1)
  local n, p, w = tonumber(ARGV[base]), tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
  local L = window_open(KEYS[k], p, w, now)
  L.n, L.p, L.w = n, p, w
  limits[k] = L
end

local out = {now}
local i = 2 + 3 * K
while i <= #ARGV do
  local force = tonumber(ARGV[i]) == 1
  local m = tonumber(ARGV[i + 1])
  i = i + 2
  local costs, needs, order = {}, {}, {}
  for j = 1, m do
    local k, cost = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
    i = i + 2
    order[j] = k
    if cost < 0 then
      needs[k] = math.max(needs[k] or 0, -cost)
      costs[k] = costs[k] or 0
    else
      costs[k] = (costs[k] or 0) + cost
    end
  end
  local ok, retry = true, 0
  if not force then
    for k, cost in pairs(costs) do
      local L = limits[k]
      local want = cost + (needs[k] or 0)
      if L.n > 0 and L.used + want > L.n then
        ok = false
        local r = window_retry_after(L, want, now)
        if r < 0 or retry < 0 then retry = -1 elseif r > retry then retry = r end
      end
    end
  end
  if ok then
    for k, cost in pairs(costs) do
      local L = limits[k]
      L.used = L.used + cost
      L.add = L.add + cost
    end
  end
  out[#out + 1] = ok and 1 or 0
  out[#out + 1] = ok and 0 or retry
  for j = 1, m do
    local L = limits[order[j]]
    out[#out + 1] = (L.n > 0) and (L.n - L.used) or -1
  end
end
for k = 1, K do
  local L = limits[k]
  window_write(L, L.p + L.w)
  window_share(KEYS[K + k], L, L.add, L.p + L.w)
end
return out
