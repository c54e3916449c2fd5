//! The fault suite (issue 6): real faults under a real load, each test bounded in time.
//!
//! The invariant every test checks: the messages confirmed (201) are a subset of what consumers
//! saw, plus the rows, plus what a final drain finds. Duplicates are counted and reported apart.
//! Figures are printed with `eprintln!` (run with `--nocapture` to see them).
//!
//! Behind the `fault-tests` feature (`scripts/test.sh` turns it on): they load the machine.
//! The broker stop/start test lives in `tests/fault_broker_stop.rs`, its own binary, because it
//! disturbs every test running at the same time.
#![cfg(feature = "fault-tests")]

mod common;

use std::{collections::HashSet, process::Child, time::Duration};

use common::{load::*, *};
use messages_broker::store;
use serde_json::Value;
use tokio::time::{Instant, sleep, timeout};

/// No fault test may run longer than this, whatever happens.
const TEST_LIMIT: Duration = Duration::from_secs(90);

fn publish_load(url: String, env: &TestEnv, tasks: usize, pace: Duration) -> LoadSpec {
    LoadSpec {
        url,
        token: ADMIN_TOKEN.into(),
        exchange: env.name("orders_exchange"),
        routing_key: "orders.created".into(),
        tasks,
        pace,
        id_prefix: env.prefix.clone(),
        request_timeout: Duration::from_secs(20),
    }
}

fn generation(app: &TestApp) -> u64 {
    app.app.link().borrow().as_ref().map_or(0, |link| link.generation)
}

async fn row_count(pool: &sqlx::MySqlPool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM failed_messages")
        .fetch_one(pool)
        .await
        .unwrap_or(-1)
}

