//! `replays`: replays of the audit trail, and the reads of `message_logs` they make. The API
//! counts and samples the rows a filter selects and inserts the replay; the replayer claims it
//! under a lease (`owner`, `lease_until`), reads the rows in id order after its cursor, and
//! records its progress after each batch's confirms.
//!
//! The routing-key filter is a topic pattern, as in a RabbitMQ binding (`*` one word, `#` zero
//! or more): it becomes a regular expression over `'.' + routing_key` that MySQL 8 (ICU) and
//! MariaDB (PCRE) read alike, compared under a binary collation so that case counts, as it does
//! for the broker.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{MySql, MySqlPool, QueryBuilder, Row, mysql::MySqlRow};
use strum::{EnumIter, EnumString, IntoStaticStr};

use super::StoreError;

/// Which audit rows a replay takes; every field given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFilter {
    /// The exchange the message was published to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<String>,
    /// A topic pattern: `orders.*`, `orders.#`, `#.created`; other words match literally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_key: Option<String>,
    /// The envelope's `event`, exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// published_at >= from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<DateTime<Utc>>,
    /// published_at <= to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<DateTime<Utc>>,
    /// Only these messages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub message_ids: Vec<String>,
}

/// A topic pattern as a regular expression over `'.' + routing_key`: each word of the key then
/// starts with its dot, so `#` (zero or more words) is simply "any number of dotted words" and
/// needs no special case at the start, the middle or the end.
pub fn topic_regex(pattern: &str) -> String {
    let mut regex = String::from("^");
    for word in pattern.split('.') {
        match word {
            "#" => regex.push_str("(\\.[^.]*)*"),
            "*" => regex.push_str("\\.[^.]*"),
            literal => {
                regex.push_str("\\.");
                for c in literal.chars() {
                    match c {
                        // `\<` and `\>` are word boundaries to some engines: bracketed instead.
                        '<' | '>' => {
                            regex.push('[');
                            regex.push(c);
                            regex.push(']');
                        }
                        // A backslash before punctuation makes it literal in ICU, PCRE and Rust.
                        c if c.is_ascii_punctuation() && c != '_' => {
                            regex.push('\\');
                            regex.push(c);
                        }
                        c => regex.push(c),
                    }
                }
            }
        }
    }
    regex.push('$');
    regex
}

/// ` AND ...` for each condition of `filter` (the caller wrote the `WHERE`).
fn push_filter(query: &mut QueryBuilder<MySql>, filter: &LogFilter) {
    if let Some(exchange) = &filter.exchange {
        query.push(" AND exchange = ").push_bind(exchange.clone());
    }
    if let Some(pattern) = &filter.routing_key {
        query
            .push(" AND CONCAT('.', routing_key) COLLATE utf8mb4_bin REGEXP ")
            .push_bind(topic_regex(pattern));
    }
    if let Some(event) = &filter.event {
        query
            .push(" AND JSON_UNQUOTE(JSON_EXTRACT(payload, '$.event')) COLLATE utf8mb4_bin = ")
            .push_bind(event.clone());
    }
    if let Some(from) = filter.from {
        query.push(" AND published_at >= ").push_bind(from.naive_utc());
    }
    if let Some(to) = filter.to {
        query.push(" AND published_at <= ").push_bind(to.naive_utc());
    }
    if !filter.message_ids.is_empty() {
        query.push(" AND message_id IN (");
        let mut ids = query.separated(", ");
        for id in &filter.message_ids {
            ids.push_bind(id.clone());
        }
        query.push(")");
    }
}

/// How many rows match, and the highest id among them (the bound of a replay made now).
pub async fn count_matching(pool: &MySqlPool, filter: &LogFilter) -> Result<(u64, u64), StoreError> {
    let mut query = QueryBuilder::<MySql>::new("SELECT COUNT(*), MAX(id) FROM message_logs WHERE 1 = 1");
    push_filter(&mut query, filter);
    let row = query.build().fetch_one(pool).await?;
    let count: i64 = row.try_get(0)?;
    let max: Option<u64> = row.try_get(1)?;
    Ok((count.max(0) as u64, max.unwrap_or(0)))
}

