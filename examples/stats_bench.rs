//! CPU cost of one stats poll (`workers::stats::poll_once`) with many queues on the vhost.
//! Run by `scripts/bench.sh stats`, or by hand:
//!
//! ```sh
//! cargo run --release --example stats_bench -- --queues 200 --polls 50 [--broker-pid PID]
//! ```
//!
//! Declares `--queues` queues (`bench_stats_q_000`...) with one message each, so that the
//! management API reports them with their message stats, waits until it lists them all, runs
//! `--polls` polls after a warm-up and divides this process's CPU time (user + system, from
//! `/proc/self/stat`) by the number of polls. The broker's CPU for the same polls (it renders the
//! JSON) is printed too when its pid is given. The queues are deleted at the end.
//!
//! A measurement, not a test: exit code 0 even when the goal is missed (the line says MISSED).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use lapin::{
    BasicProperties,
    options::{BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::FieldTable,
};
use messages_broker::{
    amqp::{connection, management::ManagementClient},
    settings::{Secret, Settings},
    workers::stats::{Source, poll_once},
};

/// The goal of issue 5: a poll of 200 queues costs less than this much CPU.
const GOAL_MS: f64 = 50.0;

/// Linux's USER_HZ: /proc reports CPU times in hundredths of a second on every mainstream ABI.
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Parser)]
#[command(name = "stats_bench", about = "CPU cost of one queue-stats poll")]
struct Cli {
    /// Queues to create for the run (the vhost's other queues are polled too).
    #[arg(long, default_value_t = 200)]
    queues: usize,
    /// Measured polls (after 3 warm-up polls).
    #[arg(long, default_value_t = 50)]
    polls: u32,
    /// Management API base URL (default http://127.0.0.1:15672).
    #[arg(long, env = "RABBITMQ_MANAGEMENT_URL")]
    management: Option<String>,
    /// Broker user, for AMQP and the management API.
    #[arg(long, env = "RABBITMQ_USER", default_value = "guest")]
    user: String,
    /// Broker password (prefer the environment variable to the flag).
    #[arg(long, env = "RABBITMQ_PASSWORD", default_value = "guest", hide_env_values = true)]
    password: String,
    /// The broker's pid, to report its CPU per poll as well.
    #[arg(long)]
    broker_pid: Option<u32>,
}

/// user + system CPU time of a process, from `/proc/<pid>/stat`.
fn cpu_time(pid: &str) -> Result<Duration> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("read /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).context("malformed stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // fields[0] is field 3 (state): utime is field 14, stime field 15.
    let ticks: u64 =
        fields.get(11).context("no utime")?.parse::<u64>()? + fields.get(12).context("no stime")?.parse::<u64>()?;
    Ok(Duration::from_secs_f64(ticks as f64 / TICKS_PER_SECOND))
}

fn queue_name(i: usize) -> String {
    format!("bench_stats_q_{i:03}")
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut settings = Settings::default();
    if let Some(url) = &cli.management {
        settings.rabbitmq.management_url = url.clone();
    }
    settings.rabbitmq.user = cli.user.clone();
    settings.rabbitmq.password = Secret::new(cli.password.clone());
    let management = ManagementClient::new(&settings.rabbitmq);
    let topology = messages_broker::app::load_topology(&settings)
        .map_err(|errors| anyhow::anyhow!("topology.toml: {}", errors[0]))?;

    let conn = connection::connect(&settings.rabbitmq, "stats bench")
        .await
        .context("connect to RabbitMQ")?;
    let channel = conn.create_channel().await?;
    for i in 0..cli.queues {
        let name = queue_name(i);
        channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel
            .basic_publish(
                "".into(),
                name.as_str().into(),
                BasicPublishOptions::default(),
                b"{}",
                BasicProperties::default(),
            )
            .await?;
    }

    // The management API lists new queues with their counts a few seconds later.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = management
            .queues()
            .await?
            .iter()
            .filter(|q| q.name.starts_with("bench_stats_q_") && q.messages == 1)
            .count();
        if listed >= cli.queues {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the management API lists {listed} of the {} bench queues after 60 s",
                cli.queues
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let mut seen = 0;
    for _ in 0..3 {
        let snapshot = poll_once(&management, None, &topology, None).await;
        if snapshot.source != Source::ManagementApi {
            bail!(
                "the poll did not read the management API: {:?}",
                snapshot.management_error
            );
        }
        seen = snapshot.queues.len();
    }
    let broker = cli.broker_pid.map(|pid| pid.to_string());
    let broker_before = broker.as_deref().map(cpu_time).transpose()?;
    let before = cpu_time("self")?;
    let started = Instant::now();
    for _ in 0..cli.polls {
        let snapshot = poll_once(&management, None, &topology, None).await;
        std::hint::black_box(&snapshot);
    }
    let wall = started.elapsed();
    let cpu = cpu_time("self")? - before;
    let broker_cpu = match (broker.as_deref(), broker_before) {
        (Some(pid), Some(before)) => Some(cpu_time(pid)? - before),
        _ => None,
    };

    for i in 0..cli.queues {
        let _ = channel
            .queue_delete(queue_name(i).as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "stats bench done".into()).await;

    let per_poll = |d: Duration| d.as_secs_f64() * 1000.0 / f64::from(cli.polls);
    let ms = per_poll(cpu);
    let verdict = if ms < GOAL_MS { "OK" } else { "MISSED" };
    println!(
        "stats poll of {} queues: {ms:.2} ms CPU (goal < {GOAL_MS:.0} ms) {verdict}",
        cli.queues
    );
    println!(
        "  {seen} queues on the vhost in each poll, {} polls, {:.2} ms wall per poll{}",
        cli.polls,
        per_poll(wall),
        broker_cpu
            .map(|d| format!(", broker {:.2} ms CPU per poll (renders the JSON)", per_poll(d)))
            .unwrap_or_default()
    );
    Ok(())
}
