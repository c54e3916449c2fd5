//! The topology as written in `topology.toml` (raw, serde) and as resolved after validation.
//!
//! Raw types keep enums and numbers loose (`String`, `i64`) on purpose: a bad exchange type or a
//! negative limit becomes one entry of the validation report, with its path, instead of a serde
//! error that would hide every other problem in the file.

use serde::{Deserialize, Serialize};
use strum::{EnumIter, EnumString, IntoStaticStr};

/// The file, exactly as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyFile {
    /// Standard queue parameters; each queue may override any of them.
    #[serde(default)]
    pub queue_defaults: QueueDefaults,
    /// How dead-letter queues are derived: one per queue that has a dead-letter exchange.
    pub dead_letter_queues: Option<DeadLetterQueuesSpec>,
    #[serde(default)]
    pub exchanges: Vec<ExchangeSpec>,
    #[serde(default)]
    pub queues: Vec<QueueSpec>,
    #[serde(default)]
    pub bindings: Vec<BindingSpec>,
    #[serde(default)]
    pub rate_limits: Vec<RateLimitSpec>,
    /// Broker users (one per service), their vhost permissions and topic permissions.
    #[serde(default)]
    pub users: Vec<UserSpec>,
    /// JSON Schemas of events (`data` of the envelope), per event or pattern and version.
    #[serde(default)]
    pub schemas: Vec<SchemaSpec>,
    /// Where `[[schemas]]` files are read from: the topology file's directory (set by `read`;
    /// the working directory for a file parsed from text).
    #[serde(skip)]
    pub base_dir: std::path::PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueDefaults {
    #[serde(default = "yes")]
    pub durable: bool,
    #[serde(default)]
    pub auto_delete: bool,
    /// `x-message-ttl`, milliseconds.
    pub message_ttl: Option<i64>,
    /// `x-max-length`, messages.
    pub max_length: Option<i64>,
    /// `x-overflow`: `drop-head`, `reject-publish` or `reject-publish-dlx`.
    pub overflow: Option<String>,
    /// `x-dead-letter-exchange`.
    pub dead_letter_exchange: Option<String>,
    /// `x-queue-type`: `classic` or `quorum`.
    #[serde(rename = "type")]
    pub queue_type: Option<String>,
}

