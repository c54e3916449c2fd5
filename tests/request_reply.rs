//! POST /api/messages/request against the real broker: a responder (a lapin consumer on a queue
//! of the test topology) answers on the default exchange with routing key = reply_to and the same
//! correlation_id; correlation under 200 concurrent requests; 504 in time; 422 at once when
//! nothing is bound; late replies dropped and counted; the error header; publish's guards; a lost
//! connection answered 503 at once and the reply channel reopened.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use lapin::{
    BasicProperties, Channel,
    message::Delivery,
    options::{BasicConsumeOptions, BasicPublishOptions},
    types::{AMQPValue, FieldTable},
};
use serde_json::{Value, json};

const REQUEST: &str = "/api/messages/request";

/// A request body to the test's orders exchange (bound to its orders queue) carrying `data`.
fn request_body(env: &TestEnv, routing_key: &str, data: Value, timeout: &str) -> Value {
    json!({
        "exchange": env.name("orders_exchange"),
        "routing_key": routing_key,
        "message": {"event": "order.quote", "data": data},
        "timeout": timeout,
    })
}

/// A responder on the orders queue, like a service would run one. Each request is answered by
/// its own task, so a slow one does not hold up the others: after `data.delay_ms`, with the
/// request's `data` and `expiration` echoed, and with the error header when `data.fail` is set.
struct Responder {
    connection: lapin::Connection,
}

impl Responder {
    async fn start(env: &TestEnv) -> Self {
        let connection = messages_broker::amqp::connection::connect(&env.settings.rabbitmq, "test responder")
            .await
            .expect("connect");
        let channel = connection.create_channel().await.expect("channel");
        let options = BasicConsumeOptions {
            no_ack: true,
            ..BasicConsumeOptions::default()
        };
        let queue = env.name("orders_queue");
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "test-responder".into(),
                options,
                FieldTable::default(),
            )
            .await
            .expect("consume");
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                tokio::spawn(answer(channel.clone(), delivery));
            }
        });
        Self { connection }
    }

    async fn stop(self) {
        let _ = self.connection.close(200, "test done".into()).await;
    }
}

