//! The scheduler role: publishes delayed messages when they are due. Each round claims due rows
//! with `FOR UPDATE SKIP LOCKED` and keeps them locked while it publishes them with confirms, so
//! two replicas never publish the same row; confirmed rows are marked `sent` in the same
//! transaction. A replica that dies mid-round publishes nothing twice itself: its rows unlock
//! and another replica sends them again with the same message_id (at-least-once).
//!
//! Its own role rather than the retrier's: delayed messages follow the clients' timing, failed
//! messages the retry schedule, and each scales with its own volume.

use std::sync::Arc;

use sqlx::MySqlPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Worker, ticker};
use crate::{
    amqp::{
        headers,
        publisher::{OutgoingMessage, PublishOutcome, Publisher},
    },
    metrics::Metrics,
    settings::Settings,
    shared::Shared,
    store::{
        StoreError,
        scheduled_messages::{self, Scheduled, ScheduledStatus},
    },
};

/// Rows per round: one transaction holds their locks while their confirms come back.
const ROUND: u32 = 500;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReleaseReport {
    pub claimed: usize,
    pub sent: usize,
    /// Refused for good (no queue bound): marked `failed`.
    pub failed: usize,
    /// Not confirmed (queue full, broker away): left scheduled for the next round.
    pub retry: usize,
}

#[derive(Clone)]
pub struct Scheduler {
    pub settings: Arc<Settings>,
    pub pool: MySqlPool,
    pub publisher: Publisher,
    pub metrics: Arc<Metrics>,
    pub db_migrated: watch::Receiver<bool>,
}

impl Scheduler {
    pub fn new(shared: &Shared) -> Self {
        Self {
            settings: shared.settings.clone(),
            pool: shared.pool.clone(),
            publisher: shared.publisher(),
            metrics: shared.metrics.clone(),
            db_migrated: shared.db_migrated.clone(),
        }
    }

    /// The step: one round of due rows, published and marked.
    pub async fn release_due(&self) -> Result<ReleaseReport, StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows = scheduled_messages::claim_due(&mut tx, ROUND).await?;
        let mut report = ReleaseReport {
            claimed: rows.len(),
            ..Default::default()
        };
        if rows.is_empty() {
            return Ok(report);
        }
        let messages = rows.iter().map(|row| Arc::new(outgoing(row))).collect();
        let outcomes = self.publisher.publish_many(messages).await;
        let (mut sent, mut failed) = (Vec::new(), Vec::new());
        for (row, outcome) in rows.iter().zip(&outcomes) {
            match outcome {
                PublishOutcome::Confirmed => sent.push(row.id),
                PublishOutcome::Unroutable => failed.push(row.id),
                other => {
                    warn!(id = row.id, message_id = %row.message_id, outcome = ?other, "Delayed message not confirmed; will try again.")
                }
            }
        }
        scheduled_messages::mark(&mut tx, &sent, ScheduledStatus::Sent, None).await?;
        let unroutable = "unroutable: no queue is bound for its routing key";
        scheduled_messages::mark(&mut tx, &failed, ScheduledStatus::Failed, Some(unroutable)).await?;
        tx.commit().await?;
        report.sent = sent.len();
        report.failed = failed.len();
        report.retry = report.claimed - report.sent - report.failed;
        for (outcome, n) in [
            ("sent", report.sent),
            ("failed", report.failed),
            ("retry", report.retry),
        ] {
            self.metrics
                .scheduled_released_total
                .with_label_values(&[outcome])
                .inc_by(n as u64);
        }
        Ok(report)
    }

    /// Rounds until the due rows are done, then the backlog gauges.
    async fn scan(&self, cancel: &CancellationToken) {
        loop {
            match self.release_due().await {
                Ok(report) if report.claimed > 0 => {
                    info!(
                        claimed = report.claimed,
                        sent = report.sent,
                        failed = report.failed,
                        "Delayed messages released."
                    );
                    if report.claimed < ROUND as usize || report.retry > 0 || cancel.is_cancelled() {
                        break;
                    }
                }
                Ok(_) => break,
                Err(err) => {
                    warn!(error = %err, "Cannot release delayed messages; will try on the next tick.");
                    break;
                }
            }
        }
        if let Ok((waiting, lag)) = scheduled_messages::backlog(&self.pool).await {
            self.metrics
                .scheduled_messages
                .set(i64::try_from(waiting).unwrap_or(i64::MAX));
            self.metrics.scheduled_due_lag_seconds.set(lag);
        }
    }
}

impl Worker for Scheduler {
    fn name(&self) -> &'static str {
        "scheduler"
    }

    /// A scan at start, then one per `scheduling.scan_interval`.
    async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let every = self.settings.scheduling.scan_interval;
        info!(?every, "Scheduler releasing delayed messages.");
        ticker::scan_periodically(every, self.db_migrated.clone(), &cancel, || self.scan(&cancel)).await
    }
}

/// The message as it was asked for: same exchange, routing key, body, headers and priority.
fn outgoing(row: &Scheduled) -> OutgoingMessage {
    let headers = match &row.headers {
        serde_json::Value::Object(map) => map
            .iter()
            .map(|(name, value)| (name.clone(), headers::from_json(value)))
            .collect(),
        _ => Vec::new(),
    };
    OutgoingMessage {
        exchange: row.exchange.clone(),
        routing_key: row.routing_key.clone(),
        payload: row.raw_payload.clone().into(),
        message_id: row.message_id.clone(),
        headers,
        priority: row.priority,
    }
}
