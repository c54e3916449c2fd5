//! Benchmarks of `scripts/bench.sh`. Each section is a subcommand; `scripts/bench.sh` starts the
//! service and runs them. Measurements only: the exit code is 0 even when a goal is missed (the
//! printout says `MISSED`); it is non-zero only when the benchmark itself cannot run.
//!
//! `bench publish` measures, one after the other and against the same queue, with a drain consumer
//! keeping that queue empty for the whole run:
//!
//! - (a) the broker's ceiling: persistent, mandatory, confirmed publishes straight over AMQP, one
//!   connection, one channel, a window of 256 publishes in flight, the same properties as the
//!   service's messages;
//! - (a32) the same with a window of 32: the most (b) can ever have in flight, so its ceiling;
//! - (b) `POST /api/messages/publish` of the service, 32 connections each sending one request at a
//!   time;
//! - (c) `POST /api/messages/publish/batch`, 4 connections, 250 messages per request;
//! - (d) RabbitMQ's management API publish endpoint (the REST publish users have without the
//!   service), 32 connections;
//! - (r) `POST /api/messages/request`, 32 connections each waiting for its reply: the drain
//!   consumer is the responder (it echoes each request), so a message is a full round trip.
//! - (b-1k) and (b-schema): (b) with a typical 1 KiB event (`scripts/bench/order.created.v2.json`),
//!   once as an event without a schema and once as `order.created`, whose `data` the service
//!   checks against `schemas/orders/order.created.v2.json` (`[[schemas]]` of the bench topology):
//!   the cost of schema validation, as the ratio (b-schema)/(b-1k) of the same rounds.
//!
//! - (b-paced) (b) at a fixed rate (`--paced-rate`, 5,000 requests/s over the 32 connections):
//!   CPU per message depends on the load (at full speed more requests share each thread
//!   wake-up), so builds compare best at the same rate; its msg/s is the rate, not a capacity;
//! - (h) the HTTP floor: (b)'s requests against `bench http-floor`, a bare hyper HTTP/1.1 server
//!   (its own process, same runtime as the service) that reads the body and answers a fixed 201:
//!   what one HTTP exchange costs a server on this machine, before any work of the service.
//!
//! Scenarios run in interleaved rounds (3 by default, more while the goal ratios still spread by
//! more than 20 %, up to `--max-rounds`; the printout gives the median and the range).
//! Each scenario runs a warm-up (1 s, not counted), then a measured window (10 s). A request or a
//! publish counts when it completes inside the window; msg/s counts successful messages only and the
//! latency percentiles are those of the successful requests. The service's resident memory is
//! sampled every 100 ms during (b) and (c); CPU use (in cores) of the bench, the service and the
//! broker is measured over each window, since all three share the machine.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use base64::{Engine, engine::general_purpose::STANDARD};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use futures_util::{StreamExt, stream::FuturesUnordered};
use http_body_util::{BodyExt, Full};
use hyper::{
    Request, StatusCode, Uri,
    client::conn::http1::SendRequest,
    header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue},
};
use hyper_util::rt::TokioIo;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind, options::*,
    types::FieldTable,
};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(
    name = "bench",
    about = "Benchmarks of messages-broker (run through scripts/bench.sh)"
)]
struct Cli {
    /// Worker threads of the bench's own runtime (it shares the machine with the service and the broker).
    #[arg(long, default_value_t = 2, global = true)]
    threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Publishing: AMQP ceiling, POST publish, POST publish/batch, management API publish.
    Publish(Box<PublishArgs>),
    /// The HTTP floor of scenario (h): answers every request with a fixed 201 JSON body.
    HttpFloor {
        #[arg(long)]
        port: u16,
    },
}

#[derive(Args)]
struct PublishArgs {
    /// Base URL of the service.
    #[arg(long, default_value = "http://127.0.0.1:18011")]
    url: String,
    /// Bearer token of a client with the `publish` scope (needed by scenarios b and c).
    #[arg(long, env = "BENCH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// AMQP URI of the broker, for the ceiling (a) and the drain consumer.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp: String,
    /// Base URL of RabbitMQ's management API.
    #[arg(long, default_value = "http://127.0.0.1:15672")]
    management: String,
    #[arg(long, default_value = "guest")]
    management_user: String,
    #[arg(
        long,
        default_value = "guest",
        env = "BENCH_MANAGEMENT_PASSWORD",
        hide_env_values = true
    )]
    management_password: String,
    /// Virtual host of the exchange (for the management API path).
    #[arg(long, default_value = "/")]
    vhost: String,
    #[arg(long, default_value = "bench_exchange")]
    exchange: String,
    #[arg(long, default_value = "bench.tick")]
    routing_key: String,
    /// The queue the routing key reaches; the drain consumer empties it.
    #[arg(long, default_value = "bench_queue")]
    queue: String,
    /// Measured seconds per scenario.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Rounds of every scenario, interleaved; the printout gives medians and ranges (runs on a
    /// shared 2-core machine vary by 20% from one to the next).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// More rounds, up to this many, while a goal ratio's range is wider than 20 % of its median.
    #[arg(long, default_value_t = 6)]
    max_rounds: usize,
    /// Base URL of the HTTP floor server (`bench http-floor`) for scenario (h).
    #[arg(long)]
    floor_url: Option<String>,
    /// Pid of the HTTP floor server: its CPU per request.
    #[arg(long)]
    floor_pid: Option<u32>,
    /// Warm-up seconds before each measured window (not counted).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Publishes in flight in the AMQP ceiling (a).
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Requests per second of (b-paced), spread over its connections.
    #[arg(long, default_value_t = 5000.0)]
    paced_rate: f64,
    /// Concurrent HTTP connections of (b) and (d).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Messages per batch request (c); the endpoint accepts up to 500.
    #[arg(long, default_value_t = 250)]
    batch_size: usize,
    /// Concurrent connections of the batch scenario (c).
    #[arg(long, default_value_t = 4)]
    batch_connections: usize,
    /// Pid of the service: peak RSS during (b) and (c), CPU use per scenario.
    #[arg(long)]
    pid: Option<u32>,
    /// Pid of the broker (beam.smp): CPU use per scenario.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Pid of the database server (the service writes its audit trail there): CPU use per scenario.
    #[arg(long)]
    db_pid: Option<u32>,
    /// Scenarios to run, among a,a32,b,b-paced,c,d,r,b-1k,b-schema,h.
    #[arg(long, value_delimiter = ',', default_value = "a,a32,b,b-paced,c,d,r,b-1k,b-schema,h")]
    scenarios: Vec<String>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Publish(args) => publish(*args).await,
            Command::HttpFloor { port } => http_floor(port).await,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Measurement bookkeeping

