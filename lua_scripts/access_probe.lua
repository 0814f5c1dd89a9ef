-- access_probe: which of the commands mcluster runs the current ACL user may not run on
-- this namespace's keys and channels (checked at start-up, so a missing permission is
-- one clear error then, not a failure mid-run; BLPOP, which a script cannot run, is
-- checked by the caller). Writes only to the probe keys, and deletes them again.
-- KEYS[1] probe string key   KEYS[2] probe hash   KEYS[3] probe sorted set
-- KEYS[4] probe stream   KEYS[5] probe list (all in one hash slot: NS:{cluster}:probe:...)
-- ARGV[1] a channel name in the namespace
-- Return: the refused commands, each as 'COMMAND: error' (empty when all may run).
-- Cost: O(1): about 30 commands on keys of at most one element.
local s, h, z, x, l = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local calls = {
  {'SET', s, '1'}, {'GET', s}, {'MGET', s}, {'INCR', s}, {'INCRBY', s, '1'},
  {'PEXPIRE', s, '60000'}, {'DEL', s},
  {'HSET', h, 'f', '1'}, {'HGET', h, 'f'}, {'HMGET', h, 'f'}, {'HEXISTS', h, 'f'},
  {'HINCRBY', h, 'f', '1'}, {'HGETALL', h}, {'HKEYS', h}, {'HVALS', h}, {'HLEN', h},
  {'HSCAN', h, '0'}, {'HDEL', h, 'f'},
  {'ZADD', z, '1', 'm'}, {'ZSCORE', z, 'm'}, {'ZCARD', z}, {'ZRANGEBYSCORE', z, '-inf', '+inf'},
  {'ZSCAN', z, '0'}, {'ZREM', z, 'm'}, {'ZPOPMIN', z},
  {'XADD', x, 'MAXLEN', '1', '*', 'f', '1'}, {'XREVRANGE', x, '+', '-', 'COUNT', '1'},
  {'XREAD', 'COUNT', '1', 'STREAMS', x, '0'},
  {'RPUSH', l, '1'},
  {'PUBLISH', ARGV[1], 'probe'}, {'TIME'},
}
local refused = {}
for _, call in ipairs(calls) do
  local reply = redis.pcall(unpack(call))
  if type(reply) == 'table' and reply.err then
    local err = tostring(reply.err)
    if err:find('NOPERM') or err:find('permission') or err:find("can't") then
      refused[#refused + 1] = call[1] .. ': ' .. err
    end
  end
end
redis.pcall('DEL', s, h, z, x, l)
return refused
