//! Latency of the failure-group reads on a large table: the console's groups page and a group's
//! page, `GET /api/messages/failed/groups` and a filtered page of one group's rows, over 100,000
//! failed messages in 200 groups. Run by
//! `scripts/bench.sh groups` (which starts the service on its bench database), or by hand against
//! a running service:
//!
//! ```sh
//! BENCH_TOKEN=<a read token> cargo run --release --example groups_bench -- \
//!     --url http://127.0.0.1:8011 --database messages_broker_test_bench
//! ```
//!
//! Empties `failed_messages` of `--database` (never point it at a database that matters), stores
//! one row per group through the store (so each has its real fingerprint), copies them with
//! INSERT ... SELECT to `--rows` rows (other numbers in the error, statuses spread, failed_at
//! over 30 days), runs ANALYZE TABLE, then times `--requests` sequential requests of each
//! scenario after a warm-up, and prints p50, p95 and the slowest.
//!
//! A measurement, not a test: exit code 0 even when the goal is missed (the line says MISSED).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::Utc;
use clap::Parser;
use messages_broker::{
    fingerprint,
    settings::Settings,
    store::{
        self,
        failed_messages::{self, NewFailedMessage, PayloadEncoding, Status},
    },
};
use serde_json::json;

/// The console issue's goal: p95 of each read below this.
const GOAL_MS: f64 = 100.0;

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

/// Error texts of the groups; `0000` is where each copy puts its own number.
const ERRORS: [&str; 5] = [
    "order 0000 not found",
    "carrier API timeout after 0000 ms",
    "customer user0000@example.com unknown",
    "stock for sku 0000 below zero at 2026-12-07T10:00:00Z",
    "upstream https://api.example.com/items/0000 answered 503",
];

/// The path of a scenario's i-th request.
type PathOf = Box<dyn Fn(usize) -> String>;

#[derive(Parser)]
#[command(name = "groups_bench", about = "Latency of the failure-group reads on a large table")]
struct Cli {
    /// Base URL of the running service.
    #[arg(long, default_value = "http://127.0.0.1:8011")]
    url: String,
    /// Database of that service (its failed_messages is emptied and refilled).
    #[arg(long, default_value = "messages_broker_test_bench")]
    database: String,
    /// Rows in total (a multiple of --groups).
    #[arg(long, default_value_t = 100_000)]
    rows: u32,
    #[arg(long, default_value_t = 200)]
    groups: u32,
    /// Timed requests per scenario (after 10 warm-up requests).
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Bearer token with the read scope.
    #[arg(long, env = "BENCH_TOKEN", hide_env_values = true)]
    token: String,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.groups == 0 || cli.rows % cli.groups != 0 || cli.rows / cli.groups > 1000 {
        bail!("--rows must be a multiple of --groups, at most 1000 rows per group");
    }
    let mut settings = Settings::default();
    settings.database.database = cli.database.clone();
    let pool = store::pool(&settings.database);
    store::migrate(&pool)
        .await
        .context("Failed to migrate the bench database")?;

    let started = Instant::now();
    let fingerprints = fill(&pool, cli.rows, cli.groups).await?;
    println!(
        "filled failed_messages of {} with {} rows in {} groups in {:.1} s",
        cli.database,
        cli.rows,
        fingerprints.len(),
        started.elapsed().as_secs_f64()
    );

    let http = reqwest::Client::new();
    let session = console_session(&cli.url, &cli.token).await?;
    let first = fingerprints[0].clone();
    let scenarios: Vec<(&str, PathOf)> = vec![
        (
            "console: /console/failures (the groups page)",
            Box::new(|_| "/console/failures".into()),
        ),
        (
            "console: a group's page, status=failed",
            Box::new(move |_| format!("/console/failures/{first}?status=failed")),
        ),
        ("groups, first page", Box::new(|_| "/api/messages/failed/groups".into())),
        (
            "groups, status=failed",
            Box::new(|_| "/api/messages/failed/groups?status=failed".into()),
        ),
        (
            "groups, queue=orders_queue",
            Box::new(|_| "/api/messages/failed/groups?queue=orders_queue".into()),
        ),
        (
            "rows of a group, fingerprint + status=failed",
            Box::new(move |i| {
                format!(
                    "/api/messages/failed?fingerprint={}&status=failed",
                    fingerprints[i % fingerprints.len()]
                )
            }),
        ),
    ];
    println!();
    println!("| request | p50 ms | p95 ms | max ms | goal p95 < {GOAL_MS} ms |");
    println!("|---|---|---|---|---|");
    for (label, path) in &scenarios {
        let mut times = Vec::with_capacity(cli.requests);
        for i in 0..10 + cli.requests {
            let url = format!("{}{}", cli.url.trim_end_matches('/'), path(i));
            let sent = Instant::now();
            // Console pages take the session cookie, the API the bearer token.
            let request = if url.contains("/console/") {
                http.get(&url).header(reqwest::header::COOKIE, &session)
            } else {
                http.get(&url).bearer_auth(&cli.token)
            };
            let response = request.send().await?;
            let status = response.status();
            let body = response.bytes().await?;
            let took = sent.elapsed();
            if !status.is_success() {
                bail!("{url}: {status}: {}", String::from_utf8_lossy(&body));
            }
            if i >= 10 {
                times.push(took);
            }
        }
        times.sort_unstable();
        let (p50, p95, max) = (
            percentile(&times, 0.50),
            percentile(&times, 0.95),
            times[times.len() - 1],
        );
        println!(
            "| {label} | {:.1} | {:.1} | {:.1} | {} |",
            ms(p50),
            ms(p95),
            ms(max),
            if ms(p95) < GOAL_MS { "met" } else { "MISSED" }
        );
    }
    Ok(())
}

