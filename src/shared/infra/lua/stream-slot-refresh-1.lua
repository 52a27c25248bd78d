-- Extends the lease of one open stream (called by its heartbeat).
-- KEYS[1]: ZSET of live stream ids scored by lease end (ms, Redis TIME)
-- ARGV[1]: stream id, ARGV[2]: lease length (ms)
-- Returns 1. A lease that lapsed meanwhile (a long stall) is taken again: the stream is still open.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
