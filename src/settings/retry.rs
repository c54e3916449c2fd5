//! `[message]` and `[retry]`: how long messages live, how often and when failed ones are retried.
//! The seed's `MESSAGE_*` variables land in `[message]` and override parts of `[retry]`, which is
//! why the resulting schedule is computed here, from both.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Settings;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MessageSettings {
    /// `MESSAGE_TTL`, ms: when set, replaces `queue_defaults.message_ttl` of the topology.
    pub ttl: Option<u32>,
    /// `MESSAGE_MAX_RETRIES`: the `max_retries` of new failed messages.
    pub max_retries: u32,
    /// `MESSAGE_RETRY_DELAY`, ms: when set, the first backoff step (later steps keep 1:5:30).
    pub retry_delay: Option<u64>,
    /// `DLQ_TTL`, ms: when set, replaces `dead_letter_queues.message_ttl` of the topology.
    pub dlq_ttl: Option<u32>,
}

impl Default for MessageSettings {
    fn default() -> Self {
        Self {
            ttl: None,
            max_retries: 3,
            retry_delay: None,
            dlq_ttl: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrySettings {
    /// Delay before retry 1, 2, 3...
    #[serde(with = "duration_list")]
    pub backoff: Vec<Duration>,
    /// How often due retries are looked for.
    #[serde(with = "humantime_serde")]
    pub scan_interval: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            backoff: vec![
                Duration::from_secs(60),
                Duration::from_secs(300),
                Duration::from_secs(1800),
            ],
            scan_interval: Duration::from_secs(5),
        }
    }
}

impl Settings {
    pub fn max_retries(&self) -> u32 {
        self.message.max_retries
    }
}

/// `["1m", "5m", "30m"]` <-> `Vec<Duration>` (humantime_serde handles single values only).
mod duration_list {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, ser::SerializeSeq};

    pub fn serialize<S: Serializer>(list: &[Duration], serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(list.len()))?;
        for d in list {
            seq.serialize_element(&humantime::format_duration(*d).to_string())?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Duration>, D::Error> {
        Vec::<String>::deserialize(deserializer)?
            .iter()
            .map(|text| humantime::parse_duration(text).map_err(|e| serde::de::Error::custom(format!("`{text}`: {e}"))))
            .collect()
    }
}
