//! The database's CPU per audited message: rows fed to the audit writer (`workers::audit`, its
//! channel and its batches) at a publish-like rate, mariadbd's CPU (utime+stime) per row written,
//! next to two references measured in the same run: the same writer into a table of the seed's
//! layout (`migrations/20261126000002_create_message_logs.sql` alone), and the seed's statement
//! (one INSERT per batch, every placeholder bound, `status` included) into that table.
//!
//!   cargo run --release --example audit_bench -- [--port 3306] [--rows 100000] [--rounds 3]
//!       [--rate 10000] [--db-pid PID]
//!
//! Uses the databases `messages_broker_test_bench_audit` and `..._audit_seed`, created and dropped
//! here. Point `--port` at a private server to keep other processes' queries out of its CPU.

use std::{sync::Arc, time::Duration};

use clap::Parser;
use messages_broker::{
    metrics::Metrics,
    settings::Settings,
    store::{self, message_logs::NewMessageLog},
    workers::audit,
};
use sqlx::{Connection, MySqlPool, QueryBuilder};
use tokio_util::sync::CancellationToken;

const DATABASE: &str = "messages_broker_test_bench_audit";
const SEED_DATABASE: &str = "messages_broker_test_bench_audit_seed";
/// The seed's DDL of the table, the reference layout.
const SEED_TABLE: &str = include_str!("../migrations/20261126000002_create_message_logs.sql");

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 3306)]
    port: u16,
    /// Rows per phase and round.
    #[arg(long, default_value_t = 100_000)]
    rows: usize,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Rows per second fed to the writer (scenario (b) of the publish bench runs near 10,000);
    /// 0 feeds them all at once (full batches of 500).
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// mariadbd's pid (default: the oldest mariadbd, else mysqld).
    #[arg(long)]
    db_pid: Option<u32>,
}

/// utime+stime of a process, in ticks of 10 ms.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which may hold spaces: state is the first, utime the 12th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

fn database_pid() -> Option<u32> {
    ["mariadbd", "mysqld"].into_iter().find_map(|name| {
        let out = std::process::Command::new("pgrep")
            .args(["-o", "-x", name])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    })
}

/// A UUIDv7 as the API generates for a message without its own id.
fn message_id() -> String {
    let millis = chrono::Utc::now().timestamp_millis() as u64;
    let mut random = [0u8; 10];
    fastrand::fill(&mut random);
    uuid::Builder::from_unix_timestamp_millis(millis, &random)
        .into_uuid()
        .to_string()
}

/// ~330-byte order.created events, with the metadata the API writes (client and traceparent).
fn rows(n: usize) -> Vec<NewMessageLog> {
    (0..n)
        .map(|i| NewMessageLog {
            message_id: message_id(),
            exchange: "orders_exchange".into(),
            routing_key: "orders.created".into(),
            payload: format!(
                r#"{{"event":"order.created","data":{{"order_id":{i},"customer_id":"c-{}","total":"129.90","currency":"EUR","lines":[{{"sku":"A-1","qty":2,"price":"39.95"}},{{"sku":"B-7","qty":1,"price":"50.00"}}],"shipping":{{"country":"DE","method":"standard"}}}},"timestamp":"2026-12-07T05:00:00Z","metadata":{{"service":"orders-service","version":"1.0"}}}}"#,
                i % 977
            )
            .into(),
            published_at: chrono::Utc::now(),
            metadata: format!(
                r#"{{"client":"orders-service","headers":{{"traceparent":"00-{:032x}-{:016x}-01"}}}}"#,
                fastrand::u128(..),
                fastrand::u64(..)
            ),
        })
        .collect()
}

/// The seed's INSERT: one statement per batch, so one statement text per batch size.
async fn seed_insert(pool: &MySqlPool, rows: &[NewMessageLog]) -> Result<(), sqlx::Error> {
    let mut query = QueryBuilder::new(
        "INSERT IGNORE INTO message_logs (message_id, exchange, routing_key, payload, status, published_at, metadata) ",
    );
    query.push_values(rows, |mut row, log| {
        row.push_bind(&log.message_id)
            .push_bind(&log.exchange)
            .push_bind(&log.routing_key)
            .push_bind(std::str::from_utf8(&log.payload).unwrap_or_default())
            .push_bind("published")
            .push_bind(log.published_at.naive_utc())
            .push_bind(&log.metadata);
    });
    query.build().execute(pool).await.map(|_| ())
}

/// The seed's writer loop (the batching of `workers::audit::run`) around `seed_insert`.
async fn seed_writer(pool: MySqlPool, mut rx: tokio::sync::mpsc::Receiver<NewMessageLog>, metrics: Arc<Metrics>) {
    let mut batch = Vec::with_capacity(500);
    while rx.recv_many(&mut batch, 500).await > 0 {
        if batch.len() < 500 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            while batch.len() < 500 {
                let Ok(row) = rx.try_recv() else { break };
                batch.push(row);
            }
        }
        seed_insert(&pool, &batch).await.expect("seed insert");
        metrics.audit_written_total.inc_by(batch.len() as u64);
        batch.clear();
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Phase {
    /// This branch's layout and writer.
    Current,
    /// The seed's layout, this branch's writer.
    SeedLayout,
    /// The seed's layout and statement.
    Seed,
}

impl Phase {
    fn label(self) -> &'static str {
        match self {
            Phase::Current => "(new)  current layout, audit writer",
            Phase::SeedLayout => "(ref)  seed layout, audit writer",
            Phase::Seed => "(seed) seed layout, seed statement",
        }
    }
}

struct Measured {
    db_us: f64,
    bench_us: f64,
    prepares: f64,
}

