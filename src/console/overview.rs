//! `/console/`: "is anything wrong right now?" Every queue of the topology with its depth against
//! capacity, its consumers and rates, its dead-letter queue and unresolved failures; the queues
//! whose alert conditions hold come first. Read from the stats role's snapshot, never the broker.

use std::sync::Arc;

use axum::{extract::State, response::Html};
use chrono::Utc;
use maud::{Markup, html};

use super::{
    layout::{count, page, rate},
    session::{Flash, Operator},
};
use crate::{
    http::AppState,
    roles::Role,
    topology::Topology,
    workers::stats::{QueueStats, Snapshot, Source},
};

/// Capacity share where the bar turns amber, as the MessagesBrokerQueueNearCapacity alert.
const NEAR_CAPACITY: f64 = 0.8;
/// Where it turns red.
const FULL: f64 = 0.95;

/// One service queue of the topology and its dead-letter queue, as the snapshot saw them.
pub struct Row<'a> {
    pub name: &'a str,
    pub stats: Option<&'a QueueStats>,
    pub dead_letter: Option<&'a QueueStats>,
    /// The alert conditions that hold, as sentences.
    pub alerts: Vec<String>,
}

/// The rows of the overview: attention first, then by name.
pub fn rows<'a>(topology: &'a Topology, snapshot: &'a Snapshot) -> Vec<Row<'a>> {
    let mut rows: Vec<Row> = topology
        .queues
        .iter()
        .filter(|q| !q.is_dead_letter())
        .map(|queue| {
            let dead_letter = topology
                .dead_letter_queue_of(&queue.name)
                .and_then(|d| snapshot.queue(&d.name));
            let stats = snapshot.queue(&queue.name);
            let mut alerts = stats.map(alerts_of).unwrap_or_default();
            if stats.is_none() {
                alerts.push(format!("{} is missing on the broker", queue.name));
            }
            alerts.extend(dead_letter.map(alerts_of).unwrap_or_default());
            Row {
                name: &queue.name,
                stats,
                dead_letter,
                alerts,
            }
        })
        .collect();
    rows.sort_by(|a, b| a.alerts.is_empty().cmp(&b.alerts.is_empty()).then(a.name.cmp(b.name)));
    rows
}

/// The conditions of compose/prometheus/alerts.yml that hold for one queue right now.
pub fn alerts_of(queue: &QueueStats) -> Vec<String> {
    let mut alerts = Vec::new();
    if let Some(ratio) = queue.depth_ratio.filter(|r| *r > NEAR_CAPACITY) {
        alerts.push(format!("{} at {:.0} % of capacity", queue.name, ratio * 100.0));
    }
    if queue.messages > 0 && queue.consumers == 0 {
        alerts.push(format!(
            "{} has {} message(s) and no consumer",
            queue.name,
            count(queue.messages)
        ));
    }
    if let Some(lag) = queue.consumer_lag.filter(|lag| *lag > 0) {
        alerts.push(format!(
            "{}: consumers fall behind ({} ready while deliveries stall)",
            queue.name,
            count(lag)
        ));
    }
    alerts
}

pub async fn show(State(state): State<AppState>, Operator(client): Operator, Flash(flash): Flash) -> Html<String> {
    let snapshot: Option<Arc<Snapshot>> = state.stats.borrow().clone();
    let connected = state.link.borrow().is_some();
    let body = html! {
        h1 { "Overview" }
        @if !connected {
            p.alert role="alert" { "Not connected to RabbitMQ: publishing answers 503 until the connection is back." }
        }
        @match &snapshot {
            _ if !state.settings.app.roles.contains(Role::Stats) => {
                p.alert { "This process does not run the stats role: queue figures are served by processes running `api,stats`." }
            }
            None => p { "The first poll of the queues has not finished yet; this page refreshes by itself." },
            Some(snapshot) => (queues(&state.topology, snapshot)),
        }
        div data-refresh="5" {}
    };
    Html(page("Overview", Some(&client), flash.as_deref(), body).into_string())
}

