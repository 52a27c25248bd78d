-- Stores the running stage of a job's attempt in its BullMQ hash (`progress`, which the job view and Bull
-- Board read), unless the job is gone or finished: a stage write that lands after the job's end must neither
-- recreate a removed job's hash (BullMQ could not read it back) nor relabel a finished job.
-- KEYS[1] the job hash;  ARGV[1] the stage JSON
-- Returns 1 when written, 0 when the job is gone or finished.
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'finishedOn') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'progress', ARGV[1])
return 1
