-- log_append: append a batch of log lines to a node's log stream, exactly once.
-- KEYS[1] the stream of one log of one node   KEYS[2] its shipping position hash
--         (file = 'DEV:INODE' of the file being read, off = bytes of it shipped)
-- ARGV[1] file id   ARGV[2] offset before the batch   ARGV[3] offset after it
-- ARGV[4..n] the lines (without their newline)
-- Return: 'ok' when appended; 'dup' when this batch was already appended (a retry after
--         a lost reply: nothing is added twice); else {'pos', file, off}: the position
--         Redis holds, which the shipper must resume from.
-- A batch is accepted when it starts where the last one ended in the same file, or at
-- offset 0 (another file after a rotation, or the same file truncated). Cost: O(lines).
local file, before, after = ARGV[1], ARGV[2], ARGV[3]
local pos = redis.call('HMGET', KEYS[2], 'file', 'off')
local cur_file, cur_off = pos[1] or '', pos[2] or '0'
if cur_file == file and cur_off == after and before ~= after then return 'dup' end
if not ((cur_file == file and cur_off == before) or before == '0') then
  return {'pos', cur_file, cur_off}
end
for i = 4, #ARGV do
  redis.call('XADD', KEYS[1], '*', 'l', ARGV[i])
end
redis.call('HSET', KEYS[2], 'file', file, 'off', after)
return 'ok'