async fn prepares(pool: &MySqlPool) -> u64 {
    let row: Option<(String, String)> = sqlx::query_as("SHOW GLOBAL STATUS LIKE 'Com_stmt_prepare'")
        .fetch_optional(pool)
        .await
        .unwrap_or(None);
    row.and_then(|(_, v)| v.parse().ok()).unwrap_or(0)
}

/// Feeds `data` to a writer at `rate` rows/s, waits until every row is written and mariadbd is
/// idle again (its page flushing belongs to the rows), and answers the CPU per row.
async fn measure(phase: Phase, pool: &MySqlPool, data: &[NewMessageLog], rate: u64, db_pid: u32) -> Measured {
    sqlx::query("TRUNCATE TABLE message_logs")
        .execute(pool)
        .await
        .expect("truncate");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = Arc::new(Metrics::new());
    let (sink, rx) = audit::channel(data.len(), metrics.clone());
    let cancel = CancellationToken::new();
    let writer = match phase {
        Phase::Seed => tokio::spawn(seed_writer(pool.clone(), rx, metrics.clone())),
        _ => tokio::spawn(audit::run(pool.clone(), rx, metrics.clone(), cancel.clone())),
    };
    let (prepared, db, bench) = (prepares(pool).await, cpu_ticks(db_pid), cpu_ticks(std::process::id()));
    // 1 ms ticks: the writer sees the trickle of single publishes, not one burst.
    let per_tick = if rate == 0 {
        data.len()
    } else {
        (rate as usize / 1000).max(1)
    };
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    for chunk in data.chunks(per_tick) {
        tick.tick().await;
        chunk.iter().for_each(|row| sink.record(row.clone()));
    }
    while metrics.audit_written_total.get() < data.len() as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let bench_ticks = cpu_ticks(std::process::id()) - bench;
    for _ in 0..20 {
        let before = cpu_ticks(db_pid);
        tokio::time::sleep(Duration::from_millis(250)).await;
        if cpu_ticks(db_pid) - before <= 1 {
            break;
        }
    }
    let db_ticks = cpu_ticks(db_pid) - db;
    let prepared = prepares(pool).await - prepared;
    drop(sink);
    cancel.cancel();
    writer.await.expect("writer");
    let per_row = |ticks: u64| ticks as f64 * 10_000.0 / data.len() as f64;
    Measured {
        db_us: per_row(db_ticks),
        bench_us: per_row(bench_ticks),
        prepares: prepared as f64 * 1000.0 / data.len() as f64,
    }
}

fn median_range(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (values[values.len() / 2], values[0], values[values.len() - 1])
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let db_pid = args
        .db_pid
        .or_else(database_pid)
        .ok_or_else(|| anyhow::anyhow!("no mariadbd or mysqld running"))?;
    let mut settings = Settings::default();
    settings.database.host = args.host.clone();
    settings.database.port = args.port;
    settings.database.database = DATABASE.into();
    let mut admin = sqlx::MySqlConnection::connect_with(&settings.database.connect_options().database("")).await?;
    for name in [DATABASE, SEED_DATABASE] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name}"
        )))
        .execute(&mut admin)
        .await?;
    }
    let current = store::pool(&settings.database);
    store::migrate(&current).await?;
    settings.database.database = SEED_DATABASE.into();
    let seed = store::pool(&settings.database);
    sqlx::raw_sql(SEED_TABLE).execute(&seed).await?;

    println!(
        "audit: {} rows per phase, {} rounds, fed at {} rows/s, mariadbd pid {db_pid}, port {}",
        args.rows,
        args.rounds,
        if args.rate == 0 {
            "once".to_string()
        } else {
            args.rate.to_string()
        },
        args.port
    );
    let phases = [Phase::Current, Phase::SeedLayout, Phase::Seed];
    let mut results: Vec<Vec<Measured>> = phases.iter().map(|_| Vec::new()).collect();
    for round in 0..args.rounds {
        let data = rows(args.rows);
        // Rotated per round: whatever drifts on the machine falls on every phase alike.
        for k in 0..phases.len() {
            let i = (k + round) % phases.len();
            let pool = if phases[i] == Phase::Current { &current } else { &seed };
            results[i].push(measure(phases[i], pool, &data, args.rate, db_pid).await);
        }
    }
    println!(
        "{:<38} {:>24} {:>16} {:>16}",
        "phase", "mariadbd us/row (range)", "bench us/row", "prepares/1k rows"
    );
    let mut medians = Vec::new();
    for (phase, measured) in phases.iter().zip(&results) {
        let (db, low, high) = median_range(&mut measured.iter().map(|m| m.db_us).collect::<Vec<_>>());
        let (bench, _, _) = median_range(&mut measured.iter().map(|m| m.bench_us).collect::<Vec<_>>());
        let (prepared, _, _) = median_range(&mut measured.iter().map(|m| m.prepares).collect::<Vec<_>>());
        println!(
            "{:<38} {:>8.2} ({:>5.2}-{:>5.2}) {:>16.2} {:>16.1}",
            phase.label(),
            db,
            low,
            high,
            bench,
            prepared
        );
        medians.push(db);
    }
    let mark = |ok: bool| if ok { "ok" } else { "MISSED" };
    println!(
        "audit: {:.2} us of mariadbd CPU per row (goal <= 5: {}), {:.2} with the seed's layout, {:.2} as seeded; new/seed = {:.2}",
        medians[0],
        mark(medians[0] <= 5.0),
        medians[1],
        medians[2],
        medians[0] / medians[2]
    );
    current.close().await;
    seed.close().await;
    for name in [DATABASE, SEED_DATABASE] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE {name}")))
            .execute(&mut admin)
            .await?;
    }
    Ok(())
}
