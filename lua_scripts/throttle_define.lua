-- throttle_define: create a named throttle, idempotently.
-- KEYS[1] definitions hash (name -> JSON definition)
-- ARGV[1] name   ARGV[2] JSON definition   ARGV[3] its rate ("N/S" normalized)
-- Return: 1 when created, 0 when it already existed with the same rate;
--         error "CONFLICT <existing rate>" when it exists with another rate.
-- Cost: O(1).
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if not existing then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
local rate = cjson.decode(existing)['rate']
if rate ~= ARGV[3] then
  return redis.error_reply('CONFLICT ' .. rate)
end
return 0
