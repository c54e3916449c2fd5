//! The users part of the diff: users missing on the broker, changed tags, password hashes,
//! permissions and topic permissions, and users the broker has that the file does not know.
//! Pure over the fetched lists, like the rest of the diff.

use super::{Difference, push_changed};
use crate::{
    amqp::management::{PermissionInfo, TopicPermissionInfo, UserInfo},
    topology::model::{PasswordSource, User},
};

/// What the broker has, as the management API lists it.
pub struct LiveUsers<'a> {
    pub users: &'a [UserInfo],
    pub permissions: &'a [PermissionInfo],
    pub topic_permissions: &'a [TopicPermissionInfo],
    /// Never reported as unknown: `guest` and the user the diff signs in as.
    pub ignored: &'a [&'a str],
}

/// Each file user in file order, then the unknown users. Nothing when the file lists no users:
/// then users are not managed by the file.
pub fn diff_users(out: &mut Vec<Difference>, users: &[User], live: &LiveUsers<'_>) {
    if users.is_empty() {
        return;
    }
    for want in users {
        let Some(have) = live.users.iter().find(|u| u.name == want.name) else {
            out.push(Difference::Missing {
                kind: "user",
                name: want.name.clone(),
            });
            continue;
        };
        let mut tags = want.tags.clone();
        tags.sort();
        push_changed(
            out,
            "user",
            &want.name,
            "tags",
            format!("{tags:?}"),
            format!("{:?}", have.tags.sorted()),
        );
        // Only a hash can be compared: a password from the environment is salted differently on
        // every PUT.
        if let PasswordSource::Hash { hash, algorithm } = &want.password
            && (*hash != have.password_hash || *algorithm != have.hashing_algorithm)
        {
            push_changed(
                out,
                "user",
                &want.name,
                "password_hash",
                "the file's hash".into(),
                "another hash".into(),
            );
        }
        diff_permissions(out, want, live.permissions);
        diff_topic_permissions(out, want, live.topic_permissions);
    }
    for have in live.users {
        if !live.ignored.contains(&have.name.as_str()) && !users.iter().any(|u| u.name == have.name) {
            out.push(Difference::Unexpected {
                kind: "user",
                name: have.name.clone(),
            });
        }
    }
}

/// A permission regex as the diff shows it: quoted, so that `""` (nothing) is visible.
fn quoted(regex: &str) -> String {
    format!("\"{regex}\"")
}

/// The user's vhost permissions; absent on the broker means it cannot even open the vhost.
fn diff_permissions(out: &mut Vec<Difference>, want: &User, live: &[PermissionInfo]) {
    let p = &want.permissions;
    let Some(have) = live.iter().find(|h| h.user == want.name) else {
        push_changed(
            out,
            "user",
            &want.name,
            "permissions",
            format!(
                "configure {} write {} read {}",
                quoted(&p.configure),
                quoted(&p.write),
                quoted(&p.read)
            ),
            "absent".into(),
        );
        return;
    };
    for (field, file, broker) in [
        ("configure", &p.configure, &have.configure),
        ("write", &p.write, &have.write),
        ("read", &p.read, &have.read),
    ] {
        push_changed(out, "user", &want.name, field, quoted(file), quoted(broker));
    }
}

