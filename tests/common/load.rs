//! The fault suite's tools: a publish load that records every answer, a consumer that rejects
//! everything (a failing service), a fast drain of message ids, and the checker that compares
//! what was confirmed with what the broker and the database hold.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt;
use lapin::{
    options::{BasicConsumeOptions, BasicQosOptions, BasicRejectOptions, QueueDeclareOptions},
    types::FieldTable,
};
use messages_broker::{
    amqp::{connection, management::ManagementClient},
    settings::Settings,
};
use serde_json::{Value, json};
use tokio::{task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;

/// One answer of the load (or the transport error instead of one).
#[derive(Debug, Clone)]
pub struct Sample {
    /// Client-given, so even a 503'd or unanswered message can be looked for in the queue.
    pub message_id: String,
    /// `None`: no HTTP answer (refused, reset, timed out); see `error`.
    pub status: Option<u16>,
    /// The `error` code of an error body.
    pub code: Option<String>,
    pub error: Option<String>,
    /// When the request left and when its answer (or error) came, since the load started.
    pub started: Duration,
    pub finished: Duration,
}

impl Sample {
    pub fn created(&self) -> bool {
        self.status == Some(201)
    }

    pub fn took(&self) -> Duration {
        self.finished.saturating_sub(self.started)
    }

    /// `201`, `503 broker_unavailable`, `transport`: the key of the status tally.
    pub fn label(&self) -> String {
        match (self.status, &self.code) {
            (None, _) => "transport".into(),
            (Some(status), Some(code)) => format!("{status} {code}"),
            (Some(status), None) => status.to_string(),
        }
    }
}

/// What the load sends, and how hard.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Full URL of `POST /api/messages/publish`.
    pub url: String,
    pub token: String,
    pub exchange: String,
    pub routing_key: String,
    /// Concurrent senders, each one request at a time.
    pub tasks: usize,
    /// Pause of each sender between two requests: keeps the load (and the queue) small.
    pub pace: Duration,
    /// Message ids are `{id_prefix}-{task}-{n}`.
    pub id_prefix: String,
    /// No request waits longer than this: the load always stops.
    pub request_timeout: Duration,
}

/// A running load; [`Load::stop`] ends it and hands back every sample.
pub struct Load {
    pub origin: Instant,
    stop: CancellationToken,
    senders: Vec<JoinHandle<Vec<Sample>>>,
}

impl Load {
    pub fn start(spec: LoadSpec) -> Self {
        let origin = Instant::now();
        let stop = CancellationToken::new();
        // One client for all senders: keep-alive connections, as a real caller would have.
        let http = reqwest::Client::builder()
            .timeout(spec.request_timeout)
            .build()
            .expect("HTTP client");
        let senders = (0..spec.tasks)
            .map(|task| {
                let (spec, stop, http) = (spec.clone(), stop.clone(), http.clone());
                tokio::spawn(async move { send_loop(task, spec, http, origin, stop).await })
            })
            .collect();
        Self { origin, stop, senders }
    }

    /// Time since the load started: the clock every sample uses.
    pub fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Stops sending; requests in flight finish (bounded by the request timeout).
    pub async fn stop(self) -> Vec<Sample> {
        self.stop.cancel();
        let mut samples = Vec::new();
        for sender in self.senders {
            samples.extend(sender.await.expect("a load sender panicked"));
        }
        samples.sort_by_key(|s| s.finished);
        samples
    }
}

