//! The stats role: on its schedule, reads every queue of the vhost from the management API (depth,
//! ready, unacked, consumers, rates), adds the failed messages waiting in MySQL, publishes the
//! result as a [`Snapshot`] on a `watch` and sets the queue gauges. HTTP handlers read the
//! snapshot; nothing calls the broker per request.
//!
//! When the management API cannot be reached (plugin off, port closed, credentials refused), the
//! poll falls back to passive declares of the topology's queues over AMQP: depth and consumers
//! only, no rates, no unacked count, and the snapshot says so.
//!
//! [`poll_once`] is the step (tests call it directly); [`Stats::run`] adds the schedule, the
//! `watch` and the gauges.

use std::{
    collections::{BTreeSet, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use lapin::{Channel, options::QueueDeclareOptions, types::FieldTable};
use serde::Serialize;
use sqlx::MySqlPool;
use strum::{EnumIter, IntoEnumIterator, IntoStaticStr};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Worker, ticker::Ticker};
use crate::{
    amqp::{
        calls::ThrowawayChannel,
        connection::{Link, LinkReceiver},
        management::{ManagementClient, QueueInfo},
    },
    metrics::Metrics,
    shared::Shared,
    store::{
        failed_messages::Status,
        failed_stats::{self, FailedCounts, FailedStats},
    },
    topology::Topology,
};

/// Below this many deliveries per second a queue's consumers count as stalled.
pub const STALLED_DELIVER_RATE: f64 = 0.01;

/// Bound on one passive declare: a broker under an alarm can stall a channel.
const DECLARE_TIMEOUT: Duration = Duration::from_secs(5);

/// Bound on the failed-message count: a slow database must not hold back the queue figures.
const DATABASE_TIMEOUT: Duration = Duration::from_secs(3);

/// Where a snapshot's figures come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, EnumIter, IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Source {
    /// Every queue of the vhost, with rates.
    ManagementApi,
    /// The management API failed: the topology's queues only, depth and consumers only.
    PassiveDeclare,
    /// Neither worked (no broker connection either): no figures at all.
    Unavailable,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// One queue at the time of the poll.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueStats {
    pub name: String,
    /// Declared by our topology (as opposed to another application's queue on the same vhost).
    pub managed_by_topology: bool,
    pub is_dead_letter: bool,
    /// Ready + unacked (passive declares only see the ready ones).
    pub messages: u64,
    pub ready: u64,
    /// `None` from passive declares, which do not report it.
    pub unacked: Option<u64>,
    pub consumers: u64,
    /// Messages per second; `None` from passive declares.
    pub publish_rate: Option<f64>,
    pub deliver_rate: Option<f64>,
    pub ack_rate: Option<f64>,
    /// `x-max-length`: the topology's, else the live queue's argument.
    pub max_length: Option<u32>,
    /// `messages / max_length`.
    pub depth_ratio: Option<f64>,
    /// Failed messages of this queue not resolved yet (pending, retrying or failed); `None` when
    /// the database was not read.
    pub failed_unresolved: Option<u64>,
    /// Ready messages while deliveries stall (deliver rate ~0), else 0; `None` without rates.
    pub consumer_lag: Option<u64>,
}

/// What one poll saw. Shared as an `Arc` by the `watch` and every reader.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub taken_at: DateTime<Utc>,
    pub source: Source,
    /// Why the management API was not used, when it was not.
    pub management_error: Option<String>,
    /// Why the passive fallback failed too (source `Unavailable`).
    pub fallback_error: Option<String>,
    /// Queues of the topology the broker does not have.
    pub missing: Vec<String>,
    /// Why failed-message counts are absent (database down, not migrated yet).
    pub database_error: Option<String>,
    /// The failed_messages table by queue and status; `None` when it was not read.
    pub failed: Option<FailedStats>,
    /// Sorted by name.
    pub queues: Vec<QueueStats>,
    /// Wall time of the poll.
    pub took: Duration,
}

impl Snapshot {
    pub fn queue(&self, name: &str) -> Option<&QueueStats> {
        self.queues
            .binary_search_by(|q| q.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.queues[i])
    }

