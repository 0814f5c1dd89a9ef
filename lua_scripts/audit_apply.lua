-- audit_apply: add one batch of audit events (inbound audit metrics, named series) to
-- time windows, exactly once.
-- KEYS[1] applied hash (origin -> last applied batch seq); every data key is built in the
--         script under ARGV[1], which carries the same hash tag, so all keys share a slot.
-- ARGV[1] key base ("ns:{audit}")   ARGV[2] origin (one per recording process)
-- ARGV[3] batch seq (> last applied for the origin, else the batch is a repeat)
-- ARGV[4] time offset in ms added to the Redis time (0; tests place events in the past)
-- ARGV[5] G groups, then per group: nt targets, nt x (target, window seconds W, windows N),
--         ni items, ni x (form "t" address tree | "s" string, field prefix, key, count)
--         Every item of a group is added to the current window of every target of it.
-- Data: window e = floor(now / W) of a target lives in keys "BASE:TARGET:e:...":
--   ":t:F:HEX" the bucket of a 256-ary tree (F = 4 or 16 bytes, HEX = the first bytes of
--   the address): field PREFIX..b (one byte b) counts every address under HEX..b; the
--   last bucket (a /16, IPv6 /112) also holds the leaves as PREFIX..b1..b2 (two bytes).
--   ":s" a hash of field PREFIX..key -> count.
--   Each key expires when its window leaves the span: at (e + N) * W seconds.
-- Return: {1, now_ms, seq} when applied; {0, now_ms, last} when seq was already applied.
-- Cost: O(I * T * L) hash increments for I items, T targets, L = 4 (IPv4) or 16 levels
--       (IPv6) or 1 (string), plus one PEXPIRE per key touched.
local base, origin, seq = ARGV[1], ARGV[2], tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[4])
local last = tonumber(redis.call('HGET', KEYS[1], origin) or '0')
if seq <= last then return {0, now, last} end

local function hex(s)
  return (string.gsub(s, '.', function(c) return string.format('%02x', string.byte(c)) end))
end

local ttl = {}  -- key -> ms it must live
local function incr(key, field, n, life)
  redis.call('HINCRBY', key, field, n)
  ttl[key] = life
end

local i = 6
for _ = 1, tonumber(ARGV[5]) do
  local targets = {}
  for k = 1, tonumber(ARGV[i]) do
    local w, n = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
    local e = math.floor(now / (w * 1000))
    targets[k] = {base .. ':' .. ARGV[i + 1] .. ':' .. e, (e + n) * w * 1000 - now}
    i = i + 3
  end
  i = i + 1
  for _ = 1, tonumber(ARGV[i]) do
    local form, pre, key, n = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4])
    i = i + 4
    for _, target in ipairs(targets) do
      local head, life = target[1], target[2]
      if form == 's' then
        incr(head .. ':s', pre .. key, n, life)
      else
        local nlev = #key
        local tree = head .. ':t:' .. nlev .. ':'
        for lvl = 0, nlev - 2 do
          local prefix = string.sub(key, 1, lvl)
          incr(tree .. hex(prefix), pre .. string.sub(key, lvl + 1, lvl + 1), n, life)
        end
        incr(tree .. hex(string.sub(key, 1, nlev - 2)), pre .. string.sub(key, nlev - 1), n, life)
      end
    end
  end
  i = i + 1
end
for key, life in pairs(ttl) do redis.call('PEXPIRE', key, life) end
redis.call('HSET', KEYS[1], origin, seq)
redis.call('EXPIRE', KEYS[1], 86400)
return {1, now, seq}
