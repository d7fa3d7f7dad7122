-- Several Munsit accounts (version 4): a record belongs to the account whose scan stored it
-- (the records stored until now to 'default'; adding a column with a constant default
-- rewrites no row). Each account's newest record is found by (account, created_at), which
-- takes over from records_created.

ALTER TABLE records ADD COLUMN account text NOT NULL DEFAULT 'default';
CREATE INDEX records_account ON records (account, created_at);
DROP INDEX records_created;
