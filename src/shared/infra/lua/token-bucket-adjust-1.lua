-- Corrects a bucket with real usage: delta > 0 charges more, delta < 0 refunds.
-- KEYS[1]: bucket hash {tokens, ts}
-- ARGV[1]: capacity, ARGV[2]: refill per ms, ARGV[3]: delta
-- Returns the new token level (floored). Clamped to [-capacity, capacity]: a refund never overfills,
-- and one misestimate never blocks the bucket for more than one refill period.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local cap = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local s = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local level = cap
if s[1] then
  level = math.min(cap, tonumber(s[1]) + math.max(0, now - tonumber(s[2])) * rate)
end
level = math.max(-cap, math.min(cap, level - tonumber(ARGV[3])))
if level >= cap then
  redis.call('DEL', KEYS[1])
else
  redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', level), 'ts', string.format('%.3f', now))
  redis.call('PEXPIRE', KEYS[1], math.ceil((cap - level) / rate) + 1000)
end
return math.floor(level)
