-- fmt: a number as the text a script stores (a bucket level, a score, a deadline), at full precision: redis.call
-- would format a Lua number itself with 14 digits (tostring), which rounds ts and vt. Included by fair-core-N.lua,
-- whose parts use it everywhere, token-bucket-take-N.lua and includes/token-bucket-adjust.lua ({tokens, ts} buckets).
-- The text is always that of `%.17g`: a whole number within +-1e15 (at most 15 digits, which `%.17g` writes without
-- an exponent) goes as `%d`, the same digits at a fraction of the cost (~5,000 Redis instructions for `%.17g`). -0 is
-- left to `%.17g`, which writes it "-0" (`%d` would write "0"): the fair scripts stored it so; the token buckets never
-- see one (capacity and refill > 0, costs and deltas sent as strings, so no level they write is -0).
-- One local of the including chunk (fair-core's main function was at Lua's 200 locals before its longWay);
-- string.format is read per call, as before: as an upvalue it cost a take ~500 Redis instructions more to bind
-- (callgrind) than it saved.
local function fmt(x)
  if x % 1 == 0 and x > -1e15 and x < 1e15 and (x ~= 0 or 1 / x > 0) then return string.format('%d', x) end
  return string.format('%.17g', x)
end
