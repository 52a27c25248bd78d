-- Leases one of an org's open-stream slots, shared by every API process.
-- KEYS[1]: ZSET of live stream ids scored by the time (ms, Redis TIME) their lease lapses
-- ARGV[1]: stream id, ARGV[2]: most open streams allowed, ARGV[3]: lease length (ms)
-- Returns {1, 0} when leased, {0, ms until the earliest lease lapses} when the org is at its cap.
-- Leases of crashed processes are never refreshed, so they drop out here once lapsed.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, math.max(0, tonumber(first[2]) - now)}
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
return {1, 0}
