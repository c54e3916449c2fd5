//! `[rabbitmq]`: the broker's AMQP connection (URI, heartbeat, reconnection) and its management API.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Secret, lenient_string};
use crate::settings::encode_component;

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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn tls_switches_the_amqp_scheme() {
        let rabbit = RabbitMqSettings {
            tls: true,
            port: 5671,
            ..Default::default()
        };
        assert!(rabbit.amqp_uri().starts_with("amqps://guest:guest@127.0.0.1:5671/"));
        assert_eq!(rabbit.display_uri(), "amqps://guest@127.0.0.1:5671/%2F");
    }
}