/// The answers that are neither 201 nor the given 503 codes: what a fault must never produce.
fn unexpected(samples: &[Sample], allowed: &[&str]) -> Vec<String> {
    samples
        .iter()
        .filter(|s| !s.created())
        .filter(|s| !(s.status == Some(503) && allowed.contains(&s.code.as_deref().unwrap_or(""))))
        .map(|s| format!("{} at {:?}: {} {:?}", s.message_id, s.finished, s.label(), s.error))
        .take(10)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_survives_two_connection_cuts_and_loses_no_confirmed_message() {
    timeout(TEST_LIMIT, async {
        let env = TestEnv::new("fault_cuts").await;
        let app = env.spawn().await;
        app.wait_ready().await;
        let load = Load::start(publish_load(
            app.url("/api/messages/publish"),
            &env,
            16,
            Duration::from_millis(50),
        ));
        sleep(Duration::from_secs(2)).await;

        // Two cuts through the management API, as an operator (or a broker failover) would.
        // Each cut is timed from the moment the close is sent (the management API lists a fresh
        // connection only after a few seconds: that wait is not the service's).
        let mut cuts = Vec::new();
        let mut asked_at = Vec::new();
        for round in 1..=2 {
            let before = generation(&app);
            asked_at.push(load.now());
            let (closed, at) = cut_connections(
                &app.management,
                &env.settings.app.name,
                load.origin,
                Duration::from_secs(15),
            )
            .await;
            assert!(closed >= 1, "cut {round}: no connection of the app to close");
            cuts.push(at.expect("a close was sent"));
            let reconnected = eventually(Duration::from_secs(10), || async { generation(&app) > before }).await;
            assert!(reconnected, "cut {round}: the app did not reconnect");
            sleep(Duration::from_millis(2500)).await;
        }
        // Long enough after the second cut to see publishing resume (or see that it did not).
        let end = cuts[1] + Duration::from_secs(6);
        sleep(end.saturating_sub(load.now())).await;
        let samples = load.stop().await;
        let seen = drain_ids(&env.settings, &env.name("orders_queue"), Duration::from_secs(60)).await;

        let verdict = check(&samples, &seen);
        let recoveries = [
            recovery(&samples, cuts[0], cuts[1]),
            recovery(&samples, cuts[1], Duration::MAX),
        ];
        eprintln!(
            "[fault_cuts] sent {} confirmed {} statuses {:?} in queue {} lost {} duplicates {} unconfirmed-but-queued {}",
            verdict.sent,
            verdict.confirmed,
            verdict.statuses,
            seen.len(),
            verdict.lost.len(),
            verdict.duplicates,
            verdict.unconfirmed_seen
        );
        for (i, r) in recoveries.iter().enumerate() {
            eprintln!(
                "[fault_cuts] cut {} asked at {:?}, close sent at {:?}: {} failed answers between {:?} and {:?}; the first 201 of a request sent after the first failure came {:?} after the close",
                i + 1,
                asked_at[i],
                r.fault_at,
                r.failures,
                r.first_failure,
                r.last_failure,
                r.resumed_after
            );
        }

        assert!(verdict.confirmed > 100, "the load hardly ran: {:?}", verdict.statuses);
        assert!(
            verdict.lost.is_empty(),
            "confirmed but not in the queue: {:?}",
            &verdict.lost[..verdict.lost.len().min(10)]
        );
        let wrong = unexpected(&samples, &["broker_unavailable"]);
        assert!(wrong.is_empty(), "answers other than 201 / 503: {wrong:?}");
        for (i, r) in recoveries.iter().enumerate() {
            let resumed = r.resumed_after.expect("publishing never resumed");
            assert!(
                resumed <= Duration::from_secs(5),
                "cut {}: publishing resumed only {resumed:?} after it",
                i + 1
            );
        }
        app.stop().await;
    })
    .await
    .expect("the test ran past its time limit");
}

/// Why a proxy and not `systemctl stop mariadb`: the MariaDB server is shared by every test
/// running at the same time (each has its own database on it); stopping it would fail them all.
/// For the app, a cut proxy is the same outage: every open connection dropped, every reconnect
/// refused, until it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_arriving_through_a_database_outage_are_stored_exactly_once() {
    timeout(TEST_LIMIT, async {
        let mut env = TestEnv::new("fault_db").await;
        let (proxy, direct) = env.behind_database_proxy().await;
        let app = env.spawn().await;
        app.wait_ready().await;
        let queue = env.name("orders_queue");

        // Dead letters arrive all along: publishes through the app, a consumer rejecting each.
        let rejecter = Rejecter::start(&env.settings, &queue).await;
        let load = Load::start(publish_load(
            app.url("/api/messages/publish"),
            &env,
            4,
            Duration::from_millis(50),
        ));
        sleep(Duration::from_secs(2)).await;

        let cut_at = load.now();
        proxy.cut();
        let rows_at_cut = row_count(&direct).await;
        // The database-backed route answers 503 database_unavailable meanwhile, never 500.
        let mut answers = Vec::new();
        let outage_end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < outage_end {
            let request = app
                .http
                .get(app.url("/api/messages/failed"))
                .bearer_auth(READER_TOKEN)
                .send();
            let answer = match timeout(Duration::from_secs(5), request).await {
                Ok(Ok(response)) => {
                    let status = response.status().as_u16();
                    let body: Value = response.json().await.unwrap_or_default();
                    format!("{status} {}", body["error"].as_str().unwrap_or(""))
                }
                Ok(Err(err)) => format!("transport error: {err}"),
                Err(_) => "no answer within 5 s".into(),
            };
            answers.push(answer);
            sleep(Duration::from_millis(250)).await;
        }
        let (ready_during, _) = app.ready_status().await;
        let rejected_during_cut = rejecter.count();
        let restored_at = load.now();
        let restored = Instant::now();
        proxy.restore();
        // The dead letters held during the outage are stored once the database is back.
        let caught_up = eventually(Duration::from_secs(15), || async {
            row_count(&direct).await >= rejected_during_cut as i64
        })
        .await;
        let caught_up_in = restored.elapsed();
        sleep(Duration::from_millis(2500).saturating_sub(caught_up_in)).await;

        let samples = load.stop().await;
        let rejected = rejecter.stop().await;
        let drained = drain_ids(&env.settings, &queue, Duration::from_secs(30)).await;
        let rejected_ids: HashSet<&str> = rejected.iter().map(String::as_str).collect();
        let stored = eventually(Duration::from_secs(30), || async {
            row_count(&direct).await >= rejected_ids.len() as i64
        })
        .await;
        sleep(Duration::from_secs(1)).await; // a late duplicate would show now
        let (rows, distinct): (i64, i64) =
            sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT message_id) FROM failed_messages")
                .fetch_one(&direct)
                .await
                .unwrap();
        let stored_ids: HashSet<String> = sqlx::query_scalar("SELECT message_id FROM failed_messages")
            .fetch_all(&direct)
            .await
            .unwrap()
            .into_iter()
            .collect();
        let not_stored = rejected_ids.iter().filter(|id| !stored_ids.contains(**id)).count();
        let never_rejected = stored_ids
            .iter()
            .filter(|id| !rejected_ids.contains(id.as_str()))
            .count();
        let mut seen = rejected.clone();
        seen.extend(drained.iter().cloned());
        let verdict = check(&samples, &seen);
        let db_503 = answers.iter().filter(|a| *a == "503 database_unavailable").count();
        eprintln!(
            "[fault_db] cut at {cut_at:?} for {:?}; publishes {:?}; rejected {} ({} distinct, {} by the end of the cut); rows at the cut {rows_at_cut}, after {rows} ({distinct} distinct), caught up with the outage's dead letters {:.1?} after the restore ({caught_up}); not stored {not_stored}, rows never rejected {never_rejected}; drained after {}; lost {} duplicates {}",
            restored_at - cut_at,
            verdict.statuses,
            rejected.len(),
            rejected_ids.len(),
            rejected_during_cut,
            caught_up_in,
            drained.len(),
            verdict.lost.len(),
            verdict.duplicates
        );
        eprintln!("[fault_db] GET /api/messages/failed during the cut: {answers:?}; /api/ready {ready_during}");

        assert!(
            rejected_during_cut > 0 && rejected.len() > rejected_during_cut,
            "dead letters must arrive during and after the cut"
        );
        assert!(
            answers
                .iter()
                .all(|a| a == "503 database_unavailable" || a.starts_with("200")),
            "{answers:?}"
        );
        assert!(db_503 > 0, "the list route never said database_unavailable: {answers:?}");
        assert_eq!(ready_during, 503, "ready during the database outage");
        assert!(stored, "rows after the outage: {rows} of {}", rejected_ids.len());
        assert_eq!(rejected.len(), rejected_ids.len(), "a message was dead-lettered twice");
        assert_eq!((rows, distinct), (rejected_ids.len() as i64, rejected_ids.len() as i64));
        assert_eq!((not_stored, never_rejected), (0, 0), "rows = the rejected messages");
        assert!(verdict.lost.is_empty(), "confirmed, seen nowhere: {:?}", verdict.lost);
        let wrong = unexpected(&samples, &[]);
        assert!(wrong.is_empty(), "publishing needs no database: {wrong:?}");
        let (ready_after, _) = app.ready_status().await;
        assert_eq!(ready_after, 200);
        app.stop().await;
    })
    .await
    .expect("the test ran past its time limit");
}

