-- throttle_return: hand back unspent reserved tokens of one bucket (local quota mode).
-- KEYS[1] the throttle's window hash   ARGV[1] bucket number   ARGV[2] tokens unspent
-- Return: the tokens actually taken back (never more than the bucket holds).
-- Cost: O(1).
local have = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local back = math.min(have, tonumber(ARGV[2]))
if back > 0 then
  if back == have then
    redis.call('HDEL', KEYS[1], ARGV[1])
  else
    redis.call('HINCRBY', KEYS[1], ARGV[1], -back)
  end
end
return back
