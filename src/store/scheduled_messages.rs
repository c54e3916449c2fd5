//! `scheduled_messages`: delayed publishes waiting for their time. The API inserts and cancels
//! them; the scheduler role claims due rows (`FOR UPDATE SKIP LOCKED`, held while it publishes,
//! so two replicas never publish the same row) and marks them sent.

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Serialize;
use sqlx::{MySql, MySqlPool, QueryBuilder, Row, Transaction, mysql::MySqlRow};
use strum::{EnumString, IntoStaticStr};

use super::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, EnumString, IntoStaticStr)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum ScheduledStatus {
    Scheduled,
    Sent,
    Cancelled,
    /// The broker refused it for good (no queue bound): kept with `last_error`.
    Failed,
}

/// A delayed message as the API stores it.
#[derive(Debug, Clone)]
pub struct NewScheduled {
    pub message_id: String,
    pub client: String,
    pub exchange: String,
    pub routing_key: String,
    /// The JSON body, as it will be published.
    pub payload: String,
    /// Application headers, as a JSON object.
    pub headers: String,
    pub priority: Option<u8>,
    pub deliver_at: DateTime<Utc>,
}

/// A row as the API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Scheduled {
    pub id: u64,
    pub message_id: String,
    pub client: String,
    pub exchange: String,
    pub routing_key: String,
    pub payload: serde_json::Value,
    /// The body byte for byte, as it will be published.
    #[serde(skip)]
    pub raw_payload: String,
    pub headers: serde_json::Value,
    pub priority: Option<u8>,
    pub status: ScheduledStatus,
    pub deliver_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, message_id, client, exchange, routing_key, payload, headers, priority, \
    CAST(status AS CHAR) AS status, deliver_at, sent_at, last_error, created_at";

fn from_row(row: &MySqlRow) -> Result<Scheduled, sqlx::Error> {
    let json = |name: &str| -> Result<serde_json::Value, sqlx::Error> {
        let text: String = row.try_get(name)?;
        serde_json::from_str(&text).map_err(|err| sqlx::Error::Decode(Box::new(err)))
    };
    let status: String = row.try_get("status")?;
    let at = |t: NaiveDateTime| t.and_utc();
    Ok(Scheduled {
        id: row.try_get("id")?,
        message_id: row.try_get("message_id")?,
        client: row.try_get("client")?,
        exchange: row.try_get("exchange")?,
        routing_key: row.try_get("routing_key")?,
        payload: json("payload")?,
        raw_payload: row.try_get("payload")?,
        headers: json("headers")?,
        priority: row.try_get("priority")?,
        status: status
            .parse()
            .map_err(|_| sqlx::Error::Decode(format!("unknown scheduled status `{status}`").into()))?,
        deliver_at: at(row.try_get("deliver_at")?),
        sent_at: row.try_get::<Option<NaiveDateTime>, _>("sent_at")?.map(at),
        last_error: row.try_get("last_error")?,
        created_at: at(row.try_get("created_at")?),
    })
}