/// Per exchange: missing, changed, or on the broker only.
fn diff_topic_permissions(out: &mut Vec<Difference>, want: &User, live: &[TopicPermissionInfo]) {
    let ours: Vec<&TopicPermissionInfo> = live.iter().filter(|t| t.user == want.name).collect();
    for topic in &want.topic_permissions {
        let name = format!("{} on {}", want.name, topic.exchange);
        let Some(have) = ours.iter().find(|h| h.exchange == topic.exchange) else {
            out.push(Difference::Missing {
                kind: "topic permission",
                name,
            });
            continue;
        };
        for (field, file, broker) in [("write", &topic.write, &have.write), ("read", &topic.read, &have.read)] {
            push_changed(out, "topic permission", &name, field, quoted(file), quoted(broker));
        }
    }
    for have in ours {
        if !want.topic_permissions.iter().any(|t| t.exchange == have.exchange) {
            out.push(Difference::Unexpected {
                kind: "topic permission",
                name: format!("{} on {}", want.name, have.exchange),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        amqp::management::Tags,
        topology::model::{Permissions, TopicPermission},
    };

    fn orders_user() -> User {
        User {
            name: "orders-service".into(),
            password: PasswordSource::Env("RABBITMQ_PASSWORD_ORDERS".into()),
            tags: vec![],
            permissions: Permissions {
                configure: String::new(),
                write: "^orders_exchange$".into(),
                read: "^orders_queue$".into(),
            },
            topic_permissions: vec![TopicPermission {
                exchange: "orders_exchange".into(),
                write: r"^orders\..*".into(),
                read: ".*".into(),
            }],
        }
    }

    fn live_user(name: &str, tags: Tags) -> UserInfo {
        UserInfo {
            name: name.into(),
            password_hash: "h".into(),
            hashing_algorithm: "rabbit_password_hashing_sha256".into(),
            tags,
        }
    }

    fn live_permission(write: &str) -> PermissionInfo {
        PermissionInfo {
            user: "orders-service".into(),
            configure: String::new(),
            write: write.into(),
            read: "^orders_queue$".into(),
        }
    }

    fn live_topic(exchange: &str, write: &str) -> TopicPermissionInfo {
        TopicPermissionInfo {
            user: "orders-service".into(),
            exchange: exchange.into(),
            write: write.into(),
            read: ".*".into(),
        }
    }

    fn lines(users: &[User], live: &LiveUsers<'_>) -> Vec<String> {
        let mut out = Vec::new();
        diff_users(&mut out, users, live);
        out.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn matching_users_have_no_difference_and_the_ignored_ones_are_not_unknown() {
        let users = [
            live_user("orders-service", Tags::Joined(String::new())),
            live_user("guest", Tags::List(vec!["administrator".into()])),
        ];
        let live = LiveUsers {
            users: &users,
            permissions: &[live_permission("^orders_exchange$")],
            topic_permissions: &[live_topic("orders_exchange", r"^orders\..*")],
            ignored: &["guest"],
        };
        assert_eq!(lines(&[orders_user()], &live), Vec::<String>::new());
    }

    #[test]
    fn every_kind_of_user_drift_is_listed() {
        let users = [
            live_user("orders-service", Tags::List(vec!["monitoring".into()])),
            live_user("bob", Tags::default()),
        ];
        let live = LiveUsers {
            users: &users,
            permissions: &[live_permission(".*")],
            topic_permissions: &[live_topic("orders_exchange", ".*"), live_topic("events", ".*")],
            ignored: &["guest"],
        };
        assert_eq!(
            lines(&[orders_user()], &live),
            [
                r#"~ user orders-service: tags is ["monitoring"] on the broker, [] in the file"#,
                r#"~ user orders-service: write is ".*" on the broker, "^orders_exchange$" in the file"#,
                r#"~ topic permission orders-service on orders_exchange: write is ".*" on the broker, "^orders\..*" in the file"#,
                "+ topic permission orders-service on events: on the broker, not in the file",
                "+ user bob: on the broker, not in the file",
            ]
        );
    }

    #[test]
    fn a_missing_user_and_missing_permissions_are_reported_and_no_file_users_means_unmanaged() {
        let users = [live_user("orders-service", Tags::default())];
        let live = LiveUsers {
            users: &users,
            permissions: &[],
            topic_permissions: &[],
            ignored: &[],
        };
        let mut other = orders_user();
        other.name = "baskets-service".into();
        assert_eq!(
            lines(&[orders_user(), other], &live),
            [
                r#"~ user orders-service: permissions is absent on the broker, configure "" write "^orders_exchange$" read "^orders_queue$" in the file"#,
                "- topic permission orders-service on orders_exchange: in the file, missing on the broker",
                "- user baskets-service: in the file, missing on the broker",
            ]
        );
        assert_eq!(lines(&[], &live), Vec::<String>::new());
    }
}
