//! `[request]`: how long `POST /api/messages/request` waits for a reply.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RequestSettings {
    /// The wait for a reply when the request gives no `timeout`.
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
    /// The longest `timeout` a request may ask for: each waiting request holds an HTTP
    /// connection and an entry in the reply map.
    #[serde(with = "humantime_serde")]
    pub max_timeout: Duration,
}

impl Default for RequestSettings {
    fn default() -> Self {
        Self {
            default_timeout: Duration::from_secs(5),
            max_timeout: Duration::from_secs(30),
        }
    }
}
