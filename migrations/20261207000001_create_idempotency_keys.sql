-- Idempotency keys of publish requests, shared by every api replica: the first request to insert
-- a key publishes; the others wait for its answer (state `done`) or, past the pending lease (the
-- replica died mid-publish), take the key over. Rows past expires_at are deleted in batches.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key_hash        BINARY(32) NOT NULL,
    client          VARCHAR(255) NOT NULL,
    idempotency_key VARCHAR(255) NOT NULL,
    state           ENUM('pending', 'done') NOT NULL,
    response        LONGTEXT NULL,
    lease_until     DATETIME(6) NOT NULL,
    expires_at      DATETIME(6) NOT NULL,
    created_at      DATETIME(6) NOT NULL,
    PRIMARY KEY (key_hash),
    KEY idx_idempotency_keys_expires_at (expires_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
