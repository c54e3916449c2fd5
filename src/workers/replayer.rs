//! The replayer: runs the replays of the audit trail that `POST /api/replays` queued. It claims
//! one replay at a time under a lease (`replays.owner`, `lease_until`, renewed after every
//! batch), reads the matching `message_logs` rows in id order after the replay's cursor, publishes
//! a copy of each through the confirm pipeline at `replay.rate_per_second`, and moves the cursor
//! only once the batch's confirms are in. A copy carries a new message_id and `mb-replay-of`:
//! the original message_id.
//!
//! Started by the scheduler role rather than a role of its own: like the scheduler it publishes
//! stored messages from MySQL with confirms, needs the same broker and database and no more, and
//! replays are rare operator actions that do not call for their own deployment.
//!
//! **What "no message twice" means.** A stop (SIGTERM, a cancel) lets the batch in flight finish
//! and records it before letting the replay go, so a resumed replay publishes nothing twice. A
//! crash (or a lost lease: a replica so stalled that its lease passed; or the database failing
//! right after a batch) can leave one batch published but not recorded; whoever resumes the
//! replay publishes that batch again, at most `rate_per_second / 10` messages (500 at most).
//! Those copies carry the same message_id as the first time (derived from the replay id and the
//! original message_id), so a consumer that deduplicates by message_id sees each copy once.
//! Making the window zero would need the cursor written in the same transaction as the broker's
//! confirm, which AMQP and MySQL cannot share; recording after each confirm (batches of one)
//! would only shrink it to one message at the price of one UPDATE per message.

use std::{sync::Arc, time::Duration};

use lapin::types::AMQPValue;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::MySqlPool;
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Worker, ticker};
use crate::{
    amqp::{
        headers,
        publisher::{OutgoingMessage, PublishOutcome, Publisher},
    },
    backoff::Backoff,
    metrics::Metrics,
    settings::Settings,
    shared::Shared,
    store::{
        StoreError,
        replays::{self, Hold, LoggedMessage, Progress, Replay, ReplayStatus},
    },
    topology::Topology,
};

/// The original message_id, on every copy a replay publishes.
pub const REPLAY_OF_HEADER: &str = "mb-replay-of";
/// The id of the replay that published the copy.
pub const REPLAY_ID_HEADER: &str = "mb-replay-id";

/// A full queue or a missing confirm is tried this many times before the message is given up.
const ATTEMPTS: u32 = 5;
/// The largest batch: one SELECT, one publisher request and one UPDATE per batch.
const MAX_BATCH: u32 = 500;

/// Why a run of a replay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Completed,
    Cancelled,
    /// Its target exchange is not in this process's topology.
    Failed,
    /// This process is stopping: the replay is released for another replica (or a restart).
    Stopped,
    /// Another replica took it over after our lease passed.
    LeaseLost,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunReport {
    pub id: u64,
    /// Copies confirmed during this run.
    pub published: u64,
    /// Messages given up during this run.
    pub failed: u64,
    pub end: End,
}

#[derive(Clone)]
pub struct Replayer {
    pub settings: Arc<Settings>,
    pub topology: Arc<Topology>,
    pub pool: MySqlPool,
    pub publisher: Publisher,
    pub metrics: Arc<Metrics>,
    pub db_migrated: watch::Receiver<bool>,
    /// Who holds a replay in `replays.owner`: the host (the pod's name under Kubernetes), the pid
    /// and a random part, since two replicas may share a pid (1 in containers) or a process.
    pub owner: String,
}

