-- Per-org gauges for metrics, read at scrape: orgs with work waiting or in flight, and every org's
-- cumulative throttled seconds; reads only.
-- KEYS: as fair-core-N.lua (fair-keys.ts `script`): 1 the dispatcher's prefix; the keys are built from it as there
-- ARGV[1]: most orgs reported (bounds the scrape's cost)
-- Returns a flat list: org, waiting (lanes + timers), in flight, throttled seconds; repeated per org
local rcall = redis.call
local FP = KEYS[1]
local out = {}
local seen = 0
local limit = tonumber(ARGV[1])
for _, org in ipairs(rcall('HKEYS', FP .. 'vt')) do
  if seen >= limit then break end
  local waiting = tonumber(rcall('HGET', FP .. 'otimers', org)) or 0
  for _, lane in ipairs(rcall('SMEMBERS', FP .. 'olanes:' .. org)) do
    waiting = waiting + rcall('ZCARD', FP .. 'lane:' .. lane)
  end
  local inflight = tonumber(rcall('HGET', FP .. 'inflight', org)) or 0
  local throttled = rcall('HGET', FP .. 'throttled', org) or '0'
  if waiting > 0 or inflight > 0 or throttled ~= '0' then
    seen = seen + 1
    out[#out + 1] = org
    out[#out + 1] = waiting
    out[#out + 1] = inflight
    out[#out + 1] = throttled
  end
end
return out
