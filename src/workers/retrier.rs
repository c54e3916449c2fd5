//! The retrier role: on its schedule, claims due failed messages (`FOR UPDATE SKIP LOCKED`, so
//! replicas never take the same row), republishes each to its original exchange and routing key
//! through the confirm pipeline, and records the outcome. A republished message that fails again
//! comes back through its dead-letter queue and the ingester reopens its row with the next delay,
//! or marks it `failed` for a person once `max_retries` is reached.

use std::sync::Arc;

use base64::{Engine, engine::general_purpose::STANDARD};
use sqlx::MySqlPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Worker, ticker};
use crate::trace;
use crate::{
    amqp::{
        headers,
        publisher::{OutgoingMessage, PublishOutcome, Publisher},
    },
    edit::{self, Edit},
    metrics::Metrics,
    retry::{self, RETRY_COUNT_HEADER},
    settings::Settings,
    shared::Shared,
    store::{
        StoreError,
        failed_messages::{self, ClaimRefusal, Claimed, FailedMessage, PayloadEncoding},
        message_logs,
    },
};

/// Rows claimed per round; a scan runs rounds until fewer come back.
const CLAIM_LIMIT: u32 = 200;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RetryReport {
    pub claimed: usize,
    pub resolved: usize,
    pub released: usize,
}

#[derive(Clone)]
pub struct Retrier {
    pub settings: Arc<Settings>,
    pub pool: MySqlPool,
    pub publisher: Publisher,
    pub metrics: Arc<Metrics>,
    pub db_migrated: watch::Receiver<bool>,
}

impl Retrier {
    pub fn new(shared: &Shared) -> Self {
        Self {
            settings: shared.settings.clone(),
            pool: shared.pool.clone(),
            publisher: shared.publisher(),
            metrics: shared.metrics.clone(),
            db_migrated: shared.db_migrated.clone(),
        }
    }

    /// One step: claims one round of due rows, republishes them, records each outcome.
    pub async fn retry_due(&self) -> Result<RetryReport, StoreError> {
        self.retry_due_up_to(CLAIM_LIMIT).await
    }

    /// [`Self::retry_due`] with a smaller round (tests interleave two retriers with it).
    pub async fn retry_due_up_to(&self, limit: u32) -> Result<RetryReport, StoreError> {
        let claimed = failed_messages::claim_due(&self.pool, limit).await?;
        self.republish(claimed).await
    }

