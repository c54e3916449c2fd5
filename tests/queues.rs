//! Queue observability against the real broker: the queue list (the platform's 11 service queues
//! with their counts), stats that follow a queue, the guarded purge (403/428/404/200), unknown
//! queues, stats with the management API unreachable, readiness's management check, gauges.

mod common;

use std::time::Duration;

use common::*;
use lapin::{
    options::{BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use messages_broker::{
    roles::Roles,
    settings::Settings,
    topology::declare::{self, Probe},
};
use serde_json::Value;

const SERVICES: [&str; 11] = [
    "auth",
    "products",
    "baskets",
    "orders",
    "addresses",
    "deliveries",
    "newsletters",
    "sav",
    "contacts",
    "questions",
    "websites",
];

/// A test env polling every `interval` (whole seconds go through the cron scheduler).
async fn env_with_interval(prefix: &str, interval: Duration) -> TestEnv {
    let mut env = TestEnv::new(prefix).await;
    env.settings.stats.interval = interval;
    env
}

async fn get_json(app: &TestApp, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = app.http.get(app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn purge(app: &TestApp, queue: &str, token: &str, confirm: Option<&str>) -> (u16, Value) {
    let mut request = app
        .http
        .post(app.url(&format!("/api/queues/{queue}/purge")))
        .bearer_auth(token);
    if let Some(confirm) = confirm {
        request = request.header("X-Confirm-Purge", confirm);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Waits until the stats of `queue` satisfy `check`; returns the last body seen.
async fn wait_for_stats(app: &TestApp, queue: &str, check: impl Fn(&Value) -> bool) -> Value {
    let path = format!("/api/queues/{queue}/stats");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get_json(app, &path, Some(READER_TOKEN)).await;
        if status == 200 && check(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stats of {queue} never matched; last answer {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn publish_n(app: &TestApp, exchange: &str, n: usize) {
    for _ in 0..n {
        let response = app
            .post_json("/api/messages/publish", &publish_body(exchange, "orders.created"))
            .await;
        assert_eq!(response.status(), 201);
    }
}

#[tokio::test]
async fn the_queue_list_holds_the_platform_queues_with_counts() {
    // The platform's real topology lives on this broker; declaring it again changes nothing.
    let real = messages_broker::app::load_topology(&Settings::default()).expect("repository topology.toml");
    let conn = messages_broker::amqp::connection::connect(&Settings::default().rabbitmq, "test queues apply")
        .await
        .expect("connect");
    declare::declare(&conn, &real, Probe::Existence).await.expect("declare");
    let _ = conn.close(200, "declared".into()).await;

    let env = env_with_interval("q_list", Duration::from_secs(1)).await;
    let app = env.spawn().await;
    app.wait_ready().await;

    assert_eq!(get_json(&app, "/api/queues", None).await.0, 401);
    let (status, body) = get_json(&app, "/api/queues", Some(ORDERS_TOKEN)).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));

    let own = env.name("orders_queue");
    let ok = eventually(Duration::from_secs(20), || async {
        let (status, body) = get_json(&app, "/api/queues", Some(READER_TOKEN)).await;
        status == 200 && body.as_array().is_some_and(|l| l.iter().any(|q| q["name"] == own))
    })
    .await;
    assert!(ok, "the test's own queue never showed up in the list");
    let response = app
        .http
        .get(app.url("/api/queues"))
        .bearer_auth(READER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-stats-source"], "management_api");
    assert!(response.headers().contains_key("x-stats-taken-at"));
    let list: Vec<Value> = response.json().await.unwrap();
    for service in SERVICES {
        let name = format!("{service}_queue");
        let queue = list
            .iter()
            .find(|q| q["name"] == name.as_str())
            .unwrap_or_else(|| panic!("{name} missing from the queue list"));
        assert!(queue["message_count"].is_u64(), "{queue}");
        assert!(queue["consumer_count"].is_u64(), "{queue}");
        assert_eq!(queue["managed"], false, "not in this test's topology: {queue}");
        assert_eq!(queue["max_length"], 10000, "the live x-max-length: {queue}");
    }
    let own = list
        .iter()
        .find(|q| q["name"] == env.name("orders_queue").as_str())
        .unwrap();
    assert_eq!(own["managed"], true);
    assert_eq!(own["dead_letter"], false);
    let dlq = list
        .iter()
        .find(|q| q["name"] == format!("{}.dlq", env.name("orders_queue")).as_str())
        .unwrap();
    assert_eq!(
        (dlq["managed"].clone(), dlq["dead_letter"].clone()),
        (true.into(), true.into())
    );

    // The gauges, and the process metrics next to them.
    let metrics = app.get("/metrics").await.text().await.unwrap();
    for line in [
        format!(
            "messages_broker_queue_messages{{queue=\"{}\"}}",
            env.name("orders_queue")
        ),
        format!(
            "messages_broker_queue_consumers{{queue=\"{}\"}}",
            env.name("orders_queue")
        ),
        format!(
            "messages_broker_queue_max_length{{queue=\"{}\"}} 10000",
            env.name("orders_queue")
        ),
        "messages_broker_queue_messages{queue=\"orders_queue\"}".to_owned(),
        "messages_broker_management_api_up 1".to_owned(),
        "messages_broker_failed_messages{status=\"pending\"} 0".to_owned(),
        "process_resident_memory_bytes ".to_owned(),
        "process_open_fds ".to_owned(),
    ] {
        assert!(metrics.contains(&line), "missing `{line}` in\n{metrics}");
    }
    app.stop().await;
}

#[tokio::test]
async fn stats_follow_a_queue_as_messages_arrive() {
    let env = env_with_interval("q_follow", Duration::from_secs(1)).await;
    let app = env.spawn().await;
    app.wait_ready().await;
    let queue = env.name("orders_queue");

    // The first poll may come before the applier declared the queue: `exists: false` then.
    let empty = wait_for_stats(&app, &queue, |s| s["exists"] == true && s["depth"] == 0).await;
    assert_eq!(empty["managed"], true);
    assert_eq!(empty["max_length"], 10000);
    assert_eq!(empty["source"], "management_api");
    assert_eq!(empty["failed_messages"], 0);
    assert!(empty["rates"]["publish"].is_number() && empty["rates"]["deliver"].is_number());

    publish_n(&app, &env.name("orders_exchange"), 5).await;
    let full = wait_for_stats(&app, &queue, |s| s["depth"] == 5).await;
    assert_eq!((full["ready"].clone(), full["unacked"].clone()), (5.into(), 0.into()));
    assert_eq!(full["consumers"], 0);
    assert_eq!(full["depth_ratio"], 0.0005);
    assert_eq!(full["consumer_lag"], 5, "nothing delivers: every ready message lags");

    // A consumer that takes one message and never acks it.
    let conn = messages_broker::amqp::connection::connect(&env.settings.rabbitmq, "test queues consumer")
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let _consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "stats-test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let consumed = wait_for_stats(&app, &queue, |s| s["consumers"] == 1 && s["unacked"] == 1).await;
    assert_eq!(
        (consumed["depth"].clone(), consumed["ready"].clone()),
        (5.into(), 4.into())
    );
    let _ = conn.close(200, "done".into()).await;

    // Failed messages waiting for this queue: pending and out of retries count, resolved do not.
    let pool = app.app.state.pool.clone().unwrap();
    for (id, status) in [("f1", "pending"), ("f2", "failed"), ("f3", "resolved")] {
        sqlx::query(
            "INSERT INTO failed_messages (message_id, exchange, routing_key, queue, payload, status, failed_at, next_retry_at) \
             VALUES (?, ?, 'orders.created', ?, '{}', ?, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) + INTERVAL 1 DAY)",
        )
        .bind(env.name(id))
        .bind(env.name("orders_exchange"))
        .bind(&queue)
        .bind(status)
        .execute(&pool)
        .await
        .unwrap();
    }
    let failed = wait_for_stats(&app, &queue, |s| s["failed_messages"] == 2).await;
    assert_eq!(failed["depth"], 5);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("messages_broker_failed_messages{status=\"failed\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("messages_broker_failed_messages{status=\"resolved\"} 1"));
    assert!(metrics.contains(&format!("messages_broker_queue_failed_messages{{queue=\"{queue}\"}} 2")));
    app.stop().await;
}

#[tokio::test]
async fn purge_needs_admin_and_confirmation_and_reports_the_count() {
    let env = env_with_interval("q_purge", Duration::from_secs(1)).await;
    let app = env.spawn().await;
    app.wait_ready().await;
    let queue = env.name("orders_queue");
    publish_n(&app, &env.name("orders_exchange"), 3).await;

    let unauthenticated = app
        .http
        .post(app.url(&format!("/api/queues/{queue}/purge")))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    let (status, body) = purge(&app, &queue, READER_TOKEN, Some(&queue)).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    let (status, body) = purge(&app, &queue, ADMIN_TOKEN, None).await;
    assert_eq!((status, body["error"].as_str()), (428, Some("confirmation_required")));
    let (status, _) = purge(&app, &queue, ADMIN_TOKEN, Some("orders_queue")).await;
    assert_eq!(status, 428, "the header must name this very queue");
    let missing = env.name("no_such_queue");
    let (status, body) = purge(&app, &missing, ADMIN_TOKEN, Some(&missing)).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let (status, _) = purge(&app, "bad%20name", ADMIN_TOKEN, Some("bad name")).await;
    assert_eq!(
        status, 404,
        "a name outside the allowed characters never reaches the broker"
    );

    let (status, body) = purge(&app, &queue, ADMIN_TOKEN, Some(&queue)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["purged"], 3);
    assert!(body["message"].as_str().unwrap().contains(&queue));
    assert!(drain(&env.settings, &queue).await.is_empty(), "the queue is empty");
    let (status, body) = purge(&app, &queue, ADMIN_TOKEN, Some(&queue)).await;
    assert_eq!((status, body["purged"].as_u64()), (200, Some(0)));

    // The 404 closed only the throwaway channel: the app is still fine.
    assert_eq!(app.ready_status().await.0, 200);
    app.stop().await;
}

#[tokio::test]
async fn unknown_queues_are_404_and_odd_names_never_reach_the_broker() {
    let env = env_with_interval("q_unknown", Duration::from_secs(1)).await;
    let app = env.spawn().await;
    app.wait_ready().await;
    let ok = eventually(Duration::from_secs(10), || async {
        get_json(&app, "/api/queues", Some(READER_TOKEN)).await.0 == 200
    })
    .await;
    assert!(ok, "no snapshot");
    let long = "q".repeat(256);
    for name in [
        env.name("nope"),
        "..%2F..%2Fapi%2Fvhosts".to_owned(),
        "orders%2Fqueue".to_owned(),
        "%00".to_owned(),
        long,
    ] {
        let (status, body) = get_json(&app, &format!("/api/queues/{name}/stats"), Some(READER_TOKEN)).await;
        assert_eq!((status, body["error"].as_str()), (404, Some("not_found")), "{name}");
    }
    assert_eq!(
        get_json(&app, "/api/queues/orders_queue/stats", Some(ORDERS_TOKEN))
            .await
            .0,
        403
    );
    app.stop().await;
}

#[tokio::test]
async fn stats_go_on_with_the_management_api_unreachable() {
    let mut env = env_with_interval("q_nomgmt", Duration::from_millis(200)).await;
    env.settings.rabbitmq.management_url = "http://127.0.0.1:1".into();
    let app = env.spawn().await;
    app.wait_ready().await;
    let queue = env.name("orders_queue");

    let (status, ready) = app.ready_status().await;
    assert_eq!(status, 200, "the management API is informational: {ready}");
    let ok = eventually(Duration::from_secs(10), || async {
        app.ready_status().await.1["checks"]["management"]["status"] == "down"
    })
    .await;
    assert!(ok, "{:?}", app.ready_status().await);

    publish_n(&app, &env.name("orders_exchange"), 2).await;
    let stats = wait_for_stats(&app, &queue, |s| s["depth"] == 2).await;
    assert_eq!(stats["source"], "passive_declare");
    assert_eq!(stats["consumers"], 0);
    assert_eq!(stats["max_length"], 10000);
    assert!(stats["rates"].is_null() && stats["unacked"].is_null(), "{stats}");
    assert!(stats["management_error"].as_str().unwrap().contains("unreachable"));

    let response = app
        .http
        .get(app.url("/api/queues"))
        .bearer_auth(READER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-stats-source"], "passive_declare");
    let list: Vec<Value> = response.json().await.unwrap();
    let names: Vec<&str> = list.iter().filter_map(|q| q["name"].as_str()).collect();
    let expected: Vec<String> = ["orders_queue", "orders_queue.dlq", "small_queue", "small_queue.dlq"]
        .iter()
        .map(|s| env.name(s))
        .collect();
    assert_eq!(names, expected, "the topology's queues only, sorted");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("messages_broker_management_api_up 0"), "{metrics}");
    assert!(metrics.contains(&format!("messages_broker_queue_messages{{queue=\"{queue}\"}} 2")));

    app.stop().await;
    // Cleanup deletes the test's queues through the management API: give it the real one back.
    env.settings.rabbitmq.management_url = String::new();
}

#[tokio::test]
async fn readiness_reports_the_management_api_and_api_only_processes_say_who_serves_stats() {
    let mut env = env_with_interval("q_ready", Duration::from_secs(1)).await;
    env.settings.app.roles = "applier,api".parse::<Roles>().unwrap();
    let app = env.spawn().await;
    app.wait_ready().await;
    let (_, ready) = app.ready_status().await;
    assert_eq!(ready["checks"]["management"]["status"], "up", "{ready}");

    let (status, body) = get_json(&app, "/api/queues", Some(READER_TOKEN)).await;
    assert_eq!((status, body["error"].as_str()), (503, Some("stats_unavailable")));
    assert!(body["message"].as_str().unwrap().contains("`stats` role"), "{body}");
    let (status, _) = get_json(
        &app,
        &format!("/api/queues/{}/stats", env.name("orders_queue")),
        Some(READER_TOKEN),
    )
    .await;
    assert_eq!(status, 503);
    app.stop().await;
}