/// How a responder replies: default exchange, routing key = reply_to, same correlation_id.
async fn answer(channel: Channel, request: Delivery) {
    let properties = &request.properties;
    let payload: Value = serde_json::from_slice(&request.data).unwrap_or_default();
    let data = payload["data"].clone();
    if let Some(delay) = data["delay_ms"].as_u64() {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut headers = FieldTable::default();
    headers.insert("responder".into(), AMQPValue::LongString("test".into()));
    if let Some(reason) = data["fail"].as_str() {
        headers.insert("mb-error".into(), AMQPValue::LongString(reason.into()));
    }
    let reply = json!({
        "echo": data,
        "expiration": properties.expiration().as_ref().map(|e| e.as_str().to_owned()),
    });
    let mut reply_properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_headers(headers);
    if let Some(id) = properties.correlation_id() {
        reply_properties = reply_properties.with_correlation_id(id.clone());
    }
    let reply_to = properties.reply_to().clone().expect("a request carries reply_to");
    let _ = channel
        .basic_publish(
            "".into(),
            reply_to,
            BasicPublishOptions::default(),
            &serde_json::to_vec(&reply).unwrap(),
            reply_properties,
        )
        .await;
}

/// Publishes a message that is not a request to the orders exchange, expiring at once.
async fn publish_expiring(env: &TestEnv, routing_key: &str) {
    let connection = messages_broker::amqp::connection::connect(&env.settings.rabbitmq, "test publisher")
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    let confirm = channel
        .basic_publish(
            env.name("orders_exchange").as_str().into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            br#"{"event":"plain","data":{}}"#,
            BasicProperties::default().with_expiration("1".into()),
        )
        .await
        .expect("publish");
    let _ = confirm.await;
    let _ = connection.close(200, "published".into()).await;
}

/// Sends a request as the admin client: the status, the JSON answer and how long it took.
async fn request(app: &TestApp, body: &Value) -> (u16, Value, Duration) {
    let started = Instant::now();
    let response = app.as_admin().post(REQUEST, body).await;
    let status = response.status().as_u16();
    let answer = response.json().await.expect("JSON answer");
    (status, answer, started.elapsed())
}

async fn metrics_text(app: &TestApp) -> String {
    app.get("/metrics").await.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_responder_answers_each_request_with_its_own_reply() {
    let env = TestEnv::new("rr_ok").await;
    let app = env.spawn().await;
    app.wait_ready().await;
    let responder = Responder::start(&env).await;

    let (status, answer, _) = request(&app, &request_body(&env, "orders.quote", json!({"n": -1}), "5s")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["payload_encoding"], "json");
    assert_eq!(answer["payload"]["echo"], json!({"n": -1}));
    assert_eq!(answer["headers"]["responder"], "test");
    assert_eq!(answer["content_type"], "application/json");
    assert!(uuid::Uuid::parse_str(answer["message_id"].as_str().unwrap()).is_ok());
    assert!(!answer["correlation_id"].as_str().unwrap().is_empty());
    // The request carried the time left, so a responder can skip what nobody waits for.
    let expiration: u64 = answer["payload"]["expiration"].as_str().unwrap().parse().unwrap();
    assert!(expiration > 0 && expiration <= 5000, "{expiration}");

    // 200 at once, each with its own value: a reply never goes to another request.
    let requests = (0..200).map(|n| {
        let body = request_body(&env, "orders.quote", json!({"n": n}), "10s");
        let app = &app;
        async move { (n, request(app, &body).await) }
    });
    for (n, (status, answer, _)) in futures_util::future::join_all(requests).await {
        assert_eq!(status, 200, "request {n}: {answer}");
        assert_eq!(answer["payload"]["echo"]["n"], n, "request {n} got another's reply");
    }

    // The responder's error header: 502 with its reason.
    let failing = request_body(&env, "orders.quote", json!({"fail": "no stock for item 7"}), "5s");
    let (status, answer, _) = request(&app, &failing).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (502, Some("reply_error")),
        "{answer}"
    );
    assert!(
        answer["message"].as_str().unwrap().contains("no stock for item 7"),
        "{answer}"
    );

    let metrics = metrics_text(&app).await;
    let replied = format!(
        "messages_broker_requests_total{{exchange=\"{}\",outcome=\"replied\"}} 201",
        env.name("orders_exchange")
    );
    assert!(metrics.contains(&replied), "{metrics}");
    responder.stop().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reply_is_504_in_time_and_a_late_reply_is_dropped_and_counted() {
    let env = TestEnv::new("rr_late").await;
    let app = env.spawn().await;
    app.wait_ready().await;

    // Nobody consumes the queue yet: the timeout, answered within 100 ms of it.
    let timeout = Duration::from_millis(300);
    let (status, answer, took) = request(&app, &request_body(&env, "orders.quote", json!({}), "300ms")).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (504, Some("reply_timeout")),
        "{answer}"
    );
    assert!(
        took >= timeout && took < timeout + Duration::from_millis(100),
        "{took:?}"
    );
    // That request expires in the queue (its expiration was the time left), so the responder
    // started later never sees it; dead-lettered, it is dropped, not stored as a failed message.
    // A plain message expiring behind it is stored: once its row is there, the request was seen.
    publish_expiring(&env, "orders.plain").await;
    let pool = app.app.state.pool.clone().unwrap();
    let routing_keys = || async {
        sqlx::query_scalar::<_, String>("SELECT routing_key FROM failed_messages")
            .fetch_all(&pool)
            .await
            .unwrap_or_default()
    };
    let stored = eventually(Duration::from_secs(10), || async { !routing_keys().await.is_empty() }).await;
    assert!(stored, "the plain dead letter was never stored");
    assert_eq!(
        routing_keys().await,
        ["orders.plain"],
        "a dead-lettered request was stored"
    );
    let responder = Responder::start(&env).await;

    // A reply after the timeout: the caller has its 504, the reply is dropped and counted.
    let slow = request_body(&env, "orders.quote", json!({"delay_ms": 500}), "200ms");
    let (status, answer, _) = request(&app, &slow).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (504, Some("reply_timeout")),
        "{answer}"
    );
    let counted = eventually(Duration::from_secs(5), || async {
        metrics_text(&app)
            .await
            .contains("messages_broker_late_replies_total 1\n")
    })
    .await;
    assert!(counted, "{}", metrics_text(&app).await);

    // The channel is unharmed: the next request gets its reply.
    let (status, answer, _) = request(&app, &request_body(&env, "orders.quote", json!({"n": 1}), "5s")).await;
    assert_eq!(status, 200, "{answer}");
    responder.stop().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unbound_routing_key_is_422_at_once() {
    let env = TestEnv::new("rr_unroutable").await;
    let app = env.spawn().await;
    app.wait_ready().await;
    let body = request_body(&env, "nobody.listens", json!({}), "10s");
    // The first request also opens the HTTP connection; the second is timed.
    for _ in 0..2 {
        let (status, answer, took) = request(&app, &body).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (422, Some("unroutable")),
            "{answer}"
        );
        assert!(took < Duration::from_secs(1), "{took:?}");
    }
    let (_, _, took) = request(&app, &body).await;
    assert!(took < Duration::from_millis(50), "not at once: {took:?}");
    app.stop().await;
}

