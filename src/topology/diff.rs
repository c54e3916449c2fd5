//! Compares the resolved topology with what the broker has (from the management API).
//! Pure over the fetched lists, so the comparison is unit-tested without a broker.
//! Users (when the file lists any) are compared in [`users`].

use std::{collections::BTreeSet, fmt};

use serde_json::Value;

use super::model::{ArgValue, Queue, Topology};
use crate::amqp::management::{BindingInfo, ExchangeInfo, ManagementClient, ManagementError, QueueInfo};

mod users;
pub use users::{LiveUsers, diff_users};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// Declared in the file, absent on the broker.
    Missing { kind: &'static str, name: String },
    /// Present on both sides with a different value.
    Changed {
        kind: &'static str,
        name: String,
        field: String,
        file: String,
        broker: String,
    },
    /// A binding on one of our exchanges that the file does not declare.
    Unexpected { kind: &'static str, name: String },
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing { kind, name } => write!(f, "- {kind} {name}: in the file, missing on the broker"),
            Self::Changed {
                kind,
                name,
                field,
                file,
                broker,
            } => {
                write!(
                    f,
                    "~ {kind} {name}: {field} is {broker} on the broker, {file} in the file"
                )
            }
            Self::Unexpected { kind, name } => write!(f, "+ {kind} {name}: on the broker, not in the file"),
        }
    }
}

/// Fetches the live state and compares: the messaging entities, then the users (only fetched
/// when the file lists some: reading users takes the administrator tag).
pub async fn diff_live(client: &ManagementClient, topology: &Topology) -> Result<Vec<Difference>, ManagementError> {
    let (exchanges, queues, bindings) = tokio::try_join!(client.exchanges(), client.queues(), client.bindings())?;
    let mut out = diff(topology, &exchanges, &queues, &bindings);
    if !topology.users.is_empty() {
        let (users, permissions, topic_permissions) =
            tokio::try_join!(client.users(), client.permissions(), client.topic_permissions())?;
        let live = LiveUsers {
            users: &users,
            permissions: &permissions,
            topic_permissions: &topic_permissions,
            ignored: &crate::topology::users::protected_users(client),
        };
        diff_users(&mut out, &topology.users, &live);
    }
    Ok(out)
}

/// Everything that differs, in order: exchanges, queues, then bindings.
pub fn diff(
    topology: &Topology,
    exchanges: &[ExchangeInfo],
    queues: &[QueueInfo],
    bindings: &[BindingInfo],
) -> Vec<Difference> {
    let mut out = Vec::new();
    diff_exchanges(&mut out, topology, exchanges);
    diff_queues(&mut out, topology, queues);
    diff_bindings(&mut out, topology, bindings);
    out
}

/// Each declared exchange: missing on the broker, or its type and flags changed.
fn diff_exchanges(out: &mut Vec<Difference>, topology: &Topology, exchanges: &[ExchangeInfo]) {
    for want in &topology.exchanges {
        let Some(have) = exchanges.iter().find(|e| e.name == want.name) else {
            out.push(Difference::Missing {
                kind: "exchange",
                name: want.name.clone(),
            });
            continue;
        };
        let mut changed = |field: &str, file: String, broker: String| {
            push_changed(out, "exchange", &want.name, field, file, broker);
        };
        changed("type", want.kind.as_str().into(), have.kind.clone());
        changed("durable", want.durable.to_string(), have.durable.to_string());
        changed(
            "auto_delete",
            want.auto_delete.to_string(),
            have.auto_delete.to_string(),
        );
        changed("internal", want.internal.to_string(), have.internal.to_string());
    }
}

/// Each declared queue: missing on the broker, or its flags or arguments changed.
fn diff_queues(out: &mut Vec<Difference>, topology: &Topology, queues: &[QueueInfo]) {
    for want in &topology.queues {
        let Some(have) = queues.iter().find(|q| q.name == want.name) else {
            out.push(Difference::Missing {
                kind: "queue",
                name: want.name.clone(),
            });
            continue;
        };
        push_changed(
            out,
            "queue",
            &want.name,
            "durable",
            want.durable.to_string(),
            have.durable.to_string(),
        );
        push_changed(
            out,
            "queue",
            &want.name,
            "auto_delete",
            want.auto_delete.to_string(),
            have.auto_delete.to_string(),
        );
        diff_queue_arguments(out, want, have);
    }
}

/// Every argument set on either side of one queue, by name; an unset one reads `absent`.
fn diff_queue_arguments(out: &mut Vec<Difference>, want: &Queue, have: &QueueInfo) {
    let expected = want.arguments();
    let mut names: BTreeSet<&str> = expected.iter().map(|(k, _)| *k).collect();
    names.extend(have.arguments.keys().map(String::as_str));
    for name in names {
        let file = expected.iter().find(|(k, _)| *k == name).map(|(_, v)| arg_text(v));
        let broker = have.arguments.get(name).map(json_text);
        // The broker may spell out the default queue type; that is no drift.
        if name == "x-queue-type" && file.is_none() && broker.as_deref() == Some("classic") {
            continue;
        }
        push_changed(
            out,
            "queue",
            &want.name,
            name,
            file.unwrap_or_else(|| "absent".into()),
            broker.unwrap_or_else(|| "absent".into()),
        );
    }
}

