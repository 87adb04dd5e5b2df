-- requeue_dead.lua: move dead letters of one queue back to ready with deliveries reset.
--
-- KEYS[1..6]: T:ready, T:scheduled, T:inflight, T:dead, T:seq, T:signal  (T = {prefix:q:NAME})
-- ARGV:       T:m:, all ('1': every dead letter of the queue; '0': only the ids that follow), ids...
--
-- Touches: T:dead (ZREM), T:m:ID (deliveries = 0, requeues/reason/dead_at removed), T:ready, T:signal.
-- The idempotency key (released when the message died) is not claimed again.
-- Returns how many messages were requeued.

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
for _, id in ipairs(ids) do
  local m = MSG .. id
  redis.call('HSET', m, 'deliveries', 0)
  redis.call('HDEL', m, 'requeues', 'reason', 'dead_at')
  make_ready(id)
end
signal(#ids)
return #ids
