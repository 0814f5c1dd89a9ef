-- member_reap: remove the member records of nodes whose lease is gone.
-- KEYS[1] members hash (node -> JSON record with private_name, node:hb -> ms)
-- KEYS[2..] the lease key of each node in ARGV, in the same order (same {cluster} slot)
-- ARGV[1..] node names to check
-- Return: the list of node names removed (a record is kept while its lease holds the
--         record's private name, so a node that just rejoined is never removed).
-- Cost: O(N) for N nodes checked.
local removed = {}
for i, node in ipairs(ARGV) do
  local record = redis.call('HGET', KEYS[1], node)
  if record then
    local private = cjson.decode(record)['private_name']
    if redis.call('GET', KEYS[i + 1]) ~= private then
      redis.call('HDEL', KEYS[1], node, node .. ':hb')
      removed[#removed + 1] = node
    end
  end
end
return removed