/// One audit row, as a replay reads it.
#[derive(Debug, Clone)]
pub struct LoggedMessage {
    pub id: u64,
    pub message_id: String,
    pub exchange: String,
    pub routing_key: String,
    /// The JSON body as published.
    pub payload: String,
    pub published_at: DateTime<Utc>,
    /// JSON object: the publishing client, and headers when the writer stored them.
    pub metadata: Option<String>,
}

/// Up to `limit` matching rows with `after < id <= up_to`, in id order.
pub async fn matching(
    pool: &MySqlPool,
    filter: &LogFilter,
    after: u64,
    up_to: u64,
    limit: u32,
) -> Result<Vec<LoggedMessage>, StoreError> {
    let mut query = QueryBuilder::<MySql>::new(
        "SELECT id, message_id, exchange, routing_key, payload, published_at, metadata FROM message_logs WHERE id > ",
    );
    query.push_bind(after).push(" AND id <= ").push_bind(up_to);
    push_filter(&mut query, filter);
    query.push(" ORDER BY id LIMIT ").push_bind(limit);
    let rows = query.build().fetch_all(pool).await?;
    rows.iter()
        .map(|row| {
            Ok(LoggedMessage {
                id: row.try_get("id")?,
                message_id: row.try_get("message_id")?,
                exchange: row.try_get("exchange")?,
                routing_key: row.try_get("routing_key")?,
                payload: row.try_get("payload")?,
                published_at: row.try_get::<NaiveDateTime, _>("published_at")?.and_utc(),
                metadata: row.try_get("metadata")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, EnumIter, EnumString, IntoStaticStr)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum ReplayStatus {
    /// Waiting for a replayer.
    Queued,
    /// Held by a replayer (or waiting for another one after a stop: `owner` is then empty).
    Running,
    Completed,
    Cancelled,
    /// Could not run at all (its target left the topology); `last_error` says why.
    Failed,
}

impl ReplayStatus {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn is_finished(self) -> bool {
        matches!(self, Self::Completed | Self::Cancelled | Self::Failed)
    }
}

/// A replay as the API asked for it.
#[derive(Debug, Clone)]
pub struct NewReplay {
    pub filter: LogFilter,
    /// `None`: each message goes back to its own exchange.
    pub target_exchange: Option<String>,
    pub requested_by: String,
    /// The count the caller was shown and confirmed.
    pub total: u64,
    /// The highest matching id when it was made: later rows are not part of it.
    pub until_log_id: u64,
    pub past_retention: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    pub id: u64,
    pub status: ReplayStatus,
    pub filter: LogFilter,
    pub target_exchange: Option<String>,
    pub requested_by: String,
    pub total: u64,
    pub published: u64,
    pub failed: u64,
    /// The last message_logs id done (published or given up); the replay resumes after it.
    pub cursor_log_id: u64,
    pub until_log_id: u64,
    pub past_retention: bool,
    pub owner: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, CAST(status AS CHAR) AS status, filter_json, target_exchange, requested_by, total, published, \
    failed, cursor_log_id, until_log_id, past_retention, owner, lease_until, last_error, created_at, started_at, \
    finished_at";

fn from_row(row: &MySqlRow) -> Result<Replay, sqlx::Error> {
    let decode = |err: String| sqlx::Error::Decode(err.into());
    let status: String = row.try_get("status")?;
    let filter: String = row.try_get("filter_json")?;
    let at = |t: Option<NaiveDateTime>| t.map(|t| t.and_utc());
    Ok(Replay {
        id: row.try_get("id")?,
        status: status
            .parse()
            .map_err(|_| decode(format!("unknown replay status `{status}`")))?,
        filter: serde_json::from_str(&filter).map_err(|err| decode(format!("replay filter: {err}")))?,
        target_exchange: row.try_get("target_exchange")?,
        requested_by: row.try_get("requested_by")?,
        total: row.try_get("total")?,
        published: row.try_get("published")?,
        failed: row.try_get("failed")?,
        cursor_log_id: row.try_get("cursor_log_id")?,
        until_log_id: row.try_get("until_log_id")?,
        past_retention: row.try_get("past_retention")?,
        owner: row.try_get("owner")?,
        lease_until: at(row.try_get("lease_until")?),
        last_error: row.try_get("last_error")?,
        created_at: row.try_get::<NaiveDateTime, _>("created_at")?.and_utc(),
        started_at: at(row.try_get("started_at")?),
        finished_at: at(row.try_get("finished_at")?),
    })
}

/// Stores a queued replay; answers its id.
pub async fn insert(pool: &MySqlPool, replay: &NewReplay) -> Result<u64, StoreError> {
    let filter = serde_json::to_string(&replay.filter).expect("a filter serializes");
    let result = sqlx::query(
        "INSERT INTO replays (filter_json, target_exchange, requested_by, total, until_log_id, past_retention, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, UTC_TIMESTAMP(6))",
    )
    .bind(filter)
    .bind(&replay.target_exchange)
    .bind(&replay.requested_by)
    .bind(replay.total)
    .bind(replay.until_log_id)
    .bind(replay.past_retention)
    .execute(pool)
    .await?;
    Ok(result.last_insert_id())
}

pub async fn find(pool: &MySqlPool, id: u64) -> Result<Option<Replay>, StoreError> {
    // COLUMNS is a constant of this file: no outside text reaches the statement.
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM replays WHERE id = ?"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.as_ref().map(from_row).transpose()?)
}

/// The `limit` most recent replays, newest first.
pub async fn list(pool: &MySqlPool, limit: u32) -> Result<Vec<Replay>, StoreError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM replays ORDER BY id DESC LIMIT ?"
    )))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
}

/// Why a cancel did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelRefusal {
    NotFound,
    /// Completed or failed before the cancel came.
    Finished(ReplayStatus),
}

