//! Delayed delivery and priorities against the real broker and database: a delayed publish waits
//! in MySQL and goes out once when due (across a restart, and with two replicas of the scheduler
//! role releasing 1,000 messages due in the same second), cancels before and after release, and
//! a priority queue delivers the higher priority first.

mod common;

use std::{collections::HashSet, time::Duration};

use common::*;
use serde_json::{Value, json};

fn delayed(env: &TestEnv, extra: Value) -> Value {
    let mut body = publish_body(&env.name("orders_exchange"), "orders.delayed");
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    body
}

/// Drains `queue` until at least `count` messages came or `limit` passed.
async fn collect(env: &TestEnv, queue: &str, count: usize, limit: Duration) -> Vec<lapin::message::BasicGetMessage> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut got = Vec::new();
    while got.len() < count && tokio::time::Instant::now() < deadline {
        got.extend(drain(&env.settings, queue).await);
    }
    got
}

fn fast_scheduler(env: &mut TestEnv) {
    env.settings.scheduling.scan_interval = Duration::from_secs(1);
}

#[tokio::test]
async fn a_delayed_message_waits_survives_a_restart_and_goes_out_once() {
    let mut env = TestEnv::new("sched_once").await;
    fast_scheduler(&mut env);
    let app = env.spawn().await;
    app.wait_ready().await;
    let response = app
        .post_json("/api/messages/publish", &delayed(&env, json!({"delay": "3s"})))
        .await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "scheduled");
    let deliver_at = chrono::DateTime::parse_from_rfc3339(body["deliver_at"].as_str().unwrap()).unwrap();
    assert!(
        drain(&env.settings, &env.name("orders_queue")).await.is_empty(),
        "not before its time"
    );
    // The process stops before the message is due; another one sends it.
    app.stop().await;
    let app = env.spawn().await;
    app.wait_ready().await;
    let queue = env.name("orders_queue");
    let got = collect(&env, &queue, 1, Duration::from_secs(10)).await;
    assert!(!got.is_empty(), "the delayed message never arrived");
    let late = chrono::Utc::now().signed_duration_since(deliver_at);
    assert!(late < chrono::Duration::seconds(3), "{late:?} after its time");
    let id = got[0].delivery.properties.message_id().as_ref().unwrap().to_string();
    assert_eq!(id, body["message_id"].as_str().unwrap());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(drain(&env.settings, &queue).await.is_empty(), "sent once");
    let listed: Value = app
        .as_reader()
        .get("/api/messages/scheduled?status=sent")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["total"], 1, "{listed}");
    app.stop().await;
}

#[tokio::test]
async fn cancel_before_release_and_409_after() {
    let mut env = TestEnv::new("sched_cancel").await;
    fast_scheduler(&mut env);
    let app = env.spawn().await;
    app.wait_ready().await;
    let later: Value = app
        .post_json("/api/messages/publish", &delayed(&env, json!({"delay": "1h"})))
        .await
        .json()
        .await
        .unwrap();
    let soon: Value = app
        .post_json(
            "/api/messages/publish",
            &delayed(
                &env,
                json!({"deliver_at": (chrono::Utc::now() + chrono::Duration::seconds(1)).to_rfc3339()}),
            ),
        )
        .await
        .json()
        .await
        .unwrap();
    let listed: Value = app
        .as_admin()
        .get("/api/messages/scheduled?status=scheduled")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["total"], 2, "{listed}");
    let id_of = |message_id: &Value| {
        listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|row| row["message_id"] == *message_id)
            .unwrap()["id"]
            .as_u64()
            .unwrap()
    };
    let (later_id, soon_id) = (id_of(&later["message_id"]), id_of(&soon["message_id"]));
    let admin = app.as_admin();
    let cancel = |id: u64| async move { admin.delete(&format!("/api/messages/scheduled/{id}")).await };
    let cancelled = cancel(later_id).await;
    assert_eq!(cancelled.status(), 200);
    assert_eq!(cancelled.json::<Value>().await.unwrap()["status"], "cancelled");
    let queue = env.name("orders_queue");
    let got = collect(&env, &queue, 1, Duration::from_secs(10)).await;
    let refused = cancel(soon_id).await;
    assert_eq!(refused.status(), 409);
    assert_eq!(refused.json::<Value>().await.unwrap()["error"], "not_scheduled");
    assert_eq!(cancel(999_999).await.status(), 404);
    assert_eq!(got.len(), 1, "only the message not cancelled went out");
    app.stop().await;
}

