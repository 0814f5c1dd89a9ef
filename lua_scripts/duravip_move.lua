-- duravip_move: ask the owner of a DuraVIP to hand it to another live node.
-- KEYS[1] the address's ownership lease   KEYS[2] handoff hash address -> 'NODE DEADLINE_MS'
-- KEYS[3] the target's membership lease
-- ARGV[1] address   ARGV[2] node that must own it now   ARGV[3] target node
-- ARGV[4] the target's private name   ARGV[5] how long (ms) the request holds
-- Return: {ok, why}: ok 1 when the request is recorded (the owner unplumbs and releases
--         it at its next renewal, then only the target may claim it until the deadline);
--         else 0 and why: 'unowned', 'owner NODE' (someone else owns it) or 'target'
--         (the target is not a live member).
-- Cost: O(1).
--!include _vip_now.lua
local owner = redis.call('GET', KEYS[1])
if not owner then return {0, 'unowned'} end
local node = string.match(owner, '^(%S+) ')
if node ~= ARGV[2] then return {0, 'owner ' .. node} end
if redis.call('GET', KEYS[3]) ~= ARGV[4] then return {0, 'target'} end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3] .. ' ' .. (now_ms() + tonumber(ARGV[5])))
return {1, ''}
