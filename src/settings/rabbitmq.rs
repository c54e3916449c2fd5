//! `[rabbitmq]`: the broker's AMQP connection (URI, heartbeat, reconnection) and its management API.

use std::time::Duration;

use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::{Deserialize, Serialize};

use super::{Secret, lenient_string};

/// Everything but RFC 3986's unreserved characters (letters, digits, `-._~`) is percent-encoded:
/// a vhost or a queue name becomes one URI component (`/` is `%2F`), in logs and in the
/// management API's paths.
pub const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

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
    /// The AMQP URI with credentials (lapin encodes them when it renders the URI): never log it,
    /// not even with `{:?}`; log [`Self::display_uri`].
    pub fn amqp_uri(&self) -> AMQPUri {
        AMQPUri {
            scheme: if self.tls { AMQPScheme::AMQPS } else { AMQPScheme::AMQP },
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo {
                    username: self.user.clone(),
                    password: self.password.expose().to_owned(),
                },
                host: self.host.clone(),
                port: self.port,
            },
            vhost: self.vhost.clone(),
            query: AMQPQueryString {
                heartbeat: Some(self.heartbeat),
                connection_timeout: Some(u64::try_from(self.connect_timeout.as_millis()).unwrap_or(u64::MAX)),
                ..AMQPQueryString::default()
            },
        }
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
            utf8_percent_encode(&self.vhost, URI_COMPONENT)
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
            rabbit.amqp_uri().to_string(),
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
        assert!(
            rabbit
                .amqp_uri()
                .to_string()
                .starts_with("amqps://guest:guest@127.0.0.1:5671/")
        );
        assert_eq!(rabbit.display_uri(), "amqps://guest@127.0.0.1:5671/%2F");
    }
}
