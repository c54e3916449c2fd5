//! The database: pool, migrations, health. All SQL of the service lives under this module.

use std::time::Duration;

pub mod failed_messages;
pub mod failed_stats;
pub mod message_logs;

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
        .connect_lazy_with(settings.connect_options())
}

pub async fn migrate(pool: &MySqlPool) -> Result<(), StoreError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// `SELECT 1` under a short deadline, for readiness.
pub async fn ping(pool: &MySqlPool) -> Result<(), StoreError> {
    match tokio::time::timeout(Duration::from_secs(2), sqlx::query("SELECT 1").execute(pool)).await {
        Ok(result) => result.map(drop).map_err(StoreError::from),
        Err(_) => Err(StoreError::Unavailable(sqlx::Error::PoolTimedOut)),
    }
}
