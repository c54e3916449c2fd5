//! `[publish]`: confirms, batches, the audit trail and idempotency of the publish endpoints.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublishSettings {
    /// How long the broker has to confirm a publish before the API answers 503.
    #[serde(with = "humantime_serde")]
    pub confirm_timeout: Duration,
    /// Largest body of `POST /api/messages/publish/batch`, bytes (each message still counts
    /// against `app.max_body_bytes`).
    pub max_batch_body_bytes: usize,
    /// Most messages in one batch request.
    pub max_batch_messages: usize,
    /// Write one `message_logs` row per published message (in batches, off the request path).
    pub audit: bool,
    /// Rows waiting for the audit writer; beyond it rows are dropped and counted.
    pub audit_queue: usize,
    /// How long an `Idempotency-Key` (or client-given message_id) is remembered.
    #[serde(with = "humantime_serde")]
    pub idempotency_ttl: Duration,
    /// Most keys remembered; the oldest are forgotten first.
    pub idempotency_max_keys: usize,
}

impl Default for PublishSettings {
    fn default() -> Self {
        Self {
            confirm_timeout: Duration::from_secs(5),
            max_batch_body_bytes: 8 * 1024 * 1024,
            max_batch_messages: 500,
            audit: true,
            audit_queue: 20_000,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            idempotency_max_keys: 200_000,
        }
    }
}
