-- Corrects a bucket with real usage: delta > 0 charges more, delta < 0 refunds (includes/token-bucket-adjust.lua).
-- KEYS[1]: bucket hash {tokens, ts}
-- ARGV[1]: capacity, ARGV[2]: refill per ms, ARGV[3]: delta
-- Returns the new token level (floored).
--- @include "token-bucket-adjust"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
return math.floor(tokenBucketAdjust(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), now))
