-- dead_letter.lua: move a reserved message to the dead letters with a reason (and maybe a new body).
-- A stale lease token is ignored.
--
-- KEYS[1..6]: T:ready, T:scheduled, T:inflight, T:dead, T:seq, T:signal  (T = {prefix:q:NAME})
-- ARGV:       T:m:, id, token, reason, has_body ('1' or '0'), body
--
-- Touches: T:inflight (ZREM), T:dead (ZADD server now), T:m:ID (reason, dead_at, body; token/owner removed).
-- Returns flat {key, id} when the message held an idempotency key the caller must release, else {}.

local id = ARGV[2]
if not held(id, ARGV[3]) then return {} end
local released = {}
redis.call('ZREM', INFLIGHT, id)
if ARGV[5] == '1' then redis.call('HSET', MSG .. id, 'body', ARGV[6]) end
bury(id, ARGV[4], server_now(), released)
return released