impl Replayer {
    pub fn new(shared: &Shared) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| shared.settings.app.name.clone());
        Self {
            settings: shared.settings.clone(),
            topology: shared.topology.clone(),
            pool: shared.pool.clone(),
            publisher: shared.publisher(),
            metrics: shared.metrics.clone(),
            db_migrated: shared.db_migrated.clone(),
            owner: format!("{host}/{}/{:08x}", std::process::id(), fastrand::u32(..)),
        }
    }

    /// The step: claims one replay and runs it until it completes, is cancelled, or `stop`
    /// fires (the batch in flight is finished and recorded first). `None` when none waits.
    pub async fn run_next(&self, stop: &CancellationToken) -> Result<Option<RunReport>, StoreError> {
        let lease = self.settings.replay.lease;
        let Some(replay) = replays::claim(&self.pool, &self.owner, lease).await? else {
            return Ok(None);
        };
        info!(
            replay = replay.id,
            cursor = replay.cursor_log_id,
            total = replay.total,
            done = replay.published + replay.failed,
            "Replay claimed."
        );
        let mut report = RunReport {
            id: replay.id,
            published: 0,
            failed: 0,
            end: End::Completed,
        };
        if let Some(target) = &replay.target_exchange
            && !self.is_public(target)
        {
            let reason = format!("the target exchange `{target}` is not a public exchange of the topology");
            replays::finish(&self.pool, replay.id, &self.owner, ReplayStatus::Failed, Some(&reason)).await?;
            warn!(replay = replay.id, reason, "Replay failed.");
            report.end = End::Failed;
            return Ok(Some(report));
        }
        let rate = self.settings.replay.rate_per_second.max(1);
        let mut pace = Pace::new(rate);
        let mut cursor = replay.cursor_log_id;
        loop {
            if stop.is_cancelled() {
                return self.let_go(&replay, report, End::Stopped).await;
            }
            let rows = replays::matching(
                &self.pool,
                &replay.filter,
                cursor,
                replay.until_log_id,
                batch_size(rate),
            )
            .await?;
            if rows.is_empty() {
                let done = replays::finish(&self.pool, replay.id, &self.owner, ReplayStatus::Completed, None).await?;
                if !done {
                    // Not ours to complete any more: cancelled at the last moment, or taken over.
                    return self.let_go(&replay, report, End::Cancelled).await;
                }
                info!(replay = replay.id, published = report.published, "Replay completed.");
                return Ok(Some(report));
            }
            if !pace.admit(rows.len(), stop).await {
                return self.let_go(&replay, report, End::Stopped).await;
            }
            let (progress, hold) = self.publish_batch(&replay, cursor, &rows, stop).await?;
            report.published += progress.published;
            report.failed += progress.failed;
            cursor = progress.cursor_log_id;
            match hold {
                Hold::Held(ReplayStatus::Running) => {}
                Hold::Held(ReplayStatus::Cancelled) => return self.let_go(&replay, report, End::Cancelled).await,
                Hold::Held(other) => {
                    warn!(
                        replay = replay.id,
                        status = other.as_str(),
                        "Replay ended elsewhere; stopping."
                    );
                    return self.let_go(&replay, report, End::Cancelled).await;
                }
                Hold::Lost => {
                    warn!(
                        replay = replay.id,
                        "Replay taken over by another replica (our lease passed); stopping."
                    );
                    report.end = End::LeaseLost;
                    return Ok(Some(report));
                }
            }
        }
    }

    /// Releases the replay (stop, cancel) so that whoever comes next need not wait for the lease.
    async fn let_go(&self, replay: &Replay, mut report: RunReport, end: End) -> Result<Option<RunReport>, StoreError> {
        replays::release(&self.pool, replay.id, &self.owner).await?;
        report.end = end;
        info!(replay = replay.id, end = ?end, published = report.published, "Replay let go.");
        Ok(Some(report))
    }

    /// Publishes one batch until each message is confirmed or given up (the broker away: waits
    /// and renews the lease meanwhile), then records it. Stopped or cancelled halfway, the cursor
    /// stops before the first message not yet settled, and only what lies before it is counted.
    async fn publish_batch(
        &self,
        replay: &Replay,
        cursor: u64,
        rows: &[LoggedMessage],
        stop: &CancellationToken,
    ) -> Result<(Progress, Hold), StoreError> {
        let lease = self.settings.replay.lease;
        let mut settled: Vec<Option<bool>> = vec![None; rows.len()];
        let mut attempts = vec![0u32; rows.len()];
        let mut last_error = None;
        let messages: Vec<Option<Arc<OutgoingMessage>>> = rows
            .iter()
            .map(|row| {
                let exchange = replay.target_exchange.as_deref().unwrap_or(&row.exchange);
                // Publishing to an exchange the broker lacks would close the shared channel.
                self.is_public(exchange)
                    .then(|| Arc::new(copy_of(replay.id, row, exchange)))
            })
            .collect();
        for (i, message) in messages.iter().enumerate() {
            if message.is_none() {
                settled[i] = Some(false);
                last_error = Some(format!(
                    "`{}` is not a public exchange of the topology",
                    rows[i].exchange
                ));
                self.count("failed", 1);
            }
        }
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            let pending: Vec<usize> = (0..rows.len()).filter(|&i| settled[i].is_none()).collect();
            if pending.is_empty() {
                break;
            }
            let batch = pending.iter().filter_map(|&i| messages[i].clone()).collect();
            let outcomes = self.publisher.publish_many(batch).await;
            for (&i, outcome) in pending.iter().zip(&outcomes) {
                match outcome {
                    PublishOutcome::Confirmed => settled[i] = Some(true),
                    PublishOutcome::Unroutable => {
                        settled[i] = Some(false);
                        last_error = Some(format!(
                            "unroutable: no queue is bound for routing key `{}`",
                            rows[i].routing_key
                        ));
                    }
                    // The broker away is waited out: giving up would fail a whole replay in an outage.
                    PublishOutcome::Unavailable(_) => {}
                    PublishOutcome::Rejected | PublishOutcome::TimedOut => {
                        attempts[i] += 1;
                        if attempts[i] >= ATTEMPTS {
                            settled[i] = Some(false);
                            last_error = Some(format!("{} after {ATTEMPTS} attempts", outcome.label()));
                        }
                    }
                }
                match settled[i] {
                    Some(true) => self.count("published", 1),
                    Some(false) => self.count("failed", 1),
                    None => self.count("retry", 1),
                }
            }
            let unsettled = settled.iter().filter(|s| s.is_none()).count();
            if unsettled == 0 {
                break;
            }
            let delay = backoff.next_delay();
            warn!(replay = replay.id, unsettled, retry_in = ?delay, last = ?outcomes.last(), "Replay batch not confirmed; trying again.");
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
            // Still ours and not cancelled? Renewing also keeps the lease alive through an outage.
            let still = Progress {
                cursor_log_id: cursor,
                ..Default::default()
            };
            match replays::record_progress(&self.pool, replay.id, &self.owner, &still, lease).await? {
                Hold::Held(ReplayStatus::Running) => {}
                Hold::Held(_) => break,
                Hold::Lost => return Ok((still, Hold::Lost)),
            }
        }
        let done = settled.iter().take_while(|s| s.is_some()).count();
        let progress = Progress {
            cursor_log_id: done.checked_sub(1).map_or(cursor, |last| rows[last].id),
            published: settled[..done].iter().filter(|s| **s == Some(true)).count() as u64,
            failed: settled[..done].iter().filter(|s| **s == Some(false)).count() as u64,
            last_error,
        };
        let hold = replays::record_progress(&self.pool, replay.id, &self.owner, &progress, lease).await?;
        Ok((progress, hold))
    }

    fn is_public(&self, exchange: &str) -> bool {
        self.topology.exchange(exchange).is_some_and(|e| !e.internal)
    }

    fn count(&self, outcome: &str, n: u64) {
        self.metrics.replayed_total.with_label_values(&[outcome]).inc_by(n);
    }

    /// Replays until none waits (or `stop` fires).
    async fn scan(&self, stop: &CancellationToken) {
        while !stop.is_cancelled() {
            match self.run_next(stop).await {
                Ok(Some(report)) => info!(
                    replay = report.id,
                    published = report.published,
                    failed = report.failed,
                    end = ?report.end,
                    "Replay run over."
                ),
                Ok(None) => break,
                Err(err) => {
                    // The lease stays ours: the next scan claims the replay again and resumes.
                    warn!(error = %err, "Cannot run replays; will try on the next tick.");
                    break;
                }
            }
        }
    }
}