/// Kills the child if the test ends before it exited: no stray server after a failure.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_publish_load_lets_requests_finish_and_loses_no_confirmed_message() {
    timeout(TEST_LIMIT, async {
        let env = TestEnv::new("fault_term").await;
        // Array settings cannot come from the environment: the client goes in a --config file.
        let config = env.dir.path().join("fault-term.toml");
        std::fs::write(
            &config,
            format!(
                "[[auth.clients]]\nname = \"fault-load\"\ntoken_sha256 = \"{}\"\nscopes = [\"admin\"]\n",
                sha256_hex(ADMIN_TOKEN)
            ),
        )
        .unwrap();
        let log_path = env.dir.path().join("server.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let port = free_port();
        let mut child = ChildGuard(
            std::process::Command::new(env!("CARGO_BIN_EXE_messages-broker"))
                .arg("--config")
                .arg(&config)
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .env("TOPOLOGY_FILE", env.topology_path())
                .env("APP_PORT", port.to_string())
                .env("APP_NAME", &env.settings.app.name)
                .env("DB_DATABASE", &env.settings.database.database)
                .env("MESSAGES_BROKER_APP__SHUTDOWN_TIMEOUT", "10s")
                .env("RUST_LOG", "info,lapin=off,sqlx=warn")
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("the binary starts"),
        );
        let base = format!("http://127.0.0.1:{port}");
        let probe = reqwest::Client::new();
        let ready = eventually(Duration::from_secs(30), || async {
            probe
                .get(format!("{base}/api/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
        let server_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        assert!(ready, "the binary never became ready:\n{}", server_log());

        let load = Load::start(publish_load(
            format!("{base}/api/messages/publish"),
            &env,
            16,
            Duration::from_millis(30),
        ));
        sleep(Duration::from_secs(3)).await;
        let term_at = load.now();
        let kill = std::process::Command::new("kill")
            .args(["-TERM", &child.0.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        // The load goes on until the server is gone and connections are refused.
        let exit = loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                break Some(status);
            }
            if load.now() > term_at + Duration::from_secs(15) {
                break None;
            }
            sleep(Duration::from_millis(20)).await;
        };
        let exited_at = load.now();
        sleep(Duration::from_millis(500)).await;
        let samples = load.stop().await;
        let seen = drain_ids(&env.settings, &env.name("orders_queue"), Duration::from_secs(60)).await;
        let verdict = check(&samples, &seen);

        let after: Vec<Sample> = samples.iter().filter(|s| s.finished >= term_at).cloned().collect();
        let in_flight: Vec<&Sample> = after.iter().filter(|s| s.started < term_at).collect();
        let in_flight_answered = in_flight.iter().filter(|s| s.status.is_some()).count();
        let first_refused = after.iter().filter(|s| s.status.is_none()).map(|s| s.finished).min();
        eprintln!(
            "[fault_term] SIGTERM at {term_at:?}, exit {:?} after {:?}; sent {} confirmed {} statuses {:?}; after SIGTERM {:?}; in flight at SIGTERM {} ({} answered: {:?}); first transport error {:?} after SIGTERM; in queue {} lost {} duplicates {} unconfirmed-but-queued {}",
            exit.and_then(|s| s.code()),
            exited_at - term_at,
            verdict.sent,
            verdict.confirmed,
            verdict.statuses,
            tally(&after),
            in_flight.len(),
            in_flight_answered,
            tally(&in_flight.iter().map(|s| (*s).clone()).collect::<Vec<_>>()),
            first_refused.map(|t| t - term_at),
            seen.len(),
            verdict.lost.len(),
            verdict.duplicates,
            verdict.unconfirmed_seen
        );

        let exit = exit.unwrap_or_else(|| panic!("still running 15 s after SIGTERM:\n{}", server_log()));
        assert_eq!(exit.code(), Some(0), "exit status; log:\n{}", server_log());
        assert!(verdict.confirmed > 100, "the load hardly ran: {:?}", verdict.statuses);
        assert!(
            verdict.lost.is_empty(),
            "confirmed but not in the queue: {:?}",
            &verdict.lost[..verdict.lost.len().min(10)]
        );
        // Before SIGTERM everything is published; after it, real outcomes or connection errors.
        let before: Vec<Sample> = samples.iter().filter(|s| s.finished < term_at).cloned().collect();
        assert!(before.iter().all(Sample::created), "{:?}", tally(&before));
        let wrong: Vec<String> = after
            .iter()
            .filter(|s| s.status.is_some())
            .filter(|s| !s.created() && s.status != Some(503))
            .map(|s| format!("{} {}", s.message_id, s.label()))
            .collect();
        assert!(wrong.is_empty(), "answers after SIGTERM: {wrong:?}");
        assert!(
            first_refused.is_some(),
            "the load never saw the server go away: {:?}",
            tally(&after)
        );
    })
    .await
    .expect("the test ran past its time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_full_replicas_ingest_and_retry_each_dead_letter_exactly_once() {
    timeout(TEST_LIMIT, async {
        let mut env = TestEnv::new("fault_twins").await;
        env.settings.retry.backoff = vec![Duration::from_secs(1); 3];
        env.settings.retry.scan_interval = Duration::from_secs(1);
        // Two full replicas (every role) on one database and one broker: each dead-letter queue
        // has two consumers, two retriers scan the same rows.
        let replicas = [env.spawn().await, env.spawn().await];
        for replica in &replicas {
            replica.wait_ready().await;
        }
        let pool = store::pool(&TestEnv::direct_database(&env.settings));
        let queue = env.name("orders_queue");
        let dlq = format!("{queue}.dlq");
        let rejecter = Rejecter::start(&env.settings, &queue).await;

        const M: usize = 60;
        let started = Instant::now();
        let publishes = (0..M).map(|i| {
            let replica = &replicas[i % 2];
            let mut body = publish_body(&env.name("orders_exchange"), "orders.created");
            body["message_id"] = format!("{}-{i}", env.prefix).into();
            async move { replica.post_json("/api/messages/publish", &body).await.status().as_u16() }
        });
        let statuses = futures_util::future::join_all(publishes).await;
        assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");

        // The consumer keeps failing: original + 3 retries each, then `failed` for a person.
        let all_failed = eventually(Duration::from_secs(60), || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM failed_messages WHERE status = 'failed' AND retry_count = 3",
            )
            .fetch_one(&pool)
            .await
            .unwrap_or(0)
                == M as i64
        })
        .await;
        let settled_in = started.elapsed();
        // Any double retry would bring a fifth copy back by now.
        sleep(Duration::from_secs(3)).await;
        let rejected = rejecter.stop().await;
        let leftover = drain_ids(&env.settings, &queue, Duration::from_secs(10)).await;

        let per_id = occurrences(&rejected);
        let (rows, distinct): (i64, i64) =
            sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT message_id) FROM failed_messages")
                .fetch_one(&pool)
                .await
                .unwrap();
        let by_state: Vec<(String, u32, i64)> = sqlx::query_as(
            "SELECT CAST(status AS CHAR), retry_count, COUNT(*) FROM failed_messages GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        let mut ingested = Vec::new();
        let mut resolved = Vec::new();
        let mut exhausted = Vec::new();
        for replica in &replicas {
            let text = replica.get("/metrics").await.text().await.unwrap();
            ingested.push(metric(
                &text,
                &format!("messages_broker_dead_letters_ingested_total{{queue=\"{dlq}\"}}"),
            ));
            resolved.push(metric(&text, "messages_broker_retries_total{outcome=\"resolved\"}"));
            exhausted.push(metric(&text, "messages_broker_retries_total{outcome=\"exhausted\"}"));
        }
        let not_four: Vec<(&&str, &usize)> = per_id.iter().filter(|(_, n)| **n != 4).take(10).collect();
        eprintln!(
            "[fault_twins] {M} messages; all failed after {settled_in:.1?}: {all_failed}; rejected deliveries {} ({} ids); rows {rows} ({distinct} distinct) {by_state:?}; ingested per replica {ingested:?}, republished per replica {resolved:?}, exhausted {exhausted:?}; left in the queue {}; ids not rejected exactly 4 times: {not_four:?}",
            rejected.len(),
            per_id.len(),
            leftover.len()
        );

        assert!(all_failed, "not every message ended failed after 3 retries: {by_state:?}");
        assert_eq!((rows, distinct), (M as i64, M as i64), "one row per message");
        assert_eq!(per_id.len(), M);
        assert!(not_four.is_empty(), "each id rejected exactly 4 times: {not_four:?}");
        assert_eq!(rejected.len(), M * 4, "original + 3 retries each, no more");
        assert!(leftover.is_empty(), "copies still coming: {}", leftover.len());
        assert_eq!(ingested.iter().sum::<f64>(), (M * 4) as f64, "each dead letter ingested once");
        assert_eq!(resolved.iter().sum::<f64>(), (M * 3) as f64, "each retry republished once");
        assert_eq!(exhausted.iter().sum::<f64>(), M as f64);
        assert!(
            ingested.iter().all(|n| *n > 0.0),
            "both replicas' ingesters took part: {ingested:?}"
        );
        for replica in replicas {
            replica.stop().await;
        }
    })
    .await
    .expect("the test ran past its time limit");
}
