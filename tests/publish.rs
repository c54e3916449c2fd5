//! POST /api/messages/publish and /publish/batch against the real broker: every status code of
//! the contract, the message as a consumer sees it, allow-list, rate limit, full queue, batch,
//! idempotency, and 500 concurrent publishes each exactly once in the queue.

mod common;

use std::{collections::HashSet, time::Duration};

use common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn a_publish_is_confirmed_and_the_consumer_sees_the_envelope() {
    let env = TestEnv::new("pub_ok").await;
    let app = env.spawn().await;
    app.wait_ready().await;

    let body = json!({
        "exchange": env.name("orders_exchange"),
        "routing_key": "orders.created",
        "message": {"event": "order.created", "data": {"order_id": 42}},
        "headers": {"tenant": "fr", "attempt": 1},
    });
    let response = app.as_admin().post("/api/messages/publish", &body).await;
    assert_eq!(response.status(), 201);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["status"], "published");
    assert_eq!(answer["exchange"], env.name("orders_exchange"));
    assert_eq!(answer["routing_key"], "orders.created");
    let message_id = answer["message_id"].as_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&message_id).is_ok());

    let messages = drain(&env.settings, &env.name("orders_queue")).await;
    assert_eq!(messages.len(), 1);
    let delivery = &messages[0].delivery;
    let props = &delivery.properties;
    assert_eq!(
        props.message_id().as_ref().map(|s| s.as_str()),
        Some(message_id.as_str())
    );
    assert_eq!(props.delivery_mode(), &Some(2), "persistent");
    assert_eq!(
        props.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert!(props.timestamp().is_some());
    let headers = props.headers().as_ref().unwrap();
    assert!(headers.inner().contains_key("tenant") && headers.inner().contains_key("published-by"));
    let payload: Value = serde_json::from_slice(&delivery.data).unwrap();
    assert_eq!(payload["event"], "order.created");
    assert_eq!(payload["data"], json!({"order_id": 42}));
    assert_eq!(payload["metadata"], json!({"service": "test-admin", "version": "1.0"}));
    assert!(chrono::DateTime::parse_from_rfc3339(payload["timestamp"].as_str().unwrap()).is_ok());

    // The audit trail gets its row, off the request path.
    let pool = app.app.state.pool.clone().unwrap();
    let logged = eventually(Duration::from_secs(5), || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM message_logs WHERE message_id = ? AND status = 'published'")
            .bind(&message_id)
            .fetch_one(&pool)
            .await
            .unwrap_or(0)
            == 1
    })
    .await;
    assert!(logged, "no message_logs row");

    let metrics = app.get("/metrics").await.text().await.unwrap();
    let line = format!(
        "messages_broker_published_total{{exchange=\"{}\",outcome=\"published\"}} 1",
        env.name("orders_exchange")
    );
    assert!(metrics.contains(&line), "{metrics}");
    app.stop().await;
}

/// A client error: the case, who asks, the content type and the body, then the status and the
/// error code expected.
type ErrorCase<'a> = (&'a str, Caller<'a>, &'a str, Vec<u8>, u16, &'a str);

#[tokio::test]
async fn every_client_error_gets_its_status_and_code() {
    let env = TestEnv::new("pub_err").await;
    let app = env.spawn().await;
    app.wait_ready().await;
    let orders = env.name("orders_exchange");
    let json_bytes = |v: &Value| serde_json::to_vec(v).unwrap();
    let valid = json_bytes(&publish_body(&orders, "orders.created"));
    let wrong_types = json_bytes(&json!({"exchange": orders, "routing_key": 5, "message": {"event": "", "data": "x"}}));
    const JSON: &str = "application/json";

    let other = json_bytes(&publish_body(&env.name("events"), ""));
    let unknown = json_bytes(&publish_body("no_such_exchange", "a"));
    let internal = json_bytes(&publish_body(&env.name("dlx"), "a"));
    let unroutable = json_bytes(&publish_body(&orders, "nobody.listens"));
    let (anonymous, forged, reader) = (app.anonymous(), app.caller(Some("wrong")), app.as_reader());
    let (orders_client, admin) = (app.as_orders_client(), app.as_admin());
    // One request per case: who asks, with which content type and body, and the answer expected.
    #[rustfmt::skip]
    let cases: Vec<ErrorCase> = vec![
        ("no token",                       anonymous,     JSON,         valid.clone(),          401, "unauthorized"),
        ("an unknown token",               forged,        JSON,         valid.clone(),          401, "unauthorized"),
        ("no publish scope",               reader,        JSON,         valid.clone(),          403, "forbidden"),
        ("an exchange off the allow-list", orders_client, JSON,         other,                  403, "forbidden"),
        ("a body that is not JSON",        admin,         JSON,         b"{not json".to_vec(),  400, "invalid_json"),
        ("a text/plain body",              admin,         "text/plain", valid.clone(),          415, "unsupported_media_type"),
        ("300 KiB",                        admin,         JSON,         vec![b' '; 300 * 1024], 413, "payload_too_large"),
        ("wrong types",                    admin,         JSON,         wrong_types,            422, "validation_failed"),
        ("an unknown exchange",            admin,         JSON,         unknown,                422, "unknown_exchange"),
        ("an internal exchange",           admin,         JSON,         internal,               422, "unknown_exchange"),
        ("an unroutable key",              admin,         JSON,         unroutable,             422, "unroutable"),
    ];
    for (what, caller, content_type, body, status, code) in cases {
        let request = caller
            .request(reqwest::Method::POST, "/api/messages/publish")
            .header("content-type", content_type)
            .body(body);
        let error = expect_error(what, send(request).await, status, code).await;
        if what == "wrong types" {
            assert_eq!(
                error["fields"],
                json!({"routing_key": "must be a string", "message.event": "must not be empty", "message.data": "must be an object"})
            );
        }
    }

    // The allow-listed client may publish where it is allowed.
    let ok = app
        .as_orders_client()
        .post("/api/messages/publish", &publish_body(&orders, "orders.created"))
        .await;
    assert_eq!(ok.status(), 201);
    app.stop().await;
}