    /// Why there are no figures, when there are none.
    pub fn unavailable_reason(&self) -> Option<String> {
        (self.source == Source::Unavailable).then(|| {
            format!(
                "management API: {}; passive declares: {}",
                self.management_error.as_deref().unwrap_or("not tried"),
                self.fallback_error.as_deref().unwrap_or("not tried")
            )
        })
    }
}

pub type SnapshotSender = watch::Sender<Option<Arc<Snapshot>>>;
pub type SnapshotReceiver = watch::Receiver<Option<Arc<Snapshot>>>;

/// `None` until the first poll of this process's stats role (and forever without the role).
pub fn snapshot_channel() -> (SnapshotSender, SnapshotReceiver) {
    watch::channel(None)
}

/// One poll: the management API (every queue of the vhost) or, when it fails, passive declares of
/// the topology's queues on `link`; the failed-message counts from `pool` alongside. Never fails:
/// what went wrong is in the snapshot.
pub async fn poll_once(
    management: &ManagementClient,
    link: Option<&Link>,
    topology: &Topology,
    pool: Option<&MySqlPool>,
) -> Snapshot {
    let started = Instant::now();
    let (live, failed) = tokio::join!(management.queues(), read_failed(pool));
    let (failed, database_error) = match failed {
        Some(Ok(stats)) => (Some(stats), None),
        Some(Err(err)) => (None, Some(err)),
        None => (None, None),
    };
    let mut snapshot = Snapshot {
        taken_at: Utc::now(),
        source: Source::ManagementApi,
        management_error: None,
        fallback_error: None,
        missing: Vec::new(),
        database_error,
        failed: None,
        queues: Vec::new(),
        took: Duration::ZERO,
    };
    match live {
        Ok(infos) => {
            snapshot.queues = infos
                .into_iter()
                .map(|info| from_management(info, topology, failed.as_ref()))
                .collect();
        }
        Err(err) => {
            snapshot.management_error = Some(err.to_string());
            match passive_declares(link, topology, failed.as_ref()).await {
                Ok((queues, missing)) => {
                    snapshot.source = Source::PassiveDeclare;
                    snapshot.queues = queues;
                    snapshot.missing = missing;
                }
                Err(reason) => {
                    snapshot.source = Source::Unavailable;
                    snapshot.fallback_error = Some(reason);
                }
            }
        }
    }
    snapshot.queues.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    if snapshot.source == Source::ManagementApi {
        let present: HashSet<&str> = snapshot.queues.iter().map(|q| q.name.as_str()).collect();
        snapshot.missing = topology
            .queues
            .iter()
            .filter(|q| !present.contains(q.name.as_str()))
            .map(|q| q.name.clone())
            .collect();
    }
    snapshot.failed = failed;
    snapshot.took = started.elapsed();
    snapshot
}

/// `None` when this process has no database.
async fn read_failed(pool: Option<&MySqlPool>) -> Option<Result<FailedStats, String>> {
    let pool = pool?;
    Some(
        match tokio::time::timeout(DATABASE_TIMEOUT, failed_stats::count_by_queue_and_status(pool)).await {
            Ok(result) => result.map_err(|err| err.to_string()),
            Err(_) => Err(format!("no answer from the database within {DATABASE_TIMEOUT:?}")),
        },
    )
}

fn from_management(info: QueueInfo, topology: &Topology, failed: Option<&FailedStats>) -> QueueStats {
    let declared = topology.queue(&info.name);
    let max_length = declared
        .and_then(|q| q.max_length)
        .or_else(|| live_max_length(info.arguments.get("x-max-length")));
    let stats = &info.message_stats;
    let deliver_rate = stats.deliver_get_details.rate;
    let stalled = deliver_rate < STALLED_DELIVER_RATE;
    QueueStats {
        managed_by_topology: declared.is_some(),
        is_dead_letter: declared.is_some_and(|q| q.is_dead_letter()),
        messages: info.messages,
        ready: info.messages_ready,
        unacked: Some(info.messages_unacknowledged),
        consumers: info.consumers,
        publish_rate: Some(stats.publish_details.rate),
        deliver_rate: Some(deliver_rate),
        ack_rate: Some(stats.ack_details.rate),
        max_length,
        depth_ratio: depth_ratio(info.messages, max_length),
        failed_unresolved: failed.map(|f| failed_for(&info.name, topology, f)),
        consumer_lag: Some(if stalled { info.messages_ready } else { 0 }),
        name: info.name,
    }
}

