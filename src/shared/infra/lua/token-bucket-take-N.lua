-- Takes `cost` tokens from every bucket, or from none.
-- KEYS[i]: bucket hash {tokens, ts} (ts = Redis time in ms of the last write)
-- ARGV[3i-2], ARGV[3i-1], ARGV[3i]: capacity, refill per ms, cost of KEYS[i]
-- Returns {allowed (0|1), msBeforeNext, limiting key index (1-based, 0 if none), now ms (integer)}
-- Time comes from Redis TIME so every process shares one clock; effects replication (Redis >= 5)
-- makes writes after TIME safe to replicate. Values are written with full precision (tostring keeps
-- only 14 digits, which would round ts to 0.1 ms and let refill drift).
-- Numbers are parsed by arithmetic (`s + 0`), not tonumber: Lua 5.1's tonumber runs strtod twice on a string
-- (lua_isnumber, then lua_tonumber), and the 17 parses of a take were a tenth of its Redis instructions.
-- A malformed value still fails the script, as tonumber's nil did one line later.
local t = redis.call('TIME')
local now = t[1] * 1000 + t[2] / 1000
local n = #KEYS
local min, max, ceil, format = math.min, math.max, math.ceil, string.format
-- Per bucket: capacity, refill per ms, level left after the take.
local st = {}
local wait, limiting = 0, 0
for i = 1, n do
  local cap, rate, cost = ARGV[3 * i - 2] + 0, ARGV[3 * i - 1] + 0, ARGV[3 * i] + 0
  local s = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local level = cap
  if s[1] then
    level = min(cap, s[1] + max(0, now - s[2]) * rate)
  end
  st[3 * i - 2], st[3 * i - 1], st[3 * i] = cap, rate, level - cost
  -- A cost above capacity could never fit; it is admitted on a full bucket and leaves a debt
  -- that later takes wait for, so the long-run rate still holds.
  local need = min(cost, cap)
  if level < need then
    local w = ceil((need - level) / rate)
    if w > wait then wait, limiting = w, i end
  end
end
if limiting > 0 then
  return {0, wait, limiting, math.floor(now)}
end
-- fmt, the levels' format: created here, after a refused take has answered (a function is Redis work to create).
--- @include "number-format"
-- Formatted once for every bucket: a number format is a large share of this script's Redis time.
local ts = format('%.3f', now)
for i = 1, n do
  local cap, rate, left = st[3 * i - 2], st[3 * i - 1], st[3 * i]
  -- A whole level (a full bucket less a whole cost) as `%d` (fmt, number-format.lua), the same digits `%.17g`
  -- gives it at a fraction of the cost.
  redis.call('HSET', KEYS[i], 'tokens', fmt(left), 'ts', ts)
  -- Once refilled the bucket is full, which is exactly what a missing key means. The TTL as `%d`: a Lua number
  -- would be formatted by redis.call with `%.17g`, at several times the cost (one past 1e15 ms, from an absurdly
  -- slow refill, is left to that: `%d` of it could overflow).
  local ttl = ceil((cap - left) / rate) + 1000
  if ttl < 1e15 then ttl = format('%d', ttl) end
  redis.call('PEXPIRE', KEYS[i], ttl)
end
return {1, 0, 0, math.floor(now)}
