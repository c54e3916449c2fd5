//! The fleet as operators deploy it: every role alone in its own process of the real binary, the
//! `applier,api` + `ingester,retrier,stats,scheduler` split, and two api replicas sharing idempotency keys.
//! Each process serves its probes and metrics, answers a JSON 404 where it lacks `api`, and does
//! its own job on the real broker and database.

mod common;

use std::time::Duration;

use common::{ADMIN_TOKEN, TestEnv, drain, eventually, process::Process, publish_body, reject_all};
use messages_broker::{
    amqp::management::ManagementClient,
    store::{self, idempotency_keys},
};

/// Retries a second after a failure and stats every second, so a whole flow fits in seconds.
fn fast_fleet(env: &mut TestEnv) {
    env.settings.retry.backoff = vec![Duration::from_secs(1); 3];
    env.settings.retry.scan_interval = Duration::from_secs(1);
    env.settings.stats.interval = Duration::from_secs(1);
}

/// What every process serves, whatever its roles.
async fn assert_probes(process: &mut Process, serves_api: bool) {
    process.wait_ready().await;
    let roles = process.roles.clone();
    let health = process.get("/api/health").await;
    assert_eq!(health.status(), 200, "[{roles}] health");
    let metrics = process.get("/metrics").await;
    assert_eq!(metrics.status(), 200, "[{roles}] metrics");
    assert!(
        metrics
            .text()
            .await
            .unwrap()
            .contains("messages_broker_amqp_connected 1"),
        "[{roles}] metrics"
    );
    let publish = process
        .post("/api/messages/publish", ADMIN_TOKEN, &serde_json::json!({}))
        .await;
    if serves_api {
        assert_eq!(publish.status(), 422, "[{roles}] publish route present");
    } else {
        assert_eq!(publish.status(), 404, "[{roles}] no publish route without `api`");
        let body: serde_json::Value = publish.json().await.expect("a JSON 404");
        assert_eq!(body["error"], "not_found", "[{roles}] {body}");
    }
}