/// Cancels a replay that is queued or running; cancelling a cancelled one again is fine. Its
/// replayer sees the status after its current batch and stops.
pub async fn cancel(pool: &MySqlPool, id: u64) -> Result<Result<Replay, CancelRefusal>, StoreError> {
    sqlx::query(
        "UPDATE replays SET status = 'cancelled', finished_at = UTC_TIMESTAMP(6) \
         WHERE id = ? AND status IN ('queued', 'running')",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(match find(pool, id).await? {
        None => Err(CancelRefusal::NotFound),
        Some(replay) if replay.status == ReplayStatus::Cancelled => Ok(replay),
        Some(replay) => Err(CancelRefusal::Finished(replay.status)),
    })
}

/// `UTC_TIMESTAMP(6) + lease` in the database's clock: every replica compares leases against
/// one clock, so a replica whose own clock drifts cannot take a live lease.
fn micros(lease: Duration) -> u64 {
    u64::try_from(lease.as_micros()).unwrap_or(u64::MAX)
}

/// Claims the oldest replay that nobody holds (queued, released, or whose owner's lease has
/// passed), or one this owner held before a restart of its role. The row is locked with SKIP
/// LOCKED only while the claim commits; from then on the lease keeps other replicas away.
pub async fn claim(pool: &MySqlPool, owner: &str, lease: Duration) -> Result<Option<Replay>, StoreError> {
    let mut tx = pool.begin().await?;
    let id: Option<u64> = sqlx::query_scalar(
        "SELECT id FROM replays WHERE status IN ('queued', 'running') \
         AND (owner IS NULL OR owner = ? OR lease_until < UTC_TIMESTAMP(6)) \
         ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
    )
    .bind(owner)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(id) = id else {
        return Ok(None);
    };
    sqlx::query(
        "UPDATE replays SET status = 'running', owner = ?, lease_until = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, \
         started_at = COALESCE(started_at, UTC_TIMESTAMP(6)) WHERE id = ?",
    )
    .bind(owner)
    .bind(micros(lease))
    .bind(id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    find(pool, id).await
}

/// What one batch did: the new cursor and the counts to add.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub cursor_log_id: u64,
    pub published: u64,
    pub failed: u64,
    /// The last reason a message was given up, kept for the operator.
    pub last_error: Option<String>,
}

/// Whether the replayer still holds its replay after recording progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Still ours; the status tells whether it was cancelled meanwhile.
    Held(ReplayStatus),
    /// Another replica took it over (our lease had passed): stop at once.
    Lost,
}

