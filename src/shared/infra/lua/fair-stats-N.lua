-- Counters of one org for metrics; reads only.
-- KEYS: as fair-core-N.lua (see fair-keys.ts)
-- ARGV[1] org
-- Returns {waiting in lanes, waiting in retry timers, in flight, virtual time, plan hash as flat field/value list}
local rcall = redis.call
local org = ARGV[1]
local waiting = 0
for _, lane in ipairs(rcall('SMEMBERS', KEYS[16] .. org)) do
  waiting = waiting + rcall('ZCARD', KEYS[15] .. lane)
end
return {
  waiting,
  tonumber(rcall('HGET', KEYS[5], org)) or 0,
  tonumber(rcall('HGET', KEYS[7], org)) or 0,
  rcall('HGET', KEYS[8], org) or '0',
  rcall('HGETALL', KEYS[18] .. org),
}