/// The measured part of a scenario; what completes before `start` is warm-up, after `end` is tail.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn after_warmup(warmup: Duration, duration: Duration) -> Self {
        let start = Instant::now() + warmup;
        Self {
            start,
            end: start + duration,
        }
    }

    fn secs(&self) -> f64 {
        (self.end - self.start).as_secs_f64()
    }
}

/// What one request (or one AMQP publish) produced.
struct Attempt {
    ok: u64,
    errors: Vec<(String, u64)>,
    /// No HTTP answer at all (refused, reset, timeout): the worker pauses briefly before retrying.
    transport: bool,
}

impl Attempt {
    fn ok(n: u64) -> Self {
        Self {
            ok: n,
            errors: Vec::new(),
            transport: false,
        }
    }

    fn failed(kind: impl Into<String>, n: u64) -> Self {
        Self {
            ok: 0,
            errors: vec![(kind.into(), n)],
            transport: false,
        }
    }

    fn transport(kind: String, n: u64) -> Self {
        Self {
            transport: true,
            ..Self::failed(format!("transport: {kind}"), n)
        }
    }

    fn error_count(&self) -> u64 {
        self.errors.iter().map(|(_, n)| n).sum()
    }
}

#[derive(Default)]
struct Tally {
    ok: u64,
    requests: u64,
    /// Latency of each successful request completed in the window, microseconds.
    latencies_us: Vec<u32>,
    errors: BTreeMap<String, u64>,
    warmup_errors: u64,
}

impl Tally {
    fn record(&mut self, window: &Window, started: Instant, done: Instant, attempt: Attempt) {
        if done < window.start {
            self.warmup_errors += attempt.error_count();
            return;
        }
        if done > window.end {
            return;
        }
        self.requests += 1;
        self.ok += attempt.ok;
        if attempt.ok > 0 {
            let micros = (done - started).as_micros().min(u32::MAX as u128) as u32;
            self.latencies_us.push(micros);
        }
        for (kind, n) in attempt.errors {
            *self.errors.entry(kind).or_default() += n;
        }
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.requests += other.requests;
        self.latencies_us.extend(other.latencies_us);
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        self.warmup_errors += other.warmup_errors;
    }
}

