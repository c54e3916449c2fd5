//! `[stats]`, `[ingest]` and `[scheduling]`: the pace of the stats poller, of the dead-letter
//! ingester and of the scheduler of delayed messages.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatsSettings {
    /// How often the stats role reads the broker.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for StatsSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSettings {
    /// Largest batch of rows written at once; twice this many dead letters are in flight per queue.
    pub prefetch: u16,
    /// How long a partial batch waits for more dead letters before it is written.
    #[serde(with = "humantime_serde")]
    pub batch_linger: Duration,
    /// A message the broker dead-lettered this many times from one queue...
    pub poison_deaths: u32,
    /// ...within this window is poison: stored as `failed` at once instead of retried.
    #[serde(with = "humantime_serde")]
    pub poison_window: Duration,
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            prefetch: 500,
            batch_linger: Duration::from_millis(50),
            poison_deaths: 5,
            poison_window: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulingSettings {
    /// Farthest ahead a publish may ask to be delivered (`delay` / `deliver_at`).
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// How often the scheduler role looks for due messages: a message goes out within this of its time.
    #[serde(with = "humantime_serde")]
    pub scan_interval: Duration,
}

impl Default for SchedulingSettings {
    fn default() -> Self {
        Self {
            max_delay: Duration::from_secs(7 * 24 * 3600),
            scan_interval: Duration::from_secs(1),
        }
    }
}
