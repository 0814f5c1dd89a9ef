-- duravip_release: the owner gives a DuraVIP up (after unplumbing it), maybe to one node.
-- KEYS[1] the address's ownership lease   KEYS[2] hash address -> ms of its last transition
-- KEYS[3] handoff hash address -> 'NODE DEADLINE_MS'
-- ARGV[1] address   ARGV[2] the lease value this owner holds   ARGV[3] node to hand it to
-- ('' for none)   ARGV[4] how long (ms) only that node may claim it
-- Return: 1 when released; 0 when the lease was no longer this owner's (nothing changed).
-- Cost: O(1).
--!include _vip_now.lua
if redis.call('GET', KEYS[1]) ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
local now = now_ms()
redis.call('HSET', KEYS[2], ARGV[1], now)
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[3] .. ' ' .. (now + tonumber(ARGV[4])))
else
  redis.call('HDEL', KEYS[3], ARGV[1])
end
return 1
