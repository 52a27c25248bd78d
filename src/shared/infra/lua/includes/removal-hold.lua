-- A guarded removal's hold on a job, included by cancel-remove-7.lua and remove-incarnation-2.lua: BullMQ's lock key,
-- set only where none is, under a value no worker uses, so BullMQ's removeJob (sent next in the same MULTI) refuses
-- the job; the script's `after` op lets go of it. No other client sees the lock between the two: the MULTI runs as one.
-- Uses `rcall` as the including script defines it.
local function holdForRemoval(lockKey, value)
  rcall('SET', lockKey, value, 'PX', 60000, 'NX')
end

-- Lets go of the hold (1), unless the lock is another's (0).
local function letGoOfHold(lockKey, value)
  if rcall('GET', lockKey) == value then
    rcall('DEL', lockKey)
    return 1
  end
  return 0
end
