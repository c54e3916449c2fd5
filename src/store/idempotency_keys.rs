//! `idempotency_keys`: publish keys every api replica sees. A key is claimed by inserting it
//! `pending` with a lease; the winner publishes and stores its answer (`done`); the others replay
//! that answer. A pending key whose lease ran out (its replica died mid-publish) is taken over.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::MySqlPool;

use super::StoreError;

/// What the database says about a key.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyClaim {
    /// This caller holds the key: publish, then [`complete`] (or [`release`] on failure).
    Won,
    /// Published before: the stored answer.
    Done(serde_json::Value),
    /// Another replica is publishing it right now.
    Pending,
}

/// The row's key: fixed width whatever the client and key lengths.
pub fn key_hash(client: &str, key: &str) -> Vec<u8> {
    let mut hash = Sha256::new();
    hash.update((client.len() as u64).to_le_bytes());
    hash.update(client.as_bytes());
    hash.update(key.as_bytes());
    hash.finalize().to_vec()
}

fn at(now: DateTime<Utc>, after: Duration) -> NaiveDateTime {
    (now + chrono::Duration::from_std(after).unwrap_or(chrono::Duration::MAX)).naive_utc()
}

/// Claims `key` of `client` for `lease` (how long a publish may take), remembered for `ttl`.
pub async fn claim(
    pool: &MySqlPool,
    client: &str,
    key: &str,
    lease: Duration,
    ttl: Duration,
) -> Result<KeyClaim, StoreError> {
    let hash = key_hash(client, key);
    // Two rounds at most: a row deleted or expired between our insert and our read.
    for _ in 0..2 {
        let now = Utc::now();
        let inserted = sqlx::query(
            "INSERT IGNORE INTO idempotency_keys \
             (key_hash, client, idempotency_key, state, lease_until, expires_at, created_at) \
             VALUES (?, ?, ?, 'pending', ?, ?, ?)",
        )
        .bind(&hash)
        .bind(client)
        .bind(key)
        .bind(at(now, lease))
        .bind(at(now, ttl))
        .bind(now.naive_utc())
        .execute(pool)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(KeyClaim::Won);
        }
        // Expired, or pending past its lease: whoever updates it first holds it.
        let taken_over = sqlx::query(
            "UPDATE idempotency_keys SET state = 'pending', response = NULL, lease_until = ?, expires_at = ? \
             WHERE key_hash = ? AND (expires_at < ? OR (state = 'pending' AND lease_until < ?))",
        )
        .bind(at(now, lease))
        .bind(at(now, ttl))
        .bind(&hash)
        .bind(now.naive_utc())
        .bind(now.naive_utc())
        .execute(pool)
        .await?;
        if taken_over.rows_affected() == 1 {
            return Ok(KeyClaim::Won);
        }
        let row: Option<(String, Option<String>)> =
            sqlx::query_as("SELECT CAST(state AS CHAR), response FROM idempotency_keys WHERE key_hash = ?")
                .bind(&hash)
                .fetch_optional(pool)
                .await?;
        match row {
            None => continue,
            Some((state, Some(response))) if state == "done" => {
                let body = serde_json::from_str(&response)
                    .map_err(|err| StoreError::Query(sqlx::Error::Decode(Box::new(err))))?;
                return Ok(KeyClaim::Done(body));
            }
            Some(_) => return Ok(KeyClaim::Pending),
        }
    }
    Ok(KeyClaim::Pending)
}

/// Stores the answer of a key this caller won; it is replayed until `ttl` from now.
pub async fn complete(
    pool: &MySqlPool,
    client: &str,
    key: &str,
    response: &serde_json::Value,
    ttl: Duration,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE idempotency_keys SET state = 'done', response = ?, expires_at = ? WHERE key_hash = ?")
        .bind(response.to_string())
        .bind(at(Utc::now(), ttl))
        .bind(key_hash(client, key))
        .execute(pool)
        .await?;
    Ok(())
}

/// Forgets a key whose publish failed, so a retry of the request can succeed.
pub async fn release(pool: &MySqlPool, client: &str, key: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM idempotency_keys WHERE key_hash = ? AND state = 'pending'")
        .bind(key_hash(client, key))
        .execute(pool)
        .await?;
    Ok(())
}

/// Deletes up to `limit` expired keys; small batches keep row locks short.
pub async fn delete_expired(pool: &MySqlPool, limit: u32) -> Result<u64, StoreError> {
    let result = sqlx::query("DELETE FROM idempotency_keys WHERE expires_at < ? LIMIT ?")
        .bind(Utc::now().naive_utc())
        .bind(limit)
        .execute(pool)
        .await?;
    Ok(result.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_separate_client_from_key() {
        assert_ne!(key_hash("ab", "c"), key_hash("a", "bc"));
        assert_eq!(key_hash("a", "b").len(), 32);
    }
}
