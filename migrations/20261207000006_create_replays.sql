-- Replays of the audit trail (`POST /api/replays`): the request, its progress and who runs it.
-- A replay publishes the message_logs rows matching `filter_json` with ids in (cursor_log_id,
-- until_log_id], in id order; cursor_log_id moves only after a batch's confirms, so a replay
-- resumes where it stopped. A replica runs one only while it holds the lease (owner,
-- lease_until), renewed after every batch; a crashed owner's replay is taken over once its lease
-- has passed. Times are DATETIME(6) in UTC.
CREATE TABLE IF NOT EXISTS replays (
    id              BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    status          ENUM('queued', 'running', 'completed', 'cancelled', 'failed') NOT NULL DEFAULT 'queued',
    filter_json     LONGTEXT NOT NULL,
    target_exchange VARCHAR(255) NULL,
    requested_by    VARCHAR(255) NOT NULL,
    total           BIGINT UNSIGNED NOT NULL,
    published       BIGINT UNSIGNED NOT NULL DEFAULT 0,
    failed          BIGINT UNSIGNED NOT NULL DEFAULT 0,
    cursor_log_id   BIGINT UNSIGNED NOT NULL DEFAULT 0,
    until_log_id    BIGINT UNSIGNED NOT NULL,
    past_retention  BOOLEAN NOT NULL DEFAULT FALSE,
    owner           VARCHAR(255) NULL,
    lease_until     DATETIME(6) NULL,
    last_error      VARCHAR(1024) NULL,
    created_at      DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    started_at      DATETIME(6) NULL,
    finished_at     DATETIME(6) NULL,
    updated_at      DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    KEY idx_replays_claim (status, lease_until)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
