-- The PostgreSQL store, version 1: the SQLite store's tables as its migrations left them
-- (times are unix seconds in double precision, as there), plus what replicas need: the
-- poller's lease and delivery counts kept without a hot row. Every name is unqualified:
-- the objects go in the connection's current schema.

CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL);
INSERT INTO meta (key, value) VALUES ('store_id', replace(gen_random_uuid()::text, '-', ''));

CREATE TABLE records (
    id text PRIMARY KEY,
    status text NOT NULL,
    created_at text COLLATE "C" NOT NULL,  -- compared as SQLite does: byte by byte
    seen_at double precision NOT NULL,
    missed_at double precision,  -- missing from a list once
    gone_at double precision     -- missing twice, or not seen by a whole sweep: a tombstone
);
CREATE INDEX records_open ON records (created_at)
    WHERE status NOT IN ('success', 'failed') AND gone_at IS NULL;
CREATE INDEX records_created ON records (created_at);
CREATE INDEX records_seen ON records (seen_at) WHERE gone_at IS NULL;

CREATE TABLE events (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id text NOT NULL UNIQUE,
    type text NOT NULL,
    record_id text NOT NULL,
    occurred_at double precision NOT NULL,
    previous_status text,
    data text NOT NULL
);
CREATE INDEX events_record ON events (record_id, seq);

CREATE TABLE deliveries (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_seq bigint NOT NULL REFERENCES events (seq),
    subscriber_id text NOT NULL,
    record_id text NOT NULL,  -- its event's (the per-record order is looked up here)
    state text NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    schedule_from integer NOT NULL DEFAULT 0,  -- `attempts` when its schedule (re)started
    next_attempt_at double precision,
    lease_until double precision,
    lease_token text,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    UNIQUE (event_seq, subscriber_id)
);
CREATE INDEX deliveries_claim ON deliveries (subscriber_id, next_attempt_at, id)
    WHERE state = 'pending';
-- per subscriber and record, whether an earlier event is still pending (the order rule)
CREATE INDEX deliveries_record ON deliveries (subscriber_id, record_id, event_seq)
    WHERE state = 'pending';
-- the leases a subscriber's cap counts, without reading its whole backlog
CREATE INDEX deliveries_leased ON deliveries (subscriber_id, lease_until)
    WHERE state = 'pending' AND lease_until IS NOT NULL;
CREATE INDEX deliveries_delivered ON deliveries (updated_at) WHERE state = 'delivered';
CREATE INDEX deliveries_failed ON deliveries (updated_at) WHERE state = 'failed';
CREATE INDEX deliveries_orphaned ON deliveries (updated_at) WHERE state = 'orphaned';

CREATE TABLE attempts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id bigint NOT NULL REFERENCES deliveries (id),
    attempted_at double precision NOT NULL,
    status_code integer,
    latency_ms double precision NOT NULL,
    error text,
    response_excerpt text NOT NULL
);
CREATE INDEX attempts_delivery ON attempts (delivery_id);

CREATE TABLE subscriber_health (
    id text PRIMARY KEY,
    failing_since double precision,
    disabled_at double precision,
    reason text
);

-- the poller's lease (one row, name 'poller'), by the database's clock
CREATE TABLE leader (
    name text PRIMARY KEY,
    replica text,
    expires_at timestamptz,
    last_poll_at double precision
);

-- Deliveries by subscriber and state: `delivery_counts` plus the deltas appended since it
-- was last folded (see pg_ops). A statement appends one row per (subscriber, state) it
-- changed, so concurrent transactions never wait on a shared counter row.
CREATE TABLE delivery_counts (
    subscriber_id text NOT NULL,
    state text NOT NULL,
    n bigint NOT NULL,
    PRIMARY KEY (subscriber_id, state)
);
CREATE TABLE delivery_count_deltas (
    subscriber_id text NOT NULL,
    state text NOT NULL,
    n bigint NOT NULL
);

CREATE FUNCTION count_delivery_changes() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO delivery_count_deltas (subscriber_id, state, n)
            SELECT subscriber_id, state, count(*) FROM new_rows GROUP BY 1, 2;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO delivery_count_deltas (subscriber_id, state, n)
            SELECT subscriber_id, state, -count(*) FROM old_rows GROUP BY 1, 2;
    ELSE
        INSERT INTO delivery_count_deltas (subscriber_id, state, n)
            SELECT subscriber_id, state, sum(n) FROM (
                SELECT subscriber_id, state, -1 AS n FROM old_rows
                UNION ALL
                SELECT subscriber_id, state, 1 AS n FROM new_rows
            ) changed GROUP BY 1, 2 HAVING sum(n) <> 0;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER deliveries_count_insert AFTER INSERT ON deliveries
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION count_delivery_changes();
CREATE TRIGGER deliveries_count_update AFTER UPDATE ON deliveries
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION count_delivery_changes();
CREATE TRIGGER deliveries_count_delete AFTER DELETE ON deliveries
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION count_delivery_changes();
