//! `[database]`: the MySQL connection and its TLS.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::{Secret, lenient_string};

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
