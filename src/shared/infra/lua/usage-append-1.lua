-- Appends an attempt's usage row to the usage stream and, in the same call, does what the run sink of this
-- process asked for (acknowledge its committed entries, read its next ones): under load the sink's whole
-- cycle rides on the workers' appends.
-- KEYS[1]: usage stream
-- ARGV[1]: field name, ARGV[2]: the row (JSON), ARGV[3..]: the ride (includes/usage-ride.lua)
-- Returns {entries read, the stream's length, number of entries acknowledged}
--- @include "usage-ride"
redis.call('XADD', KEYS[1], '*', ARGV[1], ARGV[2])
return usageRide(KEYS[1], ARGV, 3)
