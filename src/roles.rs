//! The roles a process can run, by name: data that the settings (`app.roles`, `WORKER_ROLES`) and
//! the composition root both read, kept apart from the workers so that settings never import them.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Applier, Role::Api, Role::Ingester, Role::Retrier, Role::Stats];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applier => "applier",
            Self::Api => "api",
            Self::Ingester => "ingester",
            Self::Retrier => "retrier",
            Self::Stats => "stats",
        }
    }

    /// Roles that read or write MySQL; a process without any of them needs no database.
    pub fn needs_database(self) -> bool {
        !matches!(self, Self::Applier)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role `{s}` (expected one of: applier, api, ingester, retrier, stats)"))
    }
}

/// Roles of this process: a list, or a comma-separated string (`WORKER_ROLES=api,stats`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles(pub Vec<Role>);

impl Roles {
    pub fn all() -> Self {
        Self(Role::ALL.to_vec())
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
            let role: Role = name.parse()?;
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
