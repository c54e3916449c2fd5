//! Puts the file's `[[users]]` on the broker through the management API: each user (password
//! and tags), its vhost permissions, its topic permissions; and, when a setting asks for it,
//! deletes the broker's users that the file does not know.
//!
//! Users are not part of the messaging entities' state: a user that cannot be applied (its
//! password source is missing, the broker refused it) is reported and logged, and the exchanges
//! and queues are still "applied". The shipped file must let the service become ready on a
//! machine that has none of the services' passwords (CI, a developer's laptop).

use std::{collections::BTreeSet, fmt};

use serde_json::json;
use tracing::{info, warn};

use super::model::{PasswordSource, TopicPermission, User};
use crate::amqp::management::{ManagementClient, ManagementError, TopicPermissionInfo};

/// A user's password as the management API takes it.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    Password(String),
    Hash { hash: String, algorithm: String },
}

impl fmt::Debug for Credential {
    // The password must never reach a log line, even through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Password(_) => f.write_str("Password([redacted])"),
            Self::Hash { algorithm, .. } => write!(f, "Hash({algorithm})"),
        }
    }
}

/// Reads the password from where the file says; `Err` says what to set, for the operator.
pub fn resolve_password(source: &PasswordSource) -> Result<Credential, String> {
    match source {
        PasswordSource::Env(var) => match std::env::var(var) {
            Ok(value) if !value.is_empty() => Ok(Credential::Password(value)),
            Ok(_) => Err(format!(
                "environment variable {var} is empty: set it to the user's password"
            )),
            Err(_) => Err(format!(
                "environment variable {var} is not set: set it to the user's password"
            )),
        },
        PasswordSource::File(path) => match std::fs::read_to_string(path) {
            // Secrets written with `echo` end with a newline that is not part of the password.
            Ok(text) => match text.strip_suffix('\n').unwrap_or(&text) {
                "" => Err(format!("password file {path} is empty: put the user's password in it")),
                password => Ok(Credential::Password(password.to_owned())),
            },
            Err(err) => Err(format!(
                "password file {path} cannot be read ({err}): mount the user's Secret there"
            )),
        },
        PasswordSource::Hash { hash, algorithm } => Ok(Credential::Hash {
            hash: hash.clone(),
            algorithm: algorithm.clone(),
        }),
    }
}