/// Stores a delayed message. `false` when its message_id is already scheduled (or was).
pub async fn insert(pool: &MySqlPool, message: &NewScheduled) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT IGNORE INTO scheduled_messages \
         (message_id, client, exchange, routing_key, payload, headers, priority, deliver_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&message.message_id)
    .bind(&message.client)
    .bind(&message.exchange)
    .bind(&message.routing_key)
    .bind(&message.payload)
    .bind(&message.headers)
    .bind(message.priority)
    .bind(message.deliver_at.naive_utc())
    .execute(pool)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Filters of the list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScheduledFilter {
    pub status: Option<ScheduledStatus>,
    pub exchange: Option<String>,
    pub routing_key: Option<String>,
    /// deliver_at >= from, deliver_at <= to.
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

fn push_filter(query: &mut QueryBuilder<MySql>, filter: &ScheduledFilter) {
    query.push(" WHERE 1 = 1");
    if let Some(status) = filter.status {
        query.push(" AND status = ").push_bind(<&str>::from(status));
    }
    if let Some(exchange) = &filter.exchange {
        query.push(" AND exchange = ").push_bind(exchange.clone());
    }
    if let Some(routing_key) = &filter.routing_key {
        query.push(" AND routing_key = ").push_bind(routing_key.clone());
    }
    if let Some(from) = filter.from {
        query.push(" AND deliver_at >= ").push_bind(from.naive_utc());
    }
    if let Some(to) = filter.to {
        query.push(" AND deliver_at <= ").push_bind(to.naive_utc());
    }
}

/// One page, soonest first, and the total.
pub async fn list(
    pool: &MySqlPool,
    filter: &ScheduledFilter,
    page: u32,
    per_page: u32,
) -> Result<(Vec<Scheduled>, u64), StoreError> {
    let mut count = QueryBuilder::<MySql>::new("SELECT COUNT(*) FROM scheduled_messages");
    push_filter(&mut count, filter);
    let total: i64 = count.build_query_scalar().fetch_one(pool).await?;
    let mut select = QueryBuilder::<MySql>::new(format!("SELECT {COLUMNS} FROM scheduled_messages"));
    push_filter(&mut select, filter);
    select.push(" ORDER BY deliver_at, id LIMIT ").push_bind(per_page);
    select
        .push(" OFFSET ")
        .push_bind(u64::from(page.saturating_sub(1)) * u64::from(per_page));
    let rows = select.build().fetch_all(pool).await?;
    let data = rows.iter().map(from_row).collect::<Result<_, _>>()?;
    Ok((data, total.max(0) as u64))
}

/// Why a cancel did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelRefusal {
    NotFound,
    /// Already sent, cancelled or failed.
    NotScheduled(ScheduledStatus),
}

/// Cancels a row still waiting. A row being published right now is locked by the scheduler: the
/// update waits for its commit and then finds it sent.
pub async fn cancel(pool: &MySqlPool, id: u64) -> Result<Result<Scheduled, CancelRefusal>, StoreError> {
    sqlx::query("UPDATE scheduled_messages SET status = 'cancelled' WHERE id = ? AND status = 'scheduled'")
        .bind(id)
        .execute(pool)
        .await?;
    // COLUMNS is a constant of this file: no outside text reaches the statement.
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM scheduled_messages WHERE id = ?"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(Err(CancelRefusal::NotFound));
    };
    let row = from_row(&row)?;
    Ok(match row.status {
        ScheduledStatus::Cancelled => Ok(row),
        other => Err(CancelRefusal::NotScheduled(other)),
    })
}

/// Due rows claimed inside `tx`: locked until it commits, skipped by every other replica.
pub async fn claim_due(tx: &mut Transaction<'_, MySql>, limit: u32) -> Result<Vec<Scheduled>, StoreError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM scheduled_messages WHERE status = 'scheduled' AND deliver_at <= ? \
         ORDER BY deliver_at, id LIMIT ? FOR UPDATE SKIP LOCKED"
    )))
    .bind(Utc::now().naive_utc())
    .bind(limit)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
}

/// Marks claimed rows `status` (sent or failed), with the broker's reason for a failure.
pub async fn mark(
    tx: &mut Transaction<'_, MySql>,
    ids: &[u64],
    status: ScheduledStatus,
    error: Option<&str>,
) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut query = QueryBuilder::<MySql>::new("UPDATE scheduled_messages SET status = ");
    query
        .push_bind(<&str>::from(status))
        .push(", last_error = ")
        .push_bind(error.map(str::to_owned))
        .push(", sent_at = ")
        .push_bind((status == ScheduledStatus::Sent).then(|| Utc::now().naive_utc()))
        .push(" WHERE id IN (");
    let mut ids_list = query.separated(", ");
    for id in ids {
        ids_list.push_bind(*id);
    }
    query.push(")");
    query.build().execute(&mut **tx).await?;
    Ok(())
}

/// How many wait, and how late the most overdue one is (seconds; 0 when none is due).
pub async fn backlog(pool: &MySqlPool) -> Result<(u64, f64), StoreError> {
    let (count, oldest): (i64, Option<NaiveDateTime>) =
        sqlx::query_as("SELECT COUNT(*), MIN(deliver_at) FROM scheduled_messages WHERE status = 'scheduled'")
            .fetch_one(pool)
            .await?;
    let lag = oldest
        .map(|at| (Utc::now() - at.and_utc()).num_milliseconds().max(0) as f64 / 1000.0)
        .unwrap_or(0.0);
    Ok((count.max(0) as u64, lag))
}
