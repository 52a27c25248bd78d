-- Reads a breaker without changing it; an open breaker past its timeout reads as halfOpen.
-- KEYS[1]: breaker hash (see circuit-breaker-record-1.lua)
-- Returns {state, consecutive failures, retryAtMs (open until, 0 unless open), probe in flight (0|1), now ms}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local s = redis.call('HMGET', KEYS[1], 'st', 'cf', 'ou', 'pl')
local st = s[1] or 'closed'
local ou = tonumber(s[3]) or 0
if st == 'open' and now >= ou then
  st = 'halfOpen'
end
local probing = 0
if st == 'halfOpen' and s[1] == 'halfOpen' and (tonumber(s[4]) or 0) > now then
  probing = 1
end
return {st, tonumber(s[2]) or 0, st == 'open' and ou or 0, probing, now}