fn live_max_length(value: Option<&serde_json::Value>) -> Option<u32> {
    value
        .and_then(serde_json::Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
}

fn depth_ratio(messages: u64, max_length: Option<u32>) -> Option<f64> {
    max_length
        .filter(|&max| max > 0)
        .map(|max| messages as f64 / f64::from(max))
}

/// Unresolved failed messages of `name`. The ingester records a dead letter under its source queue
/// or under the dead-letter queue it came from: a service queue and its DLQ both show the pair's.
fn failed_for(name: &str, topology: &Topology, failed: &FailedStats) -> u64 {
    let mut counts: FailedCounts = failed.queue(name);
    let partner = topology.queue(name).and_then(|queue| {
        queue
            .source_queue()
            .or_else(|| topology.dead_letter_queue_of(name).map(|dlq| dlq.name.as_str()))
    });
    if let Some(partner) = partner {
        counts.merge(&failed.queue(partner));
    }
    counts.unresolved()
}

/// The fallback: a passive declare of each queue of the topology answers its ready count and its
/// consumers. A missing queue closes the channel (404): noted, and a fresh channel goes on.
async fn passive_declares(
    link: Option<&Link>,
    topology: &Topology,
    failed: Option<&FailedStats>,
) -> Result<(Vec<QueueStats>, Vec<String>), String> {
    let link = link.ok_or("not connected to RabbitMQ")?;
    let mut channel = ThrowawayChannel::open(&link.connection, DECLARE_TIMEOUT)
        .await
        .map_err(|err| format!("cannot open a channel: {err}"))?;
    let mut queues = Vec::with_capacity(topology.queues.len());
    let mut missing = Vec::new();
    let options = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    for queue in &topology.queues {
        let name = queue.name.as_str();
        let declare =
            |channel: Channel| async move { channel.queue_declare(name.into(), options, FieldTable::default()).await };
        match channel.call(declare).await {
            Ok(found) => {
                let ready = u64::from(found.message_count());
                queues.push(QueueStats {
                    name: queue.name.clone(),
                    managed_by_topology: true,
                    is_dead_letter: queue.is_dead_letter(),
                    messages: ready,
                    ready,
                    unacked: None,
                    consumers: u64::from(found.consumer_count()),
                    publish_rate: None,
                    deliver_rate: None,
                    ack_rate: None,
                    max_length: queue.max_length,
                    depth_ratio: depth_ratio(ready, queue.max_length),
                    failed_unresolved: failed.map(|f| failed_for(&queue.name, topology, f)),
                    consumer_lag: None,
                });
            }
            Err(err) if err.is_refusal() => missing.push(queue.name.clone()),
            Err(err) => return Err(format!("passive declare of `{name}` failed: {err}")),
        }
    }
    channel.close("stats read").await;
    Ok((queues, missing))
}

/// The label values this process has set, so that queues that disappeared lose their series.
#[derive(Debug, Default)]
pub struct Gauges {
    queues: BTreeSet<String>,
    failed_queues: BTreeSet<String>,
}

impl Gauges {
    /// Sets the gauges from a snapshot. Without figures (`Unavailable`) the last values stay: a
    /// broker outage must not reset the `for:` clock of the depth and consumer alerts.
    pub fn record(&mut self, metrics: &Metrics, snapshot: &Snapshot) {
        metrics
            .management_api_up
            .with_label_values::<&str>(&[])
            .set(i64::from(snapshot.source == Source::ManagementApi));
        if let Some(failed) = &snapshot.failed {
            for status in Status::iter() {
                metrics
                    .failed_messages
                    .with_label_values(&[status.as_str()])
                    .set(gauge_value(failed.totals.get(status)));
            }
            let current: BTreeSet<String> = failed.by_queue.keys().cloned().collect();
            for gone in self.failed_queues.difference(&current) {
                let _ = metrics.queue_failed_messages.remove_label_values(&[gone.as_str()]);
            }
            for (queue, counts) in &failed.by_queue {
                metrics
                    .queue_failed_messages
                    .with_label_values(&[queue.as_str()])
                    .set(gauge_value(counts.unresolved()));
            }
            self.failed_queues = current;
        }
        if snapshot.source == Source::Unavailable {
            return;
        }
        let current: BTreeSet<String> = snapshot.queues.iter().map(|q| q.name.clone()).collect();
        for gone in self.queues.difference(&current) {
            remove_queue(metrics, gone);
        }
        for queue in &snapshot.queues {
            let label = [queue.name.as_str()];
            metrics
                .queue_messages
                .with_label_values(&label)
                .set(gauge_value(queue.messages));
            metrics
                .queue_consumers
                .with_label_values(&label)
                .set(gauge_value(queue.consumers));
            // Passive declares do not know these: an old value would lie, no value is honest.
            match queue.unacked {
                Some(unacked) => metrics
                    .queue_messages_unacked
                    .with_label_values(&label)
                    .set(gauge_value(unacked)),
                None => drop(metrics.queue_messages_unacked.remove_label_values(&label)),
            }
            match queue.deliver_rate {
                Some(rate) => metrics.queue_deliver_rate.with_label_values(&label).set(rate),
                None => drop(metrics.queue_deliver_rate.remove_label_values(&label)),
            }
            match queue.consumer_lag {
                Some(lag) => metrics
                    .queue_consumer_lag
                    .with_label_values(&label)
                    .set(gauge_value(lag)),
                None => drop(metrics.queue_consumer_lag.remove_label_values(&label)),
            }
        }
        self.queues = current;
    }
}

fn remove_queue(metrics: &Metrics, name: &str) {
    let label = [name];
    let _ = metrics.queue_messages.remove_label_values(&label);
    let _ = metrics.queue_messages_unacked.remove_label_values(&label);
    let _ = metrics.queue_consumers.remove_label_values(&label);
    let _ = metrics.queue_deliver_rate.remove_label_values(&label);
    let _ = metrics.queue_consumer_lag.remove_label_values(&label);
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Everything the role needs; cloned for each (re)start by the supervisor.
#[derive(Clone)]
pub struct Stats {
    pub management: ManagementClient,
    pub link: LinkReceiver,
    pub topology: Arc<Topology>,
    /// `None` in processes without a database: snapshots then carry no failed counts.
    pub pool: Option<MySqlPool>,
    /// The table is only counted once migrations ran (no "table doesn't exist" at every start).
    pub db_migrated: watch::Receiver<bool>,
    pub metrics: Arc<Metrics>,
    pub snapshot: SnapshotSender,
    pub interval: Duration,
}

impl Stats {
    pub fn new(shared: &Shared) -> Self {
        Self {
            management: shared.management.clone(),
            link: shared.link.clone(),
            topology: shared.topology.clone(),
            pool: Some(shared.pool.clone()),
            db_migrated: shared.db_migrated.clone(),
            metrics: shared.metrics.clone(),
            snapshot: shared.stats.clone(),
            interval: shared.settings.stats.interval,
        }
    }

    /// The step: one poll of the broker (and the failed counts, once migrated) as it is now.
    pub async fn step(&self) -> Snapshot {
        let current = self.link.borrow().clone();
        let pool = self.pool.as_ref().filter(|_| *self.db_migrated.borrow());
        poll_once(&self.management, current.as_ref(), &self.topology, pool).await
    }
}

impl Worker for Stats {
    fn name(&self) -> &'static str {
        "stats"
    }

    /// A poll at once (so the API has figures quickly), then one per tick until `cancel`.
    async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let mut ticker = Ticker::start(self.interval).await?;
        info!(interval = ?self.interval, "Polling queue stats.");
        let mut link = self.link.clone();
        let mut gauges = Gauges::default();
        let mut previous: Option<(Source, bool)> = None;
        loop {
            link.mark_unchanged();
            let snapshot = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                snapshot = self.step() => snapshot,
            };
            log_changes(&mut previous, &snapshot);
            gauges.record(&self.metrics, &snapshot);
            let blind = snapshot.source == Source::Unavailable;
            self.snapshot.send_replace(Some(Arc::new(snapshot)));
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                tick = ticker.tick() => tick?,
                // Without figures, a new broker connection is worth a poll before the next tick.
                Ok(()) = link.changed(), if blind => {}
            }
        }
    }
}

