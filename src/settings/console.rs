//! `[console]`: the operator console's sessions (pages under `/console/`, served by the `api` role).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Secret;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleSettings {
    /// Signs the session cookie (HMAC-SHA-256). The same key on every replica makes a session
    /// valid on all of them; empty means a random key per process (sessions end at its restart).
    pub session_key: Secret,
    /// A session ends this long after the login.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Marks the cookies `Secure`: on wherever the console is served over HTTPS.
    pub cookie_secure: bool,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        Self {
            session_key: Secret::default(),
            session_ttl: Duration::from_secs(8 * 3600),
            cookie_secure: false,
        }
    }
}