/// Logs in to the console as an operator does; the `mb_session=...` cookie of the answer.
async fn console_session(url: &str, token: &str) -> Result<String> {
    let url = url.trim_end_matches('/');
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?
        .post(format!("{url}/console/login"))
        .header(reqwest::header::ORIGIN, url)
        .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("token={token}"))
        .send()
        .await?;
    let cookie = response
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned);
    cookie.with_context(|| format!("console login answered {} without a session", response.status()))
}

/// One row per group through the store (its real fingerprint), then copies in SQL.
async fn fill(pool: &sqlx::MySqlPool, rows: u32, groups: u32) -> Result<Vec<String>> {
    sqlx::query("TRUNCATE TABLE failed_messages").execute(pool).await?;
    let now = Utc::now();
    let seeds: Vec<NewFailedMessage> = (0..groups as usize)
        .map(|g| {
            let service = SERVICES[g % SERVICES.len()];
            NewFailedMessage {
                message_id: format!("bench-{g:04}"),
                exchange: format!("{service}_exchange"),
                routing_key: format!("{service}.created"),
                queue: format!("{service}_queue"),
                payload: json!({"event": format!("{service}.event_{}", g / SERVICES.len()), "data": {"id": g}})
                    .to_string(),
                payload_encoding: PayloadEncoding::Json,
                headers: json!({"published-by": format!("{service}-service")}).to_string(),
                death_history: "[]".into(),
                error_message: format!(
                    "rejected in {service}_queue (death count 1): {}",
                    ERRORS[g % ERRORS.len()]
                ),
                retry_count: 3,
                max_retries: 3,
                status: Status::Failed,
                failed_at: now,
                next_retry_at: None,
            }
        })
        .collect();
    failed_messages::upsert_batch(pool, &seeds).await?;
    // Copies 1..n of each seed: a number of their own in the error (the same fingerprint), a
    // status from a spread (half resolved, a fifth failed...), failed_at over the last 30 days.
    let copies = rows / groups;
    sqlx::query(
        "INSERT INTO failed_messages (message_id, exchange, routing_key, queue, payload, payload_encoding, headers, \
         death_history, error_message, retry_count, max_retries, status, failed_at, next_retry_at, fingerprint, \
         fingerprint_version) \
         SELECT CONCAT(s.message_id, '-', d.n), s.exchange, s.routing_key, s.queue, s.payload, s.payload_encoding, \
         s.headers, s.death_history, REPLACE(s.error_message, '0000', LPAD(d.n, 4, '0')), s.retry_count, \
         s.max_retries, ELT(1 + d.n % 10, 'resolved', 'resolved', 'resolved', 'resolved', 'resolved', 'failed', \
         'failed', 'pending', 'pending', 'retrying'), \
         s.failed_at - INTERVAL (d.n * 5183 + s.id * 7) SECOND, NULL, s.fingerprint, s.fingerprint_version \
         FROM failed_messages s CROSS JOIN ( \
           SELECT a.n + 10 * b.n + 100 * c.n AS n FROM \
           (SELECT 0 AS n UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 \
            UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9) a, \
           (SELECT 0 AS n UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 \
            UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9) b, \
           (SELECT 0 AS n UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 \
            UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9) c \
         ) d WHERE d.n BETWEEN 1 AND ?",
    )
    .bind(copies - 1)
    .execute(pool)
    .await?;
    sqlx::query("ANALYZE TABLE failed_messages").execute(pool).await?;
    let fingerprints: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT fingerprint FROM failed_messages WHERE fingerprint IS NOT NULL")
            .fetch_all(pool)
            .await?;
    if fingerprints.len() != groups as usize || !fingerprints.iter().all(|f| fingerprint::is_fingerprint(f)) {
        bail!("expected {groups} fingerprints, found {}", fingerprints.len());
    }
    Ok(fingerprints)
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
