-- shaping_aimd: one AIMD step of an adaptive destination (run by the leader every `every`).
-- KEYS[1] the destination's hash: 'rate' (count per period), 'at' (last step, ms), and the
--   outcomes counted by shaping_outcome ("d:TENTH", "t:TENTH", "p:TENTH": 100 ms buckets)
-- KEYS[2] audit stream (one entry per change of rate)
-- ARGV[1] min   ARGV[2] max   ARGV[3] decrease factor   ARGV[4] increase (per period)
-- ARGV[5] every (ms)   ARGV[6] transfail_above (ratio)   ARGV[7] name   ARGV[8] dest
-- ARGV[9] node   ARGV[10] audit stream length kept
-- Return: {rate before, rate after, transfails, attempts, stepped}: stepped 0 when the last
--   step was less than `every` ago (a new leader does not step twice in one period);
--   rates as strings (fractions of a message per period are kept).
-- The ratio is transfails / (deliveries + transfails + permfails) over the 100 ms buckets of
-- the last `every` ms; with no attempts the rate is left as it is (nothing to learn from).
-- Cost: O(F) for F fields (at most 3 per 100 ms of `every`): older buckets are deleted.
--!include _shaping_now.lua
local lo, hi, dec, inc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local every, above = tonumber(ARGV[5]), tonumber(ARGV[6])
local now = shaping_now()
local rate = tonumber(redis.call('HGET', KEYS[1], 'rate') or '') or hi
local at = tonumber(redis.call('HGET', KEYS[1], 'at') or '') or 0
if now - at < every * 0.9 then return {tostring(rate), tostring(rate), 0, 0, 0} end
local first = math.floor((now - every) / 100)
local t, n = 0, 0
local gone = {}
local h = redis.call('HGETALL', KEYS[1])
for i = 1, #h, 2 do
  local letter, tenth = string.match(h[i], '^(%a):(%d+)$')
  if letter then
    if tonumber(tenth) < first then
      gone[#gone + 1] = h[i]
    elseif tonumber(tenth) < math.floor(now / 100) then  -- whole buckets only
      n = n + tonumber(h[i + 1])
      if letter == 't' then t = t + tonumber(h[i + 1]) end
    end
  end
end
if #gone > 0 then redis.call('HDEL', KEYS[1], unpack(gone)) end
local new = rate
if n > 0 then
  if t / n > above then new = rate * dec else new = rate + inc end
  if new < lo then new = lo end
  if new > hi then new = hi end
end
redis.call('HSET', KEYS[1], 'rate', tostring(new), 'at', now, 'ratio', n > 0 and tostring(t / n) or '')
redis.call('PEXPIRE', KEYS[1], math.max(every * 10, 86400000))
if new ~= rate then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[10], '*', 'rule', ARGV[7], 'action', 'aimd',
    'value', tostring(new), 'dest', ARGV[8], 'node', ARGV[9],
    'reply', string.format('transfail %d/%d, rate %s -> %s', t, n, tostring(rate), tostring(new)),
    'at', now, 'expires', 0)
end
return {tostring(rate), tostring(new), t, n, 1}
