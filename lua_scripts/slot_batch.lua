-- slot_batch: opens and closes of one node's connection slots, in order, in one call.
-- KEYS[1] the view's slot records (slot id -> "view\ncap1\ncap2..."; deleted with the
--         view when it is drained)   KEYS[2] views hash (live views)
-- KEYS[3] global counts hash   KEYS[4] node counts hash   KEYS[5] global meta   KEYS[6] node meta
-- ARGV[1] view id
-- ARGV[2..] operations, each: kind ("o" open, "f" forced open: a re-sync re-opening a slot
--           held already, no check; "c" close), slot id, C (caps), then C pairs: cap key,
--           limit (> 0). A close has C = 0.
-- Return: one entry per operation. Open: '' when the slot is taken, the key of the first
--         full cap when refused, 'STALE' when the view is not live (nothing counted).
--         Close: 1 when the slot was given back, 0 when there was nothing to give back (a
--         second close, or its view was reaped or re-synced since).
-- Each open is all or nothing, and the operations apply in order (a close early in the
-- batch frees room for an open after it), so a batch decides exactly as the same calls
-- one by one. Counts live in the node's view like any gauge table: reaping frees them.
-- Cost: O(N + K) for N operations holding K caps in all (a few hash commands per cap).
local view = ARGV[1]
local live = redis.call('HEXISTS', KEYS[2], view) == 1
local out = {}

local function add(data, meta, key, delta)
  local now = redis.call('HINCRBY', data, key, delta)
  if delta > 0 and now == 1 then redis.call('HINCRBY', meta, 'n', 1) end
  if now <= 0 then
    redis.call('HDEL', data, key)
    if now == 0 then redis.call('HINCRBY', meta, 'n', -1) end
  end
end

local i = 2
while i <= #ARGV do
  local kind, slot, ncaps = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local first, last = i + 3, i + 2 + 2 * ncaps
  i = last + 1
  if kind == 'c' then
    local record = redis.call('HGET', KEYS[1], slot)
    local done = 0
    if record then
      redis.call('HDEL', KEYS[1], slot)
      local parts = {}
      for part in string.gmatch(record, '[^\n]+') do parts[#parts + 1] = part end
      if parts[1] == view and live then
        for p = 2, #parts do  -- a count already gone (drained) goes to -1 and is deleted
          add(KEYS[3], KEYS[5], parts[p], -1)
          add(KEYS[4], KEYS[6], parts[p], -1)
        end
        done = 1
      end
    end
    out[#out + 1] = done
  elseif not live then
    out[#out + 1] = 'STALE'
  else
    local full = ''
    if kind ~= 'f' then
      for c = first, last, 2 do
        local used = tonumber(redis.call('HGET', KEYS[3], ARGV[c]) or '0')
        if used + 1 > tonumber(ARGV[c + 1]) then full = ARGV[c]; break end
      end
    end
    if full == '' then
      local record = {view}
      for c = first, last, 2 do
        record[#record + 1] = ARGV[c]
        add(KEYS[3], KEYS[5], ARGV[c], 1)
        add(KEYS[4], KEYS[6], ARGV[c], 1)
      end
      redis.call('HSET', KEYS[1], slot, table.concat(record, '\n'))
    end
    out[#out + 1] = full
  end
end
return out
