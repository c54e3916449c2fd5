//! `[retention]`: how long the audit trail and resolved failures are kept.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// `message_logs` rows older than this (by `published_at`) are deleted.
    #[serde(with = "humantime_serde")]
    pub message_logs: Duration,
    /// `resolved` failed messages older than this (by `resolved_at`) are deleted; rows still
    /// `failed`, waiting for a person, are never removed automatically.
    #[serde(with = "humantime_serde")]
    pub resolved_failed: Duration,
    /// How often the expired rows are looked for.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            message_logs: Duration::from_secs(30 * 24 * 3600),
            resolved_failed: Duration::from_secs(30 * 24 * 3600),
            interval: Duration::from_secs(3600),
        }
    }
}
