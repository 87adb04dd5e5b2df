-- conveyor's PostgreSQL layout, version 2: the workflow primitives of the result backend (gathers for
-- chords, token buckets for global rate limits) and the revocation rule of ResultBackend.set.
-- Applied like 0001 (one transaction, search_path = the schema); nothing here names a schema.

-- Gathers (Store.gather): a chord's member results. One head row per gather holds the count of filled
-- slots and the expiry of the whole gather; every write locks the head (INSERT ... ON CONFLICT DO
-- UPDATE), so writers of one gather take turns and each sees the count its own write made. Slots go
-- with their head (ON DELETE CASCADE), so the sweep deletes expired heads only.
CREATE TABLE gathers (key text PRIMARY KEY, filled integer NOT NULL, expires_at float8 NOT NULL);
CREATE INDEX gathers_expiry ON gathers (expires_at);
CREATE TABLE gather_slots (
    key   text    NOT NULL REFERENCES gathers (key) ON DELETE CASCADE,
    idx   integer NOT NULL,
    value bytea   NOT NULL,
    PRIMARY KEY (key, idx)
);

-- Token buckets (Store.take_token): `tokens` left at `updated_at` (negative: tokens lent from the
-- future). A missing row reads as a full bucket, so a row may go once the bucket would be full again
-- (`expires_at`), and the sweep deletes it.
CREATE TABLE buckets (name text PRIMARY KEY, tokens float8 NOT NULL, updated_at float8 NOT NULL,
                      expires_at float8 NOT NULL);
CREATE INDEX buckets_expiry ON buckets (expires_at);

-- Fill slot p_idx of gather p_key with p_value; return how many slots are filled. The whole gather
-- expires p_ttl seconds after its last write; an expired one starts empty again.
-- Its commit does not wait for the WAL flush (synchronous_commit off for this transaction only): the
-- members of one chord take turns on the head row, and holding it through a flush each would queue
-- them a flush apiece. A member gathers before its result is written and before it is acked, and WAL
-- is flushed in order, so once that result write (synchronous) or the body's enqueue is on disk, so is
-- the gather; a server crash before that loses the gather with the result and the ack, and the member
-- runs again and fills its slot again.
CREATE FUNCTION cv_gather(p_key text, p_idx integer, p_value bytea, p_ttl float8)
RETURNS integer LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    now_ float8 := cv_now();
    added boolean;
    n integer;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    DELETE FROM gathers WHERE key = p_key AND expires_at <= now_;
    -- Lock the head (created if missing) until commit: the next writer of this gather waits here.
    INSERT INTO gathers AS g (key, filled, expires_at) VALUES (p_key, 0, now_ + p_ttl)
    ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at;
    INSERT INTO gather_slots AS s (key, idx, value) VALUES (p_key, p_idx, p_value)
    ON CONFLICT (key, idx) DO UPDATE SET value = excluded.value
    RETURNING (s.xmax = 0) INTO added;  -- xmax 0: a new row (a slot written again is not counted twice)
    IF added THEN
        UPDATE gathers SET filled = filled + 1 WHERE key = p_key RETURNING filled INTO n;
    ELSE
        SELECT filled INTO n FROM gathers WHERE key = p_key;
    END IF;
    RETURN n;
END $$;

-- Reserve the next token of bucket p_name (refilled at p_rate a second up to p_burst); return the
-- seconds until it is due (0: it was there). One upsert: concurrent callers take turns on the row.
CREATE FUNCTION cv_take_token(p_name text, p_rate float8, p_burst float8)
RETURNS float8 LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    now_ float8 := cv_now();
    left_ float8;
BEGIN
    INSERT INTO buckets AS b (name, tokens, updated_at, expires_at)
    VALUES (p_name, p_burst - 1, now_, now_ + 1 / p_rate)
    ON CONFLICT (name) DO UPDATE SET
        tokens = least(p_burst, b.tokens + greatest(0, now_ - b.updated_at) * p_rate) - 1,
        updated_at = now_,
        expires_at = now_ + (p_burst - least(p_burst, b.tokens + greatest(0, now_ - b.updated_at) * p_rate) + 1)
                     / p_rate
    RETURNING b.tokens INTO left_;
    RETURN CASE WHEN left_ >= 0 THEN 0 ELSE -left_ / p_rate END;
END $$;

-- Results (ResultBackend.set_many, try_set), now under the revocation rule (backends/base.py, replaces):
-- a live REVOKED row is replaced only by REVOKED, and REVOKED does not replace a live SUCCESS or
-- FAILURE; an expired row is replaced by anything. Returns how many records landed; only those
-- notify "cv:<schema>:r" (a refused SUCCESS must not wake a waiter with a record that is not stored).
-- The payload is "<id> <state> <base64 record>" when that fits in a notification (see 0001), else "<id>".
DROP FUNCTION cv_set_results(text[], text[], bytea[], float8, text[]);
CREATE FUNCTION cv_set_results(p_ids text[], p_states text[], p_records bytea[], p_ttl float8, p_final text[])
RETURNS integer LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    now_ float8 := cv_now();
    n integer := 0;
    l record;
BEGIN
    FOR l IN
        INSERT INTO results AS r (id, state, record, expires_at)
        SELECT w.id, w.state, w.record, now_ + p_ttl FROM unnest(p_ids, p_states, p_records) AS w (id, state, record)
        ON CONFLICT (id) DO UPDATE SET state = excluded.state, record = excluded.record, expires_at = excluded.expires_at
        WHERE r.expires_at <= now_ OR NOT (
            (r.state = 'REVOKED' AND excluded.state <> 'REVOKED')
            OR (excluded.state = 'REVOKED' AND r.state IN ('SUCCESS', 'FAILURE')))
        RETURNING r.id, r.state, r.record
    LOOP
        n := n + 1;
        IF l.state = ANY (p_final) THEN
            PERFORM pg_notify('cv:' || current_schema() || ':r',
                              CASE WHEN octet_length(l.record) < 5000
                                   THEN l.id || ' ' || l.state || ' ' || encode(l.record, 'base64') ELSE l.id END);
        END IF;
    END LOOP;
    RETURN n;
END $$;
