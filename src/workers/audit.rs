//! The audit writer: takes published messages from a bounded channel and writes them to
//! `message_logs` in batches. It never slows publishing: when the database is slow or down the
//! channel fills, further rows are dropped and counted (`messages_broker_audit_dropped_total`).

use std::{sync::Arc, time::Duration};

use sqlx::MySqlPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    backoff::{Backoff, retry_until_ok},
    metrics::Metrics,
    store::message_logs::{self, NewMessageLog},
};

/// Rows per INSERT.
const BATCH: usize = 500;
/// How long a batch that is not full waits for more rows: 50 ms fill batches of 500 from 10,000
/// publishes/s; the database's CPU per row is mostly per statement and per batch (at 10,000
/// rows/s, 20 ms batches of ~200 rows cost it ~15 % more per row than full ones).
const LINGER: Duration = Duration::from_millis(50);

/// The publishing side: never blocks.
#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<NewMessageLog>,
    metrics: Arc<Metrics>,
}

impl AuditSink {
    pub fn record(&self, row: NewMessageLog) {
        match self.tx.try_send(row) {
            Ok(()) => self.metrics.audit_backlog.inc(),
            Err(_) => self.metrics.audit_dropped_total.inc(),
        }
    }
}

pub fn channel(capacity: usize, metrics: Arc<Metrics>) -> (AuditSink, mpsc::Receiver<NewMessageLog>) {
    let (tx, rx) = mpsc::channel(capacity);
    (AuditSink { tx, metrics }, rx)
}

/// Writes batches until cancelled, then flushes what is queued (one attempt, under the deadline
/// of the shutdown).
pub async fn run(
    pool: MySqlPool,
    mut rx: mpsc::Receiver<NewMessageLog>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let received = tokio::select! {
            _ = cancel.cancelled() => {
                rx.close();
                while rx.recv_many(&mut batch, BATCH).await > 0 {
                    if message_logs::insert_batch(&pool, &batch).await.is_ok() {
                        written_out(&mut batch, &metrics);
                    }
                    batch.clear();
                }
                return;
            }
            n = rx.recv_many(&mut batch, BATCH) => n,
        };
        if received == 0 {
            return;
        }
        if batch.len() < BATCH {
            // A short wait turns a trickle into fewer, larger inserts: the database's cost is
            // partly per statement (single publishes at 10k msg/s: 26 -> 15 us of its CPU per row).
            tokio::time::sleep(LINGER).await;
            while batch.len() < BATCH {
                let Ok(row) = rx.try_recv() else { break };
                batch.push(row);
            }
        }
        // Hold the batch until it is written: retried with backoff while the database is down.
        let backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let rows = batch.len();
        let written = retry_until_ok(
            backoff,
            &cancel,
            || message_logs::insert_batch(&pool, &batch),
            |err, _| {
                warn!(error = %err, rows, "Cannot write the audit log; holding rows and retrying.");
            },
        )
        .await;
        match written {
            None => return,
            Some((_, failures)) if failures > 0 => info!("Audit log writable again."),
            Some(_) => {}
        }
        written_out(&mut batch, &metrics);
    }
}

/// Counts a written batch and empties it for the next one.
fn written_out(batch: &mut Vec<NewMessageLog>, metrics: &Metrics) {
    metrics.audit_written_total.inc_by(batch.len() as u64);
    metrics.audit_backlog.sub(batch.len() as i64);
    batch.clear();
}
