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
-- The operations work on copies held here: each count and slot record the batch touches
-- is read once, and written once at the end. A count that would go below zero (its view
-- was drained meanwhile) stays at zero and is deleted, as one call per operation does.
-- Cost: O(N + K) for N operations holding K caps in all, in O(D) commands for D distinct
-- caps: 50 operations on 2 caps are about 12 commands, not 325.
local view = ARGV[1]
local live = redis.call('HEXISTS', KEYS[2], view) == 1
local out = {}

local CHUNK = 200  -- fields per command: unpack() is bounded by Lua's C stack

-- `command` on the slot records with `items` as its arguments, `step` at a time; the
-- replies of all the calls in one list, in order.
local function in_chunks(command, items, step)
  local replies = {}
  for first = 1, #items, step do
    local reply = redis.call(command, KEYS[1],
                             unpack(items, first, math.min(first + step - 1, #items)))
    if type(reply) == 'table' then
      for r = 1, #reply do replies[#replies + 1] = reply[r] end
    end
  end
  return replies
end

-- The closes' slot records, read once; an open or close below updates the copy.
local records, closing = {}, {}
local i = 2
while i <= #ARGV do
  if ARGV[i] == 'c' then closing[#closing + 1] = ARGV[i + 1] end
  i = i + 3 + 2 * tonumber(ARGV[i + 2])
end
local found = in_chunks('HMGET', closing, CHUNK)
for c = 1, #closing do records[closing[c]] = found[c] end
local touched, seen = {}, {}  -- slots whose record changed, in the order first changed

-- Counts: cap key -> {global at start, global now, node at start, node now}.
local counts, keys = {}, {}
local function count(key)
  local c = counts[key]
  if c == nil then
    local g = tonumber(redis.call('HGET', KEYS[3], key) or '0')
    local n = tonumber(redis.call('HGET', KEYS[4], key) or '0')
    c = {g, g, n, n}
    counts[key] = c
    keys[#keys + 1] = key
  end
  return c
end
local function add(key, delta)
  local c = count(key)
  c[2] = math.max(c[2] + delta, 0)
  c[4] = math.max(c[4] + delta, 0)
end

local function set_record(slot, record)
  if not seen[slot] then
    seen[slot] = true
    touched[#touched + 1] = slot
  end
  records[slot] = record
end

i = 2
while i <= #ARGV do
  local kind, slot, ncaps = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local first, last = i + 3, i + 2 + 2 * ncaps
  i = last + 1
  if kind == 'c' then
    local record = records[slot]
    local done = 0
    if record then
      set_record(slot, false)
      local parts = {}
      for part in string.gmatch(record, '[^\n]+') do parts[#parts + 1] = part end
      if parts[1] == view and live then
        for p = 2, #parts do add(parts[p], -1) end
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
        if count(ARGV[c])[2] + 1 > tonumber(ARGV[c + 1]) then full = ARGV[c]; break end
      end
    end
    if full == '' then
      local record = {view}
      for c = first, last, 2 do
        record[#record + 1] = ARGV[c]
        add(ARGV[c], 1)
      end
      set_record(slot, table.concat(record, '\n'))
    end
    out[#out + 1] = full
  end
end

-- Counts: what changed, deleted at zero, the meta's field count kept.
local function write(data, meta, key, before, now)
  if now == before then return end
  if now > 0 then
    redis.call('HSET', data, key, now)
    if before == 0 then redis.call('HINCRBY', meta, 'n', 1) end
  else
    redis.call('HDEL', data, key)
    redis.call('HINCRBY', meta, 'n', -1)
  end
end
for _, key in ipairs(keys) do
  local c = counts[key]
  write(KEYS[3], KEYS[5], key, c[1], c[2])
  write(KEYS[4], KEYS[6], key, c[3], c[4])
end

-- Records: one HSET and one HDEL per CHUNK.
local sets, dels = {}, {}
for _, slot in ipairs(touched) do
  local record = records[slot]
  if record then
    sets[#sets + 1] = slot; sets[#sets + 1] = record
  else
    dels[#dels + 1] = slot
  end
end
in_chunks('HSET', sets, 2 * CHUNK)  -- fields and their values
in_chunks('HDEL', dels, CHUNK)
return out
