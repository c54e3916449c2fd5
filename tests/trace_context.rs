//! W3C trace context through the real binary, broker and database: a publish's `traceparent`
//! reaches the consumer, is stored with the dead letter and carried by the retry, and the
//! process's log lines about that message name its trace id; without one, a trace is started.

mod common;

use std::time::Duration;

use common::{ADMIN_TOKEN, TestEnv, drain, eventually, process::Process};
use lapin::{
    options::{BasicGetOptions, BasicRejectOptions},
    types::{AMQPValue, FieldTable},
};
use serde_json::{Value, json};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn header(headers: &FieldTable, name: &str) -> Option<String> {
    headers
        .inner()
        .iter()
        .find(|(k, _)| k.as_str() == name)
        .and_then(|(_, v)| match v {
            AMQPValue::LongString(s) => Some(s.to_string()),
            _ => None,
        })
}

/// The trace id of a valid `traceparent`.
fn trace_id(traceparent: &str) -> &str {
    let fields: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(fields.len(), 4, "{traceparent}");
    assert_eq!(
        (fields[0], fields[1].len(), fields[2].len(), fields[3]),
        ("00", 32, 16, "01"),
        "{traceparent}"
    );
    fields[1]
}

async fn publish(process: &Process, body: &Value, traceparent: Option<&str>) -> Value {
    let mut request = reqwest::Client::new()
        .post(format!("{}/api/messages/publish", process.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(body);
    if let Some(traceparent) = traceparent {
        request = request
            .header("traceparent", traceparent)
            .header("tracestate", "vendor=abc");
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

#[tokio::test]
async fn a_trace_follows_the_message_to_its_dead_letter_its_retry_and_the_logs() {
    let env = TestEnv::new("trace").await;
    let mut process = Process::start(&env, "applier,api,ingester,retrier,scheduler");
    process.wait_ready().await;
    let exchange = env.name("orders_exchange");
    let queue = env.name("orders_queue");
    let body = json!({"exchange": exchange, "routing_key": "orders.created", "message": {"event": "order.created", "data": {"id": 1}}});
    let published = publish(&process, &body, Some(PARENT)).await;

    // The consumer sees the trace (a new span of it, the state kept), then rejects the message.
    let conn = messages_broker::amqp::connection::connect(&env.settings.rabbitmq, "trace test")
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let message = channel
        .basic_get(queue.as_str().into(), BasicGetOptions::default())
        .await
        .unwrap()
        .expect("the message");
    let headers = message.properties.headers().clone().unwrap_or_default();
    let sent = header(&headers, "traceparent").expect("traceparent on the message");
    assert_eq!(trace_id(&sent), TRACE_ID);
    assert_ne!(sent, PARENT, "this hop has its own span id");
    assert_eq!(header(&headers, "tracestate").as_deref(), Some("vendor=abc"));
    message.reject(BasicRejectOptions { requeue: false }).await.unwrap();

    // The dead letter's row keeps it...
    let pool = messages_broker::store::pool(&env.settings.database);
    let stored = || async {
        sqlx::query_as::<_, (u64, String)>("SELECT id, CAST(headers AS CHAR) FROM failed_messages")
            .fetch_optional(&pool)
            .await
            .unwrap()
    };
    assert!(
        eventually(Duration::from_secs(10), || async { stored().await.is_some() }).await,
        "{}",
        process.logs()
    );
    let (id, row_headers) = stored().await.unwrap();
    let row_headers: Value = serde_json::from_str(&row_headers).unwrap();
    assert_eq!(row_headers["traceparent"], sent.as_str(), "{row_headers}");

    // ...and the retry carries it.
    let retried = reqwest::Client::new()
        .post(format!("{}/api/messages/retry/{id}", process.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(retried.status(), 200);
    let again = drain(&env.settings, &queue).await;
    assert_eq!(again.len(), 1);
    let again_headers = again[0].properties.headers().clone().unwrap_or_default();
    assert_eq!(header(&again_headers, "traceparent").as_deref(), Some(sent.as_str()));

    // A replay from the audit trail continues it too.
    let message_id = published["message_id"].as_str().unwrap();
    let http = reqwest::Client::new();
    let replay = |body: Value| {
        http.post(format!("{}/api/replays", process.base))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
    };
    let filter = json!({"message_ids": [message_id]});
    let audited = eventually(Duration::from_secs(5), || async {
        let dry: Value = replay(json!({"filter": filter, "dry_run": true}))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        dry["count"] == 1
    });
    assert!(audited.await, "the audit row was never written");
    assert_eq!(
        replay(json!({"filter": filter, "expected_count": 1}))
            .await
            .unwrap()
            .status(),
        202
    );
    let mut replayed = Vec::new();
    for _ in 0..50 {
        replayed.extend(drain(&env.settings, &queue).await);
        if !replayed.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(replayed.len(), 1, "the replayed copy");
    let copy_headers = replayed[0].properties.headers().clone().unwrap_or_default();
    assert_eq!(
        trace_id(&header(&copy_headers, "traceparent").expect("traceparent on the replay")),
        TRACE_ID
    );

    // Every log line about the message names its trace.
    let logs = process.logs();
    for line in ["Dead letter stored.", "Failed message republished."] {
        let found = logs
            .lines()
            .find(|l| l.contains(line))
            .unwrap_or_else(|| panic!("no `{line}` in\n{logs}"));
        assert!(found.contains(TRACE_ID) && found.contains(message_id), "{found}");
    }
    let _ = conn.close(200, "done".into()).await;
    assert_eq!(process.stop().await, Some(0));
}

#[tokio::test]
async fn without_a_valid_traceparent_a_trace_is_started_and_a_message_may_bring_its_own() {
    let env = TestEnv::new("trace_start").await;
    let mut process = Process::start(&env, "applier,api");
    process.wait_ready().await;
    let exchange = env.name("orders_exchange");
    let queue = env.name("orders_queue");
    let body = json!({"exchange": exchange, "routing_key": "orders.created", "message": {"event": "e", "data": {}}});
    publish(&process, &body, None).await;
    publish(&process, &body, Some("00-garbage")).await;
    let own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let batch = json!({"messages": [
        {"exchange": exchange, "routing_key": "orders.a", "message": {"event": "e", "data": {}}},
        {"exchange": exchange, "routing_key": "orders.b", "message": {"event": "e", "data": {}}, "headers": {"traceparent": own}},
    ]});
    let response = reqwest::Client::new()
        .post(format!("{}/api/messages/publish/batch", process.base))
        .bearer_auth(ADMIN_TOKEN)
        .header("traceparent", PARENT)
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let messages = drain(&env.settings, &queue).await;
    assert_eq!(messages.len(), 4);
    let traces: Vec<String> = messages
        .iter()
        .map(|m| {
            header(&m.properties.headers().clone().unwrap_or_default(), "traceparent").expect("every message has one")
        })
        .collect();
    let (started, restarted) = (trace_id(&traces[0]), trace_id(&traces[1]));
    assert_ne!(
        started, restarted,
        "each request without a valid parent starts its own trace"
    );
    assert_eq!(
        trace_id(&traces[2]),
        TRACE_ID,
        "the batch's messages continue the request's trace"
    );
    assert_eq!(traces[3], own, "a message's own traceparent wins");
    assert_eq!(process.stop().await, Some(0));
}
