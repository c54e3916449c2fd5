//! Replays of the audit trail against the real broker and database: messages published through
//! the API (so `message_logs` holds them) are replayed after a dry run and the count guard, each
//! copy arriving once with `mb-replay-of` and a new message_id; filters, another exchange as the
//! target, bad requests, scopes and the retention warning; a cancel mid-run; a process stopped
//! mid-replay and another one resuming it; a crashed owner's replay taken over after its lease;
//! two replicas, one of which runs the replay.

mod common;

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use common::*;
use messages_broker::{amqp::headers, roles::Roles};
use serde_json::{Value, json};

/// Quick scans and a rate high enough for the tests that do not look at the pace.
fn replay_env(env: &mut TestEnv, rate: u32) {
    env.settings.replay.scan_interval = Duration::from_millis(200);
    env.settings.replay.rate_per_second = rate;
}

/// Publishes `n` messages to the orders exchange through the batch API, `routing_key` and
/// `event` on each; answers their message_ids.
async fn publish(app: &TestApp, env: &TestEnv, n: usize, routing_key: &str, event: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let messages: Vec<Value> = chunk
            .iter()
            .map(|i| {
                json!({
                    "exchange": env.name("orders_exchange"),
                    "routing_key": routing_key,
                    "message": {"event": event, "data": {"n": i}},
                })
            })
            .collect();
        let answer: Value = app
            .post_json("/api/messages/publish/batch", &json!({"messages": messages}))
            .await
            .json()
            .await
            .unwrap();
        for result in answer["results"].as_array().unwrap() {
            assert_eq!(result["status"], 201, "{result}");
            ids.push(result["message_id"].as_str().unwrap().to_owned());
        }
    }
    ids
}

