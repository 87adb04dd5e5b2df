-- enqueue.lua: store a batch of messages of one queue, all or none (one script = one atomic step).
--
-- KEYS[1..6]: T:ready, T:scheduled, T:inflight, T:dead, T:seq, T:signal  (T = {prefix:q:NAME})
-- ARGV[1]:    T:m:  (message hash prefix)
-- ARGV[2..]:  five per message: id, body, priority (0-9), eta ('' = now; Unix seconds), key ('' = none, else '=' .. key)
--
-- Writes T:m:ID = {body, priority, seq, score, deliveries=0, key?}; ZADD T:ready (score) or T:scheduled (eta);
-- INCRBY T:seq; LPUSH T:signal (one token per ready message, one for a schedule change, capped).
-- Returns how many messages were stored. A message whose hash exists already is skipped, so a client
-- retrying after a lost reply never stores a message twice.
-- The idempotency key index lives in another slot ({prefix}:keys): the caller claims keys first (claim.lua).

-- The server clock is read (TIME) only for a message with an eta: most enqueues have none (issue 6).
local now = nil
local function in_future(eta)
  if eta == '' then return false end
  now = now or server_now()
  return tonumber(eta) > now
end

local count = (#ARGV - 1) / 5
local base = redis.call('INCRBY', SEQ, count) - count
local ready, scheduled, stored = {}, {}, 0
for i = 0, count - 1 do
  local a = 2 + i * 5
  local id, body, eta, key = ARGV[a], ARGV[a + 1], ARGV[a + 3], ARGV[a + 4]
  local m = MSG .. id
  if redis.call('EXISTS', m) == 0 then
    local priority = math.min(math.max(tonumber(ARGV[a + 2]) or 0, 0), 9)
    local seq = base + i + 1
    local score = seq - priority * 281474976710656
    redis.call('HSET', m, 'body', body, 'priority', ARGV[a + 2], 'seq', seq, 'score', score, 'deliveries', 0)
    if key ~= '' then redis.call('HSET', m, 'key', string.sub(key, 2)) end
    if in_future(eta) then
      scheduled[#scheduled + 1] = eta
      scheduled[#scheduled + 1] = id
    else
      ready[#ready + 1] = score
      ready[#ready + 1] = id
    end
    stored = stored + 1
  end
end
if #ready > 0 then chunked('ZADD', READY, ready) end
if #scheduled > 0 then chunked('ZADD', SCHEDULED, scheduled) end
-- A schedule change wakes one blocked reserve so it can shorten its wait to the new eta.
signal(#ready / 2 + math.min(#scheduled, 1))
return stored