async fn send_loop(
    task: usize,
    spec: LoadSpec,
    http: reqwest::Client,
    origin: Instant,
    stop: CancellationToken,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    for n in 0.. {
        if stop.is_cancelled() {
            break;
        }
        let message_id = format!("{}-{task}-{n}", spec.id_prefix);
        let body = json!({
            "exchange": spec.exchange,
            "routing_key": spec.routing_key,
            "message_id": message_id,
            "message": {"event": "order.created", "data": {"task": task, "n": n}},
        });
        let started = origin.elapsed();
        let answer = http.post(&spec.url).bearer_auth(&spec.token).json(&body).send().await;
        let (status, code, error) = match answer {
            Ok(response) => {
                let status = response.status().as_u16();
                let code = match response.json::<Value>().await {
                    Ok(body) => body["error"].as_str().map(str::to_owned),
                    Err(err) if status != 201 => Some(format!("unreadable body: {err}")),
                    Err(_) => None,
                };
                (Some(status), code, None)
            }
            Err(err) => (None, None, Some(error_chain(&err))),
        };
        let transport_error = status.is_none();
        samples.push(Sample {
            message_id,
            status,
            code,
            error,
            started,
            finished: origin.elapsed(),
        });
        // After a refused connection, breathe a little: a refused connect returns at once.
        let pause = if transport_error {
            spec.pace.max(Duration::from_millis(20))
        } else {
            spec.pace
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    samples
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// Counts per [`Sample::label`], for the figures and for the assertion messages.
pub fn tally(samples: &[Sample]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for sample in samples {
        *counts.entry(sample.label()).or_default() += 1;
    }
    counts
}

/// The invariant of the suite: every 201's message is among what was seen (consumers, rows, the
/// final drain). Duplicates (a message seen more than once) are counted apart: at-least-once
/// delivery allows them, losing a confirmed message is never allowed.
#[derive(Debug)]
pub struct Verdict {
    pub sent: usize,
    pub confirmed: usize,
    pub statuses: BTreeMap<String, usize>,
    /// Confirmed (201) but seen nowhere.
    pub lost: Vec<String>,
    /// Extra sightings of one message id.
    pub duplicates: usize,
    /// Seen although the answer was not 201 (a timed-out confirm, a reset after the publish).
    pub unconfirmed_seen: usize,
}

pub fn check(samples: &[Sample], seen: &[String]) -> Verdict {
    let distinct: HashSet<&str> = seen.iter().map(String::as_str).collect();
    let confirmed: Vec<&Sample> = samples.iter().filter(|s| s.created()).collect();
    let confirmed_ids: HashSet<&str> = confirmed.iter().map(|s| s.message_id.as_str()).collect();
    Verdict {
        sent: samples.len(),
        confirmed: confirmed.len(),
        statuses: tally(samples),
        lost: confirmed
            .iter()
            .filter(|s| !distinct.contains(s.message_id.as_str()))
            .map(|s| s.message_id.clone())
            .collect(),
        duplicates: seen.len() - distinct.len(),
        unconfirmed_seen: distinct.iter().filter(|id| !confirmed_ids.contains(*id)).count(),
    }
}

/// How the load fared after one fault.
#[derive(Debug, Clone, Copy)]
pub struct Recovery {
    pub fault_at: Duration,
    /// Non-201 answers (and transport errors) that came in the window.
    pub failures: usize,
    pub first_failure: Option<Duration>,
    pub last_failure: Option<Duration>,
    /// From the fault to the first 201 of a request sent after the first failure (or after the
    /// fault, when nothing failed): the time publishing took to resume.
    pub resumed_after: Option<Duration>,
}

/// Looks at the answers that came in `[fault_at, until)`.
pub fn recovery(samples: &[Sample], fault_at: Duration, until: Duration) -> Recovery {
    let window: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.finished >= fault_at && s.finished < until)
        .collect();
    let failures: Vec<&&Sample> = window.iter().filter(|s| !s.created()).collect();
    let first_failure = failures.iter().map(|s| s.finished).min();
    let since = first_failure.unwrap_or(fault_at);
    let resumed = window
        .iter()
        .filter(|s| s.created() && s.started >= since)
        .map(|s| s.finished)
        .min();
    Recovery {
        fault_at,
        failures: failures.len(),
        first_failure,
        last_failure: failures.iter().map(|s| s.finished).max(),
        resumed_after: resumed.map(|t| t - fault_at),
    }
}

/// Every message id in `queue`, taken off it (no-ack consumer) until it is empty and quiet.
/// Bounded: gives up after `limit` and returns what it has.
pub async fn drain_ids(settings: &Settings, queue: &str, limit: Duration) -> Vec<String> {
    let conn = connection::connect(&settings.rabbitmq, "fault-suite drain")
        .await
        .expect("connect to drain");
    let channel = conn.create_channel().await.expect("channel");
    let depth = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("the queue to drain exists")
        .message_count() as usize;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "fault-suite-drain".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut ids = Vec::with_capacity(depth);
    let deadline = Instant::now() + limit;
    loop {
        // Once the depth seen at the start is taken, a short silence means empty.
        let quiet = if ids.len() >= depth {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(3)
        };
        let wait = quiet.min(deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(wait, consumer.next()).await {
            Ok(Some(Ok(delivery))) => ids.push(message_id_of(&delivery.properties)),
            Ok(Some(Err(err))) => panic!("drain of {queue} failed: {err}"),
            Ok(None) | Err(_) => break,
        }
    }
    let _ = conn.close(200, "drained".into()).await;
    ids
}

fn message_id_of(properties: &lapin::BasicProperties) -> String {
    properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned())
        .unwrap_or_default()
}

/// A failing consumer: rejects (no requeue) every delivery of a queue, so each becomes a dead
/// letter, and remembers each message id it rejected (a retried message shows up again).
pub struct Rejecter {
    rejected: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Rejecter {
    pub async fn start(settings: &Settings, queue: &str) -> Self {
        let conn = connection::connect(&settings.rabbitmq, "fault-suite rejecter")
            .await
            .expect("connect the rejecter");
        let channel = conn.create_channel().await.expect("channel");
        channel.basic_qos(100, BasicQosOptions::default()).await.expect("qos");
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                "fault-suite-rejecter".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let rejected = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (seen, cancel) = (rejected.clone(), stop.clone());
        let task = tokio::spawn(async move {
            loop {
                let delivery = tokio::select! {
                    _ = cancel.cancelled() => break,
                    next = consumer.next() => match next {
                        Some(Ok(delivery)) => delivery,
                        Some(Err(err)) => panic!("the rejecter's consumer failed: {err}"),
                        None => break,
                    },
                };
                let id = message_id_of(&delivery.properties);
                delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await
                    .expect("reject");
                seen.lock().unwrap().push(id);
            }
            // Deliveries it holds unanswered go back to the queue when the channel closes.
            let _ = channel.close(200, "rejecter done".into()).await;
            let _ = conn.close(200, "rejecter done".into()).await;
        });
        Self { rejected, stop, task }
    }

    pub fn count(&self) -> usize {
        self.rejected.lock().unwrap().len()
    }

    /// Stops and returns every rejected message id, in order, repeats included.
    pub async fn stop(self) -> Vec<String> {
        self.stop.cancel();
        match tokio::time::timeout(Duration::from_secs(10), self.task).await {
            Ok(Err(err)) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Ok(_) => {}
            Err(_) => panic!("the rejecter did not stop within 10 s"),
        }
        std::mem::take(&mut *self.rejected.lock().unwrap())
    }
}

/// Closes every AMQP connection whose name starts with `app_name` through the management API,
/// once one is listed (the API lists a fresh connection only after a few seconds). Returns how
/// many were closed and when (on the load's clock `origin`) the first close was sent: the moment
/// the fault really happened. Gives up after `limit`.
pub async fn cut_connections(
    management: &ManagementClient,
    app_name: &str,
    origin: Instant,
    limit: Duration,
) -> (usize, Option<Duration>) {
    let deadline = Instant::now() + limit;
    loop {
        let listed = management.connections().await.unwrap_or_default();
        let mut closed = 0;
        let mut first = None;
        for conn in listed.iter().filter(|c| {
            c.client_properties
                .connection_name
                .as_deref()
                .is_some_and(|name| name.starts_with(app_name))
        }) {
            let at = origin.elapsed();
            if management.close_connection(&conn.name).await.is_ok() {
                closed += 1;
                first.get_or_insert(at);
            }
        }
        if closed > 0 || Instant::now() >= deadline {
            return (closed, first);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many times each id appears.
pub fn occurrences(ids: &[String]) -> HashMap<&str, usize> {
    let mut counts = HashMap::new();
    for id in ids {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    counts
}

/// The value of one Prometheus series (`name{labels}` exactly as exposed), 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter_map(|line| line.strip_prefix(series))
        .filter_map(|rest| rest.strip_prefix(' '))
        .filter_map(|value| value.trim().parse::<f64>().ok())
        .sum()
}