impl Worker for Replayer {
    fn name(&self) -> &'static str {
        "replayer"
    }

    /// A scan at start, then one per `replay.scan_interval`.
    async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let every = self.settings.replay.scan_interval;
        ticker::scan_periodically(every, self.db_migrated.clone(), &cancel, || self.scan(&cancel)).await
    }
}

/// A tenth of a second's worth of messages per batch: the rate is kept within one batch, and a
/// crash re-sends at most that many.
fn batch_size(rate: u32) -> u32 {
    (rate / 10).clamp(1, MAX_BATCH)
}

/// Spaces batches so that `n` messages take `n / rate` seconds.
struct Pace {
    rate: f64,
    next: Instant,
}

impl Pace {
    fn new(rate: u32) -> Self {
        Self {
            rate: f64::from(rate),
            next: Instant::now(),
        }
    }

    /// Waits until `n` more messages may go; `false` when `stop` fired meanwhile.
    async fn admit(&mut self, n: usize, stop: &CancellationToken) -> bool {
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep_until(self.next) => {}
        }
        self.next = self.next.max(Instant::now()) + Duration::from_secs_f64(n as f64 / self.rate);
        true
    }
}

/// The copy of a logged message: its body and routing key, to `exchange`, with a new message_id,
/// `mb-replay-of`, `mb-replay-id`, the publishing client's `published-by` and the headers the
/// audit row kept, if any.
fn copy_of(replay: u64, row: &LoggedMessage, exchange: &str) -> OutgoingMessage {
    let metadata: Value = row
        .metadata
        .as_deref()
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or(Value::Null);
    let mut headers: Vec<(String, AMQPValue)> = metadata["headers"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(name, _)| !name.starts_with("x-") && !name.starts_with("mb-replay-") && *name != "published-by")
        .map(|(name, value)| (name.clone(), headers::from_json(value)))
        .collect();
    if let Some(client) = metadata["client"].as_str() {
        headers.push(("published-by".into(), AMQPValue::LongString(client.into())));
    }
    headers.push((
        REPLAY_OF_HEADER.into(),
        AMQPValue::LongString(row.message_id.as_str().into()),
    ));
    headers.push((REPLAY_ID_HEADER.into(), AMQPValue::LongLongInt(replay as i64)));
    OutgoingMessage {
        exchange: exchange.to_owned(),
        routing_key: row.routing_key.clone(),
        payload: row.payload.clone().into(),
        message_id: copy_id(replay, &row.message_id),
        headers,
        priority: None,
    }
}

