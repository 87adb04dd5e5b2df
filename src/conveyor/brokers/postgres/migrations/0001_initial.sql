-- conveyor's PostgreSQL layout, version 1: the broker's messages and the result backend's records.
-- Applied by `conveyor db migrate APP` (migrate.py) inside one transaction whose search_path is the
-- schema named by the URL (?schema=, default "conveyor"), so nothing here names a schema; every
-- function captures that search_path (SET search_path FROM CURRENT), so it works from a caller's
-- connection whatever its own search_path (transactional enqueue).
-- Times are Unix seconds on the SERVER's clock (cv_now()), so machines with skewed clocks agree.

-- One row per message, whatever its state (the same states as SQLite's schema.sql):
--   0 ready      waiting in its queue
--   1 scheduled  waiting for its eta (countdown, retry delay)
--   2 in flight  leased to `owner` until `lease_until` under `token`
--   3 dead       in the dead-letter queue, with `reason`
-- `seq` orders messages first in, first out. `started` is set by a heartbeat that saw the message
-- running in this delivery and cleared by reserve; an expired lease counts its delivery only when it
-- is true, otherwise `requeues` counts an uncounted return (see brokers/base.py, Broker.recover).
-- An acked message is DELETED: the table holds only live work and dead letters. Deleted rows are dead
-- tuples until vacuum; the storage parameters below make autovacuum visit this small, hot table after
-- ~1,000 changes instead of 20% of its size, with no cost-based sleeping, so it keeps up under load.
CREATE TABLE messages (
    seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          text     NOT NULL UNIQUE,
    queue       text     NOT NULL,
    priority    smallint NOT NULL,
    state       smallint NOT NULL,
    eta         float8,
    body        bytea    NOT NULL,
    key         text,
    deliveries  integer  NOT NULL DEFAULT 0,
    owner       text,
    token       text,
    lease_until float8,
    reason      text,
    dead_at     float8,
    started     boolean  NOT NULL DEFAULT false,
    requeues    integer  NOT NULL DEFAULT 0
) WITH (
    autovacuum_vacuum_scale_factor = 0.0,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.0,
    autovacuum_vacuum_insert_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0
);

-- reserve: the next ready messages of a queue, highest priority first, then oldest.
CREATE INDEX messages_ready ON messages (queue, priority DESC, seq) WHERE state = 0;
-- recover: scheduled messages that came due, and the next eta an idle worker sleeps until.
CREATE INDEX messages_due ON messages (eta) WHERE state = 1;
-- recover: leases that expired without a heartbeat.
CREATE INDEX messages_leases ON messages (lease_until) WHERE state = 2;
-- release_owner / extend_owner: everything a worker process holds.
CREATE INDEX messages_owner ON messages (owner) WHERE state = 2;
-- dead_letters: oldest first.
CREATE INDEX messages_dead ON messages (dead_at, seq) WHERE state = 3;
-- enqueue with key=: at most one pending or running message per idempotency key (cleared when the
-- message is acked, dead-lettered or purged).
CREATE UNIQUE INDEX messages_key ON messages (key) WHERE key IS NOT NULL;

-- stats: every queue that was ever used, so an empty queue is still listed.
CREATE TABLE queues (name text PRIMARY KEY);

-- clock: one row, `seen`, the server time of the last recover or extend, written at most every
-- STAMP_EVERY (0.25 s) by whoever gets its row lock first (the others skip it: no queueing on a hot
-- row). A recover or extend that finds it older than STALL_GAP (1.5 s, brokers/_stalls.py) takes the
-- silence for a stall of the server (down, restarting, paused) and gives every lease still running at
-- `seen` the silence back, so no live worker's lease expires because nobody could heartbeat.
CREATE TABLE clock (id integer PRIMARY KEY CHECK (id = 1), seen float8 NOT NULL);

-- workers: live worker heartbeats (info is JSON); rows past expires_at are not live.
CREATE TABLE workers (id text PRIMARY KEY, info text NOT NULL, expires_at float8 NOT NULL);

-- results: one encoded ResultRecord per task id; rows past expires_at are gone (swept every minute).
CREATE TABLE results (id text PRIMARY KEY, state text NOT NULL, record bytea NOT NULL, expires_at float8 NOT NULL)
WITH (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_cost_delay = 0);
CREATE INDEX results_expiry ON results (expires_at);

-- Coordination primitives of the result backend (backends/base.py, Store).
CREATE TABLE leases (name text PRIMARY KEY, owner text NOT NULL, expires_at float8 NOT NULL);
CREATE TABLE claims (key text PRIMARY KEY, expires_at float8 NOT NULL);
CREATE INDEX claims_expiry ON claims (expires_at);
CREATE TABLE kv (key text PRIMARY KEY, value bytea NOT NULL, expires_at float8);

-- The server's clock in Unix seconds (clock_timestamp: the time of the call, not of the transaction).
CREATE FUNCTION cv_now() RETURNS float8 LANGUAGE sql VOLATILE
AS $$ SELECT extract(epoch FROM clock_timestamp())::float8 $$;

-- Wake idle workers: a message became ready or scheduled. The channel is "cv:<schema>" and the payload
-- the queue; PostgreSQL delivers it at commit (never for a rolled-back enqueue) and folds repeats of one
-- transaction into one.
CREATE FUNCTION cv_wake() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM pg_notify('cv:' || current_schema(), NEW.queue);
    RETURN NULL;
END $$;
CREATE TRIGGER messages_wake AFTER INSERT OR UPDATE OF state ON messages
FOR EACH ROW WHEN (NEW.state IN (0, 1)) EXECUTE FUNCTION cv_wake();

-- Store messages (Broker.enqueue); returns the id each lives under (an existing message's for a key
-- it holds). Raises SQLSTATE CV001 with the id as message for an id the table holds already.
CREATE FUNCTION cv_enqueue(p_ids text[], p_queues text[], p_priorities smallint[], p_etas float8[],
                           p_bodies bytea[], p_keys text[])
RETURNS text[] LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    now_ float8 := cv_now();
    out_ids text[] := '{}';
    held text;
    got text;
    due boolean;
BEGIN
    -- An id held already is an error, unless its key is held too: then it folds (a beat re-firing its slot).
    SELECT m.id INTO held FROM messages m JOIN unnest(p_ids, p_keys) AS e (id, key) ON m.id = e.id
    WHERE e.key IS NULL OR NOT EXISTS (SELECT 1 FROM messages k WHERE k.key = e.key) LIMIT 1;
    IF held IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'CV001', MESSAGE = held;
    END IF;
    INSERT INTO queues (name) SELECT DISTINCT q FROM unnest(p_queues) AS q
    WHERE NOT EXISTS (SELECT 1 FROM queues WHERE name = q) ON CONFLICT DO NOTHING;
    FOR i IN 1 .. coalesce(array_length(p_ids, 1), 0) LOOP
        due := p_etas[i] IS NULL OR p_etas[i] <= now_;
        IF p_keys[i] IS NULL THEN
            INSERT INTO messages (id, queue, priority, state, eta, body)
            VALUES (p_ids[i], p_queues[i], p_priorities[i], CASE WHEN due THEN 0 ELSE 1 END,
                    CASE WHEN due THEN NULL ELSE p_etas[i] END, p_bodies[i]);
            out_ids := out_ids || p_ids[i];
            CONTINUE;
        END IF;
        LOOP  -- a key is held by a live message, or this one takes it (the holder may be acked meanwhile)
            got := NULL;
            INSERT INTO messages (id, queue, priority, state, eta, body, key)
            VALUES (p_ids[i], p_queues[i], p_priorities[i], CASE WHEN due THEN 0 ELSE 1 END,
                    CASE WHEN due THEN NULL ELSE p_etas[i] END, p_bodies[i], p_keys[i])
            ON CONFLICT (key) WHERE key IS NOT NULL DO NOTHING RETURNING id INTO got;
            IF got IS NULL THEN
                SELECT m.id INTO got FROM messages m WHERE m.key = p_keys[i];
            END IF;
            EXIT WHEN got IS NOT NULL;
        END LOOP;
        out_ids := out_ids || got;
    END LOOP;
    RETURN out_ids;
END $$;

-- Broker stalls (see the clock table): give running leases back the silence, then stamp `seen`.
CREATE FUNCTION cv_catch_up(now_ float8, stall_gap float8, stamp_every float8)
RETURNS void LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    seen_ float8;
BEGIN
    SELECT c.seen INTO seen_ FROM clock c WHERE c.id = 1;
    IF seen_ IS NULL THEN
        INSERT INTO clock (id, seen) VALUES (1, now_) ON CONFLICT (id) DO NOTHING;
        RETURN;
    END IF;
    IF now_ - seen_ <= stamp_every AND now_ >= seen_ THEN
        RETURN;
    END IF;
    -- Only the caller that locks the row acts on this silence; the others go on without waiting.
    PERFORM 1 FROM clock c WHERE c.id = 1 AND c.seen = seen_ FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF now_ - seen_ > stall_gap THEN
        UPDATE messages SET lease_until = lease_until + (now_ - seen_) WHERE state = 2 AND lease_until > seen_;
    END IF;
    UPDATE clock SET seen = now_ WHERE id = 1;
END $$;

-- Promote due scheduled messages and recover expired leases (Broker.recover); returns how many moved.
-- Rows another transaction holds (a heartbeat extending them right now) are skipped, never waited for.
CREATE FUNCTION cv_recover(now_ float8, p_max integer, p_bury integer, stall_gap float8, stamp_every float8)
RETURNS integer LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    moved integer := 0;
    n integer;
BEGIN
    PERFORM cv_catch_up(now_, stall_gap, stamp_every);
    UPDATE messages SET state = 0, eta = NULL
    WHERE seq IN (SELECT seq FROM messages WHERE state = 1 AND eta <= now_ FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS n = ROW_COUNT; moved := moved + n;
    IF NOT EXISTS (SELECT 1 FROM messages WHERE state = 2 AND lease_until <= now_) THEN
        RETURN moved;
    END IF;
    WITH expired AS (
        SELECT seq FROM messages WHERE state = 2 AND lease_until <= now_ FOR UPDATE SKIP LOCKED
    )
    UPDATE messages m SET
        state = CASE
            WHEN m.started AND m.deliveries >= p_max THEN 3
            WHEN NOT m.started AND m.requeues + 1 >= p_bury THEN 3
            ELSE 0 END,
        dead_at = CASE WHEN (m.started AND m.deliveries >= p_max) OR (NOT m.started AND m.requeues + 1 >= p_bury)
                       THEN now_ END,
        reason = CASE
            WHEN m.started AND m.deliveries >= p_max THEN 'delivered ' || m.deliveries
                 || ' times without an acknowledgement (its lease expired without a heartbeat); poison?'
            WHEN NOT m.started AND m.requeues + 1 >= p_bury THEN 'its lease expired ' || (m.requeues + 1)
                 || ' times before it was seen running; poison?'
            END,
        key = CASE WHEN (m.started AND m.deliveries >= p_max) OR (NOT m.started AND m.requeues + 1 >= p_bury)
                   THEN NULL ELSE m.key END,
        deliveries = CASE WHEN m.started THEN m.deliveries ELSE m.deliveries - 1 END,
        requeues = CASE WHEN m.started THEN m.requeues ELSE m.requeues + 1 END,
        owner = NULL, token = NULL
    FROM expired WHERE m.seq = expired.seq;
    GET DIAGNOSTICS n = ROW_COUNT; moved := moved + n;
    RETURN moved;
END $$;

-- Ack some deliveries, recover, then lease up to p_n ready messages of p_queues (in that order) to
-- p_owner: a worker's steady state in one round trip (Broker.reserve, Broker.ack_and_reserve).
-- Its commit does not wait for the WAL flush (synchronous_commit off for this transaction only): a
-- server crash may forget the last fraction of a second of reserves and acks, and then a message only
-- runs again (a forgotten reserve leaves it ready; a forgotten ack leaves it leased until the lease
-- ends), which at-least-once allows. Enqueues, results and heartbeats keep the server's setting.
CREATE FUNCTION cv_reserve(p_queues text[], p_n integer, p_owner text, p_token text, p_lease float8,
                           p_max integer, p_bury integer, stall_gap float8, stamp_every float8,
                           p_ack_ids text[], p_ack_tokens text[])
RETURNS TABLE (o_id text, o_queue text, o_body bytea, o_priority smallint, o_deliveries integer, o_seq bigint)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    now_ float8 := cv_now();
    q text;
    left_ integer := p_n;
    got integer;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    IF coalesce(array_length(p_ack_ids, 1), 0) > 0 THEN
        DELETE FROM messages m USING unnest(p_ack_ids, p_ack_tokens) AS a (id, token)
        WHERE m.id = a.id AND m.token = a.token AND m.state = 2;
    END IF;
    PERFORM cv_recover(now_, p_max, p_bury, stall_gap, stamp_every);
    FOREACH q IN ARRAY p_queues LOOP
        EXIT WHEN left_ <= 0;
        RETURN QUERY
        WITH picked AS (
            SELECT seq FROM messages WHERE state = 0 AND queue = q
            ORDER BY priority DESC, seq LIMIT left_ FOR UPDATE SKIP LOCKED
        )
        UPDATE messages m SET state = 2, owner = p_owner, token = p_token, lease_until = now_ + p_lease,
            deliveries = m.deliveries + 1, started = false
        FROM picked WHERE m.seq = picked.seq
        RETURNING m.id, m.queue, m.body, m.priority, m.deliveries, m.seq;
        GET DIAGNOSTICS got = ROW_COUNT;
        left_ := left_ - got;
    END LOOP;
END $$;

-- Heartbeat (Broker.extend): push held leases, mark the running ones started; returns the ids still held.
CREATE FUNCTION cv_extend(p_ids text[], p_tokens text[], p_running boolean[], p_lease float8,
                          stall_gap float8, stamp_every float8)
RETURNS SETOF text LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    now_ float8 := cv_now();
BEGIN
    PERFORM cv_catch_up(now_, stall_gap, stamp_every);
    RETURN QUERY
    UPDATE messages m SET lease_until = now_ + p_lease, started = m.started OR e.running
    FROM unnest(p_ids, p_tokens, p_running) AS e (id, token, running)
    WHERE m.id = e.id AND m.token = e.token AND m.state = 2
    RETURNING m.id;
END $$;

-- Results (ResultBackend.set_many): upsert records; a final state notifies "cv:<schema>:r" at commit,
-- which wakes every wait() on it. The payload is "<id> <state> <base64 record>" when that fits in a
-- notification (a record under 5,000 bytes, 6,700 in base64; the limit is 8,000), so the waiter needs no query to read it; else just "<id>".
CREATE FUNCTION cv_set_results(p_ids text[], p_states text[], p_records bytea[], p_ttl float8, p_final text[])
RETURNS void LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    now_ float8 := cv_now();
BEGIN
    INSERT INTO results (id, state, record, expires_at)
    SELECT r.id, r.state, r.record, now_ + p_ttl FROM unnest(p_ids, p_states, p_records) AS r (id, state, record)
    ON CONFLICT (id) DO UPDATE SET state = excluded.state, record = excluded.record, expires_at = excluded.expires_at;
    PERFORM pg_notify('cv:' || current_schema() || ':r',
                      CASE WHEN octet_length(r.record) < 5000
                           THEN r.id || ' ' || r.state || ' ' || encode(r.record, 'base64') ELSE r.id END)
    FROM unnest(p_ids, p_states, p_records) AS r (id, state, record) WHERE r.state = ANY (p_final);
END $$;
