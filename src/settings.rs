//! Settings: built-in defaults < `config/default.toml` < `config/{APP_ENV}.toml` < `--config FILE`
//! < environment (the seed's variable names, plus `MESSAGES_BROKER_<SECTION>__<KEY>` for any key).

use std::{fmt, path::PathBuf, time::Duration};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::roles::Roles;

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
    pub stats: StatsSettings,
    pub ingest: IngestSettings,
    pub auth: AuthSettings,
}

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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Only `mysql` (MySQL 8.0 or MariaDB 10.6+).
    #[serde(deserialize_with = "lenient_string")]
    pub connection: String,
    #[serde(deserialize_with = "lenient_string")]
    pub host: String,
    pub port: u16,
    #[serde(deserialize_with = "lenient_string")]
    pub database: String,
    #[serde(deserialize_with = "lenient_string")]
    pub username: String,
    pub password: Secret,
    pub max_connections: u32,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// `serve` runs the migrations before the roles that need the database start.
    pub migrate_on_start: bool,
    /// TLS to MySQL: `disabled`, `preferred` (TLS when the server offers it), `required`,
    /// `verify_ca` or `verify_identity` (the last two check the certificate against `ssl_ca`).
    pub ssl_mode: SslMode,
    /// PEM file of the CA that signed the server's certificate (for `verify_ca`/`verify_identity`).
    pub ssl_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SslMode {
    Disabled,
    Preferred,
    Required,
    VerifyCa,
    VerifyIdentity,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            connection: "mysql".into(),
            host: "127.0.0.1".into(),
            port: 3306,
            database: "messages_broker_db".into(),
            username: "messages_broker_user".into(),
            password: Secret::new("messages_broker_password"),
            max_connections: 10,
            connect_timeout: Duration::from_secs(5),
            migrate_on_start: true,
            ssl_mode: SslMode::Preferred,
            ssl_ca: None,
        }
    }
}

impl DatabaseSettings {
    pub fn connect_options(&self) -> sqlx::mysql::MySqlConnectOptions {
        use sqlx::mysql::MySqlSslMode;
        let options = sqlx::mysql::MySqlConnectOptions::new()
            .host(&self.host)
            .port(self.port)
            .username(&self.username)
            .password(self.password.expose())
            .database(&self.database)
            .charset("utf8mb4")
            .ssl_mode(match self.ssl_mode {
                SslMode::Disabled => MySqlSslMode::Disabled,
                SslMode::Preferred => MySqlSslMode::Preferred,
                SslMode::Required => MySqlSslMode::Required,
                SslMode::VerifyCa => MySqlSslMode::VerifyCa,
                SslMode::VerifyIdentity => MySqlSslMode::VerifyIdentity,
            });
        match &self.ssl_ca {
            Some(ca) => options.ssl_ca(ca),
            None => options,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RabbitMqSettings {
    #[serde(deserialize_with = "lenient_string")]
    pub host: String,
    pub port: u16,
    pub management_port: u16,
    #[serde(deserialize_with = "lenient_string")]
    pub user: String,
    pub password: Secret,
    #[serde(deserialize_with = "lenient_string")]
    pub vhost: String,
    /// AMQP heartbeat, seconds: a dead peer is noticed within about twice this.
    pub heartbeat: u16,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// First and last wait between reconnection attempts (exponential, with jitter).
    #[serde(with = "humantime_serde")]
    pub reconnect_min: Duration,
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// Base URL of the management API; empty means `http://{host}:{management_port}`.
    #[serde(deserialize_with = "lenient_string")]
    pub management_url: String,
    /// AMQP over TLS (`amqps://`, usually port 5671), server certificate checked against the
    /// system's CA store.
    pub tls: bool,
}

impl Default for RabbitMqSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 5672,
            management_port: 15672,
            user: "guest".into(),
            password: Secret::new("guest"),
            vhost: "/".into(),
            heartbeat: 10,
            connect_timeout: Duration::from_secs(5),
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(10),
            management_url: String::new(),
            tls: false,
        }
    }
}

