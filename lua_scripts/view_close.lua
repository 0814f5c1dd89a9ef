-- view_close: unregister a node view once its contribution has been drained to zero.
-- KEYS[1] the hash the view is registered in (views, or reaping for a dead view)
-- KEYS[2] seq hash   KEYS[3] node meta hash
-- ARGV[1] view id
-- Return: 1 when the view was closed, 0 when it was not registered;
--         error "NOTEMPTY ..." when the view still holds counts (drain it first).
-- Cost: O(1).
local view = ARGV[1]
if redis.call('HEXISTS', KEYS[1], view) == 0 then return 0 end
for _, f in ipairs({'n', 'n4', 'n6'}) do
  local v = tonumber(redis.call('HGET', KEYS[3], f) or '0')
  if v ~= 0 then
    return redis.error_reply('NOTEMPTY view ' .. view .. ' still holds ' .. v .. ' keys')
  end
end
redis.call('HDEL', KEYS[1], view)
redis.call('HDEL', KEYS[2], view)
redis.call('DEL', KEYS[3])
return 1
