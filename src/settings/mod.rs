//! Settings: built-in defaults < `config/default.toml` < `config/{APP_ENV}.toml` < `--config FILE`
//! < environment (the seed's variable names, plus `MESSAGES_BROKER_<SECTION>__<KEY>` for any key).

use std::{fmt, time::Duration};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

mod app;
mod auth;
mod console;
mod database;
mod failed;
mod publish;
mod rabbitmq;
mod replay;
mod request;
mod retention;
mod retry;
mod schemas;
mod topology;
mod workers;

pub use app::{AppSettings, LogFormat};
pub use auth::{AuthSettings, ClientSettings, Scope};
pub use console::ConsoleSettings;
pub use database::{DatabaseSettings, SslMode};
pub use failed::FailedSettings;
pub use publish::PublishSettings;
pub use rabbitmq::{RabbitMqSettings, URI_COMPONENT};
pub use replay::ReplaySettings;
pub use request::RequestSettings;
pub use retention::RetentionSettings;
pub use retry::{MessageSettings, RetrySettings};
pub use schemas::{SchemaSettings, UnknownEvents};
pub use topology::TopologySettings;
pub use workers::{IngestSettings, SchedulingSettings, StatsSettings};

/// The seed's environment variables and the setting each one sets.
pub const ENV_KEYS: &[(&str, &str)] = &[
    ("APP_NAME", "app.name"),
    ("APP_ENV", "app.env"),
    ("APP_HOST", "app.host"),
    ("APP_PORT", "app.port"),
    ("WORKER_ROLES", "app.roles"),
    ("TOPOLOGY_FILE", "app.topology_file"),
    ("LOG_FORMAT", "app.log_format"),
    ("DB_CONNECTION", "database.connection"),
    ("DB_HOST", "database.host"),
    ("DB_PORT", "database.port"),
    ("DB_DATABASE", "database.database"),
    ("DB_USERNAME", "database.username"),
    ("DB_PASSWORD", "database.password"),
    ("RABBITMQ_HOST", "rabbitmq.host"),
    ("RABBITMQ_PORT", "rabbitmq.port"),
    ("RABBITMQ_MANAGEMENT_PORT", "rabbitmq.management_port"),
    ("RABBITMQ_USER", "rabbitmq.user"),
    ("RABBITMQ_PASSWORD", "rabbitmq.password"),
    ("RABBITMQ_VHOST", "rabbitmq.vhost"),
    ("MESSAGE_TTL", "message.ttl"),
    ("MESSAGE_MAX_RETRIES", "message.max_retries"),
    ("MESSAGE_RETRY_DELAY", "message.retry_delay"),
    ("DLQ_TTL", "message.dlq_ttl"),
];

/// SHA-256 of `local-dev-token`, the development client's token in config/local.toml: refused
/// in production, where a token everyone can read in the repository must not open the API.
pub const DEV_TOKEN_SHA256: &str = "0cd48eed49739dfdd99efaef37d251aae5a80866e5954763c6597943fff5ce9b";

/// Prefix of the generic environment layer: `MESSAGES_BROKER_RETRY__SCAN_INTERVAL=1s`.
pub const ENV_PREFIX: &str = "MESSAGES_BROKER_";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub app: AppSettings,
    pub database: DatabaseSettings,
    pub rabbitmq: RabbitMqSettings,
    pub message: MessageSettings,
    pub retry: RetrySettings,
    pub publish: PublishSettings,
    pub request: RequestSettings,
    pub stats: StatsSettings,
    pub ingest: IngestSettings,
    pub scheduling: SchedulingSettings,
    pub retention: RetentionSettings,
    pub replay: ReplaySettings,
    pub failed: FailedSettings,
    pub schemas: SchemaSettings,
    pub auth: AuthSettings,
    pub console: ConsoleSettings,
    pub topology: TopologySettings,
}

/// A secret string: `Debug` and `Display` print `[redacted]`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    // Serialized only to feed figment's defaults layer, never for output.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        lenient_string(deserializer).map(Secret)
    }
}

/// Environment values are parsed as TOML-ish values: `DB_PASSWORD=1234` arrives as an integer.
fn lenient_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Int(i64),
        Uint(u64),
        Float(f64),
        Bool(bool),
    }
    Ok(match Scalar::deserialize(deserializer)? {
        Scalar::Text(s) => s,
        Scalar::Int(n) => n.to_string(),
        Scalar::Uint(n) => n.to_string(),
        Scalar::Float(n) => n.to_string(),
        Scalar::Bool(b) => b.to_string(),
    })
}

/// A setting that cannot be used: one line that names the key (and the variable that set it).
#[derive(Debug, thiserror::Error)]
#[error("invalid setting `{key}`{source_hint}: {reason}")]
pub struct SettingsError {
    pub key: String,
    source_hint: String,
    pub reason: String,
}