/// One line of the table, plus the details printed under it.
struct Summary {
    label: String,
    secs: f64,
    ok: u64,
    requests: u64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    errors: BTreeMap<String, u64>,
    warmup_errors: u64,
    cpu: Vec<(&'static str, Option<f64>)>,
    service_peak_rss_kib: Option<u64>,
}

impl Summary {
    fn new(label: String, window: &Window, mut tally: Tally, cpu: Vec<(&'static str, Option<f64>)>) -> Self {
        tally.latencies_us.sort_unstable();
        let pick = |q: f64| percentile(&tally.latencies_us, q).map(|us| f64::from(us) / 1000.0);
        Self {
            label,
            secs: window.secs(),
            ok: tally.ok,
            requests: tally.requests,
            p50_ms: pick(0.50),
            p99_ms: pick(0.99),
            errors: tally.errors,
            warmup_errors: tally.warmup_errors,
            cpu,
            service_peak_rss_kib: None,
        }
    }

    fn rate(&self) -> f64 {
        self.ok as f64 / self.secs
    }

    /// CPU microseconds `process` spent per successful message (`None`: not watched, or idle).
    fn cpu_us_per_message(&self, process: &str) -> Option<f64> {
        let cores = self.cpu.iter().find(|(name, _)| *name == process)?.1?;
        (cores > 0.005 && self.ok > 0).then(|| cores * self.secs * 1e6 / self.ok as f64)
    }
}

/// Ratios of msg/s printed, with their goals (issue 16): (b) against raw AMQP with the same
/// number of messages in flight, (c) against the ceiling with the same properties.
const RATIOS: [(&str, &str, Option<f64>); 6] = [
    ("b", "a32", Some(0.90)),
    ("c", "a", Some(0.90)),
    ("b", "a", None),
    ("b", "d", None),
    ("b", "h", None),
    ("b-schema", "b-1k", Some(0.90)),
];

/// CPU per message goals (issue 16): the service's, and the database's for the audit trail.
const CPU_GOALS: [(&str, &str, f64); 4] = [
    ("b", "service", 30.0),
    ("c", "service", 10.0),
    ("b", "database", 5.0),
    ("c", "database", 5.0),
];

/// The service's peak RSS and (b)'s p99 at 32 connections, at most (issue 16).
const RSS_GOAL_MIB: f64 = 48.0;
const P99_GOAL_MS: f64 = 10.0;

/// Rounds go on (up to `--max-rounds`) while a goal ratio's range exceeds this share of its median.
const MAX_SPREAD: f64 = 0.20;

/// Ratio `num`/`den` of msg/s within each round (same conditions) that ran both.
fn ratios(rounds: &[BTreeMap<&'static str, Summary>], num: &str, den: &str) -> Vec<f64> {
    rounds
        .iter()
        .filter_map(|r| match (r.get(num), r.get(den)) {
            (Some(n), Some(d)) if d.rate() > 0.0 => Some(n.rate() / d.rate()),
            _ => None,
        })
        .collect()
}

/// The goal ratio whose range is widest relative to its median, with that spread.
fn widest_goal_ratio(rounds: &[BTreeMap<&'static str, Summary>]) -> Option<(String, f64)> {
    RATIOS
        .iter()
        .filter(|(_, _, target)| target.is_some())
        .filter_map(|(num, den, _)| {
            let values = ratios(rounds, num, den);
            let mid = median(values.clone()).filter(|m| *m > 0.0)?;
            let (lo, hi) = values
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
            Some((format!("({num})/({den})"), (hi - lo) / mid))
        })
        .max_by(|x, y| x.1.total_cmp(&y.1))
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u32], q: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

// ---------------------------------------------------------------------------------------------
// Processes: CPU and memory from /proc

/// A process whose CPU use is measured over each window.
#[derive(Clone)]
struct Watched {
    name: &'static str,
    /// A pid, or `self`.
    pid: String,
}

/// utime + stime of a process, seconds (USER_HZ is 100 on every Linux that matters here).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces: count fields after its closing parenthesis.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// A `kB` line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
}

/// Measures the CPU used by each watched process between the window's start and end (in cores).
fn spawn_cpu_probe(window: Window, watched: Vec<Watched>) -> tokio::task::JoinHandle<Vec<(&'static str, Option<f64>)>> {
    tokio::spawn(async move {
        tokio::time::sleep_until(window.start.into()).await;
        let before: Vec<Option<f64>> = watched.iter().map(|w| cpu_seconds(&w.pid)).collect();
        let started = Instant::now();
        tokio::time::sleep_until(window.end.into()).await;
        let elapsed = started.elapsed().as_secs_f64();
        watched
            .iter()
            .zip(before)
            .map(|(w, before)| {
                let used = before.zip(cpu_seconds(&w.pid)).map(|(b, a)| (a - b) / elapsed);
                (w.name, used)
            })
            .collect()
    })
}

/// Samples the service's VmRSS every 100 ms on its own thread until stopped; returns the peak (KiB).
struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Option<u64>>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak: Option<u64> = None;
            loop {
                if let Some(rss) = status_kib(pid, "VmRSS") {
                    peak = Some(peak.map_or(rss, |p| p.max(rss)));
                }
                if flag.load(Ordering::Relaxed) {
                    return peak;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Self { stop, thread }
    }

    fn finish(self) -> Option<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(None)
    }
}

// ---------------------------------------------------------------------------------------------
// The publish section

/// The JSON every scenario sends. `message` is the request's `message`; `envelope` is about what
/// the service puts on the wire for it (the same plus message_id, timestamp, metadata), which is
/// the payload of (a) and (d) so that the broker moves the same bytes in every scenario.
struct Payloads {
    message: Value,
    envelope: Vec<u8>,
}

const SCENARIOS: [&str; 10] = ["a", "a32", "b", "b-paced", "c", "d", "r", "b-1k", "b-schema", "h"];

/// A typical 1 KiB event's `data` (an order of five lines), valid against the shipped
/// order.created 2.0 schema.
const ORDER_DATA: &str = include_str!("../scripts/bench/order.created.v2.json");

/// The POST publish body of the 1 KiB event as `event`: `order.created` has a schema in the bench
/// topology, `order.unchecked` (same length) has none.
fn order_body(args: &PublishArgs, event: &str) -> Result<Vec<u8>> {
    let data: Value = serde_json::from_str(ORDER_DATA).context("scripts/bench/order.created.v2.json")?;
    Ok(serde_json::to_vec(&json!({
        "exchange": args.exchange,
        "routing_key": args.routing_key,
        "message": {"event": event, "data": data, "metadata": {"version": "2.0"}},
    }))?)
}

/// (b-schema) means nothing unless the service really checks `order.created`: an invalid one
/// must come back 422 schema_violation.
async fn check_schema_active(args: &PublishArgs, token: &str) -> Result<()> {
    let body = serde_json::to_vec(&json!({
        "exchange": args.exchange,
        "routing_key": args.routing_key,
        "message": {"event": "order.created", "data": {}, "metadata": {"version": "2.0"}},
    }))?;
    let job = Job::Publish {
        url: format!("{}/api/messages/publish", args.url.trim_end_matches('/')),
        token: token.to_owned(),
        body,
    };
    let mut connection = HttpConnection {
        target: job.target()?,
        sender: None,
    };
    let (status, answer) = connection.round_trip().await.map_err(anyhow::Error::msg)?;
    let kind = error_kind(status, &answer);
    if kind != "422 schema_violation" {
        bail!(
            "an invalid order.created was answered `{kind}`, not `422 schema_violation`: the service does not check it (see [[schemas]] of scripts/bench/topology.toml)"
        );
    }
    Ok(())
}

fn payloads() -> Payloads {
    let message = json!({
        "event": "bench.tick",
        "data": {"order_id": 184467, "sku": "SKU-000123", "quantity": 2},
    });
    let mut envelope = message.clone();
    envelope["message_id"] = json!("3f2b8c1e-6a7d-4e59-9b1a-0c4d2e8f7a61");
    envelope["timestamp"] = json!("2025-01-01T00:00:00.000000Z");
    envelope["metadata"] = json!({"service": "bench", "version": "1.0"});
    Payloads {
        message,
        envelope: serde_json::to_vec(&envelope).expect("JSON values serialize"),
    }
}

async fn publish(args: PublishArgs) -> Result<()> {
    for scenario in &args.scenarios {
        if !SCENARIOS.contains(&scenario.as_str()) {
            bail!("unknown scenario `{scenario}` (choose among {})", SCENARIOS.join(","));
        }
    }
    let wants = |s: &str| args.scenarios.iter().any(|x| x == s);
    if ["b", "b-paced", "c", "r", "b-1k", "b-schema"].iter().any(|s| wants(s)) && args.token.is_none() {
        bail!("scenarios b, c, r, b-1k and b-schema need --token (or BENCH_TOKEN)");
    }
    if args.duration <= 0.0 || args.warmup < 0.0 || args.rounds == 0 || args.paced_rate <= 0.0 {
        bail!("--duration and --paced-rate must be > 0, --warmup >= 0 and --rounds >= 1");
    }
    if wants("h") && args.floor_url.is_none() {
        bail!("scenario h needs --floor-url (a `bench http-floor` server)");
    }
    let warmup = Duration::from_secs_f64(args.warmup);
    let duration = Duration::from_secs_f64(args.duration);

    let payloads = payloads();
    let single_body = serde_json::to_vec(&json!({
        "exchange": args.exchange,
        "routing_key": args.routing_key,
        "message": payloads.message,
    }))?;
    // (r): the drain consumer answers it (see `start_drain`), so its time is a full round trip.
    let request_body = serde_json::to_vec(&json!({
        "exchange": args.exchange,
        "routing_key": args.routing_key,
        "message": payloads.message,
        "timeout": "5s",
    }))?;
    let batch_body = serde_json::to_vec(&json!({
        "messages": vec![json!({
            "exchange": args.exchange,
            "routing_key": args.routing_key,
            "message": payloads.message,
        }); args.batch_size],
    }))?;
    let checked_body = order_body(&args, "order.created")?;
    let unchecked_body = order_body(&args, "order.unchecked")?;
    let management_body = serde_json::to_vec(&json!({
        "properties": {"delivery_mode": 2, "content_type": "application/json"},
        "routing_key": args.routing_key,
        "payload": String::from_utf8_lossy(&payloads.envelope),
        "payload_encoding": "string",
    }))?;
    eprintln!(
        "bench: payload {} bytes on the wire, POST publish body {} bytes, batch body {} bytes, 1 KiB event body {} bytes",
        payloads.envelope.len(),
        single_body.len(),
        batch_body.len(),
        checked_body.len()
    );

    // Two connections: one drains the queue for the whole run, the other publishes (a).
    let drain_conn = Connection::connect(
        &args.amqp,
        ConnectionProperties::default().with_connection_name("bench-drain".into()),
    )
    .await
    .with_context(|| format!("connecting to the broker at {}", redact(&args.amqp)))?;
    let publish_conn = Connection::connect(
        &args.amqp,
        ConnectionProperties::default().with_connection_name("bench-publish".into()),
    )
    .await
    .context("opening the publishing connection")?;
    check_topology(&publish_conn, &args.exchange, &args.queue).await?;
    let drained = Arc::new(AtomicU64::new(0));
    start_drain(&drain_conn, &args.queue, drained.clone()).await?;
    settle(&publish_conn, &args.queue).await;

    let mut watched = vec![Watched {
        name: "bench",
        pid: "self".into(),
    }];
    if let Some(pid) = args.pid {
        watched.push(Watched {
            name: "service",
            pid: pid.to_string(),
        });
    }
    for (name, pid) in [
        ("broker", args.broker_pid),
        ("database", args.db_pid),
        ("floor", args.floor_pid),
    ] {
        if let Some(pid) = pid {
            watched.push(Watched {
                name,
                pid: pid.to_string(),
            });
        }
    }

    let token = args.token.clone().unwrap_or_default();
    if wants("b-schema") {
        check_schema_active(&args, &token).await?;
    }
    let base = args.url.trim_end_matches('/');
    let floor = args.floor_url.as_deref().unwrap_or(base).trim_end_matches('/');
    let http_scenarios: [(&'static str, String, usize, Arc<Job>); 8] = [
        (
            "b-paced",
            format!("(b-paced) {:.0}/s, {} conns", args.paced_rate, args.connections),
            args.connections,
            Arc::new(Job::Publish {
                url: format!("{base}/api/messages/publish"),
                token: token.clone(),
                body: single_body.clone(),
            }),
        ),
        (
            "h",
            format!("(h) HTTP floor, {} conns", args.connections),
            args.connections,
            Arc::new(Job::Publish {
                url: format!("{floor}/api/messages/publish"),
                token: token.clone(),
                body: single_body.clone(),
            }),
        ),
        (
            "b",
            format!("(b) POST publish, {} conns", args.connections),
            args.connections,
            Arc::new(Job::Publish {
                url: format!("{base}/api/messages/publish"),
                token: token.clone(),
                body: single_body,
            }),
        ),
        (
            "b-1k",
            "(b-1k) 1 KiB event, no schema".to_owned(),
            args.connections,
            Arc::new(Job::Publish {
                url: format!("{base}/api/messages/publish"),
                token: token.clone(),
                body: unchecked_body,
            }),
        ),
        (
            "b-schema",
            "(b-schema) 1 KiB event, schema".to_owned(),
            args.connections,
            Arc::new(Job::Publish {
                url: format!("{base}/api/messages/publish"),
                token: token.clone(),
                body: checked_body,
            }),
        ),
        (
            "r",
            format!("(r) POST request-reply, {} conns", args.connections),
            args.connections,
            Arc::new(Job::Request {
                url: format!("{base}/api/messages/request"),
                token: token.clone(),
                body: request_body,
            }),
        ),
        (
            "c",
            format!("(c) POST publish/batch ({})", args.batch_size),
            args.batch_connections,
            Arc::new(Job::Batch {
                url: format!("{base}/api/messages/publish/batch"),
                token,
                body: batch_body,
                size: args.batch_size as u64,
            }),
        ),
        (
            "d",
            format!("(d) RabbitMQ mgmt API, {} conns", args.connections),
            args.connections,
            Arc::new(Job::Management {
                url: format!(
                    "{}/api/exchanges/{}/{}/publish",
                    args.management.trim_end_matches('/'),
                    encode_segment(&args.vhost),
                    encode_segment(&args.exchange)
                ),
                user: args.management_user.clone(),
                password: args.management_password.clone(),
                body: management_body,
            }),
        ),
    ];

    // Rounds interleave the scenarios so that a slow spell of the machine hits all of them.
    let mut rounds = Vec::with_capacity(args.rounds);
    let max_rounds = args.max_rounds.max(args.rounds);
    for round in 1..=max_rounds {
        if round > args.rounds {
            match widest_goal_ratio(&rounds) {
                Some((name, spread)) if spread > MAX_SPREAD => {
                    eprintln!(
                        "bench: {name} spreads by {:.0} % of its median: one more round",
                        spread * 100.0
                    );
                }
                _ => break,
            }
        }
        let mut results: BTreeMap<&'static str, Summary> = BTreeMap::new();
        // (a32): the same publishes with (b)'s concurrency; (b) can never have more in flight.
        for (key, in_flight) in [("a", args.window), ("a32", args.connections)] {
            if !wants(key) {
                continue;
            }
            let label = format!("({key}) AMQP confirmed, window {in_flight}");
            eprintln!("bench: round {round}: running {label}");
            let window = Window::after_warmup(warmup, duration);
            let cpu = spawn_cpu_probe(window, watched.clone());
            let tally = amqp_ceiling(&publish_conn, &args, in_flight, &payloads.envelope, window).await?;
            results.insert(key, Summary::new(label, &window, tally, cpu.await?));
            settle(&publish_conn, &args.queue).await;
        }
        // Every other round backwards: a scenario's place in the round (after which one, how long
        // since the last queue drain) must not favour it over its neighbour.
        let mut order: Vec<_> = http_scenarios.iter().collect();
        if round % 2 == 0 {
            order.reverse();
        }
        for (key, label, connections, job) in order {
            if !wants(key) {
                continue;
            }
            eprintln!("bench: round {round}: running {label}");
            let sample_rss = !matches!(*key, "d" | "h");
            let sampler = args.pid.filter(|_| sample_rss).map(RssSampler::start);
            let window = Window::after_warmup(warmup, duration);
            let cpu = spawn_cpu_probe(window, watched.clone());
            let pace = (*key == "b-paced").then_some(args.paced_rate);
            let tally = http_load(job.clone(), *connections, window, pace).await?;
            let mut summary = Summary::new(label.clone(), &window, tally, cpu.await?);
            summary.service_peak_rss_kib = sampler.and_then(RssSampler::finish);
            results.insert(key, summary);
            settle(&publish_conn, &args.queue).await;
        }
        rounds.push(results);
    }

    let hwm = args.pid.and_then(|pid| status_kib(pid, "VmHWM"));
    report(&rounds, hwm, args.window, drained.load(Ordering::Relaxed));

    let _ = publish_conn.close(200, "bench done".into()).await;
    let _ = drain_conn.close(200, "bench done".into()).await;
    Ok(())
}

/// The AMQP URI without its password, for error messages.
fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &uri[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &uri[..scheme + 3], &uri[at..])
        }
        _ => uri.to_owned(),
    }
}