/// Logs when the source or the database state changes, not at every poll.
fn log_changes(previous: &mut Option<(Source, bool)>, snapshot: &Snapshot) {
    let state = (snapshot.source, snapshot.database_error.is_none());
    let (source_changed, database_changed) = match previous {
        None => (
            snapshot.source != Source::ManagementApi,
            snapshot.database_error.is_some(),
        ),
        Some((source, database_ok)) => (*source != state.0, *database_ok != state.1),
    };
    if source_changed {
        match snapshot.source {
            Source::ManagementApi => info!(
                queues = snapshot.queues.len(),
                "Management API reachable again; queue stats are complete."
            ),
            Source::PassiveDeclare => warn!(
                error = snapshot.management_error.as_deref().unwrap_or_default(),
                queues = snapshot.queues.len(),
                "Management API unreachable; queue stats fall back to passive declares of the topology's queues (depth and consumers only, no rates)."
            ),
            Source::Unavailable => warn!(
                reason = snapshot.unavailable_reason().unwrap_or_default(),
                "Cannot read queue stats; the API answers 503 and the gauges keep their last values."
            ),
        }
    }
    if database_changed {
        match &snapshot.database_error {
            Some(error) => warn!(%error, "Cannot count failed messages; queue stats go on without them."),
            None => info!("Failed messages counted again."),
        }
    }
    if !snapshot.missing.is_empty() && source_changed {
        warn!(missing = %snapshot.missing.join(", "), "Queues of the topology are missing on the broker.");
    }
    debug!(source = snapshot.source.as_str(), queues = snapshot.queues.len(), took = ?snapshot.took, "Queue stats polled.");
    *previous = Some(state);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::management::{MessageStats, Rate};

    fn topology() -> Topology {
        let text = r#"
[queue_defaults]
max_length = 100
dead_letter_exchange = "dlx"

[dead_letter_queues]

[[exchanges]]
name = "dlx"
type = "direct"

[[queues]]
name = "orders_queue"
"#;
        crate::topology::validate(&crate::topology::parse(text).unwrap()).unwrap()
    }

    fn info(name: &str, ready: u64, unacked: u64, deliver: f64) -> QueueInfo {
        serde_json::from_value::<QueueInfo>(serde_json::json!({
            "name": name, "durable": true, "auto_delete": false,
            "messages": ready + unacked, "messages_ready": ready, "messages_unacknowledged": unacked,
            "consumers": 1, "arguments": {"x-max-length": 50},
        }))
        .map(|mut info| {
            info.message_stats = MessageStats {
                deliver_get_details: Rate { rate: deliver },
                ..Default::default()
            };
            info
        })
        .unwrap()
    }

    #[test]
    fn management_figures_are_joined_with_the_topology_and_the_failed_counts() {
        let topology = topology();
        let failed = FailedStats::from_rows([
            ("orders_queue".to_owned(), Status::Pending, 2),
            ("orders_queue.dlq".to_owned(), Status::Failed, 1),
            ("orders_queue".to_owned(), Status::Resolved, 7),
        ]);
        let stats = from_management(info("orders_queue", 30, 10, 0.0), &topology, Some(&failed));
        assert!(stats.managed_by_topology && !stats.is_dead_letter);
        assert_eq!((stats.messages, stats.ready, stats.unacked), (40, 30, Some(10)));
        assert_eq!(stats.max_length, Some(100), "the topology's capacity wins");
        assert_eq!(stats.depth_ratio, Some(0.4));
        assert_eq!(
            stats.failed_unresolved,
            Some(3),
            "pending + failed of the queue and its DLQ"
        );
        assert_eq!(
            stats.consumer_lag,
            Some(30),
            "deliveries stalled: every ready message lags"
        );

        let dlq = from_management(info("orders_queue.dlq", 0, 0, 0.0), &topology, Some(&failed));
        assert!(dlq.is_dead_letter && dlq.managed_by_topology);
        assert_eq!(dlq.failed_unresolved, Some(3));
        assert_eq!(dlq.consumer_lag, Some(0), "nothing ready, no lag");

        let flowing = from_management(info("other", 30, 10, 12.5), &topology, None);
        assert!(!flowing.managed_by_topology);
        assert_eq!(
            flowing.max_length,
            Some(50),
            "the live argument for queues we do not declare"
        );
        assert_eq!(flowing.consumer_lag, Some(0), "deliveries flow");
        assert_eq!(flowing.failed_unresolved, None);
        assert_eq!(flowing.deliver_rate, Some(12.5));
    }

    #[test]
    fn gauges_follow_the_snapshots_and_forget_vanished_queues() {
        let topology = topology();
        let metrics = Metrics::new();
        let mut gauges = Gauges::default();
        let mut snapshot = Snapshot {
            taken_at: Utc::now(),
            source: Source::ManagementApi,
            management_error: None,
            fallback_error: None,
            missing: vec![],
            database_error: None,
            failed: Some(FailedStats::from_rows([(
                "orders_queue".to_owned(),
                Status::Pending,
                4,
            )])),
            queues: vec![
                from_management(info("gone_queue", 1, 0, 0.0), &topology, None),
                from_management(info("orders_queue", 5, 2, 1.0), &topology, None),
            ],
            took: Duration::ZERO,
        };
        gauges.record(&metrics, &snapshot);
        let text = metrics.render();
        assert!(
            text.contains(r#"messages_broker_queue_messages{queue="gone_queue"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"messages_broker_queue_messages_unacked{queue="orders_queue"} 2"#));
        assert!(text.contains(r#"messages_broker_queue_consumer_lag{queue="gone_queue"} 1"#));
        assert!(text.contains(r#"messages_broker_failed_messages{status="pending"} 4"#));
        assert!(text.contains(r#"messages_broker_failed_messages{status="resolved"} 0"#));
        assert!(text.contains(r#"messages_broker_queue_failed_messages{queue="orders_queue"} 4"#));
        assert!(text.contains("messages_broker_management_api_up 1"));

        // Passive: the vanished queue loses its series, unacked and rates are dropped, not kept.
        snapshot.source = Source::PassiveDeclare;
        snapshot.queues = vec![QueueStats {
            unacked: None,
            deliver_rate: None,
            consumer_lag: None,
            ..snapshot.queues[1].clone()
        }];
        gauges.record(&metrics, &snapshot);
        let text = metrics.render();
        assert!(!text.contains("gone_queue"), "{text}");
        assert!(!text.contains("messages_broker_queue_messages_unacked{"));
        assert!(text.contains(r#"messages_broker_queue_messages{queue="orders_queue"} 7"#));
        assert!(text.contains("messages_broker_management_api_up 0"));

        // Unavailable: the last figures stay.
        snapshot.source = Source::Unavailable;
        snapshot.queues.clear();
        gauges.record(&metrics, &snapshot);
        assert!(
            metrics
                .render()
                .contains(r#"messages_broker_queue_messages{queue="orders_queue"} 7"#)
        );
    }

    #[test]
    fn snapshots_find_queues_by_name() {
        let topology = topology();
        let snapshot = Snapshot {
            taken_at: Utc::now(),
            source: Source::Unavailable,
            management_error: Some("refused".into()),
            fallback_error: Some("not connected to RabbitMQ".into()),
            missing: vec![],
            database_error: None,
            failed: None,
            queues: vec![
                from_management(info("a", 0, 0, 0.0), &topology, None),
                from_management(info("b", 0, 0, 0.0), &topology, None),
            ],
            took: Duration::ZERO,
        };
        assert_eq!(snapshot.queue("b").map(|q| q.name.as_str()), Some("b"));
        assert!(snapshot.queue("c").is_none());
        assert_eq!(
            snapshot.unavailable_reason().unwrap(),
            "management API: refused; passive declares: not connected to RabbitMQ"
        );
    }
}
