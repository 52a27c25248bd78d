-- A removal of the job its caller read, and of no job made under its id since (Bull Board's remove: the board read
-- the job, and the operator's click may come after that job was removed and its idempotency key made a new one).
-- The caller sends one MULTI: this script (op `before`), BullMQ's own removeJob of the id, this script again (op
-- `after`); no other command runs between them. BullMQ's removeJob takes whichever job holds the id: it removed
-- the new job, whose slot and dispatch charge the dispatcher (its cancel guarded by the same creation time) had
-- rightly left it.
-- `before`: `same` (the job read holds the id: removeJob acts on it as it would), `gone` (no job holds it:
-- removeJob finds nothing), `replaced` (another job holds it: held for the removal, `hold`: BullMQ's lock key, set
-- only where none is, under a value no worker uses, which removeJob then refuses; `after` lets go of it, and no
-- other client sees the lock between the two, the MULTI running as one).
-- KEYS[1] the job's hash  KEYS[2] its BullMQ lock
-- ARGV[1] op: `before` | `after`  ARGV[2] the hold's lock value
-- `before` only: ARGV[3] the job's creation time as read (BullMQ's `timestamp`)
-- Returns the outcome (`before`) or 1 when a hold was let go of (`after`).
local rcall = redis.call
local jobKey, lockKey = KEYS[1], KEYS[2]

--- @include "removal-hold"

if ARGV[1] == 'after' then return letGoOfHold(lockKey, ARGV[2]) end

local ts = rcall('HGET', jobKey, 'timestamp')
if not ts then return 'gone' end
if ts ~= ARGV[3] then
  holdForRemoval(lockKey, ARGV[2])
  return 'replaced'
end
return 'same'
