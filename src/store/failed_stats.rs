//! Counts of `failed_messages` by queue and status, for the stats role: the per-queue figure of
//! `GET /api/queues/{queue}/stats` and the `failed_messages{status}` gauges.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::MySqlPool;

use super::{
    StoreError,
    failed_messages::{Status, decode_enum},
};

/// Rows of one queue (or of the whole table) by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FailedCounts {
    pub pending: u64,
    pub retrying: u64,
    pub failed: u64,
    pub resolved: u64,
}

impl FailedCounts {
    /// Rows that still need someone: waiting for a retry, being retried, or out of retries.
    pub fn unresolved(&self) -> u64 {
        self.pending + self.retrying + self.failed
    }

    pub fn get(&self, status: Status) -> u64 {
        // Four u64s are cheap to copy, and one match (in `slot`) then serves reads and writes.
        let mut copy = *self;
        *copy.slot(status)
    }

    fn add(&mut self, status: Status, count: u64) {
        *self.slot(status) += count;
    }

    fn slot(&mut self, status: Status) -> &mut u64 {
        match status {
            Status::Pending => &mut self.pending,
            Status::Retrying => &mut self.retrying,
            Status::Failed => &mut self.failed,
            Status::Resolved => &mut self.resolved,
        }
    }

    pub fn merge(&mut self, other: &FailedCounts) {
        self.pending += other.pending;
        self.retrying += other.retrying;
        self.failed += other.failed;
        self.resolved += other.resolved;
    }
}

/// The whole table, counted once per poll.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailedStats {
    /// Keyed by the row's `queue` column, as the ingester recorded it.
    pub by_queue: BTreeMap<String, FailedCounts>,
    pub totals: FailedCounts,
}

impl FailedStats {
    pub fn from_rows(rows: impl IntoIterator<Item = (String, Status, i64)>) -> Self {
        let mut stats = Self::default();
        for (queue, status, count) in rows {
            let count = u64::try_from(count).unwrap_or(0);
            stats.by_queue.entry(queue).or_default().add(status, count);
            stats.totals.add(status, count);
        }
        stats
    }

    pub fn queue(&self, name: &str) -> FailedCounts {
        self.by_queue.get(name).copied().unwrap_or_default()
    }
}

/// One grouped count of the table. The ENUM is cast to text: sqlx decodes it unreliably on
/// MariaDB, and the cast reads the same on MySQL 8.0. A status this code does not know is an error.
pub async fn count_by_queue_and_status(pool: &MySqlPool) -> Result<FailedStats, StoreError> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT queue, CAST(status AS CHAR) AS status, COUNT(*) FROM failed_messages GROUP BY queue, status",
    )
    .fetch_all(pool)
    .await?;
    let rows = rows
        .into_iter()
        .map(|(queue, status, count)| Ok((queue, decode_enum("status", status)?, count)))
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(FailedStats::from_rows(rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_summed_by_queue_and_in_total() {
        let stats = FailedStats::from_rows([
            ("orders_queue".to_owned(), Status::Pending, 3),
            ("orders_queue".to_owned(), Status::Resolved, 10),
            ("auth_queue".to_owned(), Status::Failed, 2),
            ("auth_queue".to_owned(), Status::Retrying, 1),
        ]);
        assert_eq!(stats.queue("orders_queue").unresolved(), 3);
        assert_eq!(stats.queue("auth_queue").unresolved(), 3);
        assert_eq!(stats.queue("nope"), FailedCounts::default());
        assert_eq!(
            stats.totals,
            FailedCounts {
                pending: 3,
                retrying: 1,
                failed: 2,
                resolved: 10
            }
        );
        assert_eq!(stats.totals.get(Status::Resolved), 10);
    }
}
