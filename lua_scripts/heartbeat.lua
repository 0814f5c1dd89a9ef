-- heartbeat: renew a node's lease, record its heartbeat, and take or keep the leader lease.
-- KEYS[1] the node's lease key (value: private name)   KEYS[2] members hash
-- KEYS[3] incarnation key (marker of this Redis data set)   KEYS[4] leader lease key
-- KEYS[5] leader fencing token counter   KEYS[6] node status hash (node -> "MS JSON")
-- ARGV[1] private name   ARGV[2] node name   ARGV[3] lease TTL (ms)
-- ARGV[4] the incarnation this node joined under   ARGV[5] leader lease TTL (ms), 0 for a
--         member that never leads (the manager)   ARGV[6] optional: the node's status
--         (JSON), stored with the Redis time (ms) it was renewed at; '' or absent: none
-- Return: {lease, incarnation, token, leader}: lease 1 when renewed, 0 when the lease is
--         lost (expired, taken by a newer epoch, or Redis lost its data); incarnation 1
--         when it is unchanged; token the fencing token when this node is leader, else 0;
--         leader the private name of the current leader ('' if none).
-- Cost: O(1).
local me, node, ttl, leader_ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[5])
local same_data = redis.call('GET', KEYS[3]) == ARGV[4]
if redis.call('GET', KEYS[1]) ~= me or not same_data then
  return {0, same_data and 1 or 0, 0, redis.call('GET', KEYS[4]) or ''}
end
redis.call('PEXPIRE', KEYS[1], ttl)
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[2], node .. ':hb', now_ms)
if ARGV[6] and ARGV[6] ~= '' then
  redis.call('HSET', KEYS[6], node, now_ms .. ' ' .. ARGV[6])
end
local leader = redis.call('GET', KEYS[4])
local token = 0
if not leader and leader_ttl > 0 then
  token = redis.call('INCR', KEYS[5])
  redis.call('SET', KEYS[4], me .. ' ' .. token, 'PX', leader_ttl)
  leader = me .. ' ' .. token
elseif leader and string.sub(leader, 1, #me + 1) == me .. ' ' then
  redis.call('PEXPIRE', KEYS[4], leader_ttl)
  token = tonumber(string.sub(leader, #me + 2))
end
return {1, 1, token, leader or ''}
