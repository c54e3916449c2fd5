//! Retention: every `retention.interval`, deletes `message_logs` rows older than
//! `retention.message_logs` and `resolved` failed messages older than `retention.resolved_failed`,
//! 1,000 rows per statement with a breath between, so no statement holds long locks or makes a
//! replica lag. Rows still `failed` wait for a person and are never removed. Runs in processes
//! with the `retrier` role, which owns the failed messages' life cycle; two replicas deleting
//! the same expired rows only split the work.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use sqlx::MySqlPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Worker, ticker};
use crate::{
    metrics::Metrics,
    settings::RetentionSettings,
    shared::Shared,
    store::{StoreError, failed_messages, message_logs},
};

/// Rows per DELETE.
const BATCH: u32 = 1_000;
/// Pause between two DELETEs: lets other writers take the locks and replicas catch up.
const BREATH: Duration = Duration::from_millis(50);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RetentionReport {
    pub message_logs: u64,
    pub resolved_failed: u64,
}

#[derive(Clone)]
pub struct Retention {
    pub settings: RetentionSettings,
    pub pool: MySqlPool,
    pub metrics: Arc<Metrics>,
    pub db_migrated: watch::Receiver<bool>,
}

impl Retention {
    pub fn new(shared: &Shared) -> Self {
        Self {
            settings: shared.settings.retention.clone(),
            pool: shared.pool.clone(),
            metrics: shared.metrics.clone(),
            db_migrated: shared.db_migrated.clone(),
        }
    }

    /// The step: deletes every expired row, in batches.
    pub async fn purge_expired(&self, cancel: &CancellationToken) -> Result<RetentionReport, StoreError> {
        let now = Utc::now();
        let age = |d: Duration| now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        let (logs_before, failed_before) = (age(self.settings.message_logs), age(self.settings.resolved_failed));
        let pool = &self.pool;
        Ok(RetentionReport {
            message_logs: self
                .in_batches("message_logs", cancel, || {
                    message_logs::delete_older_than(pool, logs_before, BATCH)
                })
                .await?,
            resolved_failed: self
                .in_batches("failed_messages", cancel, || {
                    failed_messages::delete_resolved_before(pool, failed_before, BATCH)
                })
                .await?,
        })
    }

    /// Runs `delete` (at most [`BATCH`] rows) until a statement deletes fewer, counting each
    /// batch under `table`; returns the total.
    async fn in_batches<F, Fut>(
        &self,
        table: &str,
        cancel: &CancellationToken,
        mut delete: F,
    ) -> Result<u64, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<u64, StoreError>>,
    {
        let mut total = 0;
        while !cancel.is_cancelled() {
            let n = delete().await?;
            total += n;
            self.count(table, n);
            if n < u64::from(BATCH) {
                break;
            }
            tokio::time::sleep(BREATH).await;
        }
        Ok(total)
    }

    fn count(&self, table: &str, n: u64) {
        self.metrics
            .retention_deleted_total
            .with_label_values(&[table])
            .inc_by(n);
    }

    async fn scan(&self, cancel: &CancellationToken) {
        match self.purge_expired(cancel).await {
            Ok(report) if report != RetentionReport::default() => info!(
                message_logs = report.message_logs,
                resolved_failed = report.resolved_failed,
                "Expired rows deleted."
            ),
            Ok(_) => {}
            Err(err) => warn!(error = %err, "Cannot delete expired rows; will try on the next round."),
        }
    }
}

impl Worker for Retention {
    fn name(&self) -> &'static str {
        "retention"
    }

    async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        ticker::scan_periodically(self.settings.interval, self.db_migrated.clone(), &cancel, || {
            self.scan(&cancel)
        })
        .await
    }
}
