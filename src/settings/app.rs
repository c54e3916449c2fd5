//! `[app]`: the process itself (name, environment, HTTP bind, roles, topology file, logs,
//! shutdown deadline, body limit).

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::lenient_string;
use crate::roles::Roles;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppSettings {
    #[serde(deserialize_with = "lenient_string")]
    pub name: String,
    /// Selects `config/{env}.toml`; `production` hardens a few defaults.
    #[serde(deserialize_with = "lenient_string")]
    pub env: String,
    /// Bind address of the HTTP server.
    #[serde(deserialize_with = "lenient_string")]
    pub host: String,
    /// HTTP port; 0 picks a free one (tests).
    pub port: u16,
    pub roles: Roles,
    pub topology_file: PathBuf,
    pub log_format: LogFormat,
    /// How long SIGTERM waits for in-flight work before giving up on it.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Largest accepted HTTP request body, bytes.
    pub max_body_bytes: usize,
}

impl Default for AppSettings {
    fn default() -> Self {
        Self {
            name: "messages-broker".into(),
            env: "local".into(),
            host: "0.0.0.0".into(),
            port: 8011,
            roles: Roles::all(),
            topology_file: "topology.toml".into(),
            log_format: LogFormat::Pretty,
            shutdown_timeout: Duration::from_secs(20),
            max_body_bytes: 256 * 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}
