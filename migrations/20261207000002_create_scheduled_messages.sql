-- Delayed messages (publish with `delay` or `deliver_at`): kept here until due, then published by
-- the scheduler role, which claims due rows with FOR UPDATE SKIP LOCKED so replicas never take
-- the same row. Nothing node-local: a broker restart or a replica crash loses none.
CREATE TABLE IF NOT EXISTS scheduled_messages (
    id              BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    message_id      VARCHAR(255) NOT NULL,
    client          VARCHAR(255) NOT NULL,
    exchange        VARCHAR(255) NOT NULL,
    routing_key     VARCHAR(255) NOT NULL,
    payload         LONGTEXT NOT NULL,
    headers         LONGTEXT NOT NULL,
    priority        TINYINT UNSIGNED NULL,
    status          ENUM('scheduled', 'sent', 'cancelled', 'failed') NOT NULL DEFAULT 'scheduled',
    deliver_at      DATETIME(6) NOT NULL,
    sent_at         DATETIME(6) NULL,
    last_error      VARCHAR(1024) NULL,
    created_at      DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at      DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    UNIQUE KEY uq_scheduled_messages_message_id (message_id),
    KEY idx_scheduled_messages_due (status, deliver_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
