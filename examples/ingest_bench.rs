//! Dead letters ingested per second into MariaDB, next to the plain batched INSERT rate of the
//! same rows measured in the same round (the database's own ceiling for this table).
//!
//!   cargo run --release --example ingest_bench -- [--messages 20000] [--rounds 3] [--db-pid PID]
//!
//! Each round: fills a DLQ with the dead letters, (e) times the ingester draining it into rows,
//! then (f) times `upsert_batch` of the same rows in chunks of the prefetch, each on an emptied
//! table. Prints each round, then the median and range of the ratio (e)/(f) and the CPU per row
//! of this process and of the database server (`pgrep -x mariadbd` unless `--db-pid`).
//! The service's own JSON log subscriber is installed at its default level, so the ingester's
//! line per dead letter costs here what it costs in production: its lines go to stdout (the
//! section `ingest` of scripts/bench.sh filters them out).
//!
//! Needs the local RabbitMQ and MariaDB of scripts/setup.sh; uses its own database
//! `messages_broker_test_bench_ingest` and queue `bench_ingest.dlq`, removed afterwards.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::Utc;
use clap::Parser;
use lapin::{
    BasicProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldArray, FieldTable},
};
use messages_broker::{
    amqp::connection::{self, Link},
    metrics::Metrics,
    settings::{LogFormat, Settings},
    store::{self, failed_messages},
    telemetry,
    topology::{Queue, QueueRole, QueueType, Topology},
    workers::{
        Worker,
        applier::TopologyState,
        ingester::{Ingester, dead_letter_row_from},
    },
};
use sqlx::{Connection, MySqlPool};
use tokio_util::sync::CancellationToken;

const SOURCE: &str = "bench_ingest";
const DLQ: &str = "bench_ingest.dlq";

#[derive(Parser)]
struct Args {
    /// Dead letters per round (the positional form of older runs is kept).
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    #[arg(hide = true)]
    messages_positional: Option<usize>,
    /// Rounds of (e) then (f).
    #[arg(long, env = "BENCH_ROUNDS", default_value_t = 3)]
    rounds: usize,
    /// The database server's pid, for its CPU per row (default: `pgrep -x mariadbd`, then mysqld).
    #[arg(long)]
    db_pid: Option<u32>,
    /// The broker's pid, for its CPU per row in (e) (default: `pgrep -x beam.smp`).
    #[arg(long)]
    broker_pid: Option<u32>,
}

fn dead_letter_headers() -> FieldTable {
    let mut death = FieldTable::default();
    death.insert("queue".into(), AMQPValue::LongString(SOURCE.into()));
    death.insert("exchange".into(), AMQPValue::LongString("orders_exchange".into()));
    death.insert("reason".into(), AMQPValue::LongString("rejected".into()));
    death.insert("count".into(), AMQPValue::LongLongInt(1));
    death.insert("time".into(), AMQPValue::Timestamp(Utc::now().timestamp() as u64));
    death.insert(
        "routing-keys".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString("orders.created".into())])),
    );
    let mut headers = FieldTable::default();
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
    );
    headers
}

fn payload(i: usize) -> Vec<u8> {
    format!(r#"{{"event":"order.created","data":{{"order_id":{i},"lines":[{{"sku":"A-1","qty":2}}]}},"metadata":{{"service":"orders","version":"1.0"}}}}"#).into_bytes()
}

/// utime + stime of a process, seconds (USER_HZ is 100 on every Linux that matters here).
fn cpu_seconds(pid: &str) -> f64 {
    let read = || -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) may contain spaces: count fields after its closing parenthesis.
        let fields: Vec<&str> = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some((utime + stime) as f64 / 100.0)
    };
    read().unwrap_or(f64::NAN)
}

fn pid_of(names: &[&str]) -> Option<u32> {
    names.iter().find_map(|name| {
        let out = std::process::Command::new("pgrep")
            .args(["-o", "-x", name])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    })
}

/// Wall seconds and CPU seconds of this process and of the database server over `work`.
struct Measured {
    secs: f64,
    own_cpu: f64,
    db_cpu: f64,
    broker_cpu: f64,
}

