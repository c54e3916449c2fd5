//! `failed_messages`: dead letters recorded by the ingester, claimed by the retrier, listed and
//! acted on through the API. Every statement runs on MySQL 8.0 and MariaDB 10.6+.

use std::{str::FromStr, time::Duration};

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Serialize;
use sqlx::{MySql, MySqlPool, QueryBuilder, Row, mysql::MySqlRow};
use strum::{EnumIter, EnumString, IntoStaticStr};

use super::{StoreError, failed_stats::FailedCounts};
use crate::{edit, fingerprint};

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
    /// Its failure group (src/fingerprint.rs); `None` until the backfill reached an older row.
    pub fingerprint: Option<String>,
    /// Edit and retry: the message_id of the original this copy was edited from (its
    /// `mb-edit-of` header)...
    pub edited_from: Option<String>,
    /// ...and, on an original, the message_id of its edited copy.
    pub edited_to: Option<String>,
    /// Details only: the row of `edited_from`, while there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edited_from_id: Option<u64>,
    /// Details only: the row of `edited_to`, once the copy failed in turn.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edited_to_id: Option<u64>,
}

const COLUMNS: &str = "id, message_id, exchange, routing_key, queue, CAST(payload AS CHAR) AS payload, \
    CAST(payload_encoding AS CHAR) AS payload_encoding, CAST(headers AS CHAR) AS headers, \
    CAST(death_history AS CHAR) AS death_history, error_message, retry_count, max_retries, \
    CAST(status AS CHAR) AS status, failed_at, last_retry_at, resolved_at, next_retry_at, created_at, updated_at, \
    fingerprint, edited_from, edited_to";

/// The details' extra columns: the rows at both ends of the edit links (one unique-index
/// lookup each). The main table is aliased `f`.
const LINK_IDS: &str = "(SELECT o.id FROM failed_messages o WHERE o.message_id = f.edited_from) AS edited_from_id, \
    (SELECT c.id FROM failed_messages c WHERE c.message_id = f.edited_to) AS edited_to_id";

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
        fingerprint: row.try_get("fingerprint")?,
        edited_from: row.try_get("edited_from")?,
        edited_to: row.try_get("edited_to")?,
        edited_from_id: if with_details {
            row.try_get("edited_from_id")?
        } else {
            None
        },
        edited_to_id: if with_details {
            row.try_get("edited_to_id")?
        } else {
            None
        },
    })
}