#[tokio::test]
async fn publish_guards_apply_to_requests() {
    let env = TestEnv::new("rr_guards").await;
    let app = env.spawn().await;
    app.wait_ready().await;

    // Every problem at once, the timeout's among them; a request cannot be delayed.
    let bad = json!({"exchange": env.name("orders_exchange"), "routing_key": 3, "timeout": "1h",
        "delay": "1m", "message": {"event": "e", "data": {}}});
    let answer = expect_error(
        "bad body",
        app.as_admin().post(REQUEST, &bad).await,
        422,
        "validation_failed",
    )
    .await;
    let fields: Vec<&str> = answer["fields"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(fields, ["delay", "routing_key", "timeout"], "{answer}");

    // The allow-list, and the scope: the reader may not publish.
    let events = json!({"exchange": env.name("events"), "routing_key": "", "message": {"event": "e", "data": {}}});
    expect_error(
        "allow-list",
        app.as_orders_client().post(REQUEST, &events).await,
        403,
        "forbidden",
    )
    .await;
    let orders = request_body(&env, "nobody.listens", json!({}), "1s");
    expect_error("scope", app.as_reader().post(REQUEST, &orders).await, 403, "forbidden").await;

    // The topology's rate limit (burst 2 on the limited exchange) counts requests too.
    let mut limited = request_body(&env, "nobody.listens", json!({}), "1s");
    limited["exchange"] = env.name("limited_exchange").into();
    for _ in 0..2 {
        expect_error(
            "within the burst",
            app.as_admin().post(REQUEST, &limited).await,
            422,
            "unroutable",
        )
        .await;
    }
    let refused = app.as_admin().post(REQUEST, &limited).await;
    assert!(refused.headers().contains_key("retry-after"));
    expect_error("over the burst", refused, 429, "rate_limited").await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_fails_waiting_requests_at_once_and_the_channel_reopens() {
    let env = TestEnv::new("rr_lost").await;
    let app = env.spawn().await;
    app.wait_ready().await;

    // Nobody answers: the request waits until the connection is cut under it.
    let body = request_body(&env, "orders.quote", json!({}), "20s");
    let waiting = request(&app, &body);
    let cut = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        app.close_connections(&env.settings.app.name).await
    };
    let ((status, answer, took), closed) = tokio::join!(waiting, cut);
    assert!(closed > 0, "no connection to close");
    assert_eq!(
        (status, answer["error"].as_str()),
        (503, Some("broker_unavailable")),
        "{answer}"
    );
    assert!(took < Duration::from_secs(5), "not at once: {took:?}");

    // On the new connection the replies worker consumes again.
    app.wait_ready().await;
    let responder = Responder::start(&env).await;
    let answered = eventually(Duration::from_secs(10), || async {
        request(&app, &request_body(&env, "orders.quote", json!({"n": 2}), "2s"))
            .await
            .0
            == 200
    })
    .await;
    assert!(answered, "no reply after the reconnect");
    responder.stop().await;
    app.stop().await;
}
