-- Takes `cost` tokens from every bucket, or from none.
-- KEYS[i]: bucket hash {tokens, ts} (ts = Redis time in ms of the last write)
-- ARGV[3i-2], ARGV[3i-1], ARGV[3i]: capacity, refill per ms, cost of KEYS[i]
-- Returns {allowed (0|1), msBeforeNext, limiting key index (1-based, 0 if none), now ms (integer)}
-- Time comes from Redis TIME so every process shares one clock; effects replication (Redis >= 5)
-- makes writes after TIME safe to replicate. Values are written with full precision (tostring keeps
-- only 14 digits, which would round ts to 0.1 ms and let refill drift).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local n = #KEYS
local caps, rates, levels = {}, {}, {}
local wait, limiting = 0, 0
for i = 1, n do
  local cap = tonumber(ARGV[3 * i - 2])
  local rate = tonumber(ARGV[3 * i - 1])
  local s = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local level = cap
  if s[1] then
    level = math.min(cap, tonumber(s[1]) + math.max(0, now - tonumber(s[2])) * rate)
  end
  caps[i], rates[i], levels[i] = cap, rate, level
  -- A cost above capacity could never fit; it is admitted on a full bucket and leaves a debt
  -- that later takes wait for, so the long-run rate still holds.
  local need = math.min(tonumber(ARGV[3 * i]), cap)
  if level < need then
    local w = math.ceil((need - level) / rate)
    if w > wait then wait, limiting = w, i end
  end
end
if limiting > 0 then
  return {0, wait, limiting, math.floor(now)}
end
-- Formatted once for every bucket: a number format is a large share of this script's Redis time.
local ts = string.format('%.3f', now)
for i = 1, n do
  local left = levels[i] - tonumber(ARGV[3 * i])
  redis.call('HSET', KEYS[i], 'tokens', string.format('%.17g', left), 'ts', ts)
  -- Once refilled the bucket is full, which is exactly what a missing key means.
  redis.call('PEXPIRE', KEYS[i], math.ceil((caps[i] - left) / rates[i]) + 1000)
end
return {1, 0, 0, math.floor(now)}
