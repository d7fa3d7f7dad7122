-- Jobs submitted through the gateway (version 2): whose, when, and the callback (its events
-- and metadata as JSON text; no url: no callback), with the record as the submission
-- described it (JSON text). A job's callback is a delivery target `job:<record id>`.
-- A client's jobs are listed newest first (record ids compared byte by byte, as SQLite
-- does); retention finds old ones by `submitted_at`.

CREATE TABLE jobs (
    record_id text PRIMARY KEY,
    client_id text NOT NULL,
    submitted_at double precision NOT NULL,
    callback_id text,
    callback_url text,
    callback_events text,
    callback_metadata text,
    record text
);
CREATE INDEX jobs_client ON jobs (client_id, submitted_at DESC, record_id COLLATE "C" DESC);
CREATE INDEX jobs_submitted ON jobs (submitted_at);
-- the pending deliveries of every job target, in claim order: `starts_with`, not a range of
-- deliveries_claim, whose order follows the database's collation (which may ignore the
-- punctuation of `job:`)
CREATE INDEX deliveries_jobs ON deliveries (next_attempt_at, id)
    WHERE state = 'pending' AND starts_with(subscriber_id, 'job:');