impl SettingsError {
    fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        let key = key.into();
        let source_hint = ENV_KEYS
            .iter()
            .find(|(var, path)| *path == key && std::env::var_os(var).is_some())
            .map(|(var, _)| format!(" (from {var})"))
            .unwrap_or_default();
        Self {
            key,
            source_hint,
            reason: reason.into(),
        }
    }
}

impl Settings {
    /// Reads every layer. `config_dir` holds `default.toml` and `{APP_ENV}.toml`.
    pub fn load(config_dir: &std::path::Path, extra_file: Option<&std::path::Path>) -> Result<Self, SettingsError> {
        let env = std::env::var("APP_ENV").unwrap_or_else(|_| "local".into());
        if let Some(file) = extra_file
            && !file.is_file()
        {
            return Err(SettingsError::new(
                "--config",
                format!("{} does not exist or is not a file", file.display()),
            ));
        }
        let mut figment = Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::file(config_dir.join("default.toml")))
            .merge(Toml::file(config_dir.join(format!("{env}.toml"))));
        if let Some(file) = extra_file {
            figment = figment.merge(Toml::file(file));
        }
        let seed_env = Env::raw()
            .only(&ENV_KEYS.iter().map(|(var, _)| *var).collect::<Vec<_>>())
            .map(|var| {
                let path = ENV_KEYS
                    .iter()
                    .find(|(name, _)| var == *name)
                    .map_or("", |(_, path)| path);
                path.into()
            });
        // Only `SECTION__KEY` names: Kubernetes injects `MESSAGES_BROKER_PORT=tcp://...` and the
        // like for a Service named messages-broker, which are not settings.
        let generic = Env::prefixed(ENV_PREFIX)
            .filter(|key| key.as_str().contains("__"))
            .split("__");
        figment = figment.merge(seed_env).merge(generic);
        let settings: Settings = figment.extract().map_err(|err| {
            let key = err.path.join(".");
            let reason = err.kind.to_string();
            SettingsError::new(if key.is_empty() { "config".into() } else { key }, reason)
        })?;
        settings.check()?;
        Ok(settings)
    }

    /// Rules serde cannot express.
    pub fn check(&self) -> Result<(), SettingsError> {
        self.check_pace()?;
        if self.app.max_body_bytes < 1024 {
            return Err(SettingsError::new("app.max_body_bytes", "must be at least 1024"));
        }
        // A zero timeout would cut every connection at once: refused rather than read as "none".
        for (key, value) in [
            ("app.header_read_timeout", self.app.header_read_timeout),
            ("app.idle_timeout", self.app.idle_timeout),
            ("app.body_read_timeout", self.app.body_read_timeout),
        ] {
            if value.is_zero() {
                return Err(SettingsError::new(key, "must be more than 0"));
            }
        }
        let key_len = self.console.session_key.expose().len();
        if key_len > 0 && key_len < 32 {
            return Err(SettingsError::new(
                "console.session_key",
                "must be at least 32 characters (e.g. `openssl rand -hex 32`), or empty for a random key per process",
            ));
        }
        if self.console.session_ttl < Duration::from_secs(60) {
            return Err(SettingsError::new("console.session_ttl", "must be at least 1m"));
        }
        if self.app.max_connections == 0 {
            return Err(SettingsError::new("app.max_connections", "must be at least 1"));
        }
        for (i, client) in self.auth.clients.iter().enumerate() {
            let key = format!("auth.clients[{i}].token_sha256");
            if self.app.env == "production" && client.token_sha256.eq_ignore_ascii_case(DEV_TOKEN_SHA256) {
                return Err(SettingsError::new(
                    key,
                    "the development token of config/local.toml is refused when APP_ENV=production",
                ));
            }
            if client.token_sha256.len() != 64 || hex::decode(&client.token_sha256).is_err() {
                return Err(SettingsError::new(key, "must be 64 hex digits (sha-256 of the token)"));
            }
            if client.name.trim().is_empty() {
                return Err(SettingsError::new(
                    format!("auth.clients[{i}].name"),
                    "must not be empty",
                ));
            }
        }
        Ok(())
    }

    /// A replay's pace, and a lease that outlasts the longest wait of one batch.
    fn check_replay(&self) -> Result<(), SettingsError> {
        if self.replay.rate_per_second == 0 {
            return Err(SettingsError::new("replay.rate_per_second", "must be at least 1"));
        }
        if self.replay.scan_interval.is_zero() {
            return Err(SettingsError::new("replay.scan_interval", "must be more than 0"));
        }
        if self.replay.lease <= self.publish.confirm_timeout * 2 {
            return Err(SettingsError::new(
                "replay.lease",
                "must be more than twice publish.confirm_timeout (a batch may wait that long for its confirms)",
            ));
        }
        Ok(())
    }

    /// The intervals, timeouts and sizes of the workers and the publish path.
    fn check_pace(&self) -> Result<(), SettingsError> {
        if self.retention.interval.is_zero() {
            return Err(SettingsError::new("retention.interval", "must be more than 0"));
        }
        if self.scheduling.scan_interval.is_zero() || self.scheduling.max_delay.is_zero() {
            return Err(SettingsError::new(
                "scheduling.scan_interval",
                "scan_interval and max_delay must be more than 0",
            ));
        }
        if self.database.connection != "mysql" {
            return Err(SettingsError::new(
                "database.connection",
                format!("`{}` is not supported; use `mysql`", self.database.connection),
            ));
        }
        if self.retry.backoff.is_empty() {
            return Err(SettingsError::new("retry.backoff", "needs at least one delay"));
        }
        if self.retry.scan_interval.is_zero() {
            return Err(SettingsError::new("retry.scan_interval", "must be more than 0"));
        }
        if self.rabbitmq.reconnect_min.is_zero() || self.rabbitmq.reconnect_max < self.rabbitmq.reconnect_min {
            return Err(SettingsError::new(
                "rabbitmq.reconnect_max",
                "must be at least rabbitmq.reconnect_min, which must be more than 0",
            ));
        }
        if self.publish.confirm_timeout.is_zero() {
            return Err(SettingsError::new("publish.confirm_timeout", "must be more than 0"));
        }
        if self.publish.max_batch_messages == 0 || self.publish.audit_queue == 0 {
            return Err(SettingsError::new(
                "publish.max_batch_messages",
                "max_batch_messages and audit_queue must be at least 1",
            ));
        }
        if self.request.default_timeout.is_zero() || self.request.max_timeout < self.request.default_timeout {
            return Err(SettingsError::new(
                "request.max_timeout",
                "must be at least request.default_timeout, which must be more than 0",
            ));
        }
        if self.stats.interval < Duration::from_millis(100) {
            return Err(SettingsError::new("stats.interval", "must be at least 100ms"));
        }
        self.check_replay()?;
        if self.ingest.prefetch == 0 {
            return Err(SettingsError::new("ingest.prefetch", "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_redacted_in_debug() {
        let settings = Settings::default();
        let printed = format!("{settings:?}");
        assert!(!printed.contains("messages_broker_password"), "{printed}");
        assert!(printed.contains("[redacted]"));
    }

    #[test]
    fn the_dev_token_is_refused_in_production() {
        let mut settings = Settings::default();
        settings.auth.clients.push(ClientSettings {
            name: "local-dev".into(),
            token_sha256: DEV_TOKEN_SHA256.into(),
            scopes: vec![Scope::Admin],
            exchanges: None,
        });
        assert!(settings.check().is_ok());
        settings.app.env = "production".into();
        let err = settings.check().unwrap_err();
        assert_eq!(err.key, "auth.clients[0].token_sha256");
        assert!(err.reason.contains("production"));
    }

    #[test]
    fn a_request_timeout_beyond_its_maximum_is_refused() {
        let mut settings = Settings::default();
        settings.request.default_timeout = Duration::from_secs(60);
        assert_eq!(settings.check().unwrap_err().key, "request.max_timeout");
        settings.request.default_timeout = Duration::ZERO;
        assert_eq!(settings.check().unwrap_err().key, "request.max_timeout");
    }

    #[test]
    fn a_replay_lease_shorter_than_a_batch_is_refused() {
        let mut settings = Settings::default();
        settings.replay.lease = Duration::from_secs(10);
        assert_eq!(settings.check().unwrap_err().key, "replay.lease");
        settings.replay.lease = Duration::from_secs(11);
        assert!(settings.check().is_ok());
        settings.replay.rate_per_second = 0;
        assert_eq!(settings.check().unwrap_err().key, "replay.rate_per_second");
    }

    #[test]
    fn a_bad_token_hash_names_its_key() {
        let mut settings = Settings::default();
        settings.auth.clients.push(ClientSettings {
            name: "x".into(),
            token_sha256: "abc".into(),
            scopes: vec![Scope::Read],
            exchanges: None,
        });
        let err = settings.check().unwrap_err();
        assert_eq!(err.key, "auth.clients[0].token_sha256");
    }

    #[test]
    fn zero_http_limits_are_refused_naming_their_key() {
        type Spoil = fn(&mut Settings);
        let cases: [(&str, Spoil); 4] = [
            ("app.header_read_timeout", |s| {
                s.app.header_read_timeout = Duration::ZERO
            }),
            ("app.idle_timeout", |s| s.app.idle_timeout = Duration::ZERO),
            ("app.body_read_timeout", |s| s.app.body_read_timeout = Duration::ZERO),
            ("app.max_connections", |s| s.app.max_connections = 0),
        ];
        for (key, spoil) in cases {
            let mut settings = Settings::default();
            spoil(&mut settings);
            assert_eq!(settings.check().unwrap_err().key, key);
        }
    }
}