/// Records a batch and renews the lease, only while `owner` holds the replay.
pub async fn record_progress(
    pool: &MySqlPool,
    id: u64,
    owner: &str,
    progress: &Progress,
    lease: Duration,
) -> Result<Hold, StoreError> {
    let updated = sqlx::query(
        "UPDATE replays SET cursor_log_id = ?, published = published + ?, failed = failed + ?, \
         last_error = COALESCE(?, last_error), lease_until = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND \
         WHERE id = ? AND owner = ?",
    )
    .bind(progress.cursor_log_id)
    .bind(progress.published)
    .bind(progress.failed)
    .bind(progress.last_error.as_deref().map(truncate))
    .bind(micros(lease))
    .bind(id)
    .bind(owner)
    .execute(pool)
    .await?;
    if updated.rows_affected() == 0 {
        return Ok(Hold::Lost);
    }
    let status: String = sqlx::query_scalar("SELECT CAST(status AS CHAR) FROM replays WHERE id = ?")
        .bind(id)
        .fetch_one(pool)
        .await?;
    status
        .parse()
        .map(Hold::Held)
        .map_err(|_| StoreError::Query(sqlx::Error::Decode(format!("unknown replay status `{status}`").into())))
}

/// Ends a running replay held by `owner` as `status` (completed or failed) and lets it go.
pub async fn finish(
    pool: &MySqlPool,
    id: u64,
    owner: &str,
    status: ReplayStatus,
    error: Option<&str>,
) -> Result<bool, StoreError> {
    let updated = sqlx::query(
        "UPDATE replays SET status = ?, finished_at = UTC_TIMESTAMP(6), owner = NULL, lease_until = NULL, \
         last_error = COALESCE(?, last_error) WHERE id = ? AND owner = ? AND status = 'running'",
    )
    .bind(status.as_str())
    .bind(error.map(truncate))
    .bind(id)
    .bind(owner)
    .execute(pool)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Lets a replay go without ending it (a stopping process, a cancelled one): another replica,
/// or this one after a restart, may claim it at once instead of waiting for the lease.
pub async fn release(pool: &MySqlPool, id: u64, owner: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE replays SET owner = NULL, lease_until = NULL WHERE id = ? AND owner = ?")
        .bind(id)
        .bind(owner)
        .execute(pool)
        .await?;
    Ok(())
}

/// `last_error` is a VARCHAR(1024); a broker's reason may be longer.
fn truncate(text: &str) -> &str {
    match text.char_indices().nth(1000) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The regular expression, tried with the `regex-automata` engine on `'.' + key` as the
    /// database does; the cases follow RabbitMQ's topic matching.
    #[test]
    fn topic_patterns_match_like_a_binding() {
        let cases: &[(&str, &str, bool)] = &[
            ("orders.#", "orders", true),
            ("orders.#", "orders.created", true),
            ("orders.#", "orders.eu.created", true),
            ("orders.#", "ordersx.created", false),
            ("orders.*", "orders.created", true),
            ("orders.*", "orders", false),
            ("orders.*", "orders.eu.created", false),
            ("#.created", "orders.eu.created", true),
            ("#.created", "created", true),
            ("#.created", "orders.updated", false),
            ("*.created", "orders.created", true),
            ("*.created", "a.b.created", false),
            ("orders.#.done", "orders.done", true),
            ("orders.#.done", "orders.a.b.done", true),
            ("#", "", true),
            ("#", "anything.at.all", true),
            ("orders.created", "orders.created", true),
            ("orders.created", "Orders.created", false),
            ("orders.created", "ordersXcreated", false),
            ("a+b.(c)", "a+b.(c)", true),
            ("a+b.(c)", "aab.c", false),
            ("ord*", "ord*", true),
            ("ord*", "orders", false),
            ("x\\y", "x\\y", true),
            ("a^b", "a^b", true),
        ];
        for (pattern, key, expected) in cases {
            let regex = regex_automata::meta::Regex::new(&topic_regex(pattern)).unwrap();
            let subject = format!(".{key}");
            assert_eq!(
                regex.is_match(subject.as_str()),
                *expected,
                "{pattern} against {key:?}: {}",
                topic_regex(pattern)
            );
        }
    }

    #[test]
    fn a_filter_round_trips_through_its_stored_json() {
        let filter = LogFilter {
            exchange: Some("orders_exchange".into()),
            routing_key: Some("orders.#".into()),
            message_ids: vec!["a".into()],
            ..Default::default()
        };
        let text = serde_json::to_string(&filter).unwrap();
        assert_eq!(
            text,
            r#"{"exchange":"orders_exchange","routing_key":"orders.#","message_ids":["a"]}"#
        );
        assert_eq!(serde_json::from_str::<LogFilter>(&text).unwrap(), filter);
    }
}
