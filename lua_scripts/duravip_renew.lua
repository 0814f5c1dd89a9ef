-- duravip_renew: the owner of a DuraVIP renews its ownership lease (fenced by its token).
-- KEYS[1] the address's ownership lease   KEYS[2] the owner's membership lease
-- KEYS[3] handoff hash address -> 'NODE DEADLINE_MS'
-- ARGV[1] address   ARGV[2] the lease value this owner holds ('NODE PRIVATE TOKEN')
-- ARGV[3] its private name   ARGV[4] lease TTL (ms)
-- Return: {held, handoff}: held 1 when renewed; 0 when the lease is no longer this
--         owner's (expired, or taken under a newer token) or its membership lease is lost:
--         the owner must give the address up. handoff: the node the address is to be
--         handed to ('' if none), set by duravip_move.
-- Cost: O(1).
--!include _vip_now.lua
if redis.call('GET', KEYS[1]) ~= ARGV[2] or redis.call('GET', KEYS[2]) ~= ARGV[3] then
  return {0, ''}
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]))
return {1, reserved_for(KEYS[3], ARGV[1], now_ms())}
