-- Counters of one org for metrics; reads only.
-- KEYS: as fair-core-N.lua (fair-keys.ts `script`): 1 the dispatcher's prefix; the keys are built from it as there
-- ARGV[1] org
-- Returns {waiting in lanes, waiting in retry timers, in flight, virtual time, plan hash as flat field/value list}
local rcall = redis.call
local FP = KEYS[1]
local org = ARGV[1]
local waiting = 0
for _, lane in ipairs(rcall('SMEMBERS', FP .. 'olanes:' .. org)) do
  waiting = waiting + rcall('ZCARD', FP .. 'lane:' .. lane)
end
return {
  waiting,
  tonumber(rcall('HGET', FP .. 'otimers', org)) or 0,
  tonumber(rcall('HGET', FP .. 'inflight', org)) or 0,
  rcall('HGET', FP .. 'vt', org) or '0',
  rcall('HGETALL', FP .. 'plan:' .. org),
}
