//! Declares a resolved [`Topology`] on the broker: exchanges, then queues, then bindings.
//!
//! Each entity is first checked passively so the report can say "created" or "exists". A
//! declaration that fails (e.g. PRECONDITION_FAILED for a queue that exists with other arguments)
//! closes its channel: we note it, open a fresh channel and go on with the rest.

use std::{fmt, time::Duration};

use lapin::{
    Channel, Connection, ExchangeKind as LapinKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString},
};

use super::model::{ArgValue, Binding, Exchange, ExchangeKind, Queue, Topology};
use futures_util::future::BoxFuture;

use crate::amqp::calls::{CallError, ThrowawayChannel};

/// Bound on each declaration: a broker under an alarm can stall a channel forever.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntityKind {
    Exchange,
    Queue,
    Binding,
}

impl fmt::Display for EntityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Exchange => "exchange",
            Self::Queue => "queue",
            Self::Binding => "binding",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created,
    /// Already there with the same definition (bindings are idempotent and always say this).
    Exists,
    /// Declared without asking first whether it existed (the applier's fast path).
    Declared,
    /// Refused by the broker; the reason is its reply text (it names the differing argument).
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct Declared {
    pub kind: EntityKind,
    pub name: String,
    pub outcome: Outcome,
}

impl fmt::Display for Declared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Outcome::Created => write!(f, "created  {} {}", self.kind, self.name),
            Outcome::Exists => write!(f, "ok       {} {}", self.kind, self.name),
            Outcome::Declared => write!(f, "declared {} {}", self.kind, self.name),
            Outcome::Failed(reason) => write!(f, "FAILED   {} {}: {reason}", self.kind, self.name),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct DeclareReport {
    pub items: Vec<Declared>,
}

impl DeclareReport {
    pub fn failures(&self) -> impl Iterator<Item = &Declared> {
        self.items.iter().filter(|d| matches!(d.outcome, Outcome::Failed(_)))
    }

    pub fn is_complete(&self) -> bool {
        self.failures().next().is_none()
    }

    pub fn created(&self) -> usize {
        self.items.iter().filter(|d| d.outcome == Outcome::Created).count()
    }
}

/// Whether to ask the broker first if each entity exists, to report "created" vs "ok".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// For `topology apply`: an operator wants to know what changed.
    Existence,
    /// For the applier on every reconnect: one round trip per entity, no channel churn.
    Skip,
}

/// Declares everything; broker refusals end up in the report, only a dead connection is an `Err`.
pub async fn declare(connection: &Connection, topology: &Topology, probe: Probe) -> Result<DeclareReport, CallError> {
    let mut declarer = Declarer {
        channel: ThrowawayChannel::open(connection, STEP_TIMEOUT).await?,
        report: DeclareReport::default(),
        probe,
    };
    for exchange in &topology.exchanges {
        declarer.exchange(exchange).await?;
    }
    for queue in &topology.queues {
        declarer.queue(queue).await?;
    }
    for binding in &topology.bindings {
        declarer.binding(binding).await?;
    }
    declarer.channel.close("topology declared").await;
    Ok(declarer.report)
}

/// Checks that every exchange and queue exists, without changing anything (roles that do not
/// own the topology use this to know it is there).
pub async fn verify(connection: &Connection, topology: &Topology) -> Result<DeclareReport, CallError> {
    let mut declarer = Declarer {
        channel: ThrowawayChannel::open(connection, STEP_TIMEOUT).await?,
        report: DeclareReport::default(),
        probe: Probe::Existence,
    };
    for exchange in &topology.exchanges {
        let exists = declarer.exchange_exists(exchange).await?;
        declarer.record(EntityKind::Exchange, &exchange.name, existence(exists));
    }
    for queue in &topology.queues {
        let exists = declarer.queue_exists(&queue.name).await?;
        declarer.record(EntityKind::Queue, &queue.name, existence(exists));
    }
    declarer.channel.close("topology verified").await;
    Ok(declarer.report)
}

fn existence(exists: bool) -> Outcome {
    if exists {
        Outcome::Exists
    } else {
        Outcome::Failed("does not exist (is an applier running?)".into())
    }
}

struct Declarer<'a> {
    /// Replaced after every refusal, since the broker closes a channel on a soft error.
    channel: ThrowawayChannel<'a>,
    report: DeclareReport,
    probe: Probe,
}

