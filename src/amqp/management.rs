//! A small client for the RabbitMQ management HTTP API (topology diff, stats, tests' fault
//! injection). Only what we use is modelled; unknown fields are ignored.

use std::{collections::BTreeMap, time::Duration};

use percent_encoding::{PercentEncode, utf8_percent_encode};
use serde::{Deserialize, de::DeserializeOwned};

use crate::settings::{RabbitMqSettings, URI_COMPONENT};

/// A vhost or a name as one path segment: percent-encoded, it can never escape its segment
/// (`../`, `%00`, `/`).
fn segment(raw: &str) -> PercentEncode<'_> {
    utf8_percent_encode(raw, URI_COMPONENT)
}

#[derive(Debug, thiserror::Error)]
pub enum ManagementError {
    #[error("management API unreachable at {url}: {source} (is the rabbitmq_management plugin enabled?)")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("management API answered {status} for {url}")]
    Status { url: String, status: reqwest::StatusCode },
    #[error("management API sent an unexpected body for {url}: {source}")]
    Body { url: String, source: reqwest::Error },
}

#[derive(Clone)]
pub struct ManagementClient {
    http: reqwest::Client,
    base: String,
    user: String,
    password: String,
    /// The vhost, already percent-encoded for paths (`/` -> `%2F`).
    vhost: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ExchangeInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    #[serde(default)]
    pub arguments: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct QueueInfo {
    pub name: String,
    pub durable: bool,
    pub auto_delete: bool,
    #[serde(default)]
    pub arguments: BTreeMap<String, serde_json::Value>,
    /// Absent for a moment after creation, before the first stats emission.
    #[serde(default)]
    pub messages: u64,
    #[serde(default)]
    pub messages_ready: u64,
    #[serde(default)]
    pub messages_unacknowledged: u64,
    #[serde(default)]
    pub consumers: u64,
    #[serde(default)]
    pub message_stats: MessageStats,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct MessageStats {
    #[serde(default)]
    pub publish_details: Rate,
    #[serde(default)]
    pub deliver_get_details: Rate,
    #[serde(default)]
    pub ack_details: Rate,
    #[serde(default)]
    pub redeliver_details: Rate,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct Rate {
    #[serde(default)]
    pub rate: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BindingInfo {
    pub source: String,
    pub destination: String,
    pub destination_type: String,
    pub routing_key: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ConnectionInfo {
    pub name: String,
    #[serde(default)]
    pub client_properties: ClientProperties,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ClientProperties {
    #[serde(default)]
    pub connection_name: Option<String>,
}

impl ManagementClient {
    pub fn new(settings: &RabbitMqSettings) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(2))
            .build()
            .expect("a plain HTTP client always builds");
        Self {
            http,
            base: settings.management_base(),
            user: settings.user.clone(),
            password: settings.password.expose().to_owned(),
            vhost: segment(&settings.vhost).to_string(),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder, url: &str) -> Result<reqwest::Response, ManagementError> {
        let response = request
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .map_err(|source| ManagementError::Unreachable {
                url: url.to_owned(),
                source,
            })?;
        if !response.status().is_success() {
            return Err(ManagementError::Status {
                url: url.to_owned(),
                status: response.status(),
            });
        }
        Ok(response)
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ManagementError> {
        let url = format!("{}{path}", self.base);
        let response = self.send(self.http.get(&url), &url).await?;
        response
            .json()
            .await
            .map_err(|source| ManagementError::Body { url, source })
    }

    async fn delete(&self, path: &str) -> Result<(), ManagementError> {
        let url = format!("{}{path}", self.base);
        self.send(self.http.delete(&url), &url).await.map(drop)
    }

    pub async fn overview(&self) -> Result<serde_json::Value, ManagementError> {
        self.get("/api/overview").await
    }

    pub async fn exchanges(&self) -> Result<Vec<ExchangeInfo>, ManagementError> {
        self.get(&format!("/api/exchanges/{}", self.vhost)).await
    }

    pub async fn queues(&self) -> Result<Vec<QueueInfo>, ManagementError> {
        self.get(&format!("/api/queues/{}", self.vhost)).await
    }

    pub async fn queue(&self, name: &str) -> Result<QueueInfo, ManagementError> {
        self.get(&format!("/api/queues/{}/{}", self.vhost, segment(name))).await
    }

    pub async fn bindings(&self) -> Result<Vec<BindingInfo>, ManagementError> {
        self.get(&format!("/api/bindings/{}", self.vhost)).await
    }

    pub async fn connections(&self) -> Result<Vec<ConnectionInfo>, ManagementError> {
        self.get("/api/connections").await
    }

    /// Force-closes a connection (fault injection in tests, operator tooling).
    pub async fn close_connection(&self, name: &str) -> Result<(), ManagementError> {
        self.delete(&format!("/api/connections/{}", segment(name))).await
    }

    pub async fn delete_queue(&self, name: &str) -> Result<(), ManagementError> {
        self.delete(&format!("/api/queues/{}/{}", self.vhost, segment(name)))
            .await
    }

    pub async fn delete_exchange(&self, name: &str) -> Result<(), ManagementError> {
        self.delete(&format!("/api/exchanges/{}/{}", self.vhost, segment(name)))
            .await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_segment_keeps_unreserved_characters_and_encodes_the_rest() {
        assert_eq!(super::segment("/").to_string(), "%2F");
        assert_eq!(super::segment("orders.v1_dlq-x~y").to_string(), "orders.v1_dlq-x~y");
        assert_eq!(super::segment("../a b%é").to_string(), "..%2Fa%20b%25%C3%A9");
    }
}
