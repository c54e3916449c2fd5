//! `[replay]`: the pace of replays from the audit trail (`POST /api/replays`), run by the
//! scheduler role.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplaySettings {
    /// Messages per second one running replay publishes at most.
    pub rate_per_second: u32,
    /// How long a replica holds a replay without renewing its claim (it renews after every
    /// batch); past it, another replica takes the replay over. More than twice
    /// `publish.confirm_timeout`, the longest a batch may wait for its confirms.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How often the scheduler role looks for a replay to run.
    #[serde(with = "humantime_serde")]
    pub scan_interval: Duration,
}

impl Default for ReplaySettings {
    fn default() -> Self {
        Self {
            rate_per_second: 500,
            lease: Duration::from_secs(30),
            scan_interval: Duration::from_secs(1),
        }
    }
}
