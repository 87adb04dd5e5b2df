-- enqueue.lua: store a batch of messages of one queue, all or none (one script = one atomic step).
--
-- KEYS[1..6]: T:ready, T:scheduled, T:inflight, T:dead, T:seq, T:signal  (T = {prefix:q:NAME})
-- KEYS[7]:    T:registered  (STRING marker: this queue is in {prefix}:queues, see below)
-- ARGV[1]:    T:m:  (message hash prefix)
-- ARGV[2]:    attempt: unique to one enqueue call and the same on its retries (random bytes, or the
--             call's generated task id, itself random: async producer, brokers/redis/enqueue.py)
-- ARGV[3..]:  five per message: id, body, priority (0-9), eta ('' = now; Unix seconds), key ('' = none, else '=' .. key)
--
-- Writes T:m:ID = {body, priority, seq, score, deliveries=0, attempt, key?}; ZADD T:ready (score) or
-- T:scheduled (eta); INCRBY T:seq; LPUSH T:signal (one token per ready message, one for a schedule
-- change, capped).
-- Returns {duplicate, unregistered}:
--   duplicate: '' when the batch is stored; else the first id the queue still holds (ready, scheduled,
--     in flight or dead) or that the batch repeats, and NOTHING is stored (DuplicateTaskId).
--     A message that carries this call's own attempt was stored by this very call, whose reply was
--     lost: the retry stores nothing more and answers '' (a retry never stores a message twice).
--   unregistered: 1 when T:registered is missing, so the registry {prefix}:queues may not know this
--     queue (the server lost its data: a restart without persistence, a failover, FLUSHDB). The
--     caller then SADDs the queue and SETs the marker, in that order. The registry lives in another
--     slot ({prefix}), so this script cannot write it (one slot per script, for Redis Cluster).
-- The idempotency key index lives in another slot ({prefix}:keys): the caller claims keys first (claim.lua).

local ATTEMPT = ARGV[2]
local count = (#ARGV - 2) / 5
local unregistered = 1 - redis.call('EXISTS', KEYS[7])

-- First pass: refuse the whole batch on a held or repeated id (HMGET: 'seq' is in every stored message).
local seen, duplicate = {}, nil
for i = 0, count - 1 do
  local id = ARGV[3 + i * 5]
  local held = redis.call('HMGET', MSG .. id, 'attempt', 'seq')
  if held[1] == ATTEMPT then return {'', unregistered} end
  if (held[2] or seen[id]) and not duplicate then duplicate = id end
  seen[id] = true
end
if duplicate then return {duplicate, unregistered} end

-- The server clock is read (TIME) only for a message with an eta: most enqueues have none (issue 6).
local now = nil
local function in_future(eta)
  if eta == '' then return false end
  now = now or server_now()
  return tonumber(eta) > now
end

local base = redis.call('INCRBY', SEQ, count) - count
local ready, scheduled = {}, {}
for i = 0, count - 1 do
  local a = 3 + i * 5
  local id, body, eta, key = ARGV[a], ARGV[a + 1], ARGV[a + 3], ARGV[a + 4]
  local m = MSG .. id
  local priority = math.min(math.max(tonumber(ARGV[a + 2]) or 0, 0), 9)
  local seq = base + i + 1
  local score = seq - priority * 281474976710656
  redis.call('HSET', m, 'body', body, 'priority', ARGV[a + 2], 'seq', seq, 'score', score, 'deliveries', 0,
    'attempt', ATTEMPT)
  if key ~= '' then redis.call('HSET', m, 'key', string.sub(key, 2)) end
  if in_future(eta) then
    scheduled[#scheduled + 1] = eta
    scheduled[#scheduled + 1] = id
  else
    ready[#ready + 1] = score
    ready[#ready + 1] = id
  end
end
if #ready > 0 then chunked('ZADD', READY, ready) end
if #scheduled > 0 then chunked('ZADD', SCHEDULED, scheduled) end
-- A schedule change wakes one blocked reserve so it can shorten its wait to the new eta.
signal(#ready / 2 + math.min(#scheduled, 1))
return {'', unregistered}
