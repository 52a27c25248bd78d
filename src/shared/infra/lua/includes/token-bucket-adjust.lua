-- Corrects a token bucket ({tokens, ts}, the format of token-bucket-take-N.lua) with real usage: delta > 0
-- charges more, delta < 0 refunds. Clamped to [-cap, cap]: a refund never overfills, and one misestimate
-- never blocks the bucket for more than one refill period. Included by token-bucket-adjust-1.lua (the rate
-- limiter's own correction) and fair-core-N.lua (the dispatcher's TPM buckets, corrected with what a call
-- really used). cap: capacity; rate: refill per ms; nowMs: Redis time in ms (fractional). Returns the level, and
-- whether it changed: a refund to a bucket already full (refilled since its last charge, or no key) writes nothing,
-- as the level it would write is the one it reads (the key, if any, expires full by itself). A throttled org's
-- usage corrections, each carried by a release seconds after the refill, deleted such a key one by one.
--- @include "number-format"
local function tokenBucketAdjust(key, cap, rate, delta, nowMs)
  local s = redis.call('HMGET', key, 'tokens', 'ts')
  local level = cap
  if s[1] then
    -- Parsed by arithmetic, as token-bucket-take-N.lua does (tonumber parses a string twice in Lua 5.1).
    level = math.min(cap, s[1] + math.max(0, nowMs - s[2]) * rate)
  end
  if level >= cap and delta <= 0 then return level, false end
  level = math.max(-cap, math.min(cap, level - delta))
  if level >= cap then
    redis.call('DEL', key)
  else
    -- The level as fmt writes it (number-format.lua) and the TTL formatted here: the digits `%.17g` (fmt's, and
    -- redis.call's of a Lua number) gives them, at a fraction of the cost (token-bucket-take-N.lua).
    redis.call('HSET', key, 'tokens', fmt(level), 'ts', string.format('%.3f', nowMs))
    local ttl = math.ceil((cap - level) / rate) + 1000
    if ttl < 1e15 then ttl = string.format('%d', ttl) end
    redis.call('PEXPIRE', key, ttl)
  end
  return level, true
end
