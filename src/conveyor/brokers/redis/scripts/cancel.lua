-- cancel.lua: delete ready or scheduled messages by id (a revoked task that has not started).
-- In-flight and dead messages are left alone.
--
-- KEYS[1..6]: T:ready, T:scheduled, T:inflight, T:dead, T:seq, T:signal  (T = {prefix:q:NAME})
-- ARGV:       T:m:, id...
--
-- Touches: T:ready and T:scheduled (ZREM), T:m:ID (DEL).
-- Returns {cancelled ids, flat {key, id} of idempotency keys the caller must release}.

local cancelled, released = {}, {}
for i = 2, #ARGV do
  local id = ARGV[i]
  if redis.call('ZREM', READY, id) + redis.call('ZREM', SCHEDULED, id) > 0 then
    local key = redis.call('HGET', MSG .. id, 'key')
    if key then
      released[#released + 1] = key
      released[#released + 1] = id
    end
    redis.call('DEL', MSG .. id)
    cancelled[#cancelled + 1] = id
  end
end
return {cancelled, released}
