-- Edit-and-retry links, both ways, by message_id (the identity a message keeps on the broker and
-- in the platform's logs; row ids are this database's only):
-- - edited_to on the original: the message_id of the edited copy, set once the broker confirmed it;
-- - edited_from on a copy that failed in turn: the message_id of the original, from the copy's
--   `mb-edit-of` header at ingestion.
ALTER TABLE failed_messages
    ADD COLUMN edited_from VARCHAR(255) NULL AFTER fingerprint_version,
    ADD COLUMN edited_to VARCHAR(255) NULL AFTER edited_from;
