-- _gauge_cache_drop: shared fragment (not a script of its own) of gauge_cache_apply and
-- gauge_cache_purge: drops entries of a gauge cache from the global view and from every
-- node view (live or being reaped), so global == sum of the node views still holds.
-- KEYS: none of its own; gc_purge(gc, now) takes a table of key names: gc.meta (global
--       meta), gc.data (global data hash), gc.changed (zset key -> Redis ms of its last
--       change), gc.conf (hash ttl_ms, maxelems), gc.views, gc.reaping (view id -> node),
--       gc.stream, gc.prefix (node view keys are prefix .. VIEW .. ':d' / ':meta', in the
--       same hash slot), gc.maxlen (stream MAXLEN).
-- ARGV: none of its own (the including script passes gc.prefix and gc.maxlen from its ARGV).
-- Return: gc_purge returns {expired, evicted}: entries unchanged for ttl_ms, then the
--         oldest beyond maxelems; at most 32 of each per call.
-- Cost: O(D * (V + log N)) for D dropped entries (<= 64) and V node views.
local function gc_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function gc_purge(gc, now)
  local conf = redis.call('HMGET', gc.conf, 'ttl_ms', 'maxelems')
  local ttl, maxelems = tonumber(conf[1] or '0'), tonumber(conf[2] or '0')
  local victims, expired, evicted = {}, 0, 0
  if ttl > 0 then
    for _, k in ipairs(redis.call('ZRANGEBYSCORE', gc.changed, '-inf', now - ttl,
                                  'LIMIT', 0, 32)) do
      victims[#victims + 1] = k
      redis.call('ZREM', gc.changed, k)
      expired = expired + 1
    end
  end
  if maxelems > 0 then
    local over = redis.call('ZCARD', gc.changed) - maxelems
    if over > 32 then over = 32 end
    if over > 0 then
      local popped = redis.call('ZPOPMIN', gc.changed, over)
      for i = 1, #popped, 2 do
        victims[#victims + 1] = popped[i]
        evicted = evicted + 1
      end
    end
  end
  if #victims == 0 then return {0, 0} end
  local views = redis.call('HKEYS', gc.views)
  for _, v in ipairs(redis.call('HKEYS', gc.reaping)) do views[#views + 1] = v end
  local dropped = {}
  for _, k in ipairs(victims) do
    if redis.call('HDEL', gc.data, k) == 1 then redis.call('HINCRBY', gc.meta, 'n', -1) end
    for _, v in ipairs(views) do
      if redis.call('HDEL', gc.prefix .. v .. ':d', k) == 1 then
        redis.call('HINCRBY', gc.prefix .. v .. ':meta', 'n', -1)
      end
    end
    dropped[#dropped + 1] = k
    dropped[#dropped + 1] = 0
  end
  if expired > 0 then redis.call('HINCRBY', gc.meta, 'expired', expired) end
  if evicted > 0 then redis.call('HINCRBY', gc.meta, 'evicted', evicted) end
  redis.call('XADD', gc.stream, 'MAXLEN', '~', gc.maxlen, '*',
    'view', '*', 'seq', 0, 'mode', 'x', unpack(dropped))
  return {expired, evicted}
end