/// Percent-encodes a path segment (`/` -> `%2F` for the default vhost).
fn encode_segment(raw: &str) -> String {
    raw.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Fails early, with the way out, when the bench topology is not declared.
async fn check_topology(conn: &Connection, exchange: &str, queue: &str) -> Result<()> {
    let hint = "declare it first: the service's applier does on start, or \
                `TOPOLOGY_FILE=scripts/bench/topology.toml messages-broker topology apply`";
    // A failed passive declare closes its channel: use throwaway channels.
    let channel = conn.create_channel().await?;
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("exchange `{exchange}` not found; {hint}"))?;
    let _ = channel.close(200, "ok".into()).await;
    let channel = conn.create_channel().await?;
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("queue `{queue}` not found; {hint}"))?;
    let _ = channel.close(200, "ok".into()).await;
    Ok(())
}

/// Consumes the queue without acknowledgements for the whole run, counting deliveries. It is also
/// the responder of (r): a message with a `reply_to` is answered with its own body, on the default
/// exchange, routing key = reply_to, same correlation_id (as the README tells services to).
async fn start_drain(conn: &Connection, queue: &str, drained: Arc<AtomicU64>) -> Result<()> {
    let channel = conn.create_channel().await?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "bench-drain".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("consuming `{queue}`"))?;
    tokio::spawn(async move {
        // The channel must live as long as the consumer.
        while let Some(delivery) = consumer.next().await {
            match delivery {
                Ok(delivery) => {
                    drained.fetch_add(1, Ordering::Relaxed);
                    if let Some(reply_to) = delivery.properties.reply_to().clone() {
                        let mut properties = BasicProperties::default();
                        if let Some(id) = delivery.properties.correlation_id().clone() {
                            properties = properties.with_correlation_id(id);
                        }
                        let options = BasicPublishOptions::default();
                        let reply = channel.basic_publish("".into(), reply_to, options, &delivery.data, properties);
                        if let Err(err) = reply.await {
                            eprintln!("bench: cannot reply to a request: {err}");
                        }
                    }
                }
                Err(err) => {
                    eprintln!("bench: drain consumer stopped: {err}");
                    break;
                }
            }
        }
    });
    Ok(())
}

