-- reserve.lua: lease up to N ready messages of one queue to OWNER, after promoting due scheduled
-- messages and recovering expired leases of this queue (one atomic step: no message is ever handed
-- to two owners).
--
-- KEYS[1..6]: T:ready, T:scheduled, T:inflight, T:dead, T:seq, T:signal  (T = {prefix:q:NAME})
-- KEYS[7]:    T:seen (catch_up in _common.lua: a stall's length is given back to running leases first)
-- ARGV:       T:m:, owner, n, lease (seconds), max_deliveries, max_requeues (uncounted returns of expired
--             leases never marked started that bury a message: REQUEUES_PER_DELIVERY x max_deliveries)
--
-- Touches: T:seen and T:inflight deadlines (after a stall), T:scheduled -> T:ready (due), T:inflight ->
-- T:ready or T:dead (expired), T:ready -> T:inflight (taken: ZADD deadline = server now + lease),
-- T:m:ID (deliveries += 1, token, owner, started removed: a new delivery; expired: see expire in _common.lua), T:seq (tokens), T:signal (deleted once ready is empty, so a
-- stale token never wakes a reserve for nothing; one token left when ready still holds messages, so
-- the next blocked reserve wakes too).
-- Returns {next_due, released, taken}:
--   next_due: seconds until the next eta or lease deadline ('-1': none), to bound a blocking wait
--             (looked up only when nothing was taken: the caller waits only then);
--   released: flat {key, id, ...} of idempotency keys freed by dead-lettering;
--   taken:    flat {id, body, priority, deliveries, token, ...}.

local owner, n, lease, max_deliveries = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local max_requeues = tonumber(ARGV[6])
local now = server_now()
local now_s = fmt(now)
local released, taken = {}, {}
promote_due(now, now_s)
catch_up(KEYS[7], now)
recover_expired(now, max_deliveries, max_requeues, released, now_s)
local ids = redis.call('ZRANGE', READY, '0', int(n - 1))
if #ids > 0 then
  chunked('ZREM', READY, ids)
  local base = redis.call('INCRBY', SEQ, int(#ids)) - #ids
  -- Formatted once: every lease of the batch ends together (a number would be formatted per message).
  local deadline, leases = fmt(now + lease), {}
  for i, id in ipairs(ids) do
    local m = MSG .. id
    local token = int(base + i)
    -- One read and one write per message (a 'started' mark, rare, costs one more call).
    local f = redis.call('HMGET', m, 'body', 'priority', 'deliveries', 'started')
    local deliveries = (tonumber(f[3]) or 0) + 1
    redis.call('HSET', m, 'deliveries', int(deliveries), 'token', token, 'owner', owner)
    if f[4] then redis.call('HDEL', m, 'started') end
    taken[#taken + 1] = id
    taken[#taken + 1] = f[1]
    taken[#taken + 1] = f[2]
    taken[#taken + 1] = deliveries
    taken[#taken + 1] = token
    leases[#leases + 1] = deadline
    leases[#leases + 1] = id
  end
  zadd_skiplist(INFLIGHT, leases)
end
if redis.call('ZCARD', READY) == 0 then
  redis.call('DEL', SIGNAL)
elseif redis.call('LLEN', SIGNAL) == 0 then
  signal(1)
end
-- A call that took messages is never followed by a wait: the next deadline is only looked up when none.
return {#ids > 0 and '-1' or next_due(now), released, taken}
