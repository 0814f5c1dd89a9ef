-- audit_apply: add one batch of audit events (inbound audit metrics, named series) to
-- time windows, exactly once.
-- KEYS[1] applied hash (origin -> last applied batch seq); every data key is built in the
--         script under ARGV[1], which carries the same hash tag, so all keys share a slot.
-- ARGV[1] key base ("ns:{audit}")   ARGV[2] origin (one per recording process)
-- ARGV[3] batch seq (> last applied for the origin, else the batch is a repeat)
-- ARGV[4] time offset in ms added to the Redis time (0; tests place events in the past)
-- ARGV[5] G groups, then per group: nt targets, nt x (target, window seconds W, windows N),
--         ns sorts, ns x (form "t" address tree | "s" string, field prefix, m keys,
--         m x (key, count)). Every key of a group is added to the current window of
--         every target of the group.
-- Return: {1, now_ms, seq} when applied; {0, now_ms, last} when seq was already applied.
-- Cost: O(I * T * L) hash increments for I items, T targets, L = 4 (IPv4) or 16 levels
--       (IPv6) or 1 (string), plus one PEXPIRE per key created.
-- Data: window e = floor(now / W) of a target lives in keys "BASE:TARGET:e:...":
--   ":t:F:HEX" the bucket of a 256-ary tree (F = 4 or 16 bytes, HEX = the first bytes of
--   the address): field PREFIX..b (one byte b) counts every address under HEX..b; the
--   last bucket (a /16, IPv6 /112) also holds the leaves as PREFIX..b1..b2 (two bytes).
--   ":s" a hash of field PREFIX..key -> count.
--   Each key expires when its window leaves the span: at (e + N) * W seconds (set when
--   the key is created, i.e. when its parent's field is created: counts only grow).
local base, origin, seq = ARGV[1], ARGV[2], tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[4])
local last = tonumber(redis.call('HGET', KEYS[1], origin) or '0')
if seq <= last then return {0, now, last} end

local HEX = {}
for b = 0, 255 do HEX[string.char(b)] = string.format('%02x', b) end

-- Counts only grow, so a key is new only where its parent's field is new: a key gets its
-- expiry when its parent's field was just created (the root and string hashes once per
-- batch), not on every touch.
local expire = {}
local function incr(key, field, n)
  return redis.call('HINCRBY', key, field, n) == n
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
   local form, pre, m = ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
   i = i + 3
   for _ = 1, m do
    local key, n = ARGV[i + 1], tonumber(ARGV[i + 2])
    i = i + 2
    for _, target in ipairs(targets) do
      local head, life = target[1], target[2]
      if form == 's' then
        incr(head .. ':s', pre .. key, n)
        expire[head .. ':s'] = life
      else
        local nlev = #key
        local bucket = head .. ':t:' .. nlev .. ':'
        expire[bucket] = life
        local created = false  -- was the field naming this bucket in its parent new?
        for lvl = 1, nlev - 1 do  -- the bucket of the first lvl - 1 bytes counts byte lvl
          if lvl > 1 then bucket = bucket .. HEX[string.sub(key, lvl - 1, lvl - 1)] end
          local new = incr(bucket, pre .. string.sub(key, lvl, lvl), n)
          if created then redis.call('PEXPIRE', bucket, life) end
          created = new
        end
        incr(bucket, pre .. string.sub(key, nlev - 1), n)  -- the leaf: its last two bytes
      end
    end
   end
  end
  i = i + 1
end
for key, life in pairs(expire) do redis.call('PEXPIRE', key, life) end
redis.call('HSET', KEYS[1], origin, seq)
redis.call('PEXPIRE', KEYS[1], 86400000)
return {1, now, seq}