/// The users that cannot be applied on this machine, with what to set: `(user, reason)`.
pub fn missing_passwords(users: &[User]) -> Vec<(String, String)> {
    users
        .iter()
        .filter_map(|user| {
            resolve_password(&user.password)
                .err()
                .map(|reason| (user.name.clone(), reason))
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserOutcome {
    Created,
    Updated,
    /// Not created nor updated: its password source is missing (the reason says what to set).
    Skipped(String),
    /// Refused by the broker, or the management API failed.
    Failed(String),
    /// On the broker, not in the file, and `topology.delete_unknown_users` is on.
    Deleted,
}

#[derive(Debug, Clone)]
pub struct UserApplied {
    pub name: String,
    pub outcome: UserOutcome,
}

impl fmt::Display for UserApplied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = &self.name;
        match &self.outcome {
            UserOutcome::Created => write!(f, "created  user {name}"),
            UserOutcome::Updated => write!(f, "updated  user {name}"),
            UserOutcome::Skipped(reason) => write!(f, "SKIPPED  user {name}: {reason}"),
            UserOutcome::Failed(reason) => write!(f, "FAILED   user {name}: {reason}"),
            UserOutcome::Deleted => write!(f, "deleted  user {name}: not in the topology file"),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct UsersReport {
    pub items: Vec<UserApplied>,
}

impl UsersReport {
    /// Users of the file that are not in place: skipped or failed.
    pub fn unapplied(&self) -> usize {
        self.items
            .iter()
            .filter(|u| matches!(u.outcome, UserOutcome::Skipped(_) | UserOutcome::Failed(_)))
            .count()
    }

    pub fn failed(&self) -> usize {
        self.items
            .iter()
            .filter(|u| matches!(u.outcome, UserOutcome::Failed(_)))
            .count()
    }
}

/// The broker's users that the "unknown" report and deletion leave alone: `guest` (turned off by
/// hand, README "Broker users") and the user this client signs in as (deleting it would lock the
/// service out).
pub fn protected_users(client: &ManagementClient) -> [&str; 2] {
    ["guest", client.user()]
}

/// Applies every user of the file, then deletes unknown ones if `delete_unknown`. With no
/// `[[users]]` in the file, users are not managed at all and nothing is done.
pub async fn apply_users(client: &ManagementClient, users: &[User], delete_unknown: bool) -> UsersReport {
    let mut report = UsersReport::default();
    if users.is_empty() {
        return report;
    }
    let (live_users, live_topic) = match tokio::try_join!(client.users(), client.topic_permissions()) {
        Ok(live) => live,
        Err(err) => {
            // Without the lists nothing can be compared: every user is reported failed.
            warn!(error = %err, "Cannot list the broker's users; the topology file's users are not applied (the management user needs the administrator tag).");
            report.items = users
                .iter()
                .map(|u| UserApplied {
                    name: u.name.clone(),
                    outcome: UserOutcome::Failed(err.to_string()),
                })
                .collect();
            return report;
        }
    };
    let existing: BTreeSet<&str> = live_users.iter().map(|u| u.name.as_str()).collect();
    for user in users {
        let outcome = match resolve_password(&user.password) {
            Err(reason) => {
                warn!(user = %user.name, reason = %reason, "Broker user not created or updated: its password source is missing.");
                UserOutcome::Skipped(reason)
            }
            Ok(credential) => match put_user(client, user, &credential, &live_topic).await {
                Ok(()) if existing.contains(user.name.as_str()) => UserOutcome::Updated,
                Ok(()) => UserOutcome::Created,
                Err(err) => {
                    warn!(user = %user.name, error = %err, "The broker refused a user of the topology file.");
                    UserOutcome::Failed(err.to_string())
                }
            },
        };
        report.items.push(UserApplied {
            name: user.name.clone(),
            outcome,
        });
    }
    let unknown = unknown_users(
        users,
        live_users.iter().map(|u| u.name.as_str()),
        &protected_users(client),
    );
    if delete_unknown {
        for name in unknown {
            let outcome = match client.delete_user(name).await {
                Ok(()) => UserOutcome::Deleted,
                Err(err) => UserOutcome::Failed(format!("could not delete it: {err}")),
            };
            info!(user = %name, outcome = ?outcome, "Broker user unknown to the topology file deleted (topology.delete_unknown_users).");
            report.items.push(UserApplied {
                name: name.to_owned(),
                outcome,
            });
        }
    } else if !unknown.is_empty() {
        info!(users = %unknown.join(", "), "Broker users unknown to the topology file, kept (topology.delete_unknown_users is off).");
    }
    report
}

/// Live user names that are neither in the file nor protected, in broker order.
pub fn unknown_users<'a>(users: &[User], live: impl IntoIterator<Item = &'a str>, protected: &[&str]) -> Vec<&'a str> {
    live.into_iter()
        .filter(|name| !protected.contains(name) && !users.iter().any(|u| u.name == *name))
        .collect()
}

/// The user, its permissions, then its topic permissions.
async fn put_user(
    client: &ManagementClient,
    user: &User,
    credential: &Credential,
    live_topic: &[TopicPermissionInfo],
) -> Result<(), ManagementError> {
    // A comma-separated string: what every RabbitMQ version accepts for `tags`.
    let tags = user.tags.join(",");
    let body = match credential {
        Credential::Password(password) => json!({"password": password, "tags": tags}),
        Credential::Hash { hash, algorithm } => {
            json!({"password_hash": hash, "hashing_algorithm": algorithm, "tags": tags})
        }
    };
    client.put_user(&user.name, &body).await?;
    let p = &user.permissions;
    let permissions = json!({"configure": p.configure, "write": p.write, "read": p.read});
    client.put_permissions(&user.name, &permissions).await?;
    // The API deletes a user's topic permissions all at once: only when the broker has one on an
    // exchange the file no longer names, and before the PUTs, so the restriction is back at once.
    if has_stale_topic_permissions(&user.name, &user.topic_permissions, live_topic) {
        client.delete_topic_permissions(&user.name).await?;
    }
    for topic in &user.topic_permissions {
        let body = json!({"exchange": topic.exchange, "write": topic.write, "read": topic.read});
        client.put_topic_permission(&user.name, &body).await?;
    }
    Ok(())
}

/// The broker has a topic permission of `user` on an exchange that `wanted` does not name.
fn has_stale_topic_permissions(user: &str, wanted: &[TopicPermission], live: &[TopicPermissionInfo]) -> bool {
    live.iter()
        .filter(|t| t.user == user)
        .any(|t| !wanted.iter().any(|w| w.exchange == t.exchange))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::model::Permissions;

    fn user(name: &str, source: PasswordSource) -> User {
        User {
            name: name.into(),
            password: source,
            tags: vec![],
            permissions: Permissions::default(),
            topic_permissions: vec![TopicPermission {
                exchange: "orders_exchange".into(),
                write: ".*".into(),
                read: ".*".into(),
            }],
        }
    }

    #[test]
    fn a_missing_password_source_says_what_to_set() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "s3cret\n").unwrap();
        let file = file.display().to_string();
        assert_eq!(
            resolve_password(&PasswordSource::File(file)),
            Ok(Credential::Password("s3cret".into()))
        );
        let unset = resolve_password(&PasswordSource::Env("MB_UNIT_TEST_SURELY_UNSET".into())).unwrap_err();
        assert_eq!(
            unset,
            "environment variable MB_UNIT_TEST_SURELY_UNSET is not set: set it to the user's password"
        );
        let missing = resolve_password(&PasswordSource::File("/nonexistent/pw".into())).unwrap_err();
        assert!(
            missing.starts_with("password file /nonexistent/pw cannot be read"),
            "{missing}"
        );
        assert_eq!(
            format!("{:?}", Credential::Password("s3cret".into())),
            "Password([redacted])"
        );
    }

    #[test]
    fn unknown_users_leave_the_file_and_the_protected_ones_out() {
        let users = [user("orders-service", PasswordSource::Env("X".into()))];
        let live = ["guest", "orders-service", "admin-bob", "messages-broker"];
        assert_eq!(
            unknown_users(&users, live, &["guest", "messages-broker"]),
            ["admin-bob"]
        );
    }

    #[test]
    fn only_a_topic_permission_on_an_exchange_the_file_dropped_is_stale() {
        let wanted = user("u", PasswordSource::Env("X".into())).topic_permissions;
        let live = |exchange: &str| TopicPermissionInfo {
            user: "u".into(),
            exchange: exchange.into(),
            write: "^x$".into(),
            read: ".*".into(),
        };
        assert!(!has_stale_topic_permissions("u", &wanted, &[live("orders_exchange")]));
        assert!(has_stale_topic_permissions("u", &wanted, &[live("other_exchange")]));
        assert!(!has_stale_topic_permissions("v", &wanted, &[live("other_exchange")]));
    }
}
