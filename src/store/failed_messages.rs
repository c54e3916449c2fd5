//! `failed_messages`: dead letters recorded by the ingester, claimed by the retrier, listed and
//! acted on through the API. Every statement runs on MySQL 8.0 and MariaDB 10.6+.

use std::{str::FromStr, time::Duration};

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Serialize;
use sqlx::{MySql, MySqlPool, QueryBuilder, Row, mysql::MySqlRow};
use strum::{EnumIter, EnumString, IntoStaticStr};

use super::StoreError;

/// How a payload is kept: JSON as JSON; other bodies losslessly as a JSON string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, EnumIter, EnumString, IntoStaticStr)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum PayloadEncoding {
    Json,
    /// Valid UTF-8 that is not JSON: stored as a JSON string.
    Text,
    /// Arbitrary bytes: stored as a base64 JSON string.
    Base64,
}

impl PayloadEncoding {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// A message body as JSON: itself when it is JSON, else a string of its text or its base64.
    /// The one rule for every body the API shows (stored dead letters, replies to requests).
    pub fn decode(body: &[u8]) -> (serde_json::Value, Self) {
        use base64::{Engine, engine::general_purpose::STANDARD};
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(json) => (json, Self::Json),
            Err(_) => match std::str::from_utf8(body) {
                Ok(text) => (text.into(), Self::Text),
                Err(_) => (STANDARD.encode(body).into(), Self::Base64),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, EnumIter, EnumString, IntoStaticStr)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Status {
    Pending,
    Retrying,
    Failed,
    Resolved,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A dead letter as the ingester turns it into a row.
#[derive(Debug, Clone)]
pub struct NewFailedMessage {
    pub message_id: String,
    pub exchange: String,
    pub routing_key: String,
    pub queue: String,
    /// JSON text (a document, or a JSON string for text/base64 bodies).
    pub payload: String,
    pub payload_encoding: PayloadEncoding,
    pub headers: String,
    pub death_history: String,
    pub error_message: String,
    /// Retries that produced this copy (our `mb-retry-count` header; 0 for a first failure).
    pub retry_count: u32,
    pub max_retries: u32,
    pub status: Status,
    pub failed_at: DateTime<Utc>,
    pub next_retry_at: Option<DateTime<Utc>>,
}

/// A row, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FailedMessage {
    pub id: u64,
    pub message_id: String,
    pub exchange: String,
    pub routing_key: String,
    pub queue: String,
    pub payload: serde_json::Value,
    pub payload_encoding: PayloadEncoding,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub death_history: Option<serde_json::Value>,
    pub error_message: Option<String>,
    pub retry_count: u32,
    pub max_retries: u32,
    pub status: Status,
    pub failed_at: DateTime<Utc>,
    pub last_retry_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub next_retry_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, message_id, exchange, routing_key, queue, CAST(payload AS CHAR) AS payload, \
    CAST(payload_encoding AS CHAR) AS payload_encoding, CAST(headers AS CHAR) AS headers, \
    CAST(death_history AS CHAR) AS death_history, error_message, retry_count, max_retries, \
    CAST(status AS CHAR) AS status, failed_at, last_retry_at, resolved_at, next_retry_at, created_at, updated_at";

/// A value of an ENUM column that this code does not know: the schema and the code disagree.
#[derive(Debug, thiserror::Error)]
#[error("unknown value `{0}`")]
struct UnknownValue(String);

/// Reads an ENUM column (cast to text) into its enum. An unknown value is an error, never a guess:
/// a row shown or retried with a made-up status or encoding would be worse than no row.
pub(super) fn enum_column<T: FromStr>(row: &MySqlRow, column: &str) -> Result<T, sqlx::Error> {
    let text: String = row.try_get(column)?;
    decode_enum(column, text)
}

/// The text of an ENUM column, as [`enum_column`] reads it.
pub(super) fn decode_enum<T: FromStr>(column: &str, text: String) -> Result<T, sqlx::Error> {
    text.parse().map_err(|_| sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: Box::new(UnknownValue(text)),
    })
}

fn utc(value: NaiveDateTime) -> DateTime<Utc> {
    DateTime::from_naive_utc_and_offset(value, Utc)
}

fn from_row(row: &MySqlRow, with_details: bool) -> Result<FailedMessage, sqlx::Error> {
    let json = |text: Option<String>| text.and_then(|t| serde_json::from_str(&t).ok());
    Ok(FailedMessage {
        id: row.try_get("id")?,
        message_id: row.try_get("message_id")?,
        exchange: row.try_get("exchange")?,
        routing_key: row.try_get("routing_key")?,
        queue: row.try_get("queue")?,
        payload: json(row.try_get("payload")?).unwrap_or(serde_json::Value::Null),
        payload_encoding: enum_column(row, "payload_encoding")?,
        headers: if with_details {
            json(row.try_get("headers")?)
        } else {
            None
        },
        death_history: if with_details {
            json(row.try_get("death_history")?)
        } else {
            None
        },
        error_message: row.try_get("error_message")?,
        retry_count: row.try_get("retry_count")?,
        max_retries: row.try_get("max_retries")?,
        status: enum_column(row, "status")?,
        failed_at: utc(row.try_get("failed_at")?),
        last_retry_at: row.try_get::<Option<NaiveDateTime>, _>("last_retry_at")?.map(utc),
        resolved_at: row.try_get::<Option<NaiveDateTime>, _>("resolved_at")?.map(utc),
        next_retry_at: row.try_get::<Option<NaiveDateTime>, _>("next_retry_at")?.map(utc),
        created_at: utc(row.try_get("created_at")?),
        updated_at: utc(row.try_get("updated_at")?),
    })
}

/// Stores a batch of dead letters in one statement (atomic). A message_id already present is
/// updated only when this copy is a new failure: the row was being retried or resolved and this
/// copy carries at least its retry count. A redelivered copy changes nothing: no double row, no
/// double count.
pub async fn upsert_batch(pool: &MySqlPool, rows: &[NewFailedMessage]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut query = QueryBuilder::<MySql>::new(
        "INSERT INTO failed_messages (message_id, exchange, routing_key, queue, payload, payload_encoding, \
         headers, death_history, error_message, retry_count, max_retries, status, failed_at, next_retry_at) ",
    );
    query.push_values(rows, |mut row, m| {
        row.push_bind(&m.message_id)
            .push_bind(&m.exchange)
            .push_bind(&m.routing_key)
            .push_bind(&m.queue)
            .push_bind(&m.payload)
            .push_bind(m.payload_encoding.as_str())
            .push_bind(&m.headers)
            .push_bind(&m.death_history)
            .push_bind(&m.error_message)
            .push_bind(m.retry_count)
            .push_bind(m.max_retries)
            .push_bind(m.status.as_str())
            .push_bind(m.failed_at.naive_utc())
            .push_bind(m.next_retry_at.map(|t| t.naive_utc()));
    });
    // MySQL evaluates these assignments left to right, each seeing the previous ones: `status`
    // must come last because the condition reads it. VALUES() runs on MySQL 8 and MariaDB alike.
    const NEW_FAILURE: &str = "(status IN ('retrying', 'resolved') AND VALUES(retry_count) >= retry_count)";
    query.push(format!(
        " ON DUPLICATE KEY UPDATE \
         payload = IF({c}, VALUES(payload), payload), \
         headers = IF({c}, VALUES(headers), headers), \
         death_history = IF({c}, VALUES(death_history), death_history), \
         error_message = IF({c}, VALUES(error_message), error_message), \
         failed_at = IF({c}, VALUES(failed_at), failed_at), \
         next_retry_at = IF({c}, VALUES(next_retry_at), next_retry_at), \
         resolved_at = IF({c}, NULL, resolved_at), \
         retry_count = IF({c}, VALUES(retry_count), retry_count), \
         status = IF({c}, VALUES(status), status)",
        c = NEW_FAILURE
    ));
    query.build().execute(pool).await?;
    Ok(())
}

/// A row claimed for a retry: what the publisher needs.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: u64,
    pub message_id: String,
    pub exchange: String,
    pub routing_key: String,
    pub payload: String,
    pub payload_encoding: PayloadEncoding,
    pub headers: Option<String>,
    /// After the claim: this retry's number (1 for the first retry).
    pub retry_count: u32,
    pub max_retries: u32,
}

/// A `retrying` row whose claimer went silent this long is claimable again (a crashed replica).
pub const ABANDONED_AFTER: Duration = Duration::from_secs(300);

/// Claims up to `limit` due rows: `FOR UPDATE SKIP LOCKED` keeps concurrent retriers off each
/// other's rows while they are being claimed, the `retrying` status afterwards.
pub async fn claim_due(pool: &MySqlPool, limit: u32) -> Result<Vec<Claimed>, StoreError> {
    super::retry_deadlocks(|| claim_due_once(pool, limit)).await
}

async fn claim_due_once(pool: &MySqlPool, limit: u32) -> Result<Vec<Claimed>, StoreError> {
    // A replica that died mid-retry leaves rows `retrying`: give them back first.
    sqlx::query(
        "UPDATE failed_messages SET status = 'pending', retry_count = retry_count - 1, next_retry_at = UTC_TIMESTAMP(6) \
         WHERE status = 'retrying' AND last_retry_at < UTC_TIMESTAMP(6) - INTERVAL ? SECOND",
    )
    .bind(ABANDONED_AFTER.as_secs())
    .execute(pool)
    .await?;
    let mut tx = pool.begin().await?;
    // A range scan of (status, next_retry_at) in index order stops after LIMIT rows, so only
    // those are locked and another replica's SKIP LOCKED takes the next ones.
    let ids: Vec<u64> = sqlx::query_scalar(
        "SELECT id FROM failed_messages FORCE INDEX (idx_failed_messages_due) \
         WHERE status = 'pending' AND next_retry_at <= UTC_TIMESTAMP(6) \
         ORDER BY next_retry_at LIMIT ? FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let claimed = claim_ids(&mut tx, &ids).await?;
    tx.commit().await?;
    Ok(claimed)
}

/// Claims one row now, whatever its schedule (manual retry). `Err` says why it cannot be.
pub async fn claim_one(pool: &MySqlPool, id: u64) -> Result<Result<Claimed, ClaimRefusal>, StoreError> {
    super::retry_deadlocks(|| claim_one_once(pool, id)).await
}

async fn claim_one_once(pool: &MySqlPool, id: u64) -> Result<Result<Claimed, ClaimRefusal>, StoreError> {
    let mut tx = pool.begin().await?;
    let status: Option<String> =
        sqlx::query_scalar("SELECT CAST(status AS CHAR) FROM failed_messages WHERE id = ? FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let status: Option<Status> = status.map(|text| decode_enum("status", text)).transpose()?;
    let refusal = match status {
        None => Some(ClaimRefusal::NotFound),
        Some(Status::Resolved) => Some(ClaimRefusal::AlreadyResolved),
        Some(Status::Retrying) => Some(ClaimRefusal::InProgress),
        Some(Status::Pending | Status::Failed) => None,
    };
    if let Some(refusal) = refusal {
        return Ok(Err(refusal));
    }
    let mut claimed = claim_ids(&mut tx, &[id]).await?;
    tx.commit().await?;
    Ok(claimed.pop().ok_or(ClaimRefusal::NotFound))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimRefusal {
    NotFound,
    AlreadyResolved,
    InProgress,
}

async fn claim_ids(tx: &mut sqlx::Transaction<'_, MySql>, ids: &[u64]) -> Result<Vec<Claimed>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut update = QueryBuilder::<MySql>::new(
        "UPDATE failed_messages SET status = 'retrying', retry_count = retry_count + 1, \
         last_retry_at = UTC_TIMESTAMP(6) WHERE id IN (",
    );
    let mut list = update.separated(", ");
    for id in ids {
        list.push_bind(*id);
    }
    update.push(")");
    update.build().execute(&mut **tx).await?;

    let mut select = QueryBuilder::<MySql>::new(
        "SELECT id, message_id, exchange, routing_key, CAST(payload AS CHAR) AS payload, \
         CAST(payload_encoding AS CHAR) AS payload_encoding, CAST(headers AS CHAR) AS headers, \
         retry_count, max_retries FROM failed_messages WHERE id IN (",
    );
    let mut list = select.separated(", ");
    for id in ids {
        list.push_bind(*id);
    }
    select.push(") ORDER BY id");
    let rows = select.build().fetch_all(&mut **tx).await?;
    rows.iter()
        .map(|row| {
            Ok(Claimed {
                id: row.try_get("id")?,
                message_id: row.try_get("message_id")?,
                exchange: row.try_get("exchange")?,
                routing_key: row.try_get("routing_key")?,
                payload: row.try_get("payload")?,
                payload_encoding: enum_column(row, "payload_encoding")?,
                headers: row.try_get("headers")?,
                retry_count: row.try_get("retry_count")?,
                max_retries: row.try_get("max_retries")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from)
}

/// The broker confirmed the republish. Only a row still ours (`retrying`, same count) changes:
/// if the message already failed again and was re-ingested, that newer state wins.
pub async fn mark_resolved(pool: &MySqlPool, claimed: &Claimed) -> Result<(), StoreError> {
    super::retry_deadlocks(|| async {
        sqlx::query(
            "UPDATE failed_messages SET status = 'resolved', resolved_at = UTC_TIMESTAMP(6), next_retry_at = NULL \
         WHERE id = ? AND status = 'retrying' AND retry_count = ?",
        )
        .bind(claimed.id)
        .bind(claimed.retry_count)
        .execute(pool)
        .await?;
        Ok(())
    })
    .await
}

/// The republish was not confirmed: the attempt did not happen, the row waits `delay` again.
pub async fn release(pool: &MySqlPool, claimed: &Claimed, delay: Duration) -> Result<(), StoreError> {
    super::retry_deadlocks(|| async {
        sqlx::query(
            "UPDATE failed_messages SET status = 'pending', retry_count = retry_count - 1, \
         next_retry_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND \
         WHERE id = ? AND status = 'retrying' AND retry_count = ?",
        )
        .bind(delay.as_micros() as u64)
        .bind(claimed.id)
        .bind(claimed.retry_count)
        .execute(pool)
        .await?;
        Ok(())
    })
    .await
}

pub async fn find(pool: &MySqlPool, id: u64) -> Result<Option<FailedMessage>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM failed_messages WHERE id = ?");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.map(|r| from_row(&r, true)).transpose().map_err(StoreError::from)
}

pub async fn find_by_message_id(pool: &MySqlPool, message_id: &str) -> Result<Option<FailedMessage>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM failed_messages WHERE message_id = ?");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(message_id)
        .fetch_optional(pool)
        .await?;
    row.map(|r| from_row(&r, true)).transpose().map_err(StoreError::from)
}

pub async fn delete(pool: &MySqlPool, id: u64) -> Result<bool, StoreError> {
    let result = sqlx::query("DELETE FROM failed_messages WHERE id = ?")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(result.rows_affected() == 1)
}

/// The list filters of `GET /api/messages/failed` (and of the bulk retry).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub status: Option<Status>,
    pub exchange: Option<String>,
    pub routing_key: Option<String>,
    pub queue: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Substring of the message_id, payload or error message.
    pub q: Option<String>,
}

fn push_filter(query: &mut QueryBuilder<MySql>, filter: &Filter) {
    query.push(" WHERE 1 = 1");
    if let Some(status) = filter.status {
        query.push(" AND status = ").push_bind(status.as_str());
    }
    if let Some(exchange) = &filter.exchange {
        query.push(" AND exchange = ").push_bind(exchange.clone());
    }
    if let Some(routing_key) = &filter.routing_key {
        query.push(" AND routing_key = ").push_bind(routing_key.clone());
    }
    if let Some(queue) = &filter.queue {
        query.push(" AND queue = ").push_bind(queue.clone());
    }
    if let Some(from) = filter.from {
        query.push(" AND failed_at >= ").push_bind(from.naive_utc());
    }
    if let Some(to) = filter.to {
        query.push(" AND failed_at <= ").push_bind(to.naive_utc());
    }
    if let Some(q) = &filter.q {
        let pattern = format!("%{}%", q.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
        query
            .push(" AND (message_id LIKE ")
            .push_bind(pattern.clone())
            .push(" OR error_message LIKE ")
            .push_bind(pattern.clone())
            .push(" OR CAST(payload AS CHAR) LIKE ")
            .push_bind(pattern)
            .push(")");
    }
}

/// One page, newest failures first, and the total matching.
pub async fn list(
    pool: &MySqlPool,
    filter: &Filter,
    page: u32,
    per_page: u32,
) -> Result<(Vec<FailedMessage>, u64), StoreError> {
    let mut count = QueryBuilder::<MySql>::new("SELECT COUNT(*) FROM failed_messages");
    push_filter(&mut count, filter);
    let total: i64 = count.build_query_scalar().fetch_one(pool).await?;

    let mut select = QueryBuilder::<MySql>::new(format!("SELECT {COLUMNS} FROM failed_messages"));
    push_filter(&mut select, filter);
    select
        .push(" ORDER BY failed_at DESC, id DESC LIMIT ")
        .push_bind(per_page);
    select
        .push(" OFFSET ")
        .push_bind(u64::from(page.saturating_sub(1)) * u64::from(per_page));
    let rows = select.build().fetch_all(pool).await?;
    let data = rows.iter().map(|r| from_row(r, false)).collect::<Result<_, _>>()?;
    Ok((data, total.max(0) as u64))
}

/// Bulk retry: makes every matching pending or failed row due now; the retrier takes them on
/// its next scan. Returns how many were queued.
pub async fn make_due(pool: &MySqlPool, filter: &Filter) -> Result<u64, StoreError> {
    let mut query =
        QueryBuilder::<MySql>::new("UPDATE failed_messages SET status = 'pending', next_retry_at = UTC_TIMESTAMP(6)");
    push_filter(&mut query, filter);
    query.push(" AND status IN ('pending', 'failed')");
    let result = query.build().execute(pool).await?;
    Ok(result.rows_affected())
}

/// How many rows a bulk retry with `filter` would make due.
pub async fn count_retryable(pool: &MySqlPool, filter: &Filter) -> Result<u64, StoreError> {
    let mut query = QueryBuilder::<MySql>::new("SELECT COUNT(*) FROM failed_messages");
    push_filter(&mut query, filter);
    query.push(" AND status IN ('pending', 'failed')");
    let count: i64 = query.build_query_scalar().fetch_one(pool).await?;
    Ok(count.max(0) as u64)
}

/// Deletes up to `limit` rows resolved before `before`. Only `resolved` ones: a `failed` row waits
/// for a person, whatever its age.
pub async fn delete_resolved_before(pool: &MySqlPool, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
    let result = sqlx::query(
        "DELETE FROM failed_messages WHERE status = 'resolved' AND resolved_at < ? ORDER BY resolved_at LIMIT ?",
    )
    .bind(before.naive_utc())
    .bind(limit)
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_enum_value_is_an_error_not_a_guess() {
        assert_eq!(
            decode_enum::<Status>("status", "failed".into()).unwrap(),
            Status::Failed
        );
        let err = StoreError::from(decode_enum::<Status>("status", "archived".into()).unwrap_err());
        assert!(matches!(err, StoreError::Query(_)), "{err:?}");
        assert!(
            err.to_string().contains("`archived`") && err.to_string().contains("status"),
            "{err}"
        );
        assert!(decode_enum::<PayloadEncoding>("payload_encoding", "utf16".into()).is_err());
    }
}
