-- shaping_clear: lift one active action before its expiry (console `shaping clear`).
-- KEYS[1] active actions zset   KEYS[2] audit stream
-- ARGV[1] key prefix B (same hash tag)   ARGV[2] rule   ARGV[3] dest ("domain:x", ...)
-- ARGV[4] who cleared it (node or console)   ARGV[5] audit stream length kept
-- Return: 1 when an action was lifted, 0 when none was active.
-- Cost: O(log N) for N active actions.
--!include _shaping_now.lua
local B, rule, dest = ARGV[1], ARGV[2], ARGV[3]
local now = shaping_now()
local act = B .. ':act:' .. dest
local held = redis.call('HGET', act, rule)
redis.call('HDEL', act, rule)
redis.call('ZREM', KEYS[1], rule .. '\t' .. dest)
local action = held and string.match(held, '^([^\t]*)') or ''
local live = held and tonumber(string.match(held, '\t(%d+)$')) > now
if not live then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'rule', rule, 'action', 'clear',
  'value', action, 'dest', dest, 'node', ARGV[4], 'reply', '', 'at', now, 'expires', now)
return 1
