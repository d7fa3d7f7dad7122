-- A job's record as last seen is kept in `jobs.record` (version 3), written whenever an
-- event of the record is stored, instead of being read from its newest event: retention
-- deletes events long before their job. No schema change: the jobs stored until now get
-- the data of their record's newest stored event that is neither progress nor the
-- bridge's own (by the index events_record), and keep the submission's record when none
-- is left.

UPDATE jobs SET record = COALESCE((SELECT e.data FROM events e
    WHERE e.record_id = jobs.record_id AND e.type <> 'denoise.progress'
    AND substr(e.type, 1, 7) <> 'bridge.' ORDER BY e.seq DESC LIMIT 1), jobs.record);
