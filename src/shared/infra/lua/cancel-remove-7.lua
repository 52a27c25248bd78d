-- The API's cancel of a job that has not run: its removal and its tombstone as one step. The caller sends one
-- MULTI: this script (op `before`), BullMQ's own removeJob of the id, this script again (op `after`); no other
-- command runs between them. The tombstone was written in a call of its own after the removal: in between, the
-- job's idempotency key (its record lapsed) could make a new job under the id, whose add deletes the old
-- tombstone (fair-store-parked.lua) before it existed, and the late tombstone then described the new job as
-- cancelled (GET and a re-send answered `cancelled` once retention removed it).
-- `before` decides for the removal that follows, by the job the caller read (its creation time):
--   `removed`: that job is there, unlocked and unfinished: its tombstone, the end of its stream (a streaming job's
--     SSE readers get it at once) and the drop of its cancel marker (which must not outlive the job) are written
--     here, and removeJob removes it next.
--   `locked`: a worker holds it (fetched since the caller read it): removeJob refuses it; the worker ends it.
--   `finished`: it completed or failed meanwhile: kept, with its result or reason.
--   `replaced`: another job holds the id (the read one was removed and the key made a new one meanwhile).
--   `gone`: no job holds the id (removeJob finds nothing to remove).
-- For `finished` and `replaced` the job is held for the removal (`hold`: BullMQ's lock key, set only where none
-- is, under a value no worker uses), which BullMQ's removeJob then refuses, and `after` lets go of it: no other
-- client can see the lock between the two, the MULTI running as one.
-- KEYS[1] the job's hash  KEYS[2] its BullMQ lock  KEYS[3] the queue's completed set  KEYS[4] its failed set
-- KEYS[5] the cancel tombstone (cancelledKey)  KEYS[6] the cancel marker (cancelRequestedKey)
-- KEYS[7] the job's stream (jobStreamKey)
-- ARGV[1] op: `before` | `after`  ARGV[2] the hold's lock value
-- `before` only: ARGV[3] job id  ARGV[4] the job's creation time as read (BullMQ's `timestamp`)
--   ARGV[5] the tombstone (JSON)  ARGV[6] its ttl, s  ARGV[7] the stream's ttl, s, '' for a job without a stream
--   ARGV[8..] the stream's terminal entry, field / value pairs
-- Returns the outcome (`before`) or 1 when a hold was let go of (`after`).
local rcall = redis.call
local jobKey, lockKey = KEYS[1], KEYS[2]

--- @include "removal-hold"

if ARGV[1] == 'after' then return letGoOfHold(lockKey, ARGV[2]) end

local function hold() holdForRemoval(lockKey, ARGV[2]) end

local ts = rcall('HGET', jobKey, 'timestamp')
if not ts then return 'gone' end
if ts ~= ARGV[4] then
  hold()
  return 'replaced'
end
if rcall('EXISTS', lockKey) == 1 then return 'locked' end
if rcall('ZSCORE', KEYS[3], ARGV[3]) or rcall('ZSCORE', KEYS[4], ARGV[3]) then
  hold()
  return 'finished'
end

rcall('SET', KEYS[5], ARGV[5], 'EX', ARGV[6])
rcall('DEL', KEYS[6])
if ARGV[7] ~= '' then
  rcall('XADD', KEYS[7], '*', unpack(ARGV, 8))
  rcall('EXPIRE', KEYS[7], ARGV[7])
end
return 'removed'
