//! The roles a process can run, by name: data that the settings (`app.roles`, `WORKER_ROLES`) and
//! the composition root both read, kept apart from the workers so that settings never import them.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use strum::{Display, EnumIter, EnumString, IntoEnumIterator, IntoStaticStr};

/// A role by its name in `WORKER_ROLES`, logs and metrics labels (derived: `as_str`, `parse`, `Display`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Display, EnumIter, EnumString, IntoStaticStr)]
#[strum(serialize_all = "lowercase")]
pub enum Role {
    /// Declares the topology on start and after every reconnect.
    Applier,
    /// The REST API, including the rate-limited publish endpoint.
    Api,
    /// Dead-letter queues -> `failed_messages`.
    Ingester,
    /// Republishes due failed messages with backoff.
    Retrier,
    /// Polls queue depth, consumers and rates for the API and Prometheus.
    Stats,
    /// Publishes delayed messages (kept in MySQL) when they are due.
    Scheduler,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Roles that read or write MySQL; a process without any of them needs no database.
    pub fn needs_database(self) -> bool {
        !matches!(self, Self::Applier)
    }
}

/// Roles of this process: a list, or a comma-separated string (`WORKER_ROLES=api,stats`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles(pub Vec<Role>);

impl Roles {
    pub fn all() -> Self {
        Self(Role::iter().collect())
    }

    pub fn contains(&self, role: Role) -> bool {
        self.0.contains(&role)
    }
}

impl Default for Roles {
    fn default() -> Self {
        Self::all()
    }
}

impl FromStr for Roles {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut roles = Vec::new();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let role: Role = name.parse().map_err(|_| {
                let known: Vec<&str> = Role::iter().map(Role::as_str).collect();
                format!("unknown role `{name}` (expected one of: {})", known.join(", "))
            })?;
            if !roles.contains(&role) {
                roles.push(role);
            }
        }
        if roles.is_empty() {
            return Err("no role given".into());
        }
        Ok(Self(roles))
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|r| r.as_str()).collect();
        f.write_str(&names.join(","))
    }
}

impl Serialize for Roles {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Roles {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            List(Vec<String>),
        }
        let text = match Raw::deserialize(deserializer)? {
            Raw::Text(text) => text,
            Raw::List(list) => list.join(","),
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_from_comma_separated_text() {
        let roles: Roles = "api, stats,api".parse().unwrap();
        assert_eq!(roles.0, vec![Role::Api, Role::Stats]);
        assert!("api,bogus".parse::<Roles>().unwrap_err().contains("bogus"));
        assert!("".parse::<Roles>().is_err());
    }
}
