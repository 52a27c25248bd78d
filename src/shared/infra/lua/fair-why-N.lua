-- Why a job waits, from lane / sleeper / timer state; reads only, O(1) plus one ZRANK.
-- KEYS: as fair-core-N.lua (see fair-keys.ts)
-- ARGV[1] job id, ARGV[2] default concurrency
-- Returns nil if the job is unknown or dispatched, else {reason, limit ('' if none), eta ms (0 if none), position}
--   reason: fair_share | org_concurrency | rate_limited | model_blocked | retry_backoff
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = ARGV[1]
local m = rcall('HMGET', KEYS[14] .. id, 'o', 'm', 'st', 'r')
local org, model, st = m[1], m[2], m[3]
if not org or st == 'lease' then return nil end
if st == 'timer' then
  return { 'retry_backoff', m[4] or '', rcall('ZSCORE', KEYS[4], id) or '0', -1 }
end
local lane = org .. '|' .. model
local pos = rcall('ZRANK', KEYS[15] .. lane, id)
if not pos then return nil end
local blockedUntil = tonumber(rcall('HGET', KEYS[11], model)) or 0
if blockedUntil > now then
  return { 'model_blocked', rcall('HGET', KEYS[12], model) or '', string.format('%.17g', blockedUntil), pos }
end
local wake = rcall('ZSCORE', KEYS[2], lane)
if wake then
  return { 'rate_limited', rcall('HGET', KEYS[3], lane) or '', wake, pos }
end
local conc = tonumber(rcall('HGET', KEYS[18] .. org, 'concurrency')) or tonumber(ARGV[2])
if rcall('SISMEMBER', KEYS[17] .. org, lane) == 1 or (conc > 0 and (tonumber(rcall('HGET', KEYS[7], org)) or 0) >= conc) then
  return { 'org_concurrency', 'concurrency', '0', pos }
end
return { 'fair_share', '', '0', pos }
