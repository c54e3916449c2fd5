-- One secondary index instead of two: every insert updated (exchange, published_at) and
-- (published_at). Retention's range (published_at < ?) and replays' time ranges take the
-- leading column; an exchange filter is checked in the index.
ALTER TABLE message_logs
    DROP INDEX idx_message_logs_exchange,
    DROP INDEX idx_message_logs_published_at,
    ADD INDEX idx_message_logs_published_at_exchange (published_at, exchange);
