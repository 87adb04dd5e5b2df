-- purge.lua: delete the ready and scheduled messages of one queue; in-flight ones are left alone.
--
-- KEYS[1..6]: T:ready, T:scheduled, T:inflight, T:dead, T:seq, T:signal  (T = {prefix:q:NAME})
-- ARGV:       T:m:
--
-- Touches: T:ready and T:scheduled (DEL), T:m:ID (DEL), T:signal (DEL).
-- Returns {count, released}: how many messages were deleted, and flat {key, id, ...} to release.

local count, released = 0, {}
for _, set in ipairs({READY, SCHEDULED}) do
  for _, id in ipairs(redis.call('ZRANGE', set, 0, -1)) do
    local m = MSG .. id
    local key = redis.call('HGET', m, 'key')
    if key then
      released[#released + 1] = key
      released[#released + 1] = id
    end
    redis.call('DEL', m)
    count = count + 1
  end
end
redis.call('DEL', READY, SCHEDULED, SIGNAL)
return {count, released}
