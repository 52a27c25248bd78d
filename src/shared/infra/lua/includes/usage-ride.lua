-- The run sink's half of a call that touches the usage stream anyway: acknowledges (XACK + XDEL) the entries
-- the sink has committed to agent_runs and, when asked, reads the sink's next entries (XREADGROUP without
-- BLOCK, which scripts may not use). Included by usage-ack-1.lua (the sink's own call), usage-append-1.lua
-- and result-cache-set-8.lua (a worker's append of an attempt's row, which carries the sink's call under
-- load: the sink then makes no round trip of its own).
-- key: the usage stream; argv: the script's ARGV; at: index of the ride's first argument in it:
--   group, consumer ('' = do not read), most entries to read, then the entry ids to acknowledge (none is allowed)
-- Returns {entries read ({id, fields} each, as XREADGROUP gives them), the stream's length after the deletes
--   (the sink's backlog of rows not yet written, at no round trip of its own), number of entries acknowledged}
local function usageRide(key, argv, at)
  local acked = 0
  if #argv >= at + 3 then
    local ids = {}
    for i = at + 3, #argv do ids[#ids + 1] = argv[i] end
    acked = redis.call('XACK', key, argv[at], unpack(ids))
    redis.call('XDEL', key, unpack(ids))
  end
  local read = {}
  if argv[at + 1] ~= '' then
    local r = redis.call('XREADGROUP', 'GROUP', argv[at], argv[at + 1], 'COUNT', argv[at + 2], 'STREAMS', key, '>')
    if r then read = r[1][2] end
  end
  return {read, redis.call('XLEN', key), acked}
end