    /// Retries one row now, whatever its schedule (an operator asked). Returns the row after,
    /// and whether the broker confirmed the republish.
    pub async fn retry_now(&self, id: u64) -> Result<Result<(FailedMessage, bool), ClaimRefusal>, StoreError> {
        let claimed = match failed_messages::claim_one(&self.pool, id).await? {
            Ok(claimed) => claimed,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let report = self.republish(vec![claimed]).await?;
        self.metrics.retries_total.with_label_values(&["manual"]).inc();
        let row = failed_messages::find(&self.pool, id)
            .await?
            .ok_or(ClaimRefusal::NotFound);
        Ok(row.map(|row| (row, report.resolved == 1)))
    }

    /// Edit and retry: publishes an edited copy of row `id` under `message_id` in place of the
    /// original, which becomes `resolved` (pointing at the copy) only once the broker confirmed
    /// the copy; otherwise it goes back to its status before. Returns the row after, and what
    /// the broker did with the copy.
    pub async fn edit_and_retry(
        &self,
        id: u64,
        edit: &Edit,
        message_id: String,
        editor: &str,
    ) -> Result<Result<(FailedMessage, PublishOutcome), ClaimRefusal>, StoreError> {
        let (claimed, before) = match failed_messages::claim_for_edit(&self.pool, id).await? {
            Ok(claim) => claim,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let copy = Arc::new(edit::copy(&claimed, edit, message_id, editor));
        let outcome = self.publisher.publish(copy.clone()).await;
        if outcome == PublishOutcome::Confirmed {
            failed_messages::mark_edited(&self.pool, &claimed, &copy.message_id).await?;
            self.metrics.retries_total.with_label_values(&["edited"]).inc();
            info!(id, message_id = %claimed.message_id, copy = %copy.message_id, trace_id = %trace::trace_id_in(&copy.headers), editor, "Edited copy of a failed message published.");
        } else {
            failed_messages::unclaim(&self.pool, &claimed, before).await?;
            warn!(id, message_id = %claimed.message_id, ?outcome, "Edited copy not confirmed by the broker; the original is back as it was.");
        }
        let row = failed_messages::find(&self.pool, id)
            .await?
            .ok_or(ClaimRefusal::NotFound);
        Ok(row.map(|row| (row, outcome)))
    }

    async fn republish(&self, claimed: Vec<Claimed>) -> Result<RetryReport, StoreError> {
        let mut report = RetryReport {
            claimed: claimed.len(),
            ..Default::default()
        };
        if claimed.is_empty() {
            return Ok(report);
        }
        let messages = claimed.iter().map(|row| Arc::new(republished(row))).collect();
        let outcomes = self.publisher.publish_many(messages).await;
        let schedule = retry::schedule(&self.settings);
        let mut republished_ids = Vec::new();
        for (row, outcome) in claimed.iter().zip(outcomes) {
            if outcome == PublishOutcome::Confirmed {
                failed_messages::mark_resolved(&self.pool, row).await?;
                info!(
                    id = row.id,
                    message_id = %row.message_id,
                    trace_id = %trace::trace_id_in_json(row.headers.as_deref()),
                    attempt = row.retry_count,
                    "Failed message republished."
                );
                republished_ids.push(row.message_id.as_str());
                self.metrics.retries_total.with_label_values(&["resolved"]).inc();
                report.resolved += 1;
            } else {
                // Not on the broker: this attempt did not happen; wait the next step's delay.
                let delay = retry::delay(&schedule, row.retry_count);
                failed_messages::release(&self.pool, row, delay).await?;
                self.metrics
                    .retries_total
                    .with_label_values(&["republish_failed"])
                    .inc();
                warn!(id = row.id, message_id = %row.message_id, ?outcome, retry_in = ?delay, "Retry not confirmed by the broker; will try again.");
                report.released += 1;
            }
        }
        // The audit trail follows (best effort): a message out again is `published` again.
        if let Err(err) = message_logs::set_status(&self.pool, &republished_ids, "published").await {
            warn!(error = %err, "Cannot mark retried messages published in the audit trail.");
        }
        Ok(report)
    }

    /// Runs rounds until the due rows are done (or a round fails: the next tick tries again).
    async fn scan(&self, cancel: &CancellationToken) {
        loop {
            match self.retry_due().await {
                Ok(report) if report.claimed > 0 => {
                    info!(
                        claimed = report.claimed,
                        resolved = report.resolved,
                        released = report.released,
                        "Retried due failed messages."
                    );
                    if report.claimed < CLAIM_LIMIT as usize || cancel.is_cancelled() {
                        return;
                    }
                }
                Ok(_) => return,
                Err(err) => {
                    warn!(error = %err, "Cannot scan for due retries; will try on the next tick.");
                    return;
                }
            }
        }
    }
}

impl Worker for Retrier {
    fn name(&self) -> &'static str {
        "retrier"
    }

    /// A scan at start, then one per `retry.scan_interval` tick; ticks that come while a scan
    /// runs are merged into one.
    async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let every = self.settings.retry.scan_interval;
        info!(?every, "Retrier scanning for due failed messages.");
        ticker::scan_periodically(every, self.db_migrated.clone(), &cancel, || self.scan(&cancel)).await
    }
}

/// The message as it goes back: original exchange, routing key and body; the broker's `x-`
/// headers dropped (a fresh death gets fresh ones); our retry count set.
fn republished(row: &Claimed) -> OutgoingMessage {
    let payload = match row.payload_encoding {
        PayloadEncoding::Json => row.payload.clone().into_bytes(),
        PayloadEncoding::Text => serde_json::from_str::<String>(&row.payload)
            .unwrap_or_default()
            .into_bytes(),
        PayloadEncoding::Base64 => serde_json::from_str::<String>(&row.payload)
            .ok()
            .and_then(|s| STANDARD.decode(s).ok())
            .unwrap_or_default(),
    };
    let stored: serde_json::Map<String, serde_json::Value> = row
        .headers
        .as_deref()
        .and_then(|h| serde_json::from_str(h).ok())
        .unwrap_or_default();
    let mut message_headers: Vec<_> = stored
        .iter()
        .filter(|(name, _)| !name.to_ascii_lowercase().starts_with("x-") && name.as_str() != RETRY_COUNT_HEADER)
        .map(|(name, value)| (name.clone(), headers::from_json(value)))
        .collect();
    message_headers.push((
        RETRY_COUNT_HEADER.into(),
        lapin::types::AMQPValue::LongLongInt(i64::from(row.retry_count)),
    ));
    OutgoingMessage {
        exchange: row.exchange.clone(),
        routing_key: row.routing_key.clone(),
        payload: payload.into(),
        message_id: row.message_id.clone(),
        headers: message_headers,
        priority: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_republished_message_drops_broker_headers_and_counts_its_retry() {
        let row = Claimed {
            id: 1,
            message_id: "m".into(),
            exchange: "orders_exchange".into(),
            routing_key: "orders.created".into(),
            payload: "\"plain\"".into(),
            payload_encoding: PayloadEncoding::Text,
            headers: Some(r#"{"x-death": [], "x-first-death-queue": "q", "tenant": "fr", "mb-retry-count": 1}"#.into()),
            retry_count: 2,
            max_retries: 3,
        };
        let message = republished(&row);
        assert_eq!(message.payload.as_ref(), b"plain");
        let names: Vec<&str> = message.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["tenant", RETRY_COUNT_HEADER]);
        assert_eq!(message.headers[1].1, lapin::types::AMQPValue::LongLongInt(2));
    }
}
