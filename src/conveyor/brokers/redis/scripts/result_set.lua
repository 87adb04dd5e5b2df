-- result_set.lua: store a task's result record, unless a revocation and a finished run would replace
-- each other (result backend; the rule is ResultBackend.set's, backends/base.py).
--
-- KEYS[1]: {prefix:r:ID}         STRING  "STATE\nrecord", expiring with a PX ttl
-- KEYS[2]: {prefix:r:ID}:notify  LIST    one wake-up token once the record is final
-- KEYS[3]: {prefix:r:ID}:watch   STRING  exists while a coroutine streams the task's updates (aupdates)
-- KEYS[4]: {prefix:r:ID}:changed LIST    one token after a write while watched: progress is pushed too
-- ARGV[1]: the new state (PENDING, STARTED, RETRY, SUCCESS, FAILURE, REVOKED)
-- ARGV[2]: the value to store: "STATE\nrecord"
-- ARGV[3]: its ttl in milliseconds
-- ARGV[4]: "1" when the new state is final (leave a wake-up token), else "0" (clear old tokens)
-- ARGV[5]: the wake-up tokens' ttl in milliseconds
-- KEYS[5]: {prefix:q:QUEUE}:m:ID HASH    optional (a worker's fenced write, RedisResultBackend.set_held): the
--                                        broker's message, whose 'token' field names its current lease
-- ARGV[6]: with KEYS[5], the writer's lease token
--
-- A live REVOKED record is replaced only by REVOKED; a REVOKED write does not replace SUCCESS or
-- FAILURE. Returns 1 when the record was stored, 0 when the rule refused it, -1 when the writer's
-- lease is no longer the message's (redelivered, or settled by another run): nothing changed.

if KEYS[5] and redis.call('HGET', KEYS[5], 'token') ~= ARGV[6] then
  return -1
end

local old = redis.call('GET', KEYS[1])
if old then
  local old_state = string.match(old, '^[^\n]*')
  if old_state == 'REVOKED' and ARGV[1] ~= 'REVOKED' then
    return 0
  end
  if ARGV[1] == 'REVOKED' and (old_state == 'SUCCESS' or old_state == 'FAILURE') then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[2])
if ARGV[4] == '1' then
  redis.call('RPUSH', KEYS[2], '1')
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('RPUSH', KEYS[4], '1')
  redis.call('LTRIM', KEYS[4], 0, 0)
  redis.call('PEXPIRE', KEYS[4], ARGV[5])
end
return 1