/// A UUID (version 8) from the replay id and the original message_id: new for every replay,
/// and the same when a crash makes a replay publish a copy again.
pub fn copy_id(replay: u64, message_id: &str) -> String {
    let digest = Sha256::digest(format!("mb-replay:{replay}:{message_id}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(metadata: Option<&str>) -> LoggedMessage {
        LoggedMessage {
            id: 7,
            message_id: "original-1".into(),
            exchange: "orders_exchange".into(),
            routing_key: "orders.created".into(),
            payload: r#"{"event":"order.created","data":{}}"#.into(),
            published_at: chrono::Utc::now(),
            metadata: metadata.map(str::to_owned),
        }
    }

    #[test]
    fn a_copy_is_marked_and_gets_its_own_stable_id() {
        let copy = copy_of(
            3,
            &row(Some(
                r#"{"client":"orders-service","headers":{"tenant":"eu","x-death":1}}"#,
            )),
            "audit_exchange",
        );
        assert_eq!(copy.exchange, "audit_exchange");
        assert_eq!(copy.routing_key, "orders.created");
        assert_ne!(copy.message_id, "original-1");
        assert_eq!(copy.message_id, copy_id(3, "original-1"), "the same copy, the same id");
        assert_ne!(
            copy_id(3, "original-1"),
            copy_id(4, "original-1"),
            "another replay, another id"
        );
        let names: Vec<&str> = copy.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["tenant", "published-by", REPLAY_OF_HEADER, REPLAY_ID_HEADER]);
        assert_eq!(
            copy.headers[2].1,
            AMQPValue::LongString("original-1".into()),
            "mb-replay-of is the original message_id"
        );
        assert!(copy_of(3, &row(None), "e").headers.len() == 2);
    }

    #[test]
    fn batches_hold_a_tenth_of_a_second() {
        assert_eq!(batch_size(1), 1);
        assert_eq!(batch_size(500), 50);
        assert_eq!(batch_size(1_000_000), MAX_BATCH);
    }

    #[tokio::test(start_paused = true)]
    async fn the_pace_keeps_the_rate() {
        let stop = CancellationToken::new();
        let mut pace = Pace::new(100);
        let started = tokio::time::Instant::now();
        for _ in 0..10 {
            assert!(pace.admit(10, &stop).await);
        }
        // 100 messages at 100/s: the tenth batch may go after 0.9 s.
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(890) && elapsed < Duration::from_millis(1000),
            "{elapsed:?}"
        );
        stop.cancel();
        assert!(!pace.admit(10, &stop).await);
    }
}