impl Default for QueueDefaults {
    fn default() -> Self {
        Self {
            durable: true,
            auto_delete: false,
            message_ttl: None,
            max_length: None,
            overflow: None,
            dead_letter_exchange: None,
            queue_type: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterQueuesSpec {
    /// Appended to the source queue's name: `orders_queue` -> `orders_queue.dlq`.
    #[serde(default = "default_dlq_suffix")]
    pub suffix: String,
    /// `x-message-ttl` of every dead-letter queue, milliseconds (7 days in the seed).
    pub message_ttl: Option<i64>,
    #[serde(default = "yes")]
    pub durable: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeSpec {
    pub name: String,
    /// `direct`, `topic`, `fanout` or `headers`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default = "yes")]
    pub durable: bool,
    #[serde(default)]
    pub auto_delete: bool,
    /// Publishing through the REST API is refused for internal exchanges (the dead-letter one).
    #[serde(default)]
    pub internal: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSpec {
    pub name: String,
    pub durable: Option<bool>,
    pub auto_delete: Option<bool>,
    pub message_ttl: Option<i64>,
    pub max_length: Option<i64>,
    pub overflow: Option<String>,
    /// Overrides the default; `""` turns dead-lettering off for this queue.
    pub dead_letter_exchange: Option<String>,
    #[serde(rename = "type")]
    pub queue_type: Option<String>,
    /// `x-max-priority` (classic queues only), 1..=255.
    pub max_priority: Option<i64>,
    /// `x-delivery-limit` (quorum queues only).
    pub delivery_limit: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingSpec {
    pub exchange: String,
    pub queue: String,
    /// Ignored by fanout exchanges; defaults to `""`.
    #[serde(default)]
    pub routing_key: String,
}

/// A token bucket: `per_second` sustained, `burst` at once. Keyed by exchange, by client, or both.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    pub exchange: Option<String>,
    pub client: Option<String>,
    pub per_second: i64,
    pub burst: Option<i64>,
}

/// One broker user. Its password is never in the file: exactly one of `password_env`,
/// `password_file` or `password_hash` says where it comes from.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    pub name: String,
    /// An environment variable of the applier's process holding the password.
    pub password_env: Option<String>,
    /// A file holding the password (a mounted Kubernetes Secret); one trailing newline is dropped.
    pub password_file: Option<String>,
    /// RabbitMQ's own salted hash (base64), as `rabbitmqctl hash_password` prints it.
    pub password_hash: Option<String>,
    /// The hash's algorithm; only with `password_hash` (default `rabbit_password_hashing_sha256`).
    pub hashing_algorithm: Option<String>,
    /// Management tags (`administrator`, `monitoring`, `management`...); none by default.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Vhost permission regexes; `""` (the default) grants nothing.
    #[serde(default)]
    pub configure: String,
    #[serde(default)]
    pub write: String,
    #[serde(default)]
    pub read: String,
    #[serde(default)]
    pub topic_permissions: Vec<TopicPermissionSpec>,
}

/// Which routing keys a user may publish with (`write`) on one topic exchange.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicPermissionSpec {
    pub exchange: String,
    pub write: String,
    /// The broker checks it for consumers of MQTT and STOMP only; `.*` (anything) by default.
    #[serde(default = "any_key")]
    pub read: String,
}

/// One event schema: the `data` of messages whose `event` matches, in this `version`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaSpec {
    /// An event name (`order.created`) or a pattern (`order.*`, `order.#`), as in topic bindings.
    pub event: String,
    /// Dotted numbers (`1.0`, `2.1`), compared numerically.
    pub version: String,
    /// A JSON Schema file, relative to the topology file.
    pub file: String,
    /// Only for messages published to this exchange; any exchange when absent.
    pub exchange: Option<String>,
}

fn any_key() -> String {
    ".*".to_owned()
}

fn yes() -> bool {
    true
}

fn default_dlq_suffix() -> String {
    ".dlq".to_owned()
}

// ---------------------------------------------------------------------------------------------
// Resolved topology: defaults applied, dead-letter queues expanded, every name checked.

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Topology {
    pub exchanges: Vec<Exchange>,
    /// Service queues first, in file order, then the derived dead-letter queues.
    pub queues: Vec<Queue>,
    /// File bindings, then one binding per dead-letter queue.
    pub bindings: Vec<Binding>,
    pub rate_limits: Vec<RateLimit>,
    /// Not shown by `GET /api/topology`: its answer stays as it was, and no password hash leaves
    /// the process.
    #[serde(skip)]
    pub users: Vec<User>,
    /// Compiled event schemas; listed by `GET /api/schemas`, not by `GET /api/topology`.
    #[serde(skip)]
    pub schemas: super::schemas::Schemas,
}

/// A broker user after validation: one password source, compiled-and-checked regexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub password: PasswordSource,
    pub tags: Vec<String>,
    pub permissions: Permissions,
    /// Sorted by exchange, one per exchange.
    pub topic_permissions: Vec<TopicPermission>,
}

/// Where a user's password comes from; read only when the user is created or updated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    Env(String),
    File(String),
    Hash { hash: String, algorithm: String },
}

/// Configure, write and read regexes on the vhost, as RabbitMQ stores them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Permissions {
    pub configure: String,
    pub write: String,
    pub read: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPermission {
    pub exchange: String,
    pub write: String,
    pub read: String,
}

/// The hashing algorithms RabbitMQ knows, the first being its default.
pub const HASHING_ALGORITHMS: [&str; 3] = [
    "rabbit_password_hashing_sha256",
    "rabbit_password_hashing_sha512",
    "rabbit_password_hashing_md5",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, EnumIter, EnumString, IntoStaticStr)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum ExchangeKind {
    Direct,
    Topic,
    Fanout,
    Headers,
}

