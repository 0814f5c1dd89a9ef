-- shaping_check: what shaping does to one route now (before its OBTM or connection check).
-- KEYS[1] providers hash (domain -> provider learned from reports with an MX host)
-- ARGV[1] key prefix B (same hash tag as KEYS[1]); action hashes are B:act:DEST
-- ARGV[2] domain   ARGV[3] host or ''   ARGV[4] provider or '' (then looked up in KEYS[1])
-- ARGV[5] A, then A pairs: adaptive destination ("domain:x" / "provider:y"), adaptive name
-- ARGV[6+2A] W, then W pairs: warm-up name, its configured start (ms) or '' (first use:
--   recorded at B:warmup:NAME by this call, so every node counts from the same moment)
-- Return: {now ms, provider, S, S x {rule, dest, action, value, remaining ms},
--          A' (adaptive destinations that apply), A' x {name, rate or ''},
--          W, W x {name, day}}   (day 1 = the first day of the warm-up, by Redis TIME)
-- Read-only but for a warm-up's first use. Cost: O(D x A) for D <= 3 destinations with A
--   actions each, plus O(1) per adaptive and warm-up named.
--!include _shaping_now.lua
local B, domain, host, provider = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now = shaping_now()
if provider == '' then provider = redis.call('HGET', KEYS[1], domain) or '' end
local dests = {'domain:' .. domain}
if host ~= '' then dests[#dests + 1] = 'host:' .. host end
if provider ~= '' then dests[#dests + 1] = 'provider:' .. provider end
local applies = {}
for _, d in ipairs(dests) do applies[d] = true end
local actions = {}
for _, d in ipairs(dests) do
  for _, e in ipairs(shaping_entries(B .. ':act:' .. d, now)) do
    actions[#actions + 1] = e[1]
    actions[#actions + 1] = d
    actions[#actions + 1] = e[2]
    actions[#actions + 1] = e[3]
    actions[#actions + 1] = e[5]
  end
end
local out = {now, provider, #actions / 5}
for _, v in ipairs(actions) do out[#out + 1] = v end
local na = tonumber(ARGV[5])
local rates = {}
for i = 0, na - 1 do
  local dest, name = ARGV[6 + 2 * i], ARGV[7 + 2 * i]
  if applies[dest] then
    rates[#rates + 1] = name
    rates[#rates + 1] = redis.call('HGET', B .. ':aimd:' .. name, 'rate') or ''
  end
end
out[#out + 1] = #rates / 2
for _, v in ipairs(rates) do out[#out + 1] = v end
local w0 = 6 + 2 * na
local nw = tonumber(ARGV[w0])
out[#out + 1] = nw
for i = 0, nw - 1 do
  local name, start = ARGV[w0 + 1 + 2 * i], tonumber(ARGV[w0 + 2 + 2 * i])
  if start == nil then
    local key = B .. ':warmup:' .. name
    start = tonumber(redis.call('GET', key))
    if start == nil then
      start = now
      redis.call('SET', key, now)
    end
  end
  out[#out + 1] = name
  out[#out + 1] = math.floor((now - start) / 86400000) + 1
end
return out
