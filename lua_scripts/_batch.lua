-- _batch: shared fragment (not a script of its own), included by the *_apply scripts.
-- KEYS: uses KEYS[1] seq hash, KEYS[2] the hash the view must be registered in (views;
--       reaping in mode "r"), KEYS[3] stream, KEYS[4] global meta, KEYS[5] node meta.
-- ARGV: uses ARGV[1] view id, ARGV[2] seq, ARGV[3] mode, ARGV[4] stream MAXLEN, ARGV[5] channel.
-- Modes: "d" deltas, "s" absolute counts (snapshot), "r" reaping: absolute counts (zero) of
-- a dead view, idempotent, so its seq is not checked nor recorded.
-- Return: batch_begin() returns the last applied seq when this batch is a repeat, a STALE
--         error when the view is not registered or batches before this one are missing
--         (never applied on top of a gap: the node re-syncs), else nil;
--         batch_finish() returns the script's reply {1, anomalies, seq}.
-- Cost: O(1) plus one XADD of the changed entries.
local view = ARGV[1]
local seq = tonumber(ARGV[2])
local mode = ARGV[3]

local function batch_begin()
  if redis.call('HEXISTS', KEYS[2], view) == 0 then
    return redis.error_reply('STALE view ' .. view .. ' is not registered for this object')
  end
  if mode == 'r' then return nil end
  local last = tonumber(redis.call('HGET', KEYS[1], view) or '0')
  if seq <= last then return last end
  if seq > last + 1 then  -- batches in between were lost (a failover to a stale replica)
    return redis.error_reply('STALE view ' .. view .. ' lost batches: Redis holds batch ' ..
      last .. ', this is batch ' .. seq)
  end
  return nil
end

-- changes: flat list key1, eff1, key2, eff2, ...
local function batch_finish(changes, anomalies)
  if mode ~= 'r' then redis.call('HSET', KEYS[1], view, seq) end
  if anomalies > 0 then
    redis.call('HINCRBY', KEYS[5], 'anom', anomalies)
    redis.call('HINCRBY', KEYS[4], 'anom', anomalies)
  end
  if #changes > 0 then
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*',
      'view', view, 'seq', seq, 'mode', mode, unpack(changes))
    redis.call('PUBLISH', ARGV[5], view .. ' ' .. seq)
  end
  return {1, anomalies, seq}
end

-- The change to apply for one key, given the node's current count: clamps at zero.
-- Returns effective delta and the anomaly (units that would have gone below zero).
local function effective(cur, value)
  local eff = value
  if mode ~= 'd' then eff = value - cur end
  if cur + eff < 0 then return -cur, -(cur + eff) end
  return eff, 0
end
