-- purge_dead.lua: delete dead letters of one queue.
--
-- KEYS[1..6]: T:ready, T:scheduled, T:inflight, T:dead, T:seq, T:signal  (T = {prefix:q:NAME})
-- ARGV:       T:m:, all ('1': every dead letter of the queue; '0': only the ids that follow), ids...
--
-- Touches: T:dead (ZREM), T:m:ID (DEL). Keys were released when the messages died.
-- Returns how many dead letters were deleted.

local ids = {}
if ARGV[2] == '1' then
  ids = redis.call('ZRANGE', DEAD, 0, -1)
else
  for i = 3, #ARGV do
    if redis.call('ZSCORE', DEAD, ARGV[i]) then ids[#ids + 1] = ARGV[i] end
  end
end
if #ids == 0 then return 0 end
chunked('ZREM', DEAD, ids)
for _, id in ipairs(ids) do redis.call('DEL', MSG .. id) end
return #ids