fn queues(topology: &Topology, snapshot: &Snapshot) -> Markup {
    let age = (Utc::now() - snapshot.taken_at).num_seconds().max(0);
    let rows = rows(topology, snapshot);
    let alerts: Vec<&String> = rows.iter().flat_map(|r| &r.alerts).collect();
    html! {
        p.meta {
            "Stats from " (match snapshot.source {
                Source::ManagementApi => "the management API",
                Source::PassiveDeclare => "passive declares (no rates, no unacked count)",
                Source::Unavailable => "nowhere: RabbitMQ cannot be read",
            }) ", " (age) " s ago."
        }
        @if let Some(reason) = snapshot.unavailable_reason() {
            p.alert role="alert" { "No queue figures: " (reason) }
        } @else if let Some(error) = &snapshot.management_error {
            p.alert { "Management API unreachable (" (error) ")." }
        }
        @if let Some(error) = &snapshot.database_error {
            p.alert { "Failure counts unknown: " (error) }
        }
        @if !alerts.is_empty() {
            section aria-labelledby="attention" {
                h2 #attention { "Needs attention" }
                ul.alerts { @for alert in &alerts { li { (alert) } } }
            }
        }
        table {
            caption { "Queues of the topology (" (rows.len()) ")" }
            thead { tr {
                th scope="col" { "Queue" }
                th scope="col" { "Depth / capacity" }
                th scope="col" .num { "Ready" }
                th scope="col" .num { "Unacked" }
                th scope="col" .num { "Consumers" }
                th scope="col" .num { "In/s" }
                th scope="col" .num { "Out/s" }
                th scope="col" .num { "DLQ" }
                th scope="col" .num { "Failures" }
            } }
            tbody {
                @for row in &rows {
                    tr.attention[!row.alerts.is_empty()] {
                        th scope="row" { a href={ "/console/queues/" (row.name) } { (row.name) } }
                        @if let Some(q) = row.stats {
                            td { (depth(q)) }
                            td.num { (count(q.ready)) }
                            td.num { (q.unacked.map_or_else(|| "–".to_owned(), count)) }
                            td.num { (q.consumers) }
                            td.num { (rate(q.publish_rate)) }
                            td.num { (rate(q.deliver_rate)) }
                        } @else {
                            td colspan="6" { "not on the broker" }
                        }
                        td.num { (row.dead_letter.map_or_else(|| "–".to_owned(), |d| count(d.messages))) }
                        td.num {
                            @match row.stats.and_then(|q| q.failed_unresolved) {
                                Some(0) => "0",
                                Some(n) => a href={ "/console/failures?queue=" (row.name) } { (count(n)) },
                                None => "–",
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A `<meter>` of depth against capacity (amber past 80 %, red past 95 %) and the figures.
pub fn depth(queue: &QueueStats) -> Markup {
    match queue.max_length {
        Some(max) => html! {
            meter min="0" max=(max) low=(f64::from(max) * NEAR_CAPACITY) high=(f64::from(max) * FULL) optimum="0"
                value=(queue.messages.min(u64::from(max)))
                aria-label={ (queue.name) " depth: " (queue.messages) " of " (max) } {}
            " " (count(queue.messages)) " / " (count(u64::from(max)))
        },
        None => html! { (count(queue.messages)) " (no limit)" },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(name: &str, messages: u64, consumers: u64, max: Option<u32>) -> QueueStats {
        QueueStats {
            name: name.into(),
            managed_by_topology: true,
            is_dead_letter: name.ends_with(".dlq"),
            messages,
            ready: messages,
            unacked: Some(0),
            consumers,
            publish_rate: Some(1.0),
            deliver_rate: Some(1.0),
            ack_rate: Some(1.0),
            max_length: max,
            depth_ratio: max.map(|m| messages as f64 / f64::from(m)),
            failed_unresolved: Some(0),
            consumer_lag: Some(0),
        }
    }

    #[test]
    fn alert_conditions_are_those_of_the_prometheus_rules() {
        assert!(
            alerts_of(&queue("q", 800, 1, Some(1000))).is_empty(),
            "80 % is not above 80 %"
        );
        assert_eq!(alerts_of(&queue("q", 801, 1, Some(1000))), ["q at 80 % of capacity"]);
        assert_eq!(
            alerts_of(&queue("q", 3, 0, None)),
            ["q has 3 message(s) and no consumer"]
        );
        assert!(
            alerts_of(&queue("q", 0, 0, None)).is_empty(),
            "an empty queue without consumers is fine"
        );
        let mut lagging = queue("q", 50, 2, None);
        lagging.consumer_lag = Some(50);
        assert_eq!(
            alerts_of(&lagging),
            ["q: consumers fall behind (50 ready while deliveries stall)"]
        );
    }
}
