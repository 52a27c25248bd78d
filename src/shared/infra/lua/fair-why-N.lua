-- Why a job waits, from lane / sleeper / timer state; reads only, O(1) plus one ZRANK.
-- KEYS: as fair-core-N.lua (fair-keys.ts `script`): 1 the dispatcher's prefix; the keys are built from it as there
-- ARGV[1] job id, ARGV[2] default concurrency
-- Returns nil if the job is unknown or dispatched, else {reason, limit ('' if none), eta ms (0 if none), position}
--   reason: fair_share | org_concurrency | rate_limited | model_blocked | retry_backoff
local rcall = redis.call
local FP = KEYS[1]
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = ARGV[1]
local m = rcall('HMGET', FP .. 'job:' .. id, 'o', 'm', 'st', 'r')
local org, model, st = m[1], m[2], m[3]
if not org or st == 'lease' then return nil end
if st == 'timer' then
  return { 'retry_backoff', m[4] or '', rcall('ZSCORE', FP .. 'timers', id) or '0', -1 }
end
local lane = org .. '|' .. model
local pos = rcall('ZRANK', FP .. 'lane:' .. lane, id)
if not pos then return nil end
local blockedUntil = tonumber(rcall('HGET', FP .. 'mblock', model)) or 0
if blockedUntil > now then
  return { 'model_blocked', rcall('HGET', FP .. 'mblockwhy', model) or '', string.format('%.17g', blockedUntil), pos }
end
local wake = rcall('ZSCORE', FP .. 'sleep', lane)
if wake then
  return { 'rate_limited', rcall('HGET', FP .. 'sleepwhy', lane) or '', wake, pos }
end
local conc = tonumber(rcall('HGET', FP .. 'plan:' .. org, 'concurrency')) or tonumber(ARGV[2])
if rcall('SISMEMBER', FP .. 'capblk:' .. org, lane) == 1 or (conc > 0 and (tonumber(rcall('HGET', FP .. 'inflight', org)) or 0) >= conc) then
  return { 'org_concurrency', 'concurrency', '0', pos }
end
return { 'fair_share', '', '0', pos }
