-- duravip_claim: a node takes a free DuraVIP address (an election win or a handoff).
-- KEYS[1] the address's ownership lease (value 'NODE PRIVATE TOKEN')
-- KEYS[2] fencing token counter   KEYS[3] hash address -> ms of its last transition
-- KEYS[4] handoff hash address -> 'NODE DEADLINE_MS'   KEYS[5] the claimant's membership lease
-- ARGV[1] address   ARGV[2] node name   ARGV[3] its private name   ARGV[4] lease TTL (ms)
-- ARGV[5] a node whose reservation may be ignored because the claimant saw it is no
--         longer a live member ('' for none)
-- Return: {token, why}: token > 0 when taken (the new fencing token, which grows with
--         every owner of every address); else 0 and why: 'member' (the claimant's own
--         membership lease is not its), 'owned NODE PRIVATE TOKEN', or 'reserved NODE'.
-- Cost: O(1).
--!include _vip_now.lua
local address, node, me = ARGV[1], ARGV[2], ARGV[3]
if redis.call('GET', KEYS[5]) ~= me then return {0, 'member'} end
local owner = redis.call('GET', KEYS[1])
if owner then return {0, 'owned ' .. owner} end
local now = now_ms()
local to = reserved_for(KEYS[4], address, now)
if to ~= '' and to ~= node and to ~= ARGV[5] then return {0, 'reserved ' .. to} end
redis.call('HDEL', KEYS[4], address)
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], node .. ' ' .. me .. ' ' .. token, 'PX', tonumber(ARGV[4]))
redis.call('HSET', KEYS[3], address, now)
return {token, ''}