/// Waits (up to 30 s) until the drain consumer has emptied the queue, so scenarios never overlap.
async fn settle(conn: &Connection, queue: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut depth = None;
    if let Ok(channel) = conn.create_channel().await {
        while Instant::now() < deadline {
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            match channel
                .queue_declare(queue.into(), passive, FieldTable::default())
                .await
            {
                Ok(q) if q.message_count() == 0 => {
                    let _ = channel.close(200, "ok".into()).await;
                    return;
                }
                Ok(q) => depth = Some(q.message_count()),
                Err(_) => break,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = channel.close(200, "ok".into()).await;
    }
    eprintln!("bench: warning: queue `{queue}` not drained before the next scenario (depth {depth:?})");
}

/// (a): one channel in confirm mode, `window` publishes in flight, each timed publish -> confirm.
async fn amqp_ceiling(
    conn: &Connection,
    args: &PublishArgs,
    in_flight_max: usize,
    payload: &[u8],
    window: Window,
) -> Result<Tally> {
    let channel = conn.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut tally = Tally::default();
    let mut in_flight = FuturesUnordered::new();
    loop {
        while in_flight.len() < in_flight_max && Instant::now() < window.end && channel.status().connected() {
            in_flight.push(publish_confirmed(&channel, &args.exchange, &args.routing_key, payload));
        }
        let Some((started, done, attempt)) = in_flight.next().await else {
            break;
        };
        tally.record(&window, started, done, attempt);
    }
    if !channel.status().connected() {
        eprintln!("bench: warning: the (a) channel closed during the run");
    }
    let _ = channel.close(200, "bench done".into()).await;
    Ok(tally)
}

/// Publishes are issued concurrently (not one after the other) so lapin's writer batches them, as
/// a busy service publishing for many requests at once would.
async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    payload: &[u8],
) -> (Instant, Instant, Attempt) {
    let started = Instant::now();
    // The properties the service sets (its message_id differs per message; the size is what
    // counts): headers and timestamp cost the broker ~10% per message, so (a) carries them too.
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id("3f2b8c1e-6a7d-4e59-9b1a-0c4d2e8f7a61".into())
        .with_app_id("messages-broker".into())
        .with_timestamp(1_700_000_000)
        .with_headers(FieldTable::from(std::collections::BTreeMap::from([(
            "published-by".into(),
            lapin::types::AMQPValue::LongString("bench".into()),
        )])));
    let options = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let outcome = match channel
        .basic_publish(exchange.into(), routing_key.into(), options, payload, properties)
        .await
    {
        Ok(confirm) => confirm.await,
        Err(err) => Err(err),
    };
    let attempt = match outcome {
        Ok(Confirmation::Ack(None)) => Attempt::ok(1),
        Ok(Confirmation::Ack(Some(returned))) => Attempt::failed(
            format!("returned {} {}", returned.reply_code, returned.reply_text.as_str()),
            1,
        ),
        Ok(Confirmation::Nack(_)) => Attempt::failed("nack", 1),
        Ok(Confirmation::NotRequested) => Attempt::failed("not confirmed", 1),
        Err(err) => Attempt::failed(format!("amqp: {err}"), 1),
    };
    (started, Instant::now(), attempt)
}

/// An HTTP request repeated by every worker of a scenario.
enum Job {
    Publish {
        url: String,
        token: String,
        body: Vec<u8>,
    },
    /// Request-reply: a success is the reply (200).
    Request {
        url: String,
        token: String,
        body: Vec<u8>,
    },
    Batch {
        url: String,
        token: String,
        body: Vec<u8>,
        size: u64,
    },
    Management {
        url: String,
        user: String,
        password: String,
        body: Vec<u8>,
    },
}

impl Job {
    fn messages(&self) -> u64 {
        match self {
            Job::Batch { size, .. } => *size,
            _ => 1,
        }
    }

    /// Where the request goes and what it carries, worked out once per worker.
    fn target(&self) -> Result<Target> {
        let (url, authorization, body) = match self {
            Job::Publish { url, token, body }
            | Job::Request { url, token, body }
            | Job::Batch { url, token, body, .. } => (url, format!("Bearer {token}"), body),
            Job::Management {
                url,
                user,
                password,
                body,
            } => (
                url,
                format!("Basic {}", STANDARD.encode(format!("{user}:{password}"))),
                body,
            ),
        };
        let uri: Uri = url.parse().with_context(|| format!("`{url}` is not a URL"))?;
        if uri.scheme_str() != Some("http") {
            bail!("`{url}`: the bench speaks plain http:// only");
        }
        Ok(Target {
            authority: uri.authority().context("a URL without a host")?.to_string(),
            path: uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
            authorization: HeaderValue::from_str(&authorization).context("credentials unfit for a header")?,
            body: Bytes::from(body.clone()),
        })
    }

    async fn send(&self, connection: &mut HttpConnection) -> Attempt {
        let (status, body) = match connection.round_trip().await {
            Ok(answer) => answer,
            Err(kind) => return Attempt::transport(kind, self.messages()),
        };
        match self {
            Job::Publish { .. } if status == StatusCode::CREATED => Attempt::ok(1),
            Job::Publish { .. } => Attempt::failed(error_kind(status, &body), 1),
            Job::Request { .. } if status == StatusCode::OK => Attempt::ok(1),
            Job::Request { .. } => Attempt::failed(error_kind(status, &body), 1),
            Job::Batch { size, .. } => batch_outcome(status, &body, *size),
            Job::Management { .. } => match serde_json::from_slice::<Value>(&body) {
                Ok(answer) if status == StatusCode::OK && answer["routed"] == json!(true) => Attempt::ok(1),
                Ok(answer) if status == StatusCode::OK => {
                    Attempt::failed(format!("200 routed={}", answer["routed"]), 1)
                }
                _ => Attempt::failed(error_kind(status, &body), 1),
            },
        }
    }
}

/// `404 not_found`: the status and the `error` code of a JSON error body, when there is one.
fn error_kind(status: StatusCode, body: &[u8]) -> String {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => match map.get("error").and_then(Value::as_str) {
            Some(code) => format!("{} {code}", status.as_u16()),
            None => status.as_u16().to_string(),
        },
        _ => status.as_u16().to_string(),
    }
}