async fn measure<F: Future<Output = anyhow::Result<()>>>(
    db_pid: &str,
    broker_pid: &str,
    work: F,
) -> anyhow::Result<Measured> {
    let (own, db, broker) = (cpu_seconds("self"), cpu_seconds(db_pid), cpu_seconds(broker_pid));
    let started = Instant::now();
    work.await?;
    Ok(Measured {
        secs: started.elapsed().as_secs_f64(),
        own_cpu: cpu_seconds("self") - own,
        db_cpu: cpu_seconds(db_pid) - db,
        broker_cpu: cpu_seconds(broker_pid) - broker,
    })
}

struct Bench {
    settings: Settings,
    pool: MySqlPool,
    conn: Arc<lapin::Connection>,
    headers: FieldTable,
    total: usize,
}

impl Bench {
    async fn fill_queue(&self, round: usize) -> anyhow::Result<()> {
        let channel = self.conn.create_channel().await?;
        channel
            .queue_declare(
                DLQ.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        let mut confirms = Vec::with_capacity(self.total);
        for i in 0..self.total {
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(format!("bench-{round}-{i}").as_str().into())
                .with_headers(self.headers.clone());
            confirms.push(
                channel
                    .basic_publish(
                        "".into(),
                        DLQ.into(),
                        BasicPublishOptions::default(),
                        &payload(i),
                        properties,
                    )
                    .await?,
            );
        }
        for confirm in confirms {
            confirm.await?;
        }
        channel.close(200, "filled".into()).await?;
        Ok(())
    }

    async fn empty_table(&self) -> anyhow::Result<()> {
        sqlx::query("TRUNCATE TABLE failed_messages")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// (e): the ingester role drains the queue; done when its counter (raised after each ack)
    /// reaches the total.
    async fn ingest(&self) -> anyhow::Result<()> {
        let topology = Topology {
            exchanges: vec![],
            queues: vec![Queue {
                name: DLQ.into(),
                durable: true,
                auto_delete: false,
                queue_type: QueueType::Classic,
                message_ttl: None,
                max_length: None,
                overflow: None,
                dead_letter_exchange: None,
                max_priority: None,
                delivery_limit: None,
                role: QueueRole::DeadLetter {
                    source_queue: SOURCE.into(),
                },
            }],
            bindings: vec![],
            rate_limits: vec![],
            users: vec![],
            schemas: Default::default(),
        };
        let (_link_tx, link) = tokio::sync::watch::channel(Some(Link {
            connection: self.conn.clone(),
            generation: 1,
        }));
        let (_state_tx, topology_state) = tokio::sync::watch::channel(TopologyState::Applied { generation: 1 });
        let (_migrated_tx, db_migrated) = tokio::sync::watch::channel(true);
        let metrics = Arc::new(Metrics::new());
        let ingester = Ingester {
            settings: Arc::new(self.settings.clone()),
            topology: Arc::new(topology),
            pool: self.pool.clone(),
            metrics: metrics.clone(),
            link,
            topology_state,
            db_migrated,
        };
        let cancel = CancellationToken::new();
        let task = tokio::spawn(ingester.run(cancel.clone()));
        // The counter rather than COUNT(*): polling the table would load the database under test.
        let ingested = metrics.dead_letters_ingested_total.with_label_values(&[DLQ]);
        while ingested.get() < self.total as u64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cancel.cancel();
        task.await??;
        Ok(())
    }

    /// (f): the same rows (own message ids), prepared beforehand, in chunks of the prefetch.
    fn plain_rows(&self) -> Vec<failed_messages::NewFailedMessage> {
        (0..self.total)
            .map(|i| {
                let properties = BasicProperties::default()
                    .with_message_id(format!("plain-{i}").as_str().into())
                    .with_headers(self.headers.clone());
                dead_letter_row_from(&properties, &payload(i), "", DLQ, SOURCE, &self.settings, Utc::now())
            })
            .collect()
    }

    async fn insert(&self, rows: &[failed_messages::NewFailedMessage]) -> anyhow::Result<()> {
        for chunk in rows.chunks(usize::from(self.settings.ingest.prefetch)) {
            failed_messages::upsert_batch(&self.pool, chunk).await?;
        }
        Ok(())
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let total = args.messages_positional.unwrap_or(args.messages);
    let rounds = args.rounds.max(1);
    let pid = |given: Option<u32>, names: &[&str]| {
        given
            .or_else(|| pid_of(names))
            .map_or_else(|| "none".to_owned(), |p| p.to_string())
    };
    let db_pid = pid(args.db_pid, &["mariadbd", "mysqld"]);
    let broker_pid = pid(args.broker_pid, &["beam.smp"]);
    telemetry::init(LogFormat::Json);

    let mut settings = Settings::default();
    settings.database.database = "messages_broker_test_bench_ingest".into();
    let mut admin = sqlx::MySqlConnection::connect_with(&settings.database.connect_options().database("")).await?;
    sqlx::raw_sql(
        "DROP DATABASE IF EXISTS messages_broker_test_bench_ingest; CREATE DATABASE messages_broker_test_bench_ingest",
    )
    .execute(&mut admin)
    .await?;
    let pool = store::pool(&settings.database);
    store::migrate(&pool).await?;
    let conn = Arc::new(connection::connect(&settings.rabbitmq, "ingest bench").await?);
    conn.create_channel()
        .await?
        .queue_delete(DLQ.into(), QueueDeleteOptions::default())
        .await
        .ok();
    let bench = Bench {
        settings,
        pool,
        conn,
        headers: dead_letter_headers(),
        total,
    };
    let (building, started) = (cpu_seconds("thread-self"), Instant::now());
    let rows = bench.plain_rows();
    let (building, built_in) = (cpu_seconds("thread-self") - building, started.elapsed());
    let prefetch = bench.settings.ingest.prefetch;

    println!(
        "{total} dead letters per round, {rounds} rounds, database pid {db_pid}, broker pid {broker_pid}; CPU in us per row"
    );
    println!(
        "building the rows (dead_letter_row_from, one thread): {:.1} us CPU per row ({:.1} us wall)",
        building * 1e6 / total as f64,
        built_in.as_secs_f64() * 1e6 / total as f64
    );
    println!("round  (e) ingester rows/s  cpu own   db broker  (f) INSERT x{prefetch} rows/s  cpu own   db   (e)/(f)");
    let (mut ratios, mut e_rates) = (Vec::new(), Vec::new());
    let (mut e_own, mut e_db, mut e_broker) = (Vec::new(), Vec::new(), Vec::new());
    let (mut f_own, mut f_db) = (Vec::new(), Vec::new());
    let per_row = |cpu: f64| cpu * 1e6 / total as f64;
    for round in 1..=rounds {
        bench.fill_queue(round).await?;
        bench.empty_table().await?;
        let e = measure(&db_pid, &broker_pid, bench.ingest()).await?;
        bench.empty_table().await?;
        let f = measure(&db_pid, &broker_pid, bench.insert(&rows)).await?;
        let (e_rate, f_rate) = (total as f64 / e.secs, total as f64 / f.secs);
        println!(
            "{round:>5}  {e_rate:>19.0}  {:>7.0} {:>4.0} {:>6.0}  {f_rate:>24.0}  {:>7.0} {:>4.0}   {:>6.2}",
            per_row(e.own_cpu),
            per_row(e.db_cpu),
            per_row(e.broker_cpu),
            per_row(f.own_cpu),
            per_row(f.db_cpu),
            e_rate / f_rate
        );
        ratios.push(e_rate / f_rate);
        e_rates.push(e_rate);
        e_own.push(per_row(e.own_cpu));
        e_db.push(per_row(e.db_cpu));
        e_broker.push(per_row(e.broker_cpu));
        f_own.push(per_row(f.own_cpu));
        f_db.push(per_row(f.db_cpu));
    }
    let (low, high) = ratios
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), r| (l.min(*r), h.max(*r)));
    let (ratio, rate) = (median(&mut ratios), median(&mut e_rates));
    let mark = |ok: bool| if ok { "ok" } else { "MISSED" };
    println!(
        "median CPU per row: (e) own {:.0} us, database {:.0} us, broker {:.0} us; (f) own {:.0} us, database {:.0} us",
        median(&mut e_own),
        median(&mut e_db),
        median(&mut e_broker),
        median(&mut f_own),
        median(&mut f_db)
    );
    println!(
        "ingest: {rate:.0} dead letters/s (median; goal >= 2000: {})   (e)/(f) = {ratio:.2} median, range {low:.2}..{high:.2} (goal >= 0.80: {})",
        mark(rate >= 2000.0),
        mark(ratio >= 0.8)
    );

    bench
        .conn
        .create_channel()
        .await?
        .queue_delete(DLQ.into(), QueueDeleteOptions::default())
        .await?;
    sqlx::raw_sql("DROP DATABASE messages_broker_test_bench_ingest")
        .execute(&mut admin)
        .await?;
    Ok(())
}