impl RabbitMqSettings {
    /// The AMQP URI with credentials: never log it, log [`Self::display_uri`].
    pub fn amqp_uri(&self) -> String {
        format!(
            "{}://{}:{}@{}:{}/{}?heartbeat={}&connection_timeout={}",
            self.scheme(),
            encode_component(&self.user),
            encode_component(self.password.expose()),
            self.host,
            self.port,
            encode_component(&self.vhost),
            self.heartbeat,
            self.connect_timeout.as_millis()
        )
    }

    fn scheme(&self) -> &'static str {
        if self.tls { "amqps" } else { "amqp" }
    }

    pub fn display_uri(&self) -> String {
        format!(
            "{}://{}@{}:{}/{}",
            self.scheme(),
            self.user,
            self.host,
            self.port,
            encode_component(&self.vhost)
        )
    }

    pub fn management_base(&self) -> String {
        if self.management_url.is_empty() {
            format!("http://{}:{}", self.host, self.management_port)
        } else {
            self.management_url.trim_end_matches('/').to_owned()
        }
    }
}

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

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    pub clients: Vec<ClientSettings>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSettings {
    pub name: String,
    /// Hex SHA-256 of the bearer token; the token itself is never stored.
    pub token_sha256: String,
    pub scopes: Vec<Scope>,
    /// Publish allow-list; absent means any exchange of the topology.
    pub exchanges: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Publish,
    Read,
    Operate,
    Admin,
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

/// Percent-encodes everything but unreserved characters (URI userinfo, vhost, path segments).
pub fn encode_component(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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
        figment = figment.merge(seed_env).merge(Env::prefixed(ENV_PREFIX).split("__"));
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
        if self.stats.interval < Duration::from_millis(100) {
            return Err(SettingsError::new("stats.interval", "must be at least 100ms"));
        }
        if self.ingest.prefetch == 0 {
            return Err(SettingsError::new("ingest.prefetch", "must be at least 1"));
        }
        if self.app.max_body_bytes < 1024 {
            return Err(SettingsError::new("app.max_body_bytes", "must be at least 1024"));
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

    /// Backoff after `MESSAGE_RETRY_DELAY` and `MESSAGE_MAX_RETRIES` are taken into account.
    pub fn backoff(&self) -> Vec<Duration> {
        match self.message.retry_delay {
            Some(first_ms) => [1, 5, 30]
                .iter()
                .map(|factor| Duration::from_millis(first_ms.saturating_mul(*factor)))
                .collect(),
            None => self.retry.backoff.clone(),
        }
    }

    pub fn max_retries(&self) -> u32 {
        self.message.max_retries
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
    fn retry_delay_sets_the_first_step_and_keeps_the_ratio() {
        let mut settings = Settings::default();
        assert_eq!(
            settings.backoff(),
            vec![
                Duration::from_secs(60),
                Duration::from_secs(300),
                Duration::from_secs(1800)
            ]
        );
        settings.message.retry_delay = Some(1000);
        assert_eq!(
            settings.backoff(),
            vec![Duration::from_secs(1), Duration::from_secs(5), Duration::from_secs(30)]
        );
    }

    #[test]
    fn amqp_uri_encodes_the_vhost_and_credentials() {
        let rabbit = RabbitMqSettings {
            password: Secret::new("p@ss/word"),
            ..Default::default()
        };
        assert_eq!(
            rabbit.amqp_uri(),
            "amqp://guest:p%40ss%2Fword@127.0.0.1:5672/%2F?heartbeat=10&connection_timeout=5000"
        );
        assert_eq!(rabbit.display_uri(), "amqp://guest@127.0.0.1:5672/%2F");
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
    fn tls_switches_the_amqp_scheme() {
        let rabbit = RabbitMqSettings {
            tls: true,
            port: 5671,
            ..Default::default()
        };
        assert!(rabbit.amqp_uri().starts_with("amqps://guest:guest@127.0.0.1:5671/"));
        assert_eq!(rabbit.display_uri(), "amqps://guest@127.0.0.1:5671/%2F");
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
}
