-- Records the outcome of a call and makes the transition it causes, atomically.
-- KEYS[1]: breaker hash {st, cf (consecutive failures), ou (open until ms), ps (probe successes),
--          pl (probe lease until ms), wi<j>/ws<j>/wf<j> (rolling window slot j: bucket index, successes, failures)}
-- ARGV[1]: 'success' | 'failure' | 'ignore' (ignore only releases a probe lease)
-- ARGV[2]: '1' if the call was a half-open probe
-- ARGV[3]: failure threshold, ARGV[4]: success threshold, ARGV[5]: timeout ms,
-- ARGV[6]: error threshold percentage (0 = rolling window off), ARGV[7]: volume threshold,
-- ARGV[8]: rolling window ms, ARGV[9]: window slots, ARGV[10]: key ttl ms,
-- ARGV[11]: invalidation channel ('' = no broadcast): KEYS[1] is SPUBLISHed on it when a closed key counts a
--           failure or trips, i.e. whenever this call may end a closed-clean state that other processes serve
--           from memory
-- Returns {event ('' | 'open' | 'close'), state after, retryAtMs (open until, 0 unless open)}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key = KEYS[1]
local outcome = ARGV[1]
local probe = ARGV[2] == '1'
local st = redis.call('HGET', key, 'st') or 'closed'

local function open()
  local ou = now + tonumber(ARGV[5])
  redis.call('HSET', key, 'st', 'open', 'ou', ou, 'cf', 0, 'ps', 0, 'pl', 0)
  redis.call('PEXPIRE', key, tonumber(ARGV[10]))
  return {'open', 'open', ou}
end

if probe and st == 'halfOpen' then
  if outcome == 'failure' then
    return open()
  end
  if outcome == 'success' and redis.call('HINCRBY', key, 'ps', 1) >= tonumber(ARGV[4]) then
    -- Closed is the missing key: counters and window start afresh.
    redis.call('DEL', key)
    return {'close', 'closed', 0}
  end
  redis.call('HSET', key, 'pl', 0)
  return {'', 'halfOpen', 0}
end

-- Outcomes of calls admitted before the breaker opened say nothing new once it is open.
if st ~= 'closed' or outcome == 'ignore' then
  return {'', st, st == 'open' and tonumber(redis.call('HGET', key, 'ou')) or 0}
end

-- Only here can a closed-clean key (closed, no failures counted) stop being clean: the probe branch above needs
-- halfOpen, the early return changes nothing, and the acquire script only moves open -> halfOpen. A failure
-- makes it unclean (cf >= 1, or open); a success can only trip in rolling-window mode, which a breaker
-- configured with the window off on the same key would not see, hence `tripped` too.
local tripped = false
if outcome == 'success' then
  -- HDEL, not HSET 0: a healthy breaker with the window off keeps no key at all.
  redis.call('HDEL', key, 'cf')
else
  tripped = redis.call('HINCRBY', key, 'cf', 1) >= tonumber(ARGV[3])
end

local pct = tonumber(ARGV[6])
if pct > 0 then
  local slots = tonumber(ARGV[9])
  local b = math.floor(now / (tonumber(ARGV[8]) / slots))
  local j = b % slots
  if tonumber(redis.call('HGET', key, 'wi' .. j)) ~= b then
    redis.call('HSET', key, 'wi' .. j, b, 'ws' .. j, 0, 'wf' .. j, 0)
  end
  redis.call('HINCRBY', key, (outcome == 'success' and 'ws' or 'wf') .. j, 1)
  local fields = {}
  for k = 0, slots - 1 do
    fields[#fields + 1] = 'wi' .. k
    fields[#fields + 1] = 'ws' .. k
    fields[#fields + 1] = 'wf' .. k
  end
  local w = redis.call('HMGET', key, unpack(fields))
  local calls, fails = 0, 0
  for k = 0, slots - 1 do
    local wi = tonumber(w[3 * k + 1])
    if wi and wi > b - slots then
      calls = calls + (tonumber(w[3 * k + 2]) or 0) + (tonumber(w[3 * k + 3]) or 0)
      fails = fails + (tonumber(w[3 * k + 3]) or 0)
    end
  end
  if calls >= tonumber(ARGV[7]) and fails * 100 > pct * calls then
    tripped = true
  end
end

if (outcome == 'failure' or tripped) and ARGV[11] ~= '' then
  redis.call('SPUBLISH', ARGV[11], KEYS[1])
end
if tripped then
  return open()
end
redis.call('PEXPIRE', key, tonumber(ARGV[10]))
return {'', 'closed', 0}