#[tokio::test]
async fn bad_schedules_and_priorities_are_refused() {
    let env = TestEnv::new("sched_bad").await;
    let app = env.spawn().await;
    app.wait_ready().await;
    for (extra, field) in [
        (json!({"delay": "1s", "deliver_at": "2030-01-01T00:00:00Z"}), "delay"),
        (json!({"delay": "30d"}), "delay"),
        (json!({"delay": "soon"}), "delay"),
        (json!({"deliver_at": "tomorrow"}), "deliver_at"),
        (json!({"priority": 256}), "priority"),
        (json!({"priority": -1}), "priority"),
    ] {
        let response = app
            .post_json("/api/messages/publish", &delayed(&env, extra.clone()))
            .await;
        assert_eq!(response.status(), 422, "{extra}");
        let body: Value = response.json().await.unwrap();
        assert!(body["fields"][field].is_string(), "{extra}: {body}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_thousand_due_in_the_same_second_go_out_once_across_two_replicas() {
    let mut env = TestEnv::new("sched_many").await;
    fast_scheduler(&mut env);
    let (a, b) = (env.spawn().await, env.spawn().await);
    a.wait_ready().await;
    b.wait_ready().await;
    // Far enough ahead for both batches (1,000 rows with their idempotency keys) to be stored.
    let due = (chrono::Utc::now() + chrono::Duration::seconds(10)).to_rfc3339();
    for (app, half) in [(&a, 0), (&b, 1)] {
        let messages: Vec<Value> = (0..500)
            .map(|i| {
                delayed(
                    &env,
                    json!({"deliver_at": due, "message_id": format!("many-{half}-{i}")}),
                )
            })
            .collect();
        let response = app
            .post_json("/api/messages/publish/batch", &json!({"messages": messages}))
            .await;
        let results: Value = response.json().await.unwrap();
        assert!(
            results["results"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["status"] == 202),
            "{results}"
        );
    }
    let queue = env.name("orders_queue");
    let mut got = collect(&env, &queue, 1000, Duration::from_secs(25)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    got.extend(drain(&env.settings, &queue).await);
    let ids: HashSet<String> = got
        .iter()
        .map(|m| m.delivery.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    assert_eq!((got.len(), ids.len()), (1000, 1000), "each exactly once");
    let pool = messages_broker::store::pool(&env.settings.database);
    let worst: f64 = sqlx::query_scalar(
        "SELECT CAST(MAX(TIMESTAMPDIFF(MICROSECOND, deliver_at, sent_at)) AS DOUBLE) / 1e6 FROM scheduled_messages",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let span: f64 = sqlx::query_scalar(
        "SELECT CAST(TIMESTAMPDIFF(MICROSECOND, MIN(sent_at), MAX(sent_at)) AS DOUBLE) / 1e6 FROM scheduled_messages",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    eprintln!(
        "[scheduled] 1000 due at once: released over {span:.2} s ({:.0}/s), the last {worst:.2} s after its time",
        1000.0 / span.max(0.001)
    );
    let limit = env.settings.scheduling.scan_interval.as_secs_f64() + 1.0;
    assert!(
        worst <= limit,
        "the last one went out {worst:.2} s after its time (limit {limit} s)"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_priority_queue_delivers_the_higher_priority_first() {
    let env = TestEnv::new("prio").await;
    let extra = format!(
        r#"
[[queues]]
name = "{p}_prio_queue"
max_priority = 10

[[bindings]]
exchange = "{p}_orders_exchange"
queue = "{p}_prio_queue"
routing_key = "prio.#"
"#,
        p = env.prefix
    );
    let mut text = std::fs::read_to_string(env.topology_path()).unwrap();
    text.push_str(&extra);
    std::fs::write(env.topology_path(), text).unwrap();
    let app = env.spawn().await;
    app.wait_ready().await;
    for (priority, label) in [(1, "low"), (9, "high")] {
        let mut body = publish_body(&env.name("orders_exchange"), "prio.test");
        body["priority"] = priority.into();
        body["message"]["data"]["label"] = label.into();
        assert_eq!(app.post_json("/api/messages/publish", &body).await.status(), 201);
    }
    let got = drain(&env.settings, &env.name("prio_queue")).await;
    let labels: Vec<String> = got
        .iter()
        .map(|m| {
            serde_json::from_slice::<Value>(&m.delivery.data).unwrap()["data"]["label"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(labels, ["high", "low"]);
    assert_eq!(*got[0].delivery.properties.priority(), Some(9));
    app.stop().await;
}
