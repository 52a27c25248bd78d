-- Leases part of a model's global per-minute limits to one queue shard (fair/model-leases.ts): takes between
-- `min` and `want` from each bucket where both are available, or nothing from either.
-- KEYS[1] the model's global RPM bucket, KEYS[2] its global TPM bucket: hashes {tokens, ts} in the format of
--   token-bucket-take-N.lua (missing = full), under QUEUE_PREFIX's hash tag, so the worker's rate limiter
--   takes from the same buckets
-- ARGV[1], ARGV[2], ARGV[3]: RPM capacity per minute (<= 0 = unlimited: nothing taken), min, want
-- ARGV[4], ARGV[5], ARGV[6]: the same for TPM
-- Returns {requests granted, tokens granted, ms until each min is available (0 when granted), now ms}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000

local buckets, wait = {}, 0
for i = 1, 2 do
  local cap, min, want = tonumber(ARGV[3 * i - 2]), tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i])
  if cap > 0 and want > 0 then
    local rate = cap / 60000
    local s = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
    local level = cap
    if s[1] then level = math.min(cap, tonumber(s[1]) + math.max(0, now - tonumber(s[2])) * rate) end
    -- A min above capacity could never fit: it is granted from a full bucket, as a take's cost would be.
    local need = math.min(min, cap)
    if level < need then
      wait = math.max(wait, math.ceil((need - level) / rate))
    end
    -- Whole requests and tokens: a fraction would strand in the reservoir.
    buckets[i] = { cap, rate, level, math.max(min, math.min(want, math.floor(level))) }
  end
end
if wait > 0 then return { 0, 0, wait, math.floor(now) } end
local granted = { 0, 0 }
for i = 1, 2 do
  local b = buckets[i]
  if b then
    local left = b[3] - b[4]
    granted[i] = b[4]
    redis.call('HSET', KEYS[i], 'tokens', string.format('%.17g', left), 'ts', string.format('%.3f', now))
    redis.call('PEXPIRE', KEYS[i], math.ceil((b[1] - left) / b[2]) + 1000)
  end
end
return { granted[1], granted[2], 0, math.floor(now) }