/// A batch answer: one result per message, in order; an item counts as published when its status is 201.
fn batch_outcome(status: StatusCode, body: &[u8], size: u64) -> Attempt {
    if status != StatusCode::OK {
        return Attempt::failed(error_kind(status, body), size);
    }
    let Ok(answer) = serde_json::from_slice::<Value>(body) else {
        return Attempt::failed("200 unparsable batch answer", size);
    };
    let Some(results) = answer["results"].as_array() else {
        return Attempt::failed("200 batch answer without results", size);
    };
    let mut attempt = Attempt::ok(0);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for item in results.iter().take(size as usize) {
        if item["status"].as_u64() == Some(201) {
            attempt.ok += 1;
        } else {
            let code = item["error"].as_str().unwrap_or("?");
            *errors.entry(format!("item {} {code}", item["status"])).or_default() += 1;
        }
    }
    let missing = size.saturating_sub(results.len() as u64);
    if missing > 0 {
        errors.insert("item missing from results".into(), missing);
    }
    attempt.errors = errors.into_iter().collect();
    attempt
}

/// Where a job's request goes and what it carries.
struct Target {
    authority: String,
    path: String,
    authorization: HeaderValue,
    body: Bytes,
}

/// One keep-alive HTTP/1.1 connection of a load worker, straight on hyper and reopened after a
/// transport error. The load generator shares the cores with what it measures, so it must cost
/// little per request (the bench process spent 47-62 us of CPU per (b) request with reqwest, 39
/// with this; its drain consumer, ~18 us per message, included).
struct HttpConnection {
    target: Target,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl HttpConnection {
    async fn round_trip(&mut self) -> Result<(StatusCode, Bytes), String> {
        let sender = match &mut self.sender {
            Some(sender) => sender,
            empty => empty.insert(open(&self.target.authority).await?),
        };
        let request = Request::post(self.target.path.as_str())
            .header(HOST, self.target.authority.as_str())
            .header(AUTHORIZATION, self.target.authorization.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(self.target.body.clone()))
            .map_err(|err| err.to_string())?;
        let answer = async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            Ok::<_, hyper::Error>((status, response.into_body().collect().await?.to_bytes()))
        };
        match tokio::time::timeout(Duration::from_secs(30), answer).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(err)) => {
                self.sender = None;
                Err(err.to_string())
            }
            Err(_) => {
                self.sender = None;
                Err("timeout".into())
            }
        }
    }
}

