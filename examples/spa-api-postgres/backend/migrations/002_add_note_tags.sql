-- Expand step (expand/contract): a new nullable column with a default. The previous
-- release, which neither reads nor writes it, keeps working while both colors share
-- the database. A later release may start using it; dropping anything the previous
-- release still reads waits for the release after that (contract).
ALTER TABLE notes ADD COLUMN tags text[] NOT NULL DEFAULT '{}';
