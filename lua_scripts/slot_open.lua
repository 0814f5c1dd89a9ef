-- slot_open: take one connection slot under every applicable cap, all or nothing.
-- KEYS[1] slots hash (slot id -> "view\ncap1\ncap2...")   KEYS[2] views hash (live views)
-- KEYS[3] global counts hash   KEYS[4] node counts hash   KEYS[5] global meta   KEYS[6] node meta
-- ARGV[1] view id   ARGV[2] slot id   ARGV[3] 1 = force (re-open after a re-sync, no check)
-- ARGV[4..] pairs: cap key, limit (> 0)
-- Return: {1, ''} when the slot is taken; {0, cap key} naming the first full cap;
--         error "STALE ..." when the view is not live.
-- Counts live in the node's view like any gauge table, so reaping a dead node frees them.
-- Cost: O(C) for C caps.
local view = ARGV[1]
if redis.call('HEXISTS', KEYS[2], view) == 0 then
  return redis.error_reply('STALE view ' .. view .. ' is not registered for this object')
end
if ARGV[3] ~= '1' then
  for i = 4, #ARGV, 2 do
    local used = tonumber(redis.call('HGET', KEYS[3], ARGV[i]) or '0')
    if used + 1 > tonumber(ARGV[i + 1]) then return {0, ARGV[i]} end
  end
end
local record = {view}
for i = 4, #ARGV, 2 do
  local key = ARGV[i]
  record[#record + 1] = key
  if redis.call('HINCRBY', KEYS[3], key, 1) == 1 then redis.call('HINCRBY', KEYS[5], 'n', 1) end
  if redis.call('HINCRBY', KEYS[4], key, 1) == 1 then redis.call('HINCRBY', KEYS[6], 'n', 1) end
end
redis.call('HSET', KEYS[1], ARGV[2], table.concat(record, '\n'))
return {1, ''}
