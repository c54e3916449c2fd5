//! `[auth]`: the API's clients, their token hashes, scopes and publish allow-lists.

use serde::{Deserialize, Serialize};
use strum::{Display, EnumIter};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Display, EnumIter)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Scope {
    Publish,
    Read,
    Operate,
    Admin,
}
