//! The dead-letter pipeline against the real broker and database: a consumer's reject becomes a
//! row, manual and automatic retries, the end in `failed`, two retriers exactly once, the
//! database cut during ingestion, bulk retry, and the API's 4xx.

mod common;

use std::{collections::HashSet, sync::Arc, time::Duration};

use chrono::Utc;
use common::*;
use messages_broker::{
    amqp::{
        connection::{self, Link},
        publisher::Publisher,
    },
    metrics::Metrics,
    store::{
        self,
        failed_messages::{self, NewFailedMessage, PayloadEncoding, Status},
    },
    workers::retrier::Retrier,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

async fn row_count(pool: &sqlx::MySqlPool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM failed_messages")
        .fetch_one(pool)
        .await
        .unwrap_or(-1)
}

async fn only_row(pool: &sqlx::MySqlPool) -> failed_messages::FailedMessage {
    let id: u64 = sqlx::query_scalar("SELECT id FROM failed_messages")
        .fetch_one(pool)
        .await
        .unwrap();
    failed_messages::find(pool, id).await.unwrap().unwrap()
}

fn fast_retries(env: &mut TestEnv) {
    env.settings.retry.backoff = vec![Duration::from_secs(1); 3];
    env.settings.retry.scan_interval = Duration::from_secs(1);
}

#[tokio::test]
async fn a_rejected_message_becomes_a_row_and_a_manual_retry_resolves_it() {
    let env = TestEnv::new("dl_manual").await;
    let app = env.spawn().await;
    app.wait_ready().await;
    let pool = app.app.state.pool.clone().unwrap();
    let orders = env.name("orders_exchange");
    let published: Value = app
        .post_json("/api/messages/publish", &publish_body(&orders, "orders.created"))
        .await
        .json()
        .await
        .unwrap();
    let message_id = published["message_id"].as_str().unwrap();
    let audit_status = || async {
        sqlx::query_scalar::<_, String>("SELECT CAST(status AS CHAR) FROM message_logs WHERE message_id = ?")
            .bind(message_id)
            .fetch_optional(&pool)
            .await
            .unwrap()
    };
    // The audit writer is asynchronous: the row is there before the consumer fails the message.
    assert!(eventually(Duration::from_secs(5), || async { audit_status().await.is_some() }).await);
    assert_eq!(reject_all(&env.settings, &env.name("orders_queue")).await, 1);

    assert!(
        eventually(Duration::from_secs(10), || async { row_count(&pool).await == 1 }).await,
        "no row"
    );
    let row = only_row(&pool).await;
    assert_eq!(row.message_id, message_id);
    assert_eq!(
        (row.exchange.as_str(), row.routing_key.as_str()),
        (orders.as_str(), "orders.created")
    );
    assert_eq!(row.queue, env.name("orders_queue"));
    assert_eq!(row.payload["data"], json!({"order_id": 42}));
    assert_eq!(row.payload_encoding, PayloadEncoding::Json);
    assert!(
        row.error_message.as_deref().unwrap().starts_with("rejected in"),
        "{:?}",
        row.error_message
    );
    assert_eq!((row.status, row.retry_count, row.max_retries), (Status::Pending, 0, 3));
    assert!(
        row.next_retry_at.unwrap() > Utc::now() + chrono::Duration::seconds(50),
        "first retry in about a minute"
    );
    assert_eq!(row.death_history.as_ref().unwrap()[0]["reason"], "rejected");
    assert_eq!(
        audit_status().await.as_deref(),
        Some("failed"),
        "the audit trail says it died"
    );

    // GET one, with headers and death history.
    let shown: Value = app
        .http
        .get(app.url(&format!("/api/messages/failed/{}", row.id)))
        .bearer_auth(READER_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["message_id"], message_id);
    assert!(shown["headers"]["x-death"].is_array());

    // Manual retry: back in the original queue, row resolved; a second retry is a conflict.
    let retried = app
        .post_json(&format!("/api/messages/retry/{}", row.id), &json!({}))
        .await;
    assert_eq!(retried.status(), 200);
    let retried: Value = retried.json().await.unwrap();
    assert_eq!(retried["status"], "resolved");
    assert_eq!(retried["retry_count"], 1);
    assert!(retried["resolved_at"].is_string() && retried["last_retry_at"].is_string());
    assert_eq!(
        audit_status().await.as_deref(),
        Some("published"),
        "and that it is out again"
    );
    let back = drain(&env.settings, &env.name("orders_queue")).await;
    assert_eq!(back.len(), 1);
    assert_eq!(
        back[0].delivery.properties.message_id().as_ref().unwrap().as_str(),
        message_id
    );
    let headers = back[0].delivery.properties.headers().as_ref().unwrap();
    assert!(headers.inner().contains_key("mb-retry-count") && !headers.inner().contains_key("x-death"));
    let again = app
        .post_json(&format!("/api/messages/retry/{}", row.id), &json!({}))
        .await;
    assert_eq!(again.status(), 409);
    assert_eq!(again.json::<Value>().await.unwrap()["error"], "already_resolved");

    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(&format!(
            "messages_broker_dead_letters_ingested_total{{queue=\"{}.dlq\"}} 1",
            env.name("orders_queue")
        )),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn automatic_retries_follow_the_schedule_and_end_in_failed_with_one_row() {
    let mut env = TestEnv::new("dl_auto").await;
    fast_retries(&mut env);
    let app = env.spawn().await;
    app.wait_ready().await;
    let pool = app.app.state.pool.clone().unwrap();
    let response = app
        .post_json(
            "/api/messages/publish",
            &publish_body(&env.name("orders_exchange"), "orders.paid"),
        )
        .await;
    assert_eq!(response.status(), 201);

    // The consumer keeps failing: every copy that comes back is rejected again.
    let rejections = std::sync::atomic::AtomicUsize::new(0);
    let ended = eventually(Duration::from_secs(40), || async {
        let n = reject_all(&env.settings, &env.name("orders_queue")).await;
        rejections.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
        row_count(&pool).await == 1 && only_row(&pool).await.status == Status::Failed
    })
    .await;
    let rejections = rejections.into_inner();
    assert!(
        ended,
        "never ended in failed: {:?}",
        failed_messages::list(&pool, &Default::default(), 1, 5).await.unwrap()
    );
    let row = only_row(&pool).await;
    assert_eq!(row_count(&pool).await, 1, "one row for the whole story");
    assert_eq!(row.retry_count, 3);
    assert_eq!(rejections, 4, "the original and three retries");
    assert_eq!(row.next_retry_at, None);
    // It stays failed for a person: nothing comes back any more.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(reject_all(&env.settings, &env.name("orders_queue")).await, 0);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("messages_broker_retries_total{outcome=\"resolved\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("messages_broker_retries_total{outcome=\"exhausted\"} 1"),
        "{metrics}"
    );
    app.stop().await;
}

fn due_row(env: &TestEnv, i: usize, exchange: &str) -> NewFailedMessage {
    NewFailedMessage {
        message_id: format!("{}-due-{i}", env.prefix),
        exchange: exchange.into(),
        routing_key: "orders.retried".into(),
        queue: env.name("orders_queue"),
        payload: json!({"event": "order.created", "data": {"n": i}}).to_string(),
        payload_encoding: PayloadEncoding::Json,
        headers: "{}".into(),
        death_history: "[]".into(),
        error_message: "rejected".into(),
        retry_count: 0,
        max_retries: 3,
        status: Status::Pending,
        failed_at: Utc::now(),
        next_retry_at: Some(Utc::now() - chrono::Duration::seconds(1)),
    }
}

#[tokio::test]
async fn two_retriers_on_one_database_republish_each_row_exactly_once() {
    let env = TestEnv::new("dl_two").await;
    // The app declares the topology and migrates; its own roles stay out of the way.
    let mut settings = env.settings.clone();
    settings.app.roles = "applier,api".parse().unwrap();
    let app = messages_broker::app::App::build(settings).await.unwrap();
    let http = reqwest::Client::new();
    let ready_url = format!("http://{}/api/ready", app.addr());
    assert!(
        eventually(Duration::from_secs(20), || async {
            http.get(&ready_url).send().await.is_ok_and(|r| r.status() == 200)
        })
        .await
    );

    let rows: Vec<_> = (0..60)
        .map(|i| due_row(&env, i, &env.name("orders_exchange")))
        .collect();
    let setup_pool = store::pool(&env.settings.database);
    failed_messages::upsert_batch(&setup_pool, &rows).await.unwrap();

    // Two retriers, each with its own pool, connection and publisher, as two replicas would.
    let cancel = CancellationToken::new();
    let mut retriers = Vec::new();
    for name in ["replica-a", "replica-b"] {
        let conn = connection::connect(&env.settings.rabbitmq, name).await.unwrap();
        let (_tx, rx) = tokio::sync::watch::channel(Some(Link {
            connection: Arc::new(conn),
            generation: 1,
        }));
        let (publisher, worker) = Publisher::new(rx, Duration::from_secs(5), cancel.clone());
        tokio::spawn(worker);
        retriers.push((
            Retrier {
                settings: Arc::new(env.settings.clone()),
                pool: store::pool(&env.settings.database),
                publisher,
                metrics: Arc::new(Metrics::new()),
                db_migrated: tokio::sync::watch::channel(true).1,
            },
            _tx,
        ));
    }
    // Each replica on its own task, rounds of 5 with a breath between, as on two machines.
    let runs = retriers.iter().map(|(retrier, _)| {
        let retrier = retrier.clone();
        tokio::spawn(async move {
            let mut claimed = 0;
            loop {
                let report = retrier.retry_due_up_to(5).await.unwrap();
                if report.claimed == 0 {
                    return claimed;
                }
                assert_eq!(report.resolved, report.claimed);
                claimed += report.claimed;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    });
    let claimed: Vec<usize> = futures_util::future::join_all(runs)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(claimed.iter().sum::<usize>(), 60, "{claimed:?}");
    assert!(claimed.iter().all(|c| *c > 0), "both replicas took part: {claimed:?}");

    let queued = drain(&env.settings, &env.name("orders_queue")).await;
    let ids: Vec<String> = queued
        .iter()
        .map(|m| m.delivery.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 60, "each row republished exactly once");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 60);
    let resolved: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM failed_messages WHERE status = 'resolved' AND retry_count = 1")
            .fetch_one(&setup_pool)
            .await
            .unwrap();
    assert_eq!(resolved, 60);
    cancel.cancel();
    app.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn the_database_cut_during_ingestion_loses_and_doubles_nothing() {
    let mut env = TestEnv::new("dl_dbcut").await;
    let (proxy, direct) = env.behind_database_proxy().await;
    let app = env.spawn().await;
    app.wait_ready().await;
    let orders = env.name("orders_exchange");

    let batch = json!({"messages": vec![publish_body(&orders, "orders.created"); 100]});
    let answer: Value = app
        .post_json("/api/messages/publish/batch", &batch)
        .await
        .json()
        .await
        .unwrap();
    let ids: HashSet<String> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["message_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 100);

    proxy.cut();
    assert_eq!(reject_all(&env.settings, &env.name("orders_queue")).await, 100);
    // While the database is away the dead letters wait, unacked, and the API says 503.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let response = app
        .http
        .get(app.url("/api/messages/failed"))
        .bearer_auth(READER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.json::<Value>().await.unwrap()["error"], "database_unavailable");
    assert_eq!(row_count(&direct).await, 0);
    proxy.restore();

    let stored = eventually(Duration::from_secs(30), || async { row_count(&direct).await >= 100 }).await;
    assert!(stored, "rows after the outage: {}", row_count(&direct).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(row_count(&direct).await, 100, "nothing doubled");
    let stored_ids: Vec<String> = sqlx::query_scalar("SELECT message_id FROM failed_messages")
        .fetch_all(&direct)
        .await
        .unwrap();
    assert_eq!(stored_ids.into_iter().collect::<HashSet<_>>(), ids, "nothing lost");
    let dlq = format!("{}.dlq", env.name("orders_queue"));
    let consumed = eventually(Duration::from_secs(10), || async {
        app.management
            .queue(&dlq)
            .await
            .is_ok_and(|q| q.consumers == 1 && q.messages == 0)
    })
    .await;
    assert!(consumed, "the dead-letter queue is drained and still consumed");
    app.stop().await;
}

#[tokio::test]
async fn bulk_retry_by_filter_and_every_client_error() {
    let mut env = TestEnv::new("dl_bulk").await;
    fast_retries(&mut env);
    let app = env.spawn().await;
    app.wait_ready().await;
    let pool = app.app.state.pool.clone().unwrap();
    let orders = env.name("orders_exchange");
    let mut rows: Vec<_> = (0..5).map(|i| due_row(&env, i, &orders)).collect();
    rows.extend((5..8).map(|i| due_row(&env, i, "other_exchange")));
    for row in &mut rows {
        row.status = Status::Failed; // retries spent: nothing happens without a person
        row.next_retry_at = None;
    }
    failed_messages::upsert_batch(&pool, &rows).await.unwrap();

    // List with filters and pagination.
    let list = |query: &'static str| {
        app.http
            .get(app.url(&format!("/api/messages/failed{query}")))
            .bearer_auth(READER_TOKEN)
            .send()
    };
    let page: Value = list("?status=failed&per_page=3&page=2")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            page["total"].as_u64(),
            page["last_page"].as_u64(),
            page["data"].as_array().unwrap().len()
        ),
        (Some(8), Some(3), 3)
    );
    let answer = app
        .http
        .get(app.url(&format!("/api/messages/failed?exchange={orders}")))
        .bearer_auth(READER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.json::<Value>().await.unwrap()["total"], 5);
    let searched: Value = list("?q=due-7").await.unwrap().json().await.unwrap();
    assert_eq!(searched["total"], 1);

    // "All orders failures": five queued, the retrier republishes them.
    let bulk = app
        .http
        .post(app.url(&format!("/api/messages/failed/retry?exchange={orders}&status=failed")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(bulk.status(), 200);
    assert_eq!(bulk.json::<Value>().await.unwrap(), json!({"queued": 5}));
    let resolved = eventually(Duration::from_secs(15), || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM failed_messages WHERE status = 'resolved'")
            .fetch_one(&pool)
            .await
            .unwrap_or(0)
            == 5
    })
    .await;
    assert!(resolved);
    assert_eq!(drain(&env.settings, &env.name("orders_queue")).await.len(), 5);

    // The 4xx of the API.
    let status_of = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(status_of(app.get("/api/messages/failed").await), 401);
    let publish_only = app
        .http
        .get(app.url("/api/messages/failed"))
        .bearer_auth(ORDERS_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(status_of(publish_only), 403);
    let reader_retry = app
        .http
        .post(app.url("/api/messages/retry/1"))
        .bearer_auth(READER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(status_of(reader_retry), 403);
    for path in [
        "/api/messages/failed/999999",
        "/api/messages/failed/abc",
        "/api/messages/failed/..%2F..%2Fetc",
        "/api/messages/failed/1%00",
    ] {
        let response = app
            .http
            .get(app.url(path))
            .bearer_auth(READER_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path}");
        assert_eq!(response.json::<Value>().await.unwrap()["error"], "not_found");
    }
    assert_eq!(
        status_of(app.post_json("/api/messages/retry/999999", &json!({})).await),
        404
    );
    let bad = app
        .http
        .delete(app.url("/api/messages/failed/999999"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(status_of(bad), 404);
    for query in [
        "?per_page=101",
        "?status=lost",
        "?from=yesterday",
        "?page=0",
        "?sort=id",
    ] {
        let response = app
            .http
            .get(app.url(&format!("/api/messages/failed{query}")))
            .bearer_auth(READER_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 422, "{query}");
        assert_eq!(response.json::<Value>().await.unwrap()["error"], "validation_failed");
    }
    let bulk_bad = app
        .http
        .post(app.url("/api/messages/failed/retry?status=lost"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(status_of(bulk_bad), 422);

    // Delete one of the others.
    let other: u64 = sqlx::query_scalar("SELECT id FROM failed_messages WHERE exchange = 'other_exchange' LIMIT 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    let deleted = app
        .http
        .delete(app.url(&format!("/api/messages/failed/{other}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    assert_eq!(row_count(&pool).await, 7);
    app.stop().await;
}