#[tokio::test]
async fn rate_limit_full_queue_and_broker_down() {
    let env = TestEnv::new("pub_limits").await;
    let app = env.spawn().await;
    app.wait_ready().await;

    // Rate limit: 1/s with a burst of 2 on the limited exchange.
    let limited = publish_body(&env.name("limited_exchange"), "limited.x");
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(app.as_admin().post("/api/messages/publish", &limited).await);
    }
    assert_eq!(statuses[0].status(), 201);
    assert_eq!(statuses[1].status(), 201);
    let third = statuses.pop().unwrap();
    assert_eq!(third.headers()["retry-after"], "1");
    expect_error("the third of a burst of 2", third, 429, "rate_limited").await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("messages_broker_rate_limited_total{client=\"test-admin\"} 1"),
        "{metrics}"
    );

    // A full queue (max-length 5, reject-publish) nacks: 503 queue_full.
    let events = publish_body(&env.name("events"), "");
    for i in 0..5 {
        let response = app.as_admin().post("/api/messages/publish", &events).await;
        assert_eq!(response.status(), 201, "message {i}");
    }
    let full = app.as_admin().post("/api/messages/publish", &events).await;
    expect_error("a sixth message in a queue of 5", full, 503, "queue_full").await;
    app.stop().await;

    // No broker at all: 503 broker_unavailable, quickly.
    let mut settings = env.settings.clone();
    settings.rabbitmq.port = 1; // nothing listens there
    let down = messages_broker::app::App::build(settings).await.unwrap();
    let base = format!("http://{}", down.addr());
    let started = std::time::Instant::now();
    let response = reqwest::Client::new()
        .post(format!("{base}/api/messages/publish"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&publish_body(&env.name("orders_exchange"), "orders.x"))
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    expect_error("no broker", response, 503, "broker_unavailable").await;
    down.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn a_batch_answers_each_message_in_order() {
    let env = TestEnv::new("pub_batch").await;
    let app = env.spawn().await;
    app.wait_ready().await;
    let orders = env.name("orders_exchange");
    let body = json!({"messages": [
        publish_body(&orders, "orders.a"),
        publish_body("no_such_exchange", "x"),
        {"exchange": orders, "routing_key": "orders.b"},
        publish_body(&orders, "nobody.listens"),
        publish_body(&orders, "orders.c"),
    ]});
    let response = app.as_admin().post("/api/messages/publish/batch", &body).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    let results = answer["results"].as_array().unwrap();
    let summary: Vec<(u64, &str)> = results
        .iter()
        .map(|r| {
            (
                r["status"].as_u64().unwrap(),
                r["error"].as_str().unwrap_or("published"),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (201, "published"),
            (422, "unknown_exchange"),
            (422, "validation_failed"),
            (422, "unroutable"),
            (201, "published")
        ]
    );
    assert_eq!(results[2]["fields"], json!({"messages[2].message": "is required"}));
    let queued = drain(&env.settings, &env.name("orders_queue")).await;
    assert_eq!(queued.len(), 2);

    // A full batch reaches the queue in the batch's order.
    let ordered: Vec<Value> = (0..500)
        .map(|seq| {
            json!({"exchange": orders, "routing_key": "orders.seq",
                "message": {"event": "order.created", "data": {"seq": seq}}})
        })
        .collect();
    let response = app
        .as_admin()
        .post("/api/messages/publish/batch", &json!({ "messages": ordered }))
        .await;
    assert_eq!(response.status(), 200);
    let queued = drain(&env.settings, &env.name("orders_queue")).await;
    let seqs: Vec<u64> = queued
        .iter()
        .map(|m| {
            serde_json::from_slice::<Value>(&m.delivery.data).unwrap()["data"]["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, (0..500).collect::<Vec<u64>>());

    let too_many = json!({"messages": vec![publish_body(&orders, "orders.a"); 501]});
    let response = app.as_admin().post("/api/messages/publish/batch", &too_many).await;
    assert_eq!(response.status(), 422);
    assert_eq!(
        response.json::<Value>().await.unwrap()["fields"]["messages"],
        "at most 500 messages"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_same_key_twice_publishes_once() {
    let env = TestEnv::new("pub_idem").await;
    let app = env.spawn().await;
    app.wait_ready().await;
    let body = publish_body(&env.name("orders_exchange"), "orders.created");
    let send = || {
        app.as_admin()
            .request(reqwest::Method::POST, "/api/messages/publish")
            .header("Idempotency-Key", "order-42-created")
            .json(&body)
            .send()
    };
    let (first, second) = tokio::join!(send(), send());
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(
        (first.status(), second.status()),
        (reqwest::StatusCode::CREATED, reqwest::StatusCode::CREATED)
    );
    let (first, second): (Value, Value) = (first.json().await.unwrap(), second.json().await.unwrap());
    assert_eq!(first, second, "the second answer is the first one");

    // A client-given message_id works the same way.
    let mut with_id = body.clone();
    with_id["message_id"] = json!("client-chosen-id-1");
    for _ in 0..2 {
        let response = app.as_admin().post("/api/messages/publish", &with_id).await;
        assert_eq!(response.status(), 201);
        assert_eq!(
            response.json::<Value>().await.unwrap()["message_id"],
            "client-chosen-id-1"
        );
    }
    let queued = drain(&env.settings, &env.name("orders_queue")).await;
    assert_eq!(queued.len(), 2, "one broker message per key");
    app.stop().await;
}

#[tokio::test]
async fn five_hundred_concurrent_publishes_are_each_queued_exactly_once() {
    let env = TestEnv::new("pub_500").await;
    let app = env.spawn().await;
    app.wait_ready().await;
    let body = publish_body(&env.name("orders_exchange"), "orders.created");
    let requests = (0..500).map(|_| async {
        let response = app.as_admin().post("/api/messages/publish", &body).await;
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap();
        (status, answer["message_id"].as_str().unwrap_or_default().to_owned())
    });
    let answers = futures_util::future::join_all(requests).await;
    assert!(
        answers.iter().all(|(status, _)| *status == 201),
        "{:?}",
        answers.iter().find(|(s, _)| *s != 201)
    );
    let confirmed: HashSet<String> = answers.into_iter().map(|(_, id)| id).collect();
    assert_eq!(confirmed.len(), 500);

    let queued = drain(&env.settings, &env.name("orders_queue")).await;
    let ids: Vec<String> = queued
        .iter()
        .map(|m| m.delivery.properties.message_id().as_ref().unwrap().as_str().to_owned())
        .collect();
    assert_eq!(ids.len(), 500, "exactly once: no loss, no duplicate");
    assert_eq!(ids.into_iter().collect::<HashSet<_>>(), confirmed);
    app.stop().await;
}

#[tokio::test]
async fn the_publisher_stops_at_once_when_cancelled_while_it_cannot_open_a_channel() {
    use std::sync::Arc;

    use messages_broker::amqp::{
        connection::{self, Link},
        publisher::Publisher,
    };
    let settings = messages_broker::settings::Settings::default();
    let conn = connection::connect(&settings.rabbitmq, "test closed link")
        .await
        .unwrap();
    conn.close(200, "closed on purpose".into()).await.unwrap();
    // A link whose connection refuses channels: the publisher retries every 200 ms.
    let (_tx, link) = tokio::sync::watch::channel(Some(Link {
        connection: Arc::new(conn),
        generation: 1,
    }));
    let cancel = tokio_util::sync::CancellationToken::new();
    let (_publisher, worker) = Publisher::new(link, Duration::from_secs(1), cancel.clone());
    let worker = tokio::spawn(worker);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let asked = std::time::Instant::now();
    cancel.cancel();
    worker.await.unwrap();
    assert!(asked.elapsed() < Duration::from_millis(50), "{:?}", asked.elapsed());
}