async fn statuses(pool: &sqlx::MySqlPool) -> Vec<String> {
    sqlx::query_scalar("SELECT CAST(status AS CHAR) FROM failed_messages ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap_or_default()
}

/// Publishes through `api`, fails the message with a consumer, and follows it through the
/// ingester and the retrier back into the queue, wherever those roles run.
async fn dead_letter_round_trip(env: &TestEnv, api: &Process, workers: &[&Process]) {
    let queue = env.name("orders_queue");
    let exchange = env.name("orders_exchange");
    let published = api
        .post(
            "/api/messages/publish",
            ADMIN_TOKEN,
            &publish_body(&exchange, "orders.created"),
        )
        .await;
    assert_eq!(published.status(), 201, "{}", api.logs());
    assert_eq!(reject_all(&env.settings, &queue).await, 1);

    let pool = store::pool(&env.settings.database);
    let logs = || workers.iter().map(|p| p.logs()).collect::<Vec<_>>().join("\n");
    let stored = eventually(Duration::from_secs(20), || async { statuses(&pool).await.len() == 1 }).await;
    assert!(stored, "the ingester never stored the dead letter\n{}", logs());
    let resolved = eventually(Duration::from_secs(20), || async {
        statuses(&pool).await == ["resolved"]
    })
    .await;
    assert!(
        resolved,
        "the retrier never republished: {:?}\n{}",
        statuses(&pool).await,
        logs()
    );
    let back = drain(&env.settings, &queue).await;
    assert_eq!(back.len(), 1, "the retried message is back in its queue");
    pool.close().await;
}

/// The stats role's gauges name the topology's queues.
async fn assert_stats_gauges(env: &TestEnv, stats: &Process) {
    let series = format!(
        r#"messages_broker_queue_messages{{queue="{}"}}"#,
        env.name("orders_queue")
    );
    let seen = eventually(Duration::from_secs(15), || async {
        stats
            .get("/metrics")
            .await
            .text()
            .await
            .unwrap_or_default()
            .contains(&series)
    })
    .await;
    assert!(seen, "no {series} in the stats process's metrics\n{}", stats.logs());
}

#[tokio::test]
async fn each_role_runs_alone_in_its_own_process() {
    let mut env = TestEnv::new("fleet_alone").await;
    fast_fleet(&mut env);

    // The applier declares the topology; nothing else of the fleet is running yet.
    let mut applier = Process::start(&env, "applier");
    assert_probes(&mut applier, false).await;
    let management = ManagementClient::new(&env.settings.rabbitmq);
    let queues = management.queues().await.expect("management API");
    assert!(
        queues.iter().any(|q| q.name == env.name("orders_queue")),
        "the applier declared the queues"
    );

    let mut api = Process::start(&env, "api");
    assert_probes(&mut api, true).await;
    let mut ingester = Process::start(&env, "ingester");
    assert_probes(&mut ingester, false).await;
    let mut retrier = Process::start(&env, "retrier");
    assert_probes(&mut retrier, false).await;
    dead_letter_round_trip(&env, &api, &[&ingester, &retrier]).await;

    let mut stats = Process::start(&env, "stats");
    assert_probes(&mut stats, false).await;
    assert_stats_gauges(&env, &stats).await;

    // The scheduler alone releases a message the api process scheduled.
    let mut scheduler = Process::start(&env, "scheduler");
    assert_probes(&mut scheduler, false).await;
    let mut delayed = publish_body(&env.name("orders_exchange"), "orders.delayed");
    delayed["delay"] = "1s".into();
    let scheduled = api.post("/api/messages/publish", ADMIN_TOKEN, &delayed).await;
    assert_eq!(scheduled.status(), 202, "{}", api.logs());
    let queue = env.name("orders_queue");
    let mut released = Vec::new();
    for _ in 0..50 {
        released.extend(drain(&env.settings, &queue).await);
        if !released.is_empty() {
            break;
        }
    }
    assert_eq!(
        released.len(),
        1,
        "the scheduler process released it\n{}",
        scheduler.logs()
    );

    for process in [applier, api, ingester, retrier, stats, scheduler] {
        let roles = process.roles.clone();
        assert_eq!(process.stop().await, Some(0), "[{roles}] stops cleanly on SIGTERM");
    }
    env.cleanup().await;
}

#[tokio::test]
async fn the_api_and_worker_split_runs_the_whole_flow() {
    let mut env = TestEnv::new("fleet_split").await;
    fast_fleet(&mut env);
    let mut front = Process::start(&env, "applier,api");
    let mut workers = Process::start(&env, "ingester,retrier,stats,scheduler");
    assert_probes(&mut front, true).await;
    assert_probes(&mut workers, false).await;
    dead_letter_round_trip(&env, &front, &[&workers]).await;
    assert_stats_gauges(&env, &workers).await;
    assert_eq!(front.stop().await, Some(0));
    assert_eq!(workers.stop().await, Some(0));
    env.cleanup().await;
}

#[tokio::test]
async fn two_api_replicas_share_idempotency_keys() {
    let env = TestEnv::new("fleet_idem").await;
    let (a, b) = (env.spawn().await, env.spawn().await);
    a.wait_ready().await;
    b.wait_ready().await;
    let body = publish_body(&env.name("orders_exchange"), "orders.created");
    let send = |app: &common::TestApp, key: &'static str| {
        app.http
            .post(app.url("/api/messages/publish"))
            .bearer_auth(ADMIN_TOKEN)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let id = |response: reqwest::Response| async move {
        assert_eq!(response.status(), 201);
        response.json::<serde_json::Value>().await.unwrap()["message_id"].clone()
    };

    // At the same moment on both replicas: one publishes, the other waits and replays.
    let (first, second) = tokio::join!(send(&a, "same-time"), send(&b, "same-time"));
    assert_eq!(id(first.unwrap()).await, id(second.unwrap()).await);
    // One after the other.
    let first = id(send(&a, "one-then-other").await.unwrap()).await;
    assert_eq!(first, id(send(&b, "one-then-other").await.unwrap()).await);

    let messages = drain(&env.settings, &env.name("orders_queue")).await;
    assert_eq!(messages.len(), 2, "one broker message per key");
    a.stop().await;
    b.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_key_left_pending_by_a_dead_replica_is_taken_over_after_its_lease() {
    let env = TestEnv::new("fleet_lease").await;
    let pool = store::pool(&env.settings.database);
    store::migrate(&pool).await.unwrap();
    let (lease, ttl) = (Duration::from_millis(300), Duration::from_secs(60));
    let claim = || idempotency_keys::claim(&pool, "svc", "k", lease, ttl);
    assert_eq!(claim().await.unwrap(), idempotency_keys::KeyClaim::Won);
    assert_eq!(claim().await.unwrap(), idempotency_keys::KeyClaim::Pending);
    tokio::time::sleep(lease * 2).await;
    assert_eq!(
        claim().await.unwrap(),
        idempotency_keys::KeyClaim::Won,
        "the lease ran out"
    );
    let answer = serde_json::json!({"message_id": "m1"});
    idempotency_keys::complete(&pool, "svc", "k", &answer, ttl)
        .await
        .unwrap();
    assert_eq!(claim().await.unwrap(), idempotency_keys::KeyClaim::Done(answer));
    // Expired keys are cleaned up and can be used again.
    idempotency_keys::complete(&pool, "svc", "k", &serde_json::json!(1), Duration::ZERO)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(idempotency_keys::delete_expired(&pool, 100).await.unwrap(), 1);
    assert_eq!(claim().await.unwrap(), idempotency_keys::KeyClaim::Won);
    pool.close().await;
    env.cleanup().await;
}
