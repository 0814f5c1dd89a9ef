-- lease_take: start a node's membership: its lease, its member record, the incarnation.
-- KEYS[1] the node's lease key   KEYS[2] members hash   KEYS[3] incarnation key
-- ARGV[1] private name   ARGV[2] node name   ARGV[3] lease TTL (ms)
-- ARGV[4] member record (JSON)   ARGV[5] a fresh incarnation id, used if none exists
-- Return: {incarnation, now_ms}: the incarnation of this data set and Redis server time.
-- A newer epoch of the same node name simply takes the lease over: the old epoch's views
-- are no longer live and get reaped.
-- Cost: O(1).
redis.call('SET', KEYS[3], ARGV[5], 'NX')
redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[3]))
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[2], ARGV[2], ARGV[4], ARGV[2] .. ':hb', now_ms)
return {redis.call('GET', KEYS[3]), now_ms}
