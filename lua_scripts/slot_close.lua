-- slot_close: give a connection slot back; a second close, or a close after the slot's
-- view was reaped or re-synced, changes nothing.
-- KEYS[1] slots hash   KEYS[2] views hash   KEYS[3] global counts   KEYS[4] node counts
-- KEYS[5] global meta   KEYS[6] node meta
-- ARGV[1] the closing node's current view id   ARGV[2] slot id
-- Return: 1 when the slot was given back, 0 when there was nothing to give back.
-- Cost: O(C) for the C caps the slot holds.
local record = redis.call('HGET', KEYS[1], ARGV[2])
if not record then return 0 end
redis.call('HDEL', KEYS[1], ARGV[2])
local parts = {}
for part in string.gmatch(record, '[^\n]+') do parts[#parts + 1] = part end
if parts[1] ~= ARGV[1] or redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return 0 end
for i = 2, #parts do
  local key = parts[i]
  for v = 0, 1 do
    local data, meta = KEYS[3 + v], KEYS[5 + v]
    local cur = tonumber(redis.call('HGET', data, key) or '0')
    if cur == 1 then
      redis.call('HDEL', data, key)
      redis.call('HINCRBY', meta, 'n', -1)
    elseif cur > 1 then
      redis.call('HINCRBY', data, key, -1)
    end
  end
end
return 1
