-- cidrtree_apply: apply one batch of one node to a CIDR tree (node view and global view).
-- KEYS[1] seq hash (view id -> last applied seq)   KEYS[2] views hash (view id -> node)
-- KEYS[3] change stream   KEYS[4] global meta hash   KEYS[5] node meta hash
-- KEYS[6..] bucket keys in pairs, global bucket then node bucket of the same prefix
-- ARGV[1] view id   ARGV[2] batch seq (> last applied, else the batch is a repeat)
-- ARGV[3] mode: "d" deltas, "s" absolute counts (snapshot), "r" reaping (see _batch.lua)
-- ARGV[4] stream MAXLEN (approximate)   ARGV[5] pub/sub channel
-- ARGV[6..] per address 4 entries: text (for the stream), value (integer), packed address
--           (4 or 16 bytes), comma list of bucket pair numbers (0-based), one per bucket
-- Return: {1, anomalies, seq} when applied; {0, 0, last} when seq was already applied;
--         error "STALE ..." when the view is not registered (stale epoch).
-- Counts never go below zero: a decrement below zero is clamped and counted in 'anom'.
-- Cost: O(A * L) hash increments for A addresses of L levels (4 or 16), in both views.
-- A view is a 256-ary tree of hashes: the bucket of prefix P (P = the first i bytes of an
-- address) maps each next byte b to the count of addresses under P.b. IPv4 has buckets
-- for /0, /8 and /16, IPv6 for every byte up to /112; the leaves (two-byte fields) sit in
-- the last bucket beside the one-byte counts of the /24 (IPv6 /120) holding them.
-- The forced prefixes (/8, /24; IPv6 /32, /64) also keep 'lo' and 'hi' (for a /24:
-- its third byte then 'lo'/'hi', in its /16 bucket), the number of non-empty children
-- in their lower and upper half, so the meta hash can
-- keep exact row counts: n4/n6 addresses, f non-empty forced prefixes, bf of those that
-- branch (see mcluster/objects/cidrtree.py).
--!include _batch.lua

local repeated = batch_begin()
if repeated then
  if type(repeated) == 'table' then return repeated end
  return {0, 0, repeated}
end

local FORCED = {[4] = {[8] = true, [24] = true}, [16] = {[32] = true, [64] = true}}

-- Add eff to the child of prefix length 8 * (lvl + 1) in bucket `key`: `field` is its
-- byte, or for the last level its last two bytes (leaves live in the bucket one level up,
-- so no Redis key exists per /24 or /120); `sub` names the prefix whose halves 'lo'/'hi'
-- count ('' for the bucket itself, the third byte for a /24 inside a /16 bucket).
local function step(key, meta, lvl, nlev, byte, field, sub, eff, forced)
  local new = redis.call('HINCRBY', key, field, eff)
  local old = new - eff
  if new == 0 then redis.call('HDEL', key, field) end
  if (old == 0) == (new == 0) then return end
  local s = 1
  if new == 0 then s = -1 end
  if lvl == nlev - 1 then
    redis.call('HINCRBY', meta, (nlev == 4) and 'n4' or 'n6', s)
  end
  if forced[8 * (lvl + 1)] then redis.call('HINCRBY', meta, 'f', s) end
  if forced[8 * lvl] then
    local half, other = sub .. 'lo', sub .. 'hi'
    if byte >= 128 then half, other = sub .. 'hi', sub .. 'lo' end
    local h = redis.call('HINCRBY', key, half, s)
    if h == 0 then redis.call('HDEL', key, half) end
    local o = tonumber(redis.call('HGET', key, other) or '0')
    if o > 0 and ((s == 1 and h == 1) or (s == -1 and h == 0)) then
      redis.call('HINCRBY', meta, 'bf', s)
    end
  end
end

local anomalies = 0
local changes = {}
for i = 6, #ARGV, 4 do
  local addr = ARGV[i + 2]
  local nlev = #addr
  local pairs_ = {}
  for p in string.gmatch(ARGV[i + 3], '%d+') do pairs_[#pairs_ + 1] = 6 + 2 * tonumber(p) end
  pairs_[nlev] = pairs_[nlev - 1]  -- the leaves live in the last bucket, two bytes a field
  local leaf_key = KEYS[pairs_[nlev] + 1]
  local leaf = string.sub(addr, nlev - 1, nlev)
  local cur = tonumber(redis.call('HGET', leaf_key, leaf) or '0')
  local eff, anom = effective(cur, tonumber(ARGV[i + 1]))
  anomalies = anomalies + anom
  if eff ~= 0 then
    local forced = FORCED[nlev]
    for lvl = 0, nlev - 1 do
      local byte = string.byte(addr, lvl + 1)
      local g = pairs_[lvl + 1]
      local field, sub = string.sub(addr, lvl + 1, lvl + 1), ''
      if lvl == nlev - 1 then field, sub = leaf, string.sub(addr, nlev - 1, nlev - 1) end
      step(KEYS[g], KEYS[4], lvl, nlev, byte, field, sub, eff, forced)
      step(KEYS[g + 1], KEYS[5], lvl, nlev, byte, field, sub, eff, forced)
    end
    changes[#changes + 1] = ARGV[i]
    changes[#changes + 1] = eff
  end
end
return batch_finish(changes, anomalies)
