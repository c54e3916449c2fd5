//! The fault suite's broker outage: `rabbitmqctl stop_app` / `start_app` under a publish load.
//! Ready goes 503 then 200, publishes fail fast while the broker is away, the topology and the
//! ingester come back, and no confirmed message is lost.
//!
//! Its own test binary: stopping the broker disturbs every test running at the same time, and
//! cargo runs test binaries one after the other. Behind the `fault-tests` feature.
#![cfg(feature = "fault-tests")]

mod common;

use std::{process::Command, time::Duration};

use common::{load::*, *};
use lapin::options::{BasicGetOptions, BasicRejectOptions};
use messages_broker::amqp::connection;
use tokio::time::{sleep, timeout};
use tokio_util::sync::CancellationToken;

fn rabbitmqctl(arg: &str) -> bool {
    Command::new("rabbitmqctl")
        .arg(arg)
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Owns the broker's stopped state: whatever happens to the test (a failed assertion, a
/// timeout), the broker is started again when this drops, or every later test would fail.
#[derive(Default)]
struct Broker {
    stopped: bool,
}

impl Broker {
    async fn stop_app(&mut self) {
        // Marked first: a stop_app that fails half-way must still be undone.
        self.stopped = true;
        let ok = tokio::task::spawn_blocking(|| rabbitmqctl("stop_app")).await.unwrap();
        assert!(ok, "rabbitmqctl stop_app failed");
    }

    async fn start_app(&mut self) {
        let ok = tokio::task::spawn_blocking(|| rabbitmqctl("start_app")).await.unwrap();
        assert!(ok, "rabbitmqctl start_app failed");
        self.stopped = false;
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.stopped && !rabbitmqctl("start_app") {
            eprintln!("WARNING: rabbitmqctl start_app failed; start the broker by hand");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_stopped_and_started_under_a_publish_load() {
    // The guard lives outside the time limit: whether the test passes, panics or times out, it
    // is dropped last and starts the broker again if it is still stopped.
    let mut broker = Broker::default();
    let confirm_timeout = Duration::from_secs(2);
    timeout(Duration::from_secs(150), async {
        let mut env = TestEnv::new("fault_stop").await;
        env.settings.publish.confirm_timeout = confirm_timeout;
        let app = env.spawn().await;
        app.wait_ready().await;
        let load = Load::start(LoadSpec {
            url: app.url("/api/messages/publish"),
            token: ADMIN_TOKEN.into(),
            exchange: env.name("orders_exchange"),
            routing_key: "orders.created".into(),
            tasks: 8,
            pace: Duration::from_millis(50),
            id_prefix: env.prefix.clone(),
            request_timeout: Duration::from_secs(20),
        });
        // Readiness, watched all along: its transitions say when the outage was seen and ended.
        let watching = CancellationToken::new();
        let watcher = {
            let (url, stop, origin) = (app.url("/api/ready"), watching.clone(), load.origin);
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(3))
                    .build()
                    .unwrap();
                let mut transitions: Vec<(Duration, u16)> = Vec::new();
                while !stop.is_cancelled() {
                    let status = http.get(&url).send().await.map_or(0, |r| r.status().as_u16());
                    if transitions.last().is_none_or(|(_, last)| *last != status) {
                        transitions.push((origin.elapsed(), status));
                    }
                    sleep(Duration::from_millis(100)).await;
                }
                transitions
            })
        };
        sleep(Duration::from_secs(2)).await;
        // An exchange the load does not use, deleted: its return proves the topology is redeclared.
        let events = env.name("events");
        app.management.delete_exchange(&events).await.unwrap();

        let stop_begun = load.now();
        broker.stop_app().await;
        let stopped = load.now();
        let down = eventually(Duration::from_secs(15), || async { app.ready_status().await.0 == 503 }).await;
        let down_seen = load.now();
        let (_, during) = app.ready_status().await;
        // Publishes keep coming while the broker is away.
        sleep(Duration::from_secs(4)).await;
        let start_begun = load.now();
        broker.start_app().await;
        let started = load.now();
        let back = eventually(Duration::from_secs(60), || async { app.ready_status().await.0 == 200 }).await;
        sleep(Duration::from_secs(3)).await;
        let samples = load.stop().await;
        watching.cancel();
        let transitions = watcher.await.unwrap();

        let has_events = eventually(Duration::from_secs(10), || async {
            app.management
                .exchanges()
                .await
                .is_ok_and(|all| all.iter().any(|e| e.name == events))
        })
        .await;
        // The ingester consumes again: a message rejected now becomes a row.
        let probe_id = format!("{}-after-restart", env.prefix);
        let mut probe = publish_body(&events, "");
        probe["message_id"] = probe_id.clone().into();
        let probe_status = app.post_json("/api/messages/publish", &probe).await.status().as_u16();
        let conn = connection::connect(&env.settings.rabbitmq, "fault-suite probe")
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        let got = channel
            .basic_get(env.name("small_queue").as_str().into(), BasicGetOptions::default())
            .await
            .unwrap()
            .expect("the probe is in the small queue");
        got.delivery
            .acker
            .reject(BasicRejectOptions { requeue: false })
            .await
            .unwrap();
        let _ = conn.close(200, "probe done".into()).await;
        let pool = app.app.state.pool.clone().unwrap();
        let ingested = eventually(Duration::from_secs(15), || async {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM failed_messages WHERE message_id = ?")
                .bind(&probe_id)
                .fetch_one(&pool)
                .await
                .unwrap_or(0)
                == 1
        })
        .await;

        let seen = drain_ids(&env.settings, &env.name("orders_queue"), Duration::from_secs(60)).await;
        let verdict = check(&samples, &seen);
        // Sent once the outage was visible, answered before start_app began: the broker was away.
        let outage: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.started >= down_seen && s.finished <= start_begun)
            .collect();
        let slowest = outage.iter().map(|s| s.took()).max().unwrap_or_default();
        let failures: Vec<&Sample> = samples.iter().filter(|s| !s.created()).collect();
        let slowest_failure = failures.iter().map(|s| s.took()).max().unwrap_or_default();
        let first_failure = failures.iter().map(|s| s.finished).min();
        let resumed = samples
            .iter()
            .filter(|s| s.created() && s.started >= start_begun)
            .map(|s| s.finished)
            .min();
        eprintln!(
            "[fault_stop] stop_app took {:?}, first 503 {:?} and ready 503 {:?} after it began; during {}; start_app took {:?}, ready 200 {:?} after it returned, first 201 {:?} after it returned; slowest 503 of the whole run {slowest_failure:?}",
            stopped - stop_begun,
            first_failure.map(|t| t.saturating_sub(stop_begun)),
            transitions
                .iter()
                .find(|(_, status)| *status == 503)
                .map(|(t, _)| t.saturating_sub(stop_begun)),
            during["checks"]["broker"],
            started - start_begun,
            transitions
                .iter()
                .rfind(|(_, status)| *status == 200)
                .map(|(t, _)| t.saturating_sub(started)),
            resumed.map(|t| t.saturating_sub(started))
        );
        eprintln!(
            "[fault_stop] ready transitions (load clock): {transitions:?}; stop_app began at {stop_begun:?}, start_app at {start_begun:?}"
        );
        eprintln!(
            "[fault_stop] during the outage: {} publishes {:?}, slowest {slowest:?} (limit {:?}); overall sent {} confirmed {} {:?}; in queue {} lost {} duplicates {} unconfirmed-but-queued {}; events exchange back {has_events}; probe {probe_status}, ingested {ingested}",
            outage.len(),
            tally(&outage.iter().map(|s| (*s).clone()).collect::<Vec<_>>()),
            confirm_timeout + Duration::from_secs(1),
            verdict.sent,
            verdict.confirmed,
            verdict.statuses,
            seen.len(),
            verdict.lost.len(),
            verdict.duplicates,
            verdict.unconfirmed_seen
        );

        assert!(down, "ready stayed 200 while the broker was stopped");
        let sequence: Vec<u16> = transitions.iter().map(|(_, status)| *status).collect();
        assert_eq!(sequence, vec![200, 503, 200], "ready over the run: {transitions:?}");
        assert_eq!(during["checks"]["broker"]["status"], "down", "{during}");
        assert!(back, "not ready after start_app: {:?}", app.ready_status().await);
        assert!(outage.len() > 10, "too few publishes during the outage: {}", outage.len());
        assert!(
            outage
                .iter()
                .all(|s| s.status == Some(503) && s.code.as_deref() == Some("broker_unavailable")),
            "{:?}",
            tally(&outage.iter().map(|s| (*s).clone()).collect::<Vec<_>>())
        );
        assert!(
            slowest < confirm_timeout + Duration::from_secs(1),
            "a publish took {slowest:?} to fail while the broker was down"
        );
        assert!(
            slowest_failure < confirm_timeout + Duration::from_secs(1),
            "a publish took {slowest_failure:?} to fail (confirm timeout {confirm_timeout:?})"
        );
        assert!(resumed.is_some(), "no 201 after start_app: {:?}", verdict.statuses);
        assert!(
            samples
                .iter()
                .all(|s| s.created() || (s.status == Some(503) && s.code.as_deref() == Some("broker_unavailable"))),
            "answers other than 201 / 503 broker_unavailable: {:?}",
            verdict.statuses
        );
        assert!(
            verdict.lost.is_empty(),
            "confirmed but not in the queue: {:?}",
            &verdict.lost[..verdict.lost.len().min(10)]
        );
        assert!(has_events, "the applier did not redeclare the deleted exchange");
        assert_eq!(probe_status, 201);
        assert!(ingested, "the ingester did not consume after the restart");
        app.stop().await;
    })
    .await
    .expect("the test ran past its time limit");
    drop(broker);
}
