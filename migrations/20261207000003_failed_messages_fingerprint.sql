-- Failure groups: each row's fingerprint (src/fingerprint.rs: a hash of the queue, the event and
-- the error text with its ids, numbers and times replaced) and the version of the algorithm that
-- computed it. NULL until computed: rows written before this migration get theirs from the
-- ingester's backfill. ASCII, binary collation: 16 hex digits compared byte for byte.
ALTER TABLE failed_messages
    ADD COLUMN fingerprint CHAR(16) CHARACTER SET ascii COLLATE ascii_bin NULL AFTER error_message,
    ADD COLUMN fingerprint_version TINYINT UNSIGNED NULL AFTER fingerprint;
