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

/// A broker user as `GET /api/users` lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct UserInfo {
    pub name: String,
    #[serde(default)]
    pub password_hash: String,
    #[serde(default)]
    pub hashing_algorithm: String,
    #[serde(default)]
    pub tags: Tags,
}

/// RabbitMQ 3.9+ lists tags as an array, older versions as one comma-separated string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Tags {
    List(Vec<String>),
    Joined(String),
}

impl Default for Tags {
    fn default() -> Self {
        Self::List(Vec::new())
    }
}

impl Tags {
    /// The tags, sorted, without empty entries.
    pub fn sorted(&self) -> Vec<String> {
        let mut tags: Vec<String> = match self {
            Self::List(list) => list.clone(),
            Self::Joined(joined) => joined.split(',').map(|t| t.trim().to_owned()).collect(),
        };
        tags.retain(|t| !t.is_empty());
        tags.sort();
        tags
    }
}

/// One user's configure/write/read regexes on our vhost.
#[derive(Debug, Clone, Deserialize)]
pub struct PermissionInfo {
    pub user: String,
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// One user's routing-key regexes on one exchange of our vhost.
#[derive(Debug, Clone, Deserialize)]
pub struct TopicPermissionInfo {
    pub user: String,
    pub exchange: String,
    pub write: String,
    pub read: String,
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

    async fn put(&self, path: &str, body: &serde_json::Value) -> Result<(), ManagementError> {
        let url = format!("{}{path}", self.base);
        self.send(self.http.put(&url).json(body), &url).await.map(drop)
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

    /// The user this client signs in as: never reported as unknown, never deleted.
    pub fn user(&self) -> &str {
        &self.user
    }

    pub async fn users(&self) -> Result<Vec<UserInfo>, ManagementError> {
        self.get("/api/users").await
    }

    /// Permissions of every user on our vhost.
    pub async fn permissions(&self) -> Result<Vec<PermissionInfo>, ManagementError> {
        self.get(&format!("/api/vhosts/{}/permissions", self.vhost)).await
    }

    /// Topic permissions of every user on our vhost.
    pub async fn topic_permissions(&self) -> Result<Vec<TopicPermissionInfo>, ManagementError> {
        self.get(&format!("/api/vhosts/{}/topic-permissions", self.vhost)).await
    }

    /// Creates or replaces a user; `body` holds `tags` and `password` or `password_hash`.
    pub async fn put_user(&self, name: &str, body: &serde_json::Value) -> Result<(), ManagementError> {
        self.put(&format!("/api/users/{}", segment(name)), body).await
    }

    pub async fn delete_user(&self, name: &str) -> Result<(), ManagementError> {
        self.delete(&format!("/api/users/{}", segment(name))).await
    }

    /// Sets `user`'s vhost permissions: `body` holds `configure`, `write` and `read`.
    pub async fn put_permissions(&self, user: &str, body: &serde_json::Value) -> Result<(), ManagementError> {
        self.put(&format!("/api/permissions/{}/{}", self.vhost, segment(user)), body)
            .await
    }

    /// Sets `user`'s topic permission on one exchange: `body` holds `exchange`, `write`, `read`.
    pub async fn put_topic_permission(&self, user: &str, body: &serde_json::Value) -> Result<(), ManagementError> {
        self.put(
            &format!("/api/topic-permissions/{}/{}", self.vhost, segment(user)),
            body,
        )
        .await
    }

    /// Removes every topic permission of `user` on our vhost (the API has no per-exchange delete).
    pub async fn delete_topic_permissions(&self, user: &str) -> Result<(), ManagementError> {
        self.delete(&format!("/api/topic-permissions/{}/{}", self.vhost, segment(user)))
            .await
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