impl Declarer<'_> {
    fn record(&mut self, kind: EntityKind, name: &str, outcome: Outcome) {
        self.report.items.push(Declared {
            kind,
            name: name.to_owned(),
            outcome,
        });
    }

    /// Runs one broker call: a refusal is `Ok(Err(reason))`, a dead connection an `Err`.
    async fn attempt<T, F, Fut>(&mut self, call: F) -> Result<Result<T, String>, CallError>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: Future<Output = lapin::Result<T>>,
    {
        match self.channel.call(call).await {
            Ok(value) => Ok(Ok(value)),
            Err(CallError::NotFound(reason) | CallError::Refused(reason)) => Ok(Err(reason)),
            Err(err) => Err(err),
        }
    }

    async fn exchange_exists(&mut self, exchange: &Exchange) -> Result<bool, CallError> {
        let options = ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        };
        Ok(self.attempt(declare_exchange(exchange, options)).await?.is_ok())
    }

    async fn queue_exists(&mut self, name: &str) -> Result<bool, CallError> {
        let options = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let call =
            |channel: Channel| async move { channel.queue_declare(name.into(), options, FieldTable::default()).await };
        Ok(self.attempt(call).await?.is_ok())
    }

    async fn exchange(&mut self, exchange: &Exchange) -> Result<(), CallError> {
        let existed = match self.probe {
            Probe::Existence => Some(self.exchange_exists(exchange).await?),
            Probe::Skip => None,
        };
        let options = ExchangeDeclareOptions {
            passive: false,
            durable: exchange.durable,
            auto_delete: exchange.auto_delete,
            internal: exchange.internal,
            nowait: false,
        };
        let outcome = outcome(self.attempt(declare_exchange(exchange, options)).await?, existed);
        self.record(EntityKind::Exchange, &exchange.name, outcome);
        Ok(())
    }

    async fn queue(&mut self, queue: &Queue) -> Result<(), CallError> {
        let existed = match self.probe {
            Probe::Existence => Some(self.queue_exists(&queue.name).await?),
            Probe::Skip => None,
        };
        let options = QueueDeclareOptions {
            passive: false,
            durable: queue.durable,
            exclusive: false,
            auto_delete: queue.auto_delete,
            nowait: false,
        };
        let call = |channel: Channel| async move {
            channel
                .queue_declare(queue.name.as_str().into(), options, arguments(queue))
                .await
                .map(drop)
        };
        let outcome = outcome(self.attempt(call).await?, existed);
        self.record(EntityKind::Queue, &queue.name, outcome);
        Ok(())
    }

    async fn binding(&mut self, binding: &Binding) -> Result<(), CallError> {
        let call = |channel: Channel| async move {
            channel
                .queue_bind(
                    binding.queue.as_str().into(),
                    binding.exchange.as_str().into(),
                    binding.routing_key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
        };
        let outcome = outcome(self.attempt(call).await?, Some(true));
        let name = format!("{} -> {} ({:?})", binding.exchange, binding.queue, binding.routing_key);
        self.record(EntityKind::Binding, &name, outcome);
        Ok(())
    }
}

/// `exchange.declare` of `exchange` with `options`, as a call for [`Declarer::attempt`].
// The lifetime cannot be elided inside the `FnOnce` output (clippy suggests it wrongly).
#[allow(clippy::needless_lifetimes)]
fn declare_exchange<'a>(
    exchange: &'a Exchange,
    options: ExchangeDeclareOptions,
) -> impl FnOnce(Channel) -> BoxFuture<'a, lapin::Result<()>> {
    move |channel: Channel| {
        Box::pin(async move {
            channel
                .exchange_declare(
                    exchange.name.as_str().into(),
                    lapin_kind(exchange.kind),
                    options,
                    FieldTable::default(),
                )
                .await
        })
    }
}

fn outcome(result: Result<(), String>, existed: Option<bool>) -> Outcome {
    match result {
        Ok(()) => match existed {
            Some(true) => Outcome::Exists,
            Some(false) => Outcome::Created,
            None => Outcome::Declared,
        },
        Err(reason) => Outcome::Failed(reason),
    }
}

fn lapin_kind(kind: ExchangeKind) -> LapinKind {
    match kind {
        ExchangeKind::Direct => LapinKind::Direct,
        ExchangeKind::Topic => LapinKind::Topic,
        ExchangeKind::Fanout => LapinKind::Fanout,
        ExchangeKind::Headers => LapinKind::Headers,
    }
}

/// The queue's `x-` arguments as an AMQP table.
pub fn arguments(queue: &Queue) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in queue.arguments() {
        let value = match value {
            ArgValue::Int(n) => AMQPValue::LongLongInt(n),
            ArgValue::Str(s) => AMQPValue::LongString(LongString::from(s)),
        };
        table.insert(name.into(), value);
    }
    table
}
