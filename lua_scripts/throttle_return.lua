-- throttle_return: hand back unspent reserved tokens of one bucket (local quota mode).
-- KEYS[1] the throttle's window hash (see _window.lua)   KEYS[2] this node's share
-- ARGV[1] bucket number   ARGV[2] tokens unspent
-- Return: the tokens actually taken back (never more than the bucket holds).
-- Cost: O(1).
local back = math.min(tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0'), tonumber(ARGV[2]))
if back > 0 then
  for _, key in ipairs(KEYS) do
    local have = tonumber(redis.call('HGET', key, ARGV[1]) or '0')
    if have <= back then
      redis.call('HDEL', key, ARGV[1])
    else
      redis.call('HINCRBY', key, ARGV[1], -back)
    end
  end
  if redis.call('HEXISTS', KEYS[1], 's') == 1 then  -- keep the running sum true
    redis.call('HINCRBY', KEYS[1], 's', -back)
  end
end
return back