async fn open(authority: &str) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|err| format!("connect: {err}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|err| format!("handshake: {err}"))?;
    // Drives the connection until it closes; the sender sees the end.
    tokio::spawn(connection);
    Ok(sender)
}

/// `workers` connections, each sending its next request when the last is answered; with `pace`
/// (requests per second in all), each also waits for its turn, the turns spread evenly.
async fn http_load(job: Arc<Job>, workers: usize, window: Window, pace: Option<f64>) -> Result<Tally> {
    let mut tasks = Vec::with_capacity(workers);
    for worker in 0..workers {
        let mut turns = pace.map(|rate| {
            let period = Duration::from_secs_f64(workers as f64 / rate);
            let first = tokio::time::Instant::now() + period.mul_f64(worker as f64 / workers as f64);
            let mut turns = tokio::time::interval_at(first, period);
            turns.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            turns
        });
        let job = job.clone();
        let mut connection = HttpConnection {
            target: job.target()?,
            sender: None,
        };
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while Instant::now() < window.end {
                if let Some(turns) = &mut turns {
                    turns.tick().await;
                }
                let started = Instant::now();
                let attempt = job.send(&mut connection).await;
                let transport = attempt.transport;
                tally.record(&window, started, Instant::now(), attempt);
                if transport {
                    // Nothing answers (service down, port closed): do not spin.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            tally
        }));
    }
    let mut total = Tally::default();
    for task in tasks {
        match task.await {
            Ok(tally) => total.merge(tally),
            Err(err) => *total.errors.entry(format!("worker panicked: {err}")).or_default() += 1,
        }
    }
    Ok(total)
}

// ---------------------------------------------------------------------------------------------
// The printout

fn fmt_ms(ms: Option<f64>) -> String {
    ms.map_or_else(|| "-".into(), |ms| format!("{ms:.2}"))
}

fn goal(met: bool) -> &'static str {
    if met { "" } else { "  MISSED" }
}

/// The median of `values` (the mean of the two middle ones for an even count).
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    match values.len() {
        0 => None,
        n if n % 2 == 1 => Some(values[middle]),
        _ => Some((values[middle - 1] + values[middle]) / 2.0),
    }
}

fn range(values: &[f64], digits: usize) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.digits$}-{max:.digits$}")
}

