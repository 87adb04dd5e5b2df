-- nack.lua: give a reserved message back, ready now or scheduled DELAY seconds from now; this delivery
-- does not count toward max_deliveries. A stale lease token is ignored.
--
-- KEYS[1..6]: T:ready, T:scheduled, T:inflight, T:dead, T:seq, T:signal  (T = {prefix:q:NAME})
-- ARGV:       T:m:, id, token, delay (seconds), has_body ('1' or '0'), body
--
-- Touches: T:m:ID (deliveries -= 1, token/owner removed, body replaced), T:inflight (ZREM),
-- T:ready (ZADD at its original place) or T:scheduled (ZADD server now + delay), T:signal (LPUSH).
-- Returns 1 if the message was given back, 0 if the lease was no longer held.

local id, token, delay = ARGV[2], ARGV[3], tonumber(ARGV[4])
if not held(id, token) then return 0 end
local m = MSG .. id
redis.call('ZREM', INFLIGHT, id)
redis.call('HINCRBY', m, 'deliveries', -1)
redis.call('HDEL', m, 'token', 'owner')
if ARGV[5] == '1' then redis.call('HSET', m, 'body', ARGV[6]) end
if delay > 0 then
  redis.call('ZADD', SCHEDULED, server_now() + delay, id)
else
  make_ready(id)
end
signal(1)
return 1
