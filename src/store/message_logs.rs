//! `message_logs`: the audit trail of published messages.

use chrono::{DateTime, Utc};
use sqlx::{MySql, MySqlPool, QueryBuilder};

use super::StoreError;

#[derive(Debug, Clone)]
pub struct NewMessageLog {
    pub message_id: String,
    pub exchange: String,
    pub routing_key: String,
    /// The published JSON body, as sent (shared with the publisher: not copied).
    pub payload: bytes::Bytes,
    pub published_at: DateTime<Utc>,
    /// JSON object: publishing client, headers.
    pub metadata: String,
}

/// Statement sizes, largest first: a batch goes out as a few statements of these sizes, so each
/// connection prepares ten shapes once and then only executes them. One statement per batch size
/// (the writer's batches vary with the traffic) prepared a statement of up to 3,500 placeholders
/// for every new size, and sqlx's cache (100 per connection) evicted them again.
const STATEMENT_ROWS: [usize; 10] = [500, 250, 125, 64, 32, 16, 8, 4, 2, 1];

/// Inserts a batch in one transaction; a message_id already logged (an idempotent replay, a
/// retried batch) is skipped rather than failing the batch.
pub async fn insert_batch(pool: &MySqlPool, rows: &[NewMessageLog]) -> Result<u64, StoreError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut tx = pool.begin().await?;
    let mut inserted = 0;
    for chunk in chunks(rows) {
        inserted += insert_statement(chunk).build().execute(&mut *tx).await?.rows_affected();
    }
    tx.commit().await?;
    Ok(inserted)
}

/// `rows` cut greedily into slices whose lengths are all in `STATEMENT_ROWS`.
fn chunks(mut rows: &[NewMessageLog]) -> impl Iterator<Item = &[NewMessageLog]> {
    std::iter::from_fn(move || {
        let size = STATEMENT_ROWS.into_iter().find(|size| *size <= rows.len())?;
        let (chunk, rest) = rows.split_at(size);
        rows = rest;
        Some(chunk)
    })
}

/// One multi-row INSERT IGNORE; `status` is left to its default (`published`): one placeholder
/// less per row.
fn insert_statement(rows: &[NewMessageLog]) -> QueryBuilder<MySql> {
    let mut query = QueryBuilder::new(
        "INSERT IGNORE INTO message_logs (message_id, exchange, routing_key, payload, published_at, metadata) ",
    );
    query.push_values(rows, |mut row, log| {
        row.push_bind(&log.message_id)
            .push_bind(&log.exchange)
            .push_bind(&log.routing_key)
            // Our own serialized JSON, hence UTF-8; bound as text because MySQL's JSON column
            // refuses a binary string.
            .push_bind(std::str::from_utf8(&log.payload).unwrap_or_default())
            .push_bind(log.published_at.naive_utc())
            .push_bind(&log.metadata);
    });
    query
}

/// Deletes up to `limit` rows published before `before`; small batches keep locks short.
pub async fn delete_older_than(pool: &MySqlPool, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
    let result = sqlx::query("DELETE FROM message_logs WHERE published_at < ? ORDER BY published_at LIMIT ?")
        .bind(before.naive_utc())
        .bind(limit)
        .execute(pool)
        .await?;
    Ok(result.rows_affected())
}

/// Sets the audit status of the logged messages among `message_ids` (`failed` when their dead
/// letter is stored, `published` again once a retry is confirmed); ids never logged are ignored.
pub async fn set_status(pool: &MySqlPool, message_ids: &[&str], status: &'static str) -> Result<u64, StoreError> {
    if message_ids.is_empty() {
        return Ok(0);
    }
    let mut query = QueryBuilder::new("UPDATE message_logs SET status = ");
    query.push_bind(status).push(" WHERE message_id IN (");
    let mut ids = query.separated(", ");
    for id in message_ids {
        ids.push_bind(*id);
    }
    query.push(")");
    let result = query.build().execute(pool).await?;
    Ok(result.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_go_out_in_statements_of_the_fixed_sizes() {
        let row = NewMessageLog {
            message_id: "m".into(),
            exchange: "x".into(),
            routing_key: "k".into(),
            payload: bytes::Bytes::from_static(b"{}"),
            published_at: Utc::now(),
            metadata: "{}".into(),
        };
        for (n, sizes) in [
            (0, vec![]),
            (1, vec![1]),
            (213, vec![125, 64, 16, 8]),
            (500, vec![500]),
            (1203, vec![500, 500, 125, 64, 8, 4, 2]),
        ] {
            let rows = vec![row.clone(); n];
            let got: Vec<usize> = chunks(&rows).map(<[_]>::len).collect();
            assert_eq!(got, sizes, "{n} rows");
        }
    }
}