/// Stores a batch of dead letters in one statement (atomic). A message_id already present is
/// updated only when this copy is a new failure: the row was being retried or resolved and this
/// copy carries at least its retry count. A redelivered copy changes nothing: no double row, no
/// double count.
///
/// The fingerprint and the edit link are computed here, from the row's own columns, by the same
/// functions the backfill uses: whoever builds a row, it lands in its group.
pub async fn upsert_batch(pool: &MySqlPool, rows: &[NewFailedMessage]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut query = QueryBuilder::<MySql>::new(
        "INSERT INTO failed_messages (message_id, exchange, routing_key, queue, payload, payload_encoding, \
         headers, death_history, error_message, retry_count, max_retries, status, failed_at, next_retry_at, \
         fingerprint, fingerprint_version, edited_from) ",
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
            .push_bind(m.next_retry_at.map(|t| t.naive_utc()))
            .push_bind(fingerprint::of_stored(&m.queue, &m.payload, Some(&m.error_message)))
            .push_bind(fingerprint::VERSION)
            .push_bind(edit::edit_of(&m.headers));
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
         fingerprint = IF({c}, VALUES(fingerprint), fingerprint), \
         fingerprint_version = IF({c}, VALUES(fingerprint_version), fingerprint_version), \
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
    let claimed = super::retry_deadlocks(|| claim_one_once(pool, id)).await?;
    Ok(claimed.map(|(claimed, _)| claimed))
}

/// Claims one row for an edit and retry, like [`claim_one`]: the row lock and then the
/// `retrying` status keep a second edit (or a retry) of the same row out, which gets
/// `InProgress`. Also answers the status before the claim, for [`unclaim`].
pub async fn claim_for_edit(pool: &MySqlPool, id: u64) -> Result<Result<(Claimed, Status), ClaimRefusal>, StoreError> {
    super::retry_deadlocks(|| claim_one_once(pool, id)).await
}

async fn claim_one_once(pool: &MySqlPool, id: u64) -> Result<Result<(Claimed, Status), ClaimRefusal>, StoreError> {
    let mut tx = pool.begin().await?;
    let status: Option<String> =
        sqlx::query_scalar("SELECT CAST(status AS CHAR) FROM failed_messages WHERE id = ? FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let status: Option<Status> = status.map(|text| decode_enum("status", text)).transpose()?;
    let before = match status {
        None => return Ok(Err(ClaimRefusal::NotFound)),
        Some(Status::Resolved) => return Ok(Err(ClaimRefusal::AlreadyResolved)),
        Some(Status::Retrying) => return Ok(Err(ClaimRefusal::InProgress)),
        Some(before @ (Status::Pending | Status::Failed)) => before,
    };
    let mut claimed = claim_ids(&mut tx, &[id]).await?;
    tx.commit().await?;
    Ok(claimed.pop().map(|c| (c, before)).ok_or(ClaimRefusal::NotFound))
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

/// The edited copy was confirmed: the original is `resolved` and points at its copy. Only a row
/// still ours changes (as [`mark_resolved`]).
pub async fn mark_edited(pool: &MySqlPool, claimed: &Claimed, copy_message_id: &str) -> Result<(), StoreError> {
    super::retry_deadlocks(|| async {
        sqlx::query(
            "UPDATE failed_messages SET status = 'resolved', resolved_at = UTC_TIMESTAMP(6), next_retry_at = NULL, \
             edited_to = ? WHERE id = ? AND status = 'retrying' AND retry_count = ?",
        )
        .bind(copy_message_id)
        .bind(claimed.id)
        .bind(claimed.retry_count)
        .execute(pool)
        .await?;
        Ok(())
    })
    .await
}

/// The edited copy was not confirmed: the row goes back to what it was before the claim (a
/// `failed` row stays for a person, not queued for an automatic retry of the unedited message).
pub async fn unclaim(pool: &MySqlPool, claimed: &Claimed, before: Status) -> Result<(), StoreError> {
    super::retry_deadlocks(|| async {
        sqlx::query(
            "UPDATE failed_messages SET status = ?, retry_count = retry_count - 1 \
             WHERE id = ? AND status = 'retrying' AND retry_count = ?",
        )
        .bind(before.as_str())
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
    let sql = format!("SELECT {COLUMNS}, {LINK_IDS} FROM failed_messages f WHERE id = ?");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.map(|r| from_row(&r, true)).transpose().map_err(StoreError::from)
}

pub async fn find_by_message_id(pool: &MySqlPool, message_id: &str) -> Result<Option<FailedMessage>, StoreError> {
    let sql = format!("SELECT {COLUMNS}, {LINK_IDS} FROM failed_messages f WHERE message_id = ?");
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
    /// One failure group (16 hex digits, see src/fingerprint.rs).
    pub fingerprint: Option<String>,
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
    if let Some(fingerprint) = &filter.fingerprint {
        query.push(" AND fingerprint = ").push_bind(fingerprint.clone());
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

/// Deletes every row matching `filter`, 1,000 per statement (short locks, like retention).
/// Returns how many.
pub async fn delete_matching(pool: &MySqlPool, filter: &Filter) -> Result<u64, StoreError> {
    const BATCH: u64 = 1_000;
    let mut deleted = 0;
    loop {
        let mut query = QueryBuilder::<MySql>::new("DELETE FROM failed_messages");
        push_filter(&mut query, filter);
        // No ORDER BY: which 1,000 go first does not matter, and a sort of every matching row
        // per statement would. (Row-based binlogs, the default of MySQL 8 and MariaDB's MIXED,
        // replicate a LIMIT without order safely.)
        query.push(" LIMIT ").push_bind(BATCH);
        let affected = query.build().execute(pool).await?.rows_affected();
        deleted += affected;
        if affected < BATCH {
            return Ok(deleted);
        }
    }
}

/// A failure group: the rows that share a fingerprint (and match the filters asked).
#[derive(Debug, Clone, Serialize)]
pub struct FailureGroup {
    pub fingerprint: String,
    /// The group's queue and event: both are part of the fingerprint, so every row has these.
    pub queue: String,
    pub event: Option<String>,
    /// The error of the group's latest row, as stored...
    pub example_error: Option<String>,
    /// ...and as the fingerprint saw it: "order <n> not found".
    pub error_pattern: String,
    /// The latest row (highest id) of the group.
    pub example_id: u64,
    /// Rows in the group.
    pub count: u64,
    pub counts: FailedCounts,
    /// The earliest and the latest `failed_at`.
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

/// One page of failure groups, the most recently failing first, and how many groups match.
/// The filters are the list's: a group counts only its matching rows. Rows without a fingerprint
/// yet (before the backfill reached them) are in no group.
///
/// Read from idx_failed_messages_fingerprint (fingerprint, status, failed_at; the id comes with
/// it): a scan of that index in its order, never the table, unless a filter needs other
/// columns. The groups' count comes from the same statement (a window over the grouped rows).
pub async fn groups(
    pool: &MySqlPool,
    filter: &Filter,
    page: u32,
    per_page: u32,
) -> Result<(Vec<FailureGroup>, u64), StoreError> {
    // Counted per (fingerprint, status) first: a streaming GROUP BY in the index's order with
    // plain COUNT/MIN/MAX (half the time of per-row CASEs over the ENUM in one pass), then the
    // few hundred rows that gives are folded per fingerprint, sorted and paged.
    let mut select = QueryBuilder::<MySql>::new(
        "SELECT fingerprint, CAST(SUM(n) AS SIGNED) AS total, \
         CAST(SUM(CASE WHEN status = 'pending' THEN n ELSE 0 END) AS SIGNED) AS pending, \
         CAST(SUM(CASE WHEN status = 'retrying' THEN n ELSE 0 END) AS SIGNED) AS retrying, \
         CAST(SUM(CASE WHEN status = 'failed' THEN n ELSE 0 END) AS SIGNED) AS failed, \
         CAST(SUM(CASE WHEN status = 'resolved' THEN n ELSE 0 END) AS SIGNED) AS resolved, \
         MIN(first_seen) AS first_seen, MAX(last_seen) AS last_seen, MAX(example_id) AS example_id, \
         COUNT(*) OVER () AS groups_total FROM (\
         SELECT fingerprint, status, COUNT(*) AS n, MIN(failed_at) AS first_seen, MAX(failed_at) AS last_seen, \
         MAX(id) AS example_id FROM failed_messages",
    );
    // A filter on a column outside the index (queue, exchange, routing_key, q) makes MariaDB keep
    // the index for its order and read every row behind it (105 ms for 100,000 rows, against
    // 28 ms through the filter's own index and a temporary table for the grouping; measured
    // with scripts/bench.sh groups). Within one group the index range is small either way.
    let outside_index =
        filter.queue.is_some() || filter.exchange.is_some() || filter.routing_key.is_some() || filter.q.is_some();
    if outside_index && filter.fingerprint.is_none() {
        select.push(" IGNORE INDEX FOR GROUP BY (idx_failed_messages_fingerprint)");
    }
    push_filter(&mut select, filter);
    select
        .push(" AND fingerprint IS NOT NULL GROUP BY fingerprint, status) per_status")
        .push(" GROUP BY fingerprint ORDER BY last_seen DESC, fingerprint LIMIT ")
        .push_bind(per_page)
        .push(" OFFSET ")
        .push_bind(u64::from(page.saturating_sub(1)) * u64::from(per_page));
    let rows = select.build().fetch_all(pool).await?;
    let total = match rows.first() {
        Some(row) => row.try_get::<i64, _>("groups_total")?,
        // Past the last page the window has no row to ride on: count apart.
        None if page > 1 => {
            let mut count = QueryBuilder::<MySql>::new("SELECT COUNT(DISTINCT fingerprint) FROM failed_messages");
            push_filter(&mut count, filter);
            count.build_query_scalar::<i64>().fetch_one(pool).await?
        }
        None => 0,
    };
    let ids: Vec<u64> = rows.iter().map(|r| r.try_get("example_id")).collect::<Result<_, _>>()?;
    let examples = examples(pool, &ids).await?;
    let mut groups = Vec::with_capacity(rows.len());
    for row in &rows {
        let example_id: u64 = row.try_get("example_id")?;
        let count = |column: &str| row.try_get::<i64, _>(column).map(|n| n.max(0) as u64);
        // A row deleted between the two statements leaves its group without an example.
        let (queue, event, example_error) = examples.get(&example_id).cloned().unwrap_or_default();
        groups.push(FailureGroup {
            fingerprint: row.try_get("fingerprint")?,
            queue,
            event,
            error_pattern: fingerprint::normalise(example_error.as_deref().unwrap_or("")),
            example_error,
            example_id,
            count: count("total")?,
            counts: FailedCounts {
                pending: count("pending")?,
                retrying: count("retrying")?,
                failed: count("failed")?,
                resolved: count("resolved")?,
            },
            first_seen: utc(row.try_get("first_seen")?),
            last_seen: utc(row.try_get("last_seen")?),
        });
    }
    Ok((groups, total.max(0) as u64))
}

type Example = (String, Option<String>, Option<String>);

/// Queue, event and error of the groups' example rows, by id. The event is read in SQL: the
/// payload itself (up to the body limit) never leaves the database.
async fn examples(pool: &MySqlPool, ids: &[u64]) -> Result<std::collections::HashMap<u64, Example>, StoreError> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let mut select = QueryBuilder::<MySql>::new(
        "SELECT id, queue, error_message, \
         CASE WHEN JSON_TYPE(JSON_EXTRACT(payload, '$.event')) = 'STRING' \
         THEN JSON_UNQUOTE(JSON_EXTRACT(payload, '$.event')) END AS event \
         FROM failed_messages WHERE id IN (",
    );
    let mut list = select.separated(", ");
    for id in ids {
        list.push_bind(*id);
    }
    select.push(")");
    let rows = select.build().fetch_all(pool).await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get("id")?,
                (
                    row.try_get("queue")?,
                    row.try_get("event")?,
                    row.try_get("error_message")?,
                ),
            ))
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from)
}

/// Computes the fingerprint of up to `limit` rows that have none, or one of an older algorithm
/// version; answers how many it looked at (0: nothing left). Each UPDATE is guarded by the same
/// condition, so replicas backfilling together only repeat each other's work.
pub async fn backfill_fingerprints(pool: &MySqlPool, limit: u32) -> Result<u64, StoreError> {
    // The event is read in SQL, as for the groups' examples: payloads stay in the database.
    let rows = sqlx::query(
        "SELECT id, queue, error_message, \
         CASE WHEN JSON_TYPE(JSON_EXTRACT(payload, '$.event')) = 'STRING' \
         THEN JSON_UNQUOTE(JSON_EXTRACT(payload, '$.event')) END AS event \
         FROM failed_messages FORCE INDEX (idx_failed_messages_fingerprint_version) \
         WHERE fingerprint_version IS NULL OR fingerprint_version < ? LIMIT ?",
    )
    .bind(fingerprint::VERSION)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut update = QueryBuilder::<MySql>::new("UPDATE failed_messages SET fingerprint = CASE id");
    let mut ids = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: u64 = row.try_get("id")?;
        let queue: String = row.try_get("queue")?;
        let event: Option<String> = row.try_get("event")?;
        let error: Option<String> = row.try_get("error_message")?;
        let fingerprint =
            fingerprint::fingerprint(&queue, event.as_deref().unwrap_or(""), error.as_deref().unwrap_or(""));
        update
            .push(" WHEN ")
            .push_bind(id)
            .push(" THEN ")
            .push_bind(fingerprint);
        ids.push(id);
    }
    update
        .push(" END, fingerprint_version = ")
        .push_bind(fingerprint::VERSION)
        .push(" WHERE (fingerprint_version IS NULL OR fingerprint_version < ")
        .push_bind(fingerprint::VERSION)
        .push(") AND id IN (");
    let mut list = update.separated(", ");
    for id in &ids {
        list.push_bind(*id);
    }
    update.push(")");
    update.build().execute(pool).await?;
    Ok(ids.len() as u64)
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
