-- _window: shared fragment (not a script of its own), included by the throttle scripts.
-- KEYS, ARGV: none of its own; the including script passes the window's key.
-- Return: the functions below (window_open returns W, the others nothing).
-- Cost: O(1) amortized; O(B) for B stored buckets on a window's first use or long idle.
-- A window is a hash: "<bucket>" -> count, "m<bucket>" -> ms of the bucket's last count,
-- "s" -> the sum of the counts stored, "o" -> no bucket below this one is stored (the sum
-- makes a decision read a few fields, not every bucket). A bucket leaves the window a period
-- after its last count, so a count is held exactly one period and a retry hint never
-- exceeds it (a bucket without its time, from an older release: its end plus a period).
-- window_open(key, p, w, now) -> W {key, now, cur, oldest, curc, used, add}: drops the
--   buckets that left the window (usually none, at a bucket edge one).
-- window_buckets(W) -> {bucket -> count}, {bucket -> last ms} of the live buckets, this
--   script's adds included (one HGETALL per window and script, only on a refusal).
-- window_retry_after(W, cost, now) -> ms until `cost` fits in W (W.n, W.p, W.w set by the
--   caller), at most W.p; -1 when it never can (cost > N).
-- window_write(W, ttl_ms): stores W.add (counted at W.last, default now; a bucket's time
--   only ever grows) and the new sum; a window only read (a probe, a refusal) before any
--   count gets the same expiry, so no key is left without one.
-- window_share(key, W, add, ttl_ms): counts `add` in a node's share of the window.
local function window_open(key, p, w, now)
  local W = {key = key, now = now, cur = math.floor(now / w), oldest = math.floor((now - p) / w),
             add = 0}
  local r = redis.call('HMGET', key, 's', 'o', W.cur, W.oldest, 'm' .. W.oldest, 'm' .. W.cur)
  local s, o = tonumber(r[1]), tonumber(r[2])
  W.curc, W.curm = tonumber(r[3]) or 0, tonumber(r[6]) or 0
  if s == nil or o == nil or W.oldest - o > 64 then
    -- new, long idle, or written without a sum: add up what is stored, once
    s = 0
    local h = redis.call('HGETALL', key)
    for i = 1, #h, 2 do
      local f = h[i]
      local b = tonumber(f) or (string.sub(f, 1, 1) == 'm' and tonumber(string.sub(f, 2)))
      if b then
        if b < W.oldest then redis.call('HDEL', key, f)
        elseif f == tostring(b) then s = s + tonumber(h[i + 1]) end
      end
    end
    W.dirty = true
  elseif o < W.oldest then
    local gone, times = {}, {}
    for b = o, W.oldest - 1 do
      gone[#gone + 1] = b
      times[#times + 1] = 'm' .. b
    end
    for _, c in ipairs(redis.call('HMGET', key, unpack(gone))) do
      if c then s = s - tonumber(c) end
    end
    redis.call('HDEL', key, unpack(gone))
    redis.call('HDEL', key, unpack(times))
    W.dirty = true
  end
  -- The oldest bucket overlaps the window; once its last count is a period old it is out.
  local last = tonumber(r[5])
  if last and last + p <= now then
    s = s - (tonumber(r[4]) or 0)
    redis.call('HDEL', key, W.oldest, 'm' .. W.oldest)
    W.oldest = W.oldest + 1
    W.dirty = true
  end
  W.used = s
  return W
end

local function window_buckets(W)
  if W.stored == nil then
    W.stored, W.times = {}, {}
    local h = redis.call('HGETALL', W.key)
    for i = 1, #h, 2 do
      local f = h[i]
      local b = tonumber(f)
      if b ~= nil and b >= W.oldest then
        W.stored[b] = tonumber(h[i + 1])
      elseif string.sub(f, 1, 1) == 'm' then
        W.times[tonumber(string.sub(f, 2))] = tonumber(h[i + 1])
      end
    end
  end
  local buckets, times = {}, {}
  for b, c in pairs(W.stored) do buckets[b] = c end
  for b, m in pairs(W.times) do times[b] = m end
  buckets[W.cur] = (buckets[W.cur] or 0) + W.add
  if W.add > 0 then times[W.cur] = math.max(times[W.cur] or 0, W.last or W.now) end
  return buckets, times
end

-- Each old bucket b leaves the window a period after its last count: at times[b] + p (a
-- bucket without its time, from an older release: at (b+1)*w + p, cut to the period).
local function window_retry_after(W, cost, now)
  if cost > W.n then return -1 end
  local excess = W.used + cost - W.n
  local buckets, times = window_buckets(W)
  local order = {}
  for b in pairs(buckets) do order[#order + 1] = b end
  table.sort(order)
  for _, b in ipairs(order) do
    excess = excess - buckets[b]
    if excess <= 0 then
      local leaves = (times[b] or ((b + 1) * W.w)) + W.p
      return math.min(W.p, math.max(1, leaves - now))
    end
  end
  return W.p
end

local function window_write(W, ttl_ms)
  if W.add ~= 0 then
    local last = math.max(W.curm, W.last or W.now)  -- a reservation's end may be later
    if W.dirty then
      redis.call('HSET', W.key, W.cur, W.curc + W.add, 'm' .. W.cur, last, 's', W.used,
                 'o', W.oldest)
    else
      redis.call('HSET', W.key, W.cur, W.curc + W.add, 'm' .. W.cur, last, 's', W.used)
    end
    -- set at a bucket's first count, the expiry outlives it in the window: enough
    if W.curc == 0 then redis.call('PEXPIRE', W.key, ttl_ms) end
  elseif W.dirty then
    redis.call('HSET', W.key, 's', W.used, 'o', W.oldest)
    -- a probe or a refusal on a window never counted in: the key is new, give it an end
    if redis.call('PTTL', W.key) < 0 then redis.call('PEXPIRE', W.key, ttl_ms) end
  end
end

local function window_share(key, W, add, ttl_ms)
  if add > 0 and redis.call('HINCRBY', key, W.cur, add) == add then
    redis.call('PEXPIRE', key, ttl_ms)
  end
end
