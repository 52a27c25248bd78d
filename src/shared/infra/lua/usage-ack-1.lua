-- Acknowledges usage stream entries whose rows are committed in agent_runs, and deletes them: the stream
-- only ever holds rows not yet written, so its length is the sink's backlog. Then, when asked, reads the
-- consumer's next entries in the same call (without BLOCK, which scripts may not use): under steady load a
-- sink's whole cycle is this one call and the INSERT.
-- KEYS[1]: usage stream
-- ARGV[1]: consumer group, ARGV[2]: consumer ('' = do not read), ARGV[3]: most entries to read,
-- ARGV[4..]: entry ids to acknowledge (none is allowed)
-- Returns {number of entries acknowledged, entries read ({id, fields} each, as XREADGROUP gives them),
--   the stream's length after the deletes (the backlog of rows not yet written, at no round trip of its own)}
local acked = 0
if #ARGV >= 4 then
  local ids = {}
  for i = 4, #ARGV do ids[#ids + 1] = ARGV[i] end
  acked = redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
  redis.call('XDEL', KEYS[1], unpack(ids))
end
local read = {}
if ARGV[2] ~= '' then
  local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', tonumber(ARGV[3]), 'STREAMS', KEYS[1], '>')
  if r then read = r[1][2] end
end
return {acked, read, redis.call('XLEN', KEYS[1])}