/// Bindings to queues from our exchanges: declared but missing, then present but undeclared.
fn diff_bindings(out: &mut Vec<Difference>, topology: &Topology, bindings: &[BindingInfo]) {
    let ours: BTreeSet<&str> = topology.exchanges.iter().map(|e| e.name.as_str()).collect();
    let wanted: BTreeSet<(&str, &str, &str)> = topology
        .bindings
        .iter()
        .map(|b| (b.exchange.as_str(), b.queue.as_str(), b.routing_key.as_str()))
        .collect();
    let live: BTreeSet<(&str, &str, &str)> = bindings
        .iter()
        .filter(|b| b.destination_type == "queue" && ours.contains(b.source.as_str()))
        .map(|b| (b.source.as_str(), b.destination.as_str(), b.routing_key.as_str()))
        .collect();
    for (exchange, queue, key) in wanted.difference(&live) {
        out.push(Difference::Missing {
            kind: "binding",
            name: format!("{exchange} -> {queue} ({key:?})"),
        });
    }
    for (exchange, queue, key) in live.difference(&wanted) {
        out.push(Difference::Unexpected {
            kind: "binding",
            name: format!("{exchange} -> {queue} ({key:?})"),
        });
    }
}

/// Records a [`Difference::Changed`] when the file's value and the broker's differ.
fn push_changed(out: &mut Vec<Difference>, kind: &'static str, name: &str, field: &str, file: String, broker: String) {
    if file != broker {
        out.push(Difference::Changed {
            kind,
            name: name.to_owned(),
            field: field.into(),
            file,
            broker,
        });
    }
}

fn arg_text(value: &ArgValue) -> String {
    match value {
        ArgValue::Int(n) => n.to_string(),
        ArgValue::Str(s) => s.clone(),
    }
}

fn json_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::topology::model::*;

    fn topology() -> Topology {
        Topology {
            exchanges: vec![Exchange {
                name: "orders_exchange".into(),
                kind: ExchangeKind::Topic,
                durable: true,
                auto_delete: false,
                internal: false,
            }],
            queues: vec![Queue {
                name: "orders_queue".into(),
                durable: true,
                auto_delete: false,
                queue_type: QueueType::Classic,
                message_ttl: Some(86_400_000),
                max_length: Some(10_000),
                overflow: Some(Overflow::RejectPublish),
                dead_letter_exchange: None,
                max_priority: None,
                delivery_limit: None,
                role: QueueRole::Service,
            }],
            bindings: vec![Binding {
                exchange: "orders_exchange".into(),
                queue: "orders_queue".into(),
                routing_key: "orders.#".into(),
            }],
            rate_limits: vec![],
            users: vec![],
            schemas: Default::default(),
        }
    }

    fn live_queue(max_length: i64) -> QueueInfo {
        let mut arguments = BTreeMap::new();
        arguments.insert("x-message-ttl".to_owned(), Value::from(86_400_000));
        arguments.insert("x-max-length".to_owned(), Value::from(max_length));
        arguments.insert("x-overflow".to_owned(), Value::from("reject-publish"));
        QueueInfo {
            name: "orders_queue".into(),
            durable: true,
            auto_delete: false,
            arguments,
            messages: 0,
            messages_ready: 0,
            messages_unacknowledged: 0,
            consumers: 0,
            message_stats: Default::default(),
        }
    }

    fn live_exchange(kind: &str) -> ExchangeInfo {
        ExchangeInfo {
            name: "orders_exchange".into(),
            kind: kind.into(),
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: BTreeMap::new(),
        }
    }

    fn live_binding(key: &str) -> BindingInfo {
        BindingInfo {
            source: "orders_exchange".into(),
            destination: "orders_queue".into(),
            destination_type: "queue".into(),
            routing_key: key.into(),
        }
    }

    #[test]
    fn identical_state_has_no_difference() {
        let diffs = diff(
            &topology(),
            &[live_exchange("topic")],
            &[live_queue(10_000)],
            &[live_binding("orders.#")],
        );
        assert_eq!(diffs, vec![]);
    }

    #[test]
    fn every_kind_of_drift_is_listed() {
        let diffs = diff(
            &topology(),
            &[live_exchange("direct")],
            &[live_queue(5)],
            &[live_binding("orders.*")],
        );
        let lines: Vec<String> = diffs.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            vec![
                "~ exchange orders_exchange: type is direct on the broker, topic in the file",
                "~ queue orders_queue: x-max-length is 5 on the broker, 10000 in the file",
                "- binding orders_exchange -> orders_queue (\"orders.#\"): in the file, missing on the broker",
                "+ binding orders_exchange -> orders_queue (\"orders.*\"): on the broker, not in the file",
            ]
        );
    }

    #[test]
    fn missing_entities_are_reported() {
        let diffs = diff(&topology(), &[], &[], &[]);
        assert_eq!(diffs.len(), 3);
        assert!(matches!(&diffs[0], Difference::Missing { kind: "exchange", .. }));
        assert!(matches!(&diffs[1], Difference::Missing { kind: "queue", .. }));
    }
}