impl ExchangeKind {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exchange {
    pub name: String,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, EnumIter, EnumString, IntoStaticStr)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum QueueType {
    Classic,
    Quorum,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, EnumIter, EnumString, IntoStaticStr)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum Overflow {
    DropHead,
    RejectPublish,
    RejectPublishDlx,
}

impl Overflow {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// What a queue is for: the ingester consumes the dead-letter ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum QueueRole {
    Service,
    DeadLetter { source_queue: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Queue {
    pub name: String,
    pub durable: bool,
    pub auto_delete: bool,
    pub queue_type: QueueType,
    pub message_ttl: Option<u32>,
    pub max_length: Option<u32>,
    pub overflow: Option<Overflow>,
    /// With it, `x-dead-letter-routing-key` is the queue's own name so the DLX routes to its DLQ.
    pub dead_letter_exchange: Option<String>,
    pub max_priority: Option<u8>,
    pub delivery_limit: Option<u32>,
    pub role: QueueRole,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Binding {
    pub exchange: String,
    pub queue: String,
    pub routing_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RateLimit {
    pub exchange: Option<String>,
    pub client: Option<String>,
    pub per_second: u32,
    pub burst: u32,
}

/// One queue argument, in the broker's own words (`x-...`), as both AMQP and the management API
/// see it. Shared by `declare` (to build the FieldTable) and `diff` (to compare with live).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgValue {
    Int(i64),
    Str(String),
}

impl Queue {
    /// The `x-` arguments this queue is declared with, sorted by name.
    pub fn arguments(&self) -> Vec<(&'static str, ArgValue)> {
        let mut args = Vec::new();
        if let Some(dlx) = &self.dead_letter_exchange {
            args.push(("x-dead-letter-exchange", ArgValue::Str(dlx.clone())));
            args.push(("x-dead-letter-routing-key", ArgValue::Str(self.name.clone())));
        }
        if let Some(limit) = self.delivery_limit {
            args.push(("x-delivery-limit", ArgValue::Int(limit.into())));
        }
        if let Some(len) = self.max_length {
            args.push(("x-max-length", ArgValue::Int(len.into())));
        }
        if let Some(priority) = self.max_priority {
            args.push(("x-max-priority", ArgValue::Int(priority.into())));
        }
        if let Some(ttl) = self.message_ttl {
            args.push(("x-message-ttl", ArgValue::Int(ttl.into())));
        }
        if let Some(overflow) = self.overflow {
            args.push(("x-overflow", ArgValue::Str(overflow.as_str().to_owned())));
        }
        // Classic is the broker's default: naming it would make queues declared without it drift.
        if self.queue_type == QueueType::Quorum {
            args.push(("x-queue-type", ArgValue::Str(self.queue_type.as_str().to_owned())));
        }
        args
    }

    pub fn is_dead_letter(&self) -> bool {
        matches!(self.role, QueueRole::DeadLetter { .. })
    }

    /// The service queue whose dead letters this queue holds.
    pub fn source_queue(&self) -> Option<&str> {
        match &self.role {
            QueueRole::DeadLetter { source_queue } => Some(source_queue),
            QueueRole::Service => None,
        }
    }
}

impl Topology {
    pub fn exchange(&self, name: &str) -> Option<&Exchange> {
        self.exchanges.iter().find(|e| e.name == name)
    }

    pub fn queue(&self, name: &str) -> Option<&Queue> {
        self.queues.iter().find(|q| q.name == name)
    }

    pub fn dead_letter_queues(&self) -> impl Iterator<Item = &Queue> {
        self.queues.iter().filter(|q| q.is_dead_letter())
    }

    /// The dead-letter queue of service queue `name`, if it has one.
    pub fn dead_letter_queue_of(&self, name: &str) -> Option<&Queue> {
        self.dead_letter_queues().find(|dlq| dlq.source_queue() == Some(name))
    }
}
