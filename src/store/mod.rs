//! The database: pool, migrations, health. All SQL of the service lives under this module.

use std::time::Duration;

pub mod failed_messages;
pub mod failed_stats;
pub mod idempotency_keys;
pub mod message_logs;
pub mod replays;
pub mod scheduled_messages;

use sqlx::{MySqlPool, mysql::MySqlPoolOptions};

use crate::settings::DatabaseSettings;

/// Migrations embedded in the binary; sqlx takes a lock so replicas may start together.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unreachable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Query(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) => {
                Self::Unavailable(err)
            }
            other => Self::Query(other),
        }
    }
}

/// A lazy pool: the process starts even while the database is down, and reconnects by itself.
pub fn pool(settings: &DatabaseSettings) -> MySqlPool {
    MySqlPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.connect_timeout)
        // READ COMMITTED: no gap locks on the claim scans, far fewer deadlocks between replicas.
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::Executor::execute(&mut *conn, "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED").await?;
                Ok(())
            })
        })
        .connect_lazy_with(settings.connect_options())
}

/// InnoDB may still pick a transaction as a deadlock victim; the remedy is to run it again.
pub async fn retry_deadlocks<T, F, Fut>(mut attempt: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    // Five more runs cost at most ~125 ms of sleeps: enough to outlast replicas claiming together;
    // a sixth deadlock in a row is contention that more tries here will not fix, so the error
    // goes to the caller (the retrier tries again on its next scan, the API answers an error).
    let mut tries = 0;
    loop {
        match attempt().await {
            Err(StoreError::Query(sqlx::Error::Database(db)))
                if tries < 5 && matches!(db.code().as_deref(), Some("40001")) =>
            {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(5 + fastrand::u64(0..20))).await;
            }
            other => return other,
        }
    }
}

/// Runs the migrations under a named lock, so replicas starting together take turns.
/// sqlx's own lock asks `GET_LOCK(name, -1)`, which MariaDB answers at once with NULL instead of
/// waiting; a positive timeout waits on both MySQL 8 and MariaDB.
pub async fn migrate(pool: &MySqlPool) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await?;
    let locked: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK('messages_broker_migrations', 60)")
        .fetch_one(&mut *conn)
        .await?;
    if locked != Some(1) {
        return Err(StoreError::Unavailable(sqlx::Error::Protocol(
            "another replica held the migration lock for 60 s".into(),
        )));
    }
    // `run(&mut conn)` trips "Acquire is not general enough" inside a spawned future;
    // `run_direct` is what `run` calls, exposed by sqlx for exactly this.
    let connection: &mut sqlx::MySqlConnection = &mut conn;
    let result = MIGRATOR.run_direct(None, connection, false).await;
    let _ = sqlx::query("SELECT RELEASE_LOCK('messages_broker_migrations')")
        .execute(&mut *conn)
        .await;
    result?;
    Ok(())
}

/// `SELECT 1` under a short deadline, for readiness.
pub async fn ping(pool: &MySqlPool) -> Result<(), StoreError> {
    match tokio::time::timeout(Duration::from_secs(2), sqlx::query("SELECT 1").execute(pool)).await {
        Ok(result) => result.map(drop).map_err(StoreError::from),
        Err(_) => Err(StoreError::Unavailable(sqlx::Error::PoolTimedOut)),
    }
}
