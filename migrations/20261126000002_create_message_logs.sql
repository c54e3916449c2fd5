-- Audit trail of published messages (the seed's optional table), written in batches.
CREATE TABLE IF NOT EXISTS message_logs (
    id              BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    message_id      VARCHAR(255) NOT NULL,
    exchange        VARCHAR(255) NOT NULL,
    routing_key     VARCHAR(255) NOT NULL,
    payload         JSON NOT NULL,
    status          ENUM('published', 'delivered', 'failed') NOT NULL DEFAULT 'published',
    published_at    DATETIME(6) NOT NULL,
    delivered_at    DATETIME(6) NULL,
    metadata        JSON NULL,
    created_at      DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at      DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    UNIQUE KEY uq_message_logs_message_id (message_id),
    KEY idx_message_logs_exchange (exchange, published_at),
    KEY idx_message_logs_published_at (published_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