/// A dry run of `filter` (and `target`): the answer.
async fn dry_run(app: &TestApp, filter: Value, target: Value) -> Value {
    let response = app
        .post_json(
            "/api/replays",
            &json!({"filter": filter, "target": target, "dry_run": true}),
        )
        .await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Waits until the audit writer stored the `n` messages `filter` selects.
async fn logged(app: &TestApp, filter: Value, n: u64) {
    let stored = eventually(Duration::from_secs(10), || async {
        dry_run(app, filter.clone(), Value::Null).await["count"] == n
    })
    .await;
    assert!(stored, "the audit trail never held {n} messages");
}

/// Starts a replay after a dry run with its count; answers its id.
async fn start(app: &TestApp, filter: Value, target: Value) -> u64 {
    let count = dry_run(app, filter.clone(), target.clone()).await["count"].clone();
    let response = app
        .post_json(
            "/api/replays",
            &json!({"filter": filter, "target": target, "expected_count": count}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    let id = body["id"].as_u64().unwrap();
    assert_eq!(location, format!("/api/replays/{id}"));
    id
}

async fn replay(app: &TestApp, id: u64) -> Value {
    app.as_reader()
        .get(&format!("/api/replays/{id}"))
        .await
        .json()
        .await
        .unwrap()
}

/// Polls the replay until `done` holds; answers it.
async fn wait_for(app: &TestApp, id: u64, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let body = replay(app, id).await;
        if done(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replay {id} never got there: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn status_is(status: &'static str) -> impl Fn(&Value) -> bool {
    move |body| body["status"] == status
}

/// One copy as a consumer sees it: (its message_id, `mb-replay-of`).
fn copy(message: &lapin::message::BasicGetMessage) -> (String, String) {
    let id = message.delivery.properties.message_id().as_ref().unwrap().to_string();
    let table = message.delivery.properties.headers().clone().unwrap_or_default();
    let of = headers::table_to_json(&table)["mb-replay-of"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (id, of)
}

/// Drains `queue` until `count` messages came or `limit` passed, then once more to catch extras.
async fn collect(env: &TestEnv, queue: &str, count: usize, limit: Duration) -> Vec<(String, String)> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut got = Vec::new();
    while got.len() < count && tokio::time::Instant::now() < deadline {
        got.extend(drain(&env.settings, queue).await.iter().map(copy));
    }
    got.extend(drain(&env.settings, queue).await.iter().map(copy));
    got
}

/// Each original exactly once among the copies, every copy with a new, unique message_id.
fn assert_each_once(copies: &[(String, String)], originals: &[String]) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (_, of) in copies {
        *seen.entry(of.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "replayed more than once: {twice:?}");
    let wanted: HashSet<&str> = originals.iter().map(String::as_str).collect();
    let got: HashSet<&str> = seen.keys().copied().collect();
    assert_eq!(got, wanted, "the copies are not the originals, each once");
    let ids: HashSet<&str> = copies.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), copies.len(), "copies share a message_id");
    assert!(ids.is_disjoint(&wanted), "a copy kept its original's message_id");
}

fn orders(env: &TestEnv) -> Value {
    json!({"exchange": env.name("orders_exchange")})
}

#[tokio::test]
async fn a_dry_run_then_a_run_with_the_count_guard_replays_each_message_once() {
    let mut env = TestEnv::new("replay_run").await;
    replay_env(&mut env, 10_000);
    let app = env.spawn().await;
    app.wait_ready().await;
    let queue = env.name("orders_queue");
    let originals = publish(&app, &env, 20, "orders.created", "order.created").await;
    logged(&app, orders(&env), 20).await;
    assert_eq!(drain(&env.settings, &queue).await.len(), 20, "the originals");

    let shown = dry_run(&app, orders(&env), Value::Null).await;
    assert_eq!(shown["count"], 20, "{shown}");
    let sample = shown["sample"].as_array().unwrap();
    assert_eq!(sample.len(), 10);
    assert_eq!(sample[0]["message_id"], originals[0].as_str());
    assert_eq!(sample[0]["event"], "order.created");
    assert_eq!(sample[0]["payload"]["data"]["n"], 0);
    assert_eq!(shown["past_retention"], false);
    assert!(shown.get("warning").is_none(), "{shown}");

    // The guard: no count, a wrong count, then the count shown.
    let admin = app.as_admin();
    let missing = admin.post("/api/replays", &json!({"filter": orders(&env)})).await;
    let body = expect_error("no expected_count", missing, 422, "validation_failed").await;
    assert!(body["fields"]["expected_count"].is_string(), "{body}");
    let moved = admin
        .post("/api/replays", &json!({"filter": orders(&env), "expected_count": 19}))
        .await;
    let body = expect_error("a count that moved", moved, 409, "count_changed").await;
    assert_eq!(body["count"], 20, "{body}");
    assert!(drain(&env.settings, &queue).await.is_empty(), "nothing replayed yet");

    let id = start(&app, orders(&env), Value::Null).await;
    let done = wait_for(&app, id, Duration::from_secs(20), status_is("completed")).await;
    assert_eq!(
        (&done["total"], &done["published"], &done["failed"], &done["progress"]),
        (&json!(20), &json!(20), &json!(0), &json!(1.0)),
        "{done}"
    );
    for time in ["created_at", "started_at", "finished_at"] {
        assert!(done[time].is_string(), "{time}: {done}");
    }
    assert!(done["owner"].is_null(), "a finished replay is let go: {done}");
    let copies = collect(&env, &queue, 20, Duration::from_secs(10)).await;
    assert_each_once(&copies, &originals);

    // Listed for readers; a finished replay cannot be cancelled.
    let listed: Value = app.as_reader().get("/api/replays").await.json().await.unwrap();
    assert_eq!(listed["data"][0]["id"], id, "{listed}");
    let refused = admin.post(&format!("/api/replays/{id}/cancel"), &json!({})).await;
    expect_error("cancel a completed replay", refused, 409, "replay_finished").await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"messages_broker_replayed_total{outcome="published"} 20"#),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn filters_targets_scopes_and_the_retention_warning() {
    let mut env = TestEnv::new("replay_filters").await;
    replay_env(&mut env, 10_000);
    let app = env.spawn().await;
    app.wait_ready().await;
    let created = publish(&app, &env, 3, "orders.created", "order.created").await;
    publish(&app, &env, 2, "orders.eu.shipped", "order.shipped").await;
    publish(&app, &env, 1, "orders.Created", "order.created").await;
    logged(&app, json!({}), 6).await;
    let exchange = env.name("orders_exchange");
    let count = |filter: Value| {
        let app = &app;
        async move { dry_run(app, filter, Value::Null).await["count"].as_u64().unwrap() }
    };
    // Topic patterns, case included; the event; message ids; the time range.
    assert_eq!(count(json!({"routing_key": "orders.*"})).await, 4);
    assert_eq!(count(json!({"routing_key": "orders.#"})).await, 6);
    assert_eq!(count(json!({"routing_key": "#.shipped"})).await, 2);
    assert_eq!(count(json!({"routing_key": "orders.created"})).await, 3);
    assert_eq!(count(json!({"routing_key": "orders"})).await, 0);
    assert_eq!(count(json!({"event": "order.created"})).await, 4);
    assert_eq!(
        count(json!({"event": "order.created", "routing_key": "orders.created"})).await,
        3
    );
    assert_eq!(
        count(json!({"message_ids": [created[0], created[2], "unknown"]})).await,
        2
    );
    assert_eq!(
        count(json!({"exchange": exchange, "from": "2000-01-01", "to": "2000-12-31"})).await,
        0
    );
    let hour_ago = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    assert_eq!(count(json!({"exchange": exchange, "from": hour_ago})).await, 6);

    // The retention warning: a range that starts before retention.message_logs (30 days).
    let recent = dry_run(&app, json!({"from": hour_ago}), Value::Null).await;
    assert_eq!(recent["past_retention"], false, "{recent}");
    let old_start = (chrono::Utc::now() - chrono::Duration::days(40)).to_rfc3339();
    let old = dry_run(&app, json!({"from": old_start}), Value::Null).await;
    assert_eq!(old["past_retention"], true, "{old}");
    assert!(old["warning"].as_str().unwrap().contains("retention"), "{old}");
    let id = {
        let response = app
            .post_json(
                "/api/replays",
                &json!({"filter": {"from": old_start, "message_ids": [created[0]]}, "expected_count": 1}),
            )
            .await;
        assert_eq!(response.status(), 202);
        response.json::<Value>().await.unwrap()["id"].as_u64().unwrap()
    };
    let shown = wait_for(&app, id, Duration::from_secs(20), status_is("completed")).await;
    assert_eq!(
        (&shown["past_retention"], &shown["published"]),
        (&json!(true), &json!(1)),
        "{shown}"
    );
    assert!(shown["warning"].is_string(), "{shown}");

    // Bad requests: every bad field at once, unknown exchanges, scopes.
    let admin = app.as_admin();
    let bad = admin
        .post(
            "/api/replays",
            &json!({"filter": {"from": "soon", "message_ids": [], "queue": "x"}, "dry_run": 1}),
        )
        .await;
    let body = expect_error("bad filter", bad, 422, "validation_failed").await;
    let fields: Vec<&String> = body["fields"].as_object().unwrap().keys().collect();
    assert_eq!(
        fields,
        ["dry_run", "filter.from", "filter.message_ids", "filter.queue"],
        "{body}"
    );
    for body in [
        json!({"target": {"exchange": "no_such_exchange"}, "dry_run": true}),
        json!({"target": {"exchange": env.name("dlx")}, "dry_run": true}),
        json!({"filter": {"exchange": "gone_exchange"}, "expected_count": 0}),
    ] {
        let refused = admin.post("/api/replays", &body).await;
        expect_error(&body.to_string(), refused, 422, "unknown_exchange").await;
    }
    let reader = app.as_reader();
    let refused = reader.post("/api/replays", &json!({"dry_run": true})).await;
    expect_error("a reader replays", refused, 403, "forbidden").await;
    let refused = reader.post(&format!("/api/replays/{id}/cancel"), &json!({})).await;
    expect_error("a reader cancels", refused, 403, "forbidden").await;
    assert_eq!(reader.get(&format!("/api/replays/{id}")).await.status(), 200);
    expect_error("no replay", reader.get("/api/replays/999999").await, 404, "not_found").await;
    expect_error("not an id", reader.get("/api/replays/abc").await, 404, "not_found").await;
    let bad_limit = reader.get("/api/replays?limit=0").await;
    expect_error("a bad limit", bad_limit, 422, "validation_failed").await;
    app.stop().await;
}

#[tokio::test]
async fn a_replay_to_another_exchange_of_the_topology() {
    let mut env = TestEnv::new("replay_target").await;
    replay_env(&mut env, 10_000);
    let app = env.spawn().await;
    app.wait_ready().await;
    let originals = publish(&app, &env, 3, "orders.created", "order.created").await;
    logged(&app, orders(&env), 3).await;
    drain(&env.settings, &env.name("orders_queue")).await;
    // The fanout exchange feeds only the small queue.
    let target = json!({"exchange": env.name("events")});
    let shown = dry_run(&app, orders(&env), target.clone()).await;
    assert_eq!(shown["target"], target, "{shown}");
    let id = start(&app, orders(&env), target.clone()).await;
    let done = wait_for(&app, id, Duration::from_secs(20), status_is("completed")).await;
    assert_eq!(done["target"], target, "{done}");
    let copies = collect(&env, &env.name("small_queue"), 3, Duration::from_secs(10)).await;
    assert_each_once(&copies, &originals);
    assert!(
        drain(&env.settings, &env.name("orders_queue")).await.is_empty(),
        "nothing went to the original exchange"
    );

    // An exchange where no queue is bound for the routing key: each copy is given up, once.
    let nowhere = json!({"exchange": env.name("limited_exchange")});
    let id = start(&app, orders(&env), nowhere).await;
    let done = wait_for(&app, id, Duration::from_secs(20), status_is("completed")).await;
    assert_eq!((&done["published"], &done["failed"]), (&json!(0), &json!(3)), "{done}");
    assert!(done["last_error"].as_str().unwrap().contains("unroutable"), "{done}");
    app.stop().await;
}

#[tokio::test]
async fn copies_a_full_queue_refused_are_tried_again_without_doubles() {
    let mut env = TestEnv::new("replay_full").await;
    replay_env(&mut env, 10_000);
    let app = env.spawn().await;
    app.wait_ready().await;
    let originals = publish(&app, &env, 8, "orders.created", "order.created").await;
    logged(&app, orders(&env), 8).await;
    // The small queue holds 5 and refuses the rest: 3 copies wait until the test drains it.
    let id = start(&app, orders(&env), json!({"exchange": env.name("events")})).await;
    let copies = collect(&env, &env.name("small_queue"), 8, Duration::from_secs(20)).await;
    assert_each_once(&copies, &originals);
    let done = wait_for(&app, id, Duration::from_secs(20), status_is("completed")).await;
    assert_eq!((&done["published"], &done["failed"]), (&json!(8), &json!(0)), "{done}");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"messages_broker_replayed_total{outcome="retry"}"#),
        "some copies were refused first: {metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_cancel_stops_a_running_replay() {
    let mut env = TestEnv::new("replay_cancel").await;
    replay_env(&mut env, 5);
    let app = env.spawn().await;
    app.wait_ready().await;
    let queue = env.name("orders_queue");
    publish(&app, &env, 30, "orders.created", "order.created").await;
    logged(&app, orders(&env), 30).await;
    drain(&env.settings, &queue).await;
    let id = start(&app, orders(&env), Value::Null).await;
    wait_for(&app, id, Duration::from_secs(10), |body| {
        body["published"].as_u64() >= Some(3)
    })
    .await;
    let response = app
        .as_admin()
        .post(&format!("/api/replays/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["status"], "cancelled");
    // The batch in flight ends and is counted, then nothing more.
    let stopped = wait_for(&app, id, Duration::from_secs(5), |body| body["owner"].is_null()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = replay(&app, id).await;
    assert_eq!(later["status"], "cancelled");
    assert_eq!(later["published"], stopped["published"], "published after its cancel");
    let published = later["published"].as_u64().unwrap();
    assert!(published < 30, "{later}");
    assert!(later["finished_at"].is_string(), "{later}");
    assert_eq!(
        drain(&env.settings, &queue).await.len() as u64,
        published,
        "the queue holds what the replay says it published"
    );
    let again = app
        .as_admin()
        .post(&format!("/api/replays/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(again.status(), 200, "cancelling twice is fine");
    app.stop().await;
}

#[tokio::test]
async fn a_replay_resumes_after_a_restart_and_sends_each_message_once() {
    let mut env = TestEnv::new("replay_restart").await;
    replay_env(&mut env, 10);
    let app = env.spawn().await;
    app.wait_ready().await;
    let queue = env.name("orders_queue");
    let originals = publish(&app, &env, 40, "orders.created", "order.created").await;
    logged(&app, orders(&env), 40).await;
    drain(&env.settings, &queue).await;
    let id = start(&app, orders(&env), Value::Null).await;
    wait_for(&app, id, Duration::from_secs(10), |body| {
        body["published"].as_u64() >= Some(5)
    })
    .await;
    // A clean stop mid-replay: the batch in flight is recorded and the replay let go.
    app.stop().await;
    let pool = messages_broker::store::pool(&env.settings.database);
    let (status, owner, published): (String, Option<String>, u64) =
        sqlx::query_as("SELECT CAST(status AS CHAR), owner, published FROM replays WHERE id = ?")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), owner), ("running", None), "let go, not finished");
    assert!(published < 40, "stopped midway: {published}");
    let app = env.spawn().await;
    app.wait_ready().await;
    let done = wait_for(&app, id, Duration::from_secs(20), status_is("completed")).await;
    assert_eq!(done["published"], 40, "{done}");
    let copies = collect(&env, &queue, 40, Duration::from_secs(10)).await;
    assert_each_once(&copies, &originals);
    pool.close().await;
    app.stop().await;
}

#[tokio::test]
async fn a_crashed_owners_replay_is_taken_over_after_its_lease() {
    let mut env = TestEnv::new("replay_lease").await;
    replay_env(&mut env, 10_000);
    // The first process has no scheduler role: it only queues the replay.
    env.settings.app.roles = "applier,api,ingester,retrier,stats".parse::<Roles>().unwrap();
    let api = env.spawn().await;
    api.wait_ready().await;
    let queue = env.name("orders_queue");
    let originals = publish(&api, &env, 10, "orders.created", "order.created").await;
    logged(&api, orders(&env), 10).await;
    drain(&env.settings, &queue).await;
    let id = start(&api, orders(&env), Value::Null).await;
    // A replica that crashed after recording 4 messages, its lease running for 5 more seconds.
    let pool = messages_broker::store::pool(&env.settings.database);
    let fourth: u64 = sqlx::query_scalar("SELECT id FROM message_logs ORDER BY id LIMIT 1 OFFSET 3")
        .fetch_one(&pool)
        .await
        .unwrap();
    let rest: Vec<String> = sqlx::query_scalar("SELECT message_id FROM message_logs WHERE id > ? ORDER BY id")
        .bind(fourth)
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(rest.len(), 6);
    assert!(rest.iter().all(|id| originals.contains(id)));
    sqlx::query(
        "UPDATE replays SET status = 'running', owner = 'crashed-replica', cursor_log_id = ?, published = 4, \
         started_at = UTC_TIMESTAMP(6), lease_until = UTC_TIMESTAMP(6) + INTERVAL 5 SECOND WHERE id = ?",
    )
    .bind(fourth)
    .bind(id)
    .execute(&pool)
    .await
    .unwrap();
    let taken_over_from = Instant::now();
    env.settings.app.roles = Roles::all();
    let replayer = env.spawn().await;
    replayer.wait_ready().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let held = replay(&replayer, id).await;
    assert_eq!(
        held["owner"], "crashed-replica",
        "taken before the lease passed: {held}"
    );
    let done = wait_for(&replayer, id, Duration::from_secs(20), status_is("completed")).await;
    assert!(taken_over_from.elapsed() >= Duration::from_millis(4900), "{done}");
    assert_eq!(done["published"], 10, "{done}");
    let copies = collect(&env, &queue, 6, Duration::from_secs(10)).await;
    assert_each_once(&copies, &rest);
    pool.close().await;
    replayer.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn two_replicas_one_replay_each_message_once() {
    let mut env = TestEnv::new("replay_two").await;
    replay_env(&mut env, 100);
    let (a, b) = (env.spawn().await, env.spawn().await);
    a.wait_ready().await;
    b.wait_ready().await;
    let queue = env.name("orders_queue");
    let originals = publish(&a, &env, 200, "orders.created", "order.created").await;
    logged(&a, orders(&env), 200).await;
    drain(&env.settings, &queue).await;
    let id = start(&b, orders(&env), Value::Null).await;
    let done = wait_for(&a, id, Duration::from_secs(30), status_is("completed")).await;
    assert_eq!(done["published"], 200, "{done}");
    let copies = collect(&env, &queue, 200, Duration::from_secs(10)).await;
    assert_each_once(&copies, &originals);
    // One of the two ran it all.
    let mut counts = Vec::new();
    for app in [&a, &b] {
        let metrics = app.get("/metrics").await.text().await.unwrap();
        let published = metrics
            .lines()
            .find(|line| line.starts_with(r#"messages_broker_replayed_total{outcome="published"}"#))
            .and_then(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0);
        counts.push(published);
    }
    counts.sort();
    assert_eq!(counts, [0, 200], "each replica's published copies");
    a.stop().await;
    b.stop().await;
}

/// The replay rate with the limit out of the way: `cargo test --release --test replays --
/// --ignored --nocapture`.
#[tokio::test]
#[ignore = "a measurement; prints the replay rate"]
async fn bench_replay_rate() {
    let mut env = TestEnv::new("replay_bench").await;
    replay_env(&mut env, 1_000_000);
    let app = env.spawn().await;
    app.wait_ready().await;
    let n = 5000;
    publish(&app, &env, n, "orders.created", "order.created").await;
    logged(&app, orders(&env), n as u64).await;
    let queue = env.name("orders_queue");
    let purged = app
        .as_admin()
        .request(reqwest::Method::POST, &format!("/api/queues/{queue}/purge"))
        .header("X-Confirm-Purge", &queue)
        .send()
        .await
        .unwrap();
    assert_eq!(purged.status(), 200);
    let id = start(&app, orders(&env), Value::Null).await;
    let done = wait_for(&app, id, Duration::from_secs(120), status_is("completed")).await;
    assert_eq!(done["published"], n, "{done}");
    let at = |key: &str| chrono::DateTime::parse_from_rfc3339(done[key].as_str().unwrap()).unwrap();
    let seconds = (at("finished_at") - at("started_at")).num_microseconds().unwrap() as f64 / 1e6;
    eprintln!(
        "[replay] {n} messages replayed in {seconds:.2} s: {:.0} msg/s (rate limit out of the way)",
        n as f64 / seconds
    );
    app.stop().await;
}