fn report(rounds: &[BTreeMap<&'static str, Summary>], service_hwm_kib: Option<u64>, window: usize, drained: u64) {
    let keys: std::collections::BTreeSet<&'static str> = rounds.iter().flat_map(|r| r.keys().copied()).collect();
    println!();
    println!("rounds: {}", rounds.len());
    let runs = |key: &str| -> Vec<&Summary> { rounds.iter().filter_map(|r| r.get(key)).collect() };
    // Each scenario is shown by its median round (by msg/s; the lower one of an even count):
    // that round's latencies and CPU figures.
    let typical: BTreeMap<&'static str, &Summary> = keys
        .iter()
        .map(|&key| {
            let mut all = runs(key);
            all.sort_by(|x, y| x.rate().total_cmp(&y.rate()));
            (key, all[(all.len() - 1) / 2])
        })
        .collect();
    let all_errors = |key: &str| -> BTreeMap<String, u64> {
        let mut errors = BTreeMap::new();
        for summary in runs(key) {
            for (kind, n) in &summary.errors {
                *errors.entry(kind.clone()).or_default() += n;
            }
        }
        errors
    };

    println!();
    println!(
        "{:<32} {:>9} {:>13} {:>8} {:>8} {:>8}",
        "scenario", "msg/s", "range", "p50 ms", "p99 ms", "errors"
    );
    for (key, summary) in &typical {
        let rates: Vec<f64> = runs(key).iter().map(|s| s.rate()).collect();
        println!(
            "{:<32} {:>9.0} {:>13} {:>8} {:>8} {:>8}",
            summary.label,
            median(rates.clone()).unwrap_or_default(),
            range(&rates, 0),
            fmt_ms(summary.p50_ms),
            fmt_ms(summary.p99_ms),
            all_errors(key).values().sum::<u64>()
        );
    }
    println!(
        "  (median of {} interleaved rounds; p50/p99 and CPU below are those of the median round)",
        rounds.len()
    );
    println!();
    for (key, summary) in &typical {
        let cpu: Vec<String> = summary
            .cpu
            .iter()
            .map(|(name, cores)| match cores {
                Some(cores) => format!("{name} {cores:.2}"),
                None => format!("{name} ?"),
            })
            .collect();
        // CPU time per message separates the service's own cost from what it shares the machine with.
        let per_message: Vec<String> = summary
            .cpu
            .iter()
            .filter_map(|(name, _)| Some(format!("{name} {:.0}", summary.cpu_us_per_message(name)?)))
            .collect();
        println!(
            "  ({key}) {} messages, {} requests in {:.1} s; CPU cores: {}; CPU us/msg: {}",
            summary.ok,
            summary.requests,
            summary.secs,
            cpu.join(", "),
            per_message.join(", ")
        );
        let errors = all_errors(key);
        for (kind, n) in errors.iter().take(8) {
            println!("      error {kind}: {n} (all rounds)");
        }
        if errors.len() > 8 {
            println!("      ... {} more kinds of error", errors.len() - 8);
        }
        let warmup_errors: u64 = runs(key).iter().map(|s| s.warmup_errors).sum();
        if warmup_errors > 0 {
            println!("      (and {warmup_errors} errors during the warm-ups)");
        }
        if errors.keys().any(|kind| kind.starts_with("404")) && *key != "d" {
            println!("      404: the endpoint is not there (not landed yet, or a wrong --url)");
        }
    }
    println!("  drain consumer received {drained} messages");
    println!();

    let mut line = Vec::new();
    for (num, den, target) in RATIOS {
        let values = ratios(rounds, num, den);
        let Some(r) = median(values.clone()) else { continue };
        let spread = range(&values, 2);
        line.push(match target {
            Some(t) => format!("({num})/({den}) = {r:.2} [{spread}] (goal >= {t:.2}){}", goal(r >= t)),
            None => format!("({num})/({den}) = {r:.2} [{spread}]"),
        });
    }
    if !line.is_empty() {
        println!("ratios (median [range]): {}", line.join("   "));
    }
    let mut line = Vec::new();
    for (key, process, at_most) in CPU_GOALS {
        let Some(us) = typical.get(key).and_then(|s| s.cpu_us_per_message(process)) else {
            continue;
        };
        line.push(format!(
            "({key}) {process} {us:.0} (goal <= {at_most}){}",
            goal(us <= at_most)
        ));
    }
    if !line.is_empty() {
        println!("CPU us per message, median round: {}", line.join("   "));
    }

    let mut line = Vec::new();
    let peaks: Vec<(&str, u64)> = rounds
        .iter()
        .flat_map(|r| r.iter().filter_map(|(k, s)| s.service_peak_rss_kib.map(|p| (*k, p))))
        .collect();
    if let Some(peak) = peaks.iter().map(|(_, p)| *p).max() {
        let mib = peak as f64 / 1024.0;
        let per: Vec<String> = keys
            .iter()
            .filter_map(|k| {
                let max = peaks.iter().filter(|(key, _)| key == k).map(|(_, p)| *p).max()?;
                Some(format!("({k}) {:.1}", max as f64 / 1024.0))
            })
            .collect();
        line.push(format!(
            "service peak RSS: {mib:.1} MiB (goal <= {RSS_GOAL_MIB} MiB){} [{}]",
            goal(mib <= RSS_GOAL_MIB),
            per.join(", ")
        ));
    }
    if let Some(hwm) = service_hwm_kib {
        line.push(format!("VmHWM {:.1} MiB", hwm as f64 / 1024.0));
    }
    // The goal holds for every round: the worst p99 counts.
    let p99s: Vec<f64> = runs("b").iter().filter_map(|s| s.p99_ms).collect();
    if !runs("b").is_empty() {
        match p99s.iter().copied().reduce(f64::max) {
            Some(p99) if p99s.len() == runs("b").len() => line.push(format!(
                "worst p99 (b): {p99:.2} ms (goal <= {P99_GOAL_MS} ms){}",
                goal(p99 <= P99_GOAL_MS)
            )),
            _ => line.push("p99 (b): - (a round without any successful request) MISSED".into()),
        }
    }
    if !line.is_empty() {
        println!("{}", line.join("   "));
    }
    if keys.contains("b") || keys.contains("c") {
        let errors: u64 = ["b", "c"].iter().map(|k| all_errors(k).values().sum::<u64>()).sum();
        println!("errors (b)+(c), all rounds: {errors} (goal 0){}", goal(errors == 0));
    }
    if keys.contains("b-schema") && keys.contains("b-1k") {
        println!(
            "(b-schema)/(b-1k): the same 1 KiB event with and without its schema checked; goal: validation costs at most 10 % of the throughput"
        );
    }
    if keys.contains("a") {
        println!(
            "(a) is the reference: one AMQP connection and channel, {window} confirms in flight, same payload, properties and queue"
        );
    }
    if keys.contains("h") {
        println!(
            "(h) is the HTTP floor: (b)'s requests answered by a bare hyper server with a fixed 201, its CPU under \"floor\""
        );
    }
    if keys.contains("a32") {
        println!(
            "(a32) is (a) with (b)'s concurrency: 32 connections waiting for their answer never have more than 32 messages in flight"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The HTTP floor of scenario (h)

/// A bare hyper HTTP/1.1 server (keep-alive, the service's runtime): reads each request's body
/// and answers 201 with a JSON body the size of the service's answer. Runs until killed.
async fn http_floor(port: u16) -> Result<()> {
    use hyper::{Response, body::Incoming, server::conn::http1, service::service_fn};
    const ANSWER: &[u8] = br#"{"message_id":"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b","exchange":"bench_exchange","routing_key":"bench.tick","status":"published"}"#;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("binding 127.0.0.1:{port}"))?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|request: Request<Incoming>| async move {
                let _body = request.into_body().collect().await?;
                let mut response = Response::new(Full::new(Bytes::from_static(ANSWER)));
                *response.status_mut() = StatusCode::CREATED;
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Ok::<_, hyper::Error>(response)
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
