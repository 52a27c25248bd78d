-- Clears what a finished run of a job left for its next one, before a retry outside the DLQ (Bull Board's retry
-- of a completed job, alone or all of the status; its retry of a failed job is the DLQ's) moves it back to wait: its event stream, whose last
-- entry is the end of that run (an SSE reader of the retried job starts from the stream's first entry, and the
-- entries' incarnation, the job's creation time, is the same for every run of it), and its cancel marker, of a
-- run that is over (left, it would cancel the retry at its claim). The DLQ's retry does the same in its one call
-- (dlq-retry-N.lua). Only while the job still sits in the set it is retried from: a run started since (another
-- retry) keeps its stream and its marker.
-- KEYS[1] the queue's set the job is retried from (failed or completed), KEYS[2] the job's event stream,
-- KEYS[3] the job's cancel marker
-- ARGV[1] job id
-- Returns 1 when cleared, 0 when the job is not in that set.
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('DEL', KEYS[2], KEYS[3])
return 1
