-- audit_count: sum audit counts of one address prefix or string key over windows.
-- KEYS[1] applied hash (not read: it names the slot); the data keys are built in the
--         script under ARGV[1], which carries the same hash tag (see audit_apply.lua).
-- ARGV[1] key base ("ns:{audit}")   ARGV[2] time offset in ms added to the Redis time
-- ARGV[3] key suffix: ":t:F:HEX" (the tree bucket holding the prefix) or ":s"
-- ARGV[4] T targets, then T x (target, window seconds W, first window, last window)
--         (window 0 is the current one, window k the k-th before it)
-- ARGV[..] P, then P field prefixes (event types), then the fields under each prefix
--          (child bytes or leaves of the bucket; or one string key)
-- Return: {now_ms, then per target, per window first..last, per prefix: the sum}
-- Cost: O(T * K * P * F) for K windows and F fields (F <= 256, one HMGET per window).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2])
local T = tonumber(ARGV[4])
local p = 5 + 4 * T
local P = tonumber(ARGV[p])
local fields = {}
for j = 1, P do
  for f = p + P + 1, #ARGV do fields[#fields + 1] = ARGV[p + j] .. ARGV[f] end
end
local per = #ARGV - p - P
local out = {now}
for k = 0, T - 1 do
  local target, w = ARGV[5 + 4 * k], tonumber(ARGV[6 + 4 * k])
  local first, last = tonumber(ARGV[7 + 4 * k]), tonumber(ARGV[8 + 4 * k])
  local e = math.floor(now / (w * 1000))
  for win = first, last do
    local values = redis.call('HMGET', ARGV[1] .. ':' .. target .. ':' .. (e - win) .. ARGV[3],
      unpack(fields))
    for j = 0, P - 1 do
      local sum = 0
      for f = 1, per do sum = sum + tonumber(values[j * per + f] or 0) end
      out[#out + 1] = sum
    end
  end
end
return out
