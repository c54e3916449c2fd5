-- The groups query and a group's page of rows read this index only:
-- - GET /api/messages/failed/groups groups by fingerprint and counts by status, with first and
--   last failed_at: (fingerprint, status, failed_at) plus the primary key InnoDB appends covers
--   it, so the table itself is never read (a scan of the index in fingerprint order, no
--   temporary table);
-- - GET /api/messages/failed?fingerprint=F&status=S reads a range of it in failed_at, id order,
--   already the list's order: no sort.
-- idx_failed_messages_fingerprint_version finds the rows the backfill must (re)compute (NULL or
-- an older algorithm) without scanning the table on every start.
ALTER TABLE failed_messages
    ADD KEY idx_failed_messages_fingerprint (fingerprint, status, failed_at),
    ADD KEY idx_failed_messages_fingerprint_version (fingerprint_version);
