//! Retention on the real database: rows older than the limits go, newer ones and failures still
//! waiting for a person stay.

mod common;

use std::{sync::Arc, time::Duration};

use common::TestEnv;
use messages_broker::{metrics::Metrics, store, workers::retention::Retention};
use tokio_util::sync::CancellationToken;

async fn count(pool: &sqlx::MySqlPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn retention_deletes_only_what_is_past_its_limit() {
    let env = TestEnv::new("retention").await;
    let pool = store::pool(&env.settings.database);
    store::migrate(&pool).await.unwrap();
    // 2,500 old audit rows (more than one batch), 2 recent ones.
    for chunk in 0..5 {
        let mut insert = sqlx::QueryBuilder::<sqlx::MySql>::new(
            "INSERT INTO message_logs (message_id, exchange, routing_key, payload, published_at) ",
        );
        let old = (chrono::Utc::now() - chrono::Duration::days(31)).naive_utc();
        insert.push_values(0..500, |mut row, i| {
            row.push_bind(format!("old-{chunk}-{i}"))
                .push_bind("x")
                .push_bind("k")
                .push_bind("{}")
                .push_bind(old);
        });
        insert.build().execute(&pool).await.unwrap();
    }
    sqlx::query(
        "INSERT INTO message_logs (message_id, exchange, routing_key, payload, published_at) VALUES \
         ('new-1', 'x', 'k', '{}', UTC_TIMESTAMP(6) - INTERVAL 29 DAY), ('new-2', 'x', 'k', '{}', UTC_TIMESTAMP(6))",
    )
    .execute(&pool)
    .await
    .unwrap();
    // Failed messages: resolved long ago (goes), resolved lately (stays), failed long ago (stays).
    sqlx::query(
        "INSERT INTO failed_messages (message_id, exchange, routing_key, payload, status, failed_at, resolved_at) VALUES \
         ('resolved-old', 'x', 'k', '{}', 'resolved', UTC_TIMESTAMP(6) - INTERVAL 40 DAY, UTC_TIMESTAMP(6) - INTERVAL 31 DAY), \
         ('resolved-new', 'x', 'k', '{}', 'resolved', UTC_TIMESTAMP(6) - INTERVAL 40 DAY, UTC_TIMESTAMP(6) - INTERVAL 1 DAY), \
         ('failed-old', 'x', 'k', '{}', 'failed', UTC_TIMESTAMP(6) - INTERVAL 90 DAY, NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();

    let retention = Retention {
        settings: env.settings.retention.clone(),
        pool: pool.clone(),
        metrics: Arc::new(Metrics::new()),
        db_migrated: tokio::sync::watch::channel(true).1,
    };
    assert_eq!(retention.settings.message_logs, Duration::from_secs(30 * 24 * 3600));
    let report = retention.purge_expired(&CancellationToken::new()).await.unwrap();
    assert_eq!((report.message_logs, report.resolved_failed), (2500, 1));
    assert_eq!(count(&pool, "SELECT COUNT(*) FROM message_logs").await, 2);
    let kept: Vec<String> = sqlx::query_scalar("SELECT message_id FROM failed_messages ORDER BY message_id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(kept, ["failed-old", "resolved-new"]);
    let text = retention.metrics.render();
    assert!(
        text.contains(r#"messages_broker_retention_deleted_total{table="message_logs"} 2500"#),
        "{text}"
    );
    pool.close().await;
}
