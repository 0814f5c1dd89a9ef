-- throttle_reserve: a node reserves a share of a throttle's budget (local quota mode).
-- KEYS[1] the throttle's window hash (see _window.lua)   KEYS[2] this node's share
-- ARGV[1] N   ARGV[2] period ms   ARGV[3] bucket ms   ARGV[4] tokens wanted
-- ARGV[5] epsilon: at most this fraction of what is left may go to one reservation
-- Return: {granted, ms left in the current bucket, bucket number, server time ms}.
-- Granted tokens are counted at once in the current bucket, as if admitted; the node may
-- spend them only until that bucket ends, so every admission falls in the bucket where it
-- was counted and the sliding-window guarantee of throttle_acquire holds unchanged.
-- Unspent tokens are handed back with throttle_return. A node that dies holding tokens
-- loses them until they leave the window: the error is on the side of admitting less.
-- Cost: O(1) amortized (the running sum of _window.lua).
--!include _window.lua
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n, p, w = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local want, eps = tonumber(ARGV[4]), tonumber(ARGV[5])
local W = window_open(KEYS[1], p, w, now)
local left = n - W.used
local grant = math.min(want, math.max(1, math.floor(eps * left)), left)
if grant < 1 then grant = 0 end
W.add, W.used = grant, W.used + grant
-- the tokens may be spent until the bucket ends: they are counted as of its last ms (a
-- retry hint that waits on them is cut to the period, so it may be early by < one bucket)
W.last = (W.cur + 1) * w - 1
window_write(W, p + w)
window_share(KEYS[2], W, grant, p + w)
return {grant, (W.cur + 1) * w - now, W.cur, now}
