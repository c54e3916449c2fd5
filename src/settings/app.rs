//! `[app]`: the process itself (name, environment, HTTP bind, roles, topology file, logs,
//! shutdown deadline, body limit, HTTP server limits).

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
    /// A request head (line and headers) must arrive within this from its first byte: a client
    /// trickling headers (slowloris) is cut instead of holding a connection forever.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request in flight is closed after this long without the
    /// first byte of a next request.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A request body must arrive in full within this from the first wait for it; else 408.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Open HTTP connections at most; further clients wait in the kernel's accept backlog.
    pub max_connections: usize,
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
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 4096,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}
