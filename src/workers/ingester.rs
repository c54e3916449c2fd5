//! The ingester role: consumes every dead-letter queue with manual acks and a prefetch, turns each
//! dead letter into a `failed_messages` row, writes rows in batches, and acks a batch only once
//! its rows are committed. Database down: it holds the batch (unacked, so the broker keeps it),
//! logs once, retries with backoff, and catches up when the database is back.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use futures_util::{StreamExt, stream::FuturesOrdered};
use lapin::{
    BasicProperties, Channel, Consumer,
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable},
};
use sqlx::MySqlPool;
use tokio::{sync::watch, task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Worker, applier::TopologyState, ticker};
use crate::trace;
use crate::{
    amqp::{
        connection::{Link, LinkReceiver, wait_for_link},
        headers, replies,
    },
    backoff::{Backoff, retry_until_ok},
    metrics::Metrics,
    retry::{self, RETRY_COUNT_HEADER},
    settings::Settings,
    shared::Shared,
    store::{
        StoreError,
        failed_messages::{self, NewFailedMessage, PayloadEncoding, Status},
        message_logs,
    },
    topology::{QueueRole, Topology},
};

/// Rows per fingerprint backfill statement.
const BACKFILL_BATCH: u32 = 500;

/// How often the ingester looks again for rows without a current fingerprint: one index lookup
/// when there are none.
const BACKFILL_EVERY: Duration = Duration::from_secs(300);

/// Batches written at once per dead-letter queue: the next batch is collected and turned into rows
/// while the previous one is written, on a second pool connection.
const WRITES_IN_FLIGHT: usize = 2;

/// Headers a failing consumer may set to say why (the first one present is used).
const ERROR_HEADERS: [&str; 4] = ["x-error", "x-exception-message", "error", "error_message"];

#[derive(Clone)]
pub struct Ingester {
    pub settings: Arc<Settings>,
    pub topology: Arc<Topology>,
    pub pool: MySqlPool,
    pub metrics: Arc<Metrics>,
    pub link: LinkReceiver,
    pub topology_state: watch::Receiver<TopologyState>,
    pub db_migrated: watch::Receiver<bool>,
}

/// A batch whose rows are committed: to be acked, in order.
pub struct StoredBatch {
    deliveries: Vec<Delivery>,
    rows: Vec<NewFailedMessage>,
}

/// One dead-letter queue and the queue whose dead letters it holds.
#[derive(Debug, Clone)]
pub struct DeadLetterQueue {
    pub dlq: String,
    pub source_queue: String,
}

impl Ingester {
    pub fn new(shared: &Shared) -> Self {
        Self {
            settings: shared.settings.clone(),
            topology: shared.topology.clone(),
            pool: shared.pool.clone(),
            metrics: shared.metrics.clone(),
            link: shared.link.clone(),
            topology_state: shared.topology_state.subscribe(),
            db_migrated: shared.db_migrated.clone(),
        }
    }

    /// The step: stores a batch of dead letters of `queue` (retrying while the database is
    /// down), then acks them all at once. `false` if cancelled first: nothing acked, the broker
    /// redelivers them.
    pub async fn ingest_batch(
        &self,
        queue: &DeadLetterQueue,
        channel: &Channel,
        batch: Vec<Delivery>,
        cancel: &CancellationToken,
    ) -> anyhow::Result<bool> {
        let Some(stored) = self.store_batch(queue, batch, cancel).await else {
            return Ok(false);
        };
        self.acknowledge(queue, channel, stored).await?;
        Ok(true)
    }

    /// Turns a batch into rows and commits them (retrying while the database is down), then
    /// marks them failed in the audit trail. `None` if cancelled before the commit.
    pub async fn store_batch(
        &self,
        queue: &DeadLetterQueue,
        deliveries: Vec<Delivery>,
        cancel: &CancellationToken,
    ) -> Option<StoredBatch> {
        let now = Utc::now();
        // Dead-lettered requests (expired unanswered, or refused by a responder) are acked with
        // the batch but not stored: their caller has had its 504, nobody would read a reply.
        let rows: Vec<NewFailedMessage> = deliveries
            .iter()
            .filter(|d| !replies::is_request(&d.properties))
            .map(|d| dead_letter_row(d, &queue.source_queue, &self.settings, now))
            .collect();
        if rows.len() < deliveries.len() {
            debug!(queue = %queue.dlq, dropped = deliveries.len() - rows.len(), "Dead-lettered requests dropped.");
        }
        let backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let stored = retry_until_ok(
            backoff,
            cancel,
            || failed_messages::upsert_batch(&self.pool, &rows),
            |err, _| warn!(queue = %queue.dlq, rows = rows.len(), error = %err, "Cannot store dead letters; holding them unacked and retrying."),
        )
        .await;
        match stored? {
            (_, failures) if failures > 0 => {
                info!(queue = %queue.dlq, rows = rows.len(), "Database back: held dead letters stored.");
            }
            _ => {}
        }
        // The audit trail follows: logged messages that died are `failed` there (best effort: the
        // rows above are what counts, and a dead letter that beats its audit row stays `published`).
        let ids: Vec<&str> = rows.iter().map(|r| r.message_id.as_str()).collect();
        if let Err(err) = message_logs::set_status(&self.pool, &ids, "failed").await {
            warn!(queue = %queue.dlq, error = %err, "Cannot mark dead letters failed in the audit trail.");
        }
        Some(StoredBatch { deliveries, rows })
    }

    /// Acks a stored batch with one multiple ack (tags on a channel only grow, and every batch
    /// before this one is acked already), then logs and counts its dead letters.
    async fn acknowledge(&self, queue: &DeadLetterQueue, channel: &Channel, stored: StoredBatch) -> anyhow::Result<()> {
        let StoredBatch { deliveries, rows } = stored;
        let Some(last) = deliveries.last() else {
            return Ok(());
        };
        channel
            .basic_ack(last.delivery_tag, BasicAckOptions { multiple: true })
            .await?;
        // One line per dead letter, with its trace id: a message can be followed through the logs.
        for (delivery, row) in deliveries
            .iter()
            .filter(|d| !replies::is_request(&d.properties))
            .zip(&rows)
        {
            info!(
                queue = %queue.source_queue,
                message_id = %row.message_id,
                trace_id = %trace::trace_id_in_table(delivery.properties.headers().as_ref()),
                status = row.status.as_str(),
                "Dead letter stored."
            );
        }
        let exhausted = rows.iter().filter(|r| r.status == Status::Failed).count();
        if exhausted > 0 {
            self.metrics
                .retries_total
                .with_label_values(&["exhausted"])
                .inc_by(exhausted as u64);
        }
        self.metrics
            .dead_letters_ingested_total
            .with_label_values(&[queue.dlq.as_str()])
            .inc_by(rows.len() as u64);
        Ok(())
    }

    /// Consumers start once the queues exist and rows can be written. `Some(false)`: the link
    /// changed meanwhile; `None`: stop (cancelled, or the state's sender is gone).
    async fn wait_until_ready(&mut self, cancel: &CancellationToken) -> Option<bool> {
        let mut applied = self.topology_state.clone();
        let mut migrated = self.db_migrated.clone();
        tokio::select! {
            _ = cancel.cancelled() => None,
            _ = self.link.changed() => Some(false),
            ready = async {
                applied.wait_for(|s| matches!(s, TopologyState::Applied { .. })).await.is_ok()
                    && migrated.wait_for(|m| *m).await.is_ok()
            } => ready.then_some(true),
        }
    }

    /// Consumes every dead-letter queue on `link` until the link changes, a consumer fails or
    /// `cancel` fires.
    async fn ingest_on(&mut self, link: &Link, cancel: &CancellationToken) -> anyhow::Result<()> {
        let session = cancel.child_token();
        let mut consumers = JoinSet::new();
        for queue in self.topology.dead_letter_queues() {
            let QueueRole::DeadLetter { source_queue } = &queue.role else {
                continue;
            };
            let queue = DeadLetterQueue {
                dlq: queue.name.clone(),
                source_queue: source_queue.clone(),
            };
            let (ingester, link, session) = (self.clone(), link.clone(), session.clone());
            consumers.spawn(async move { ingester.consume(&queue, &link, &session).await });
        }
        info!(
            queues = consumers.len(),
            generation = link.generation,
            "Ingesting dead letters."
        );
        let failure = tokio::select! {
            _ = cancel.cancelled() => None,
            _ = self.link.changed() => None,
            Some(result) = consumers.join_next() => match result {
                Ok(Err(err)) => Some(err),
                Ok(Ok(())) => None,
                Err(panic) => Some(anyhow::anyhow!("a dead-letter consumer panicked: {panic}")),
            },
        };
        session.cancel();
        while consumers.join_next().await.is_some() {}
        // The supervisor logs a failure and restarts the role with backoff.
        failure.map_or(Ok(()), Err)
    }

    async fn consume(&self, queue: &DeadLetterQueue, link: &Link, session: &CancellationToken) -> anyhow::Result<()> {
        let prefetch = self.settings.ingest.prefetch;
        let channel = link.connection.create_channel().await?;
        // Twice the batch in flight: the next batch arrives while the previous one is written.
        channel
            .basic_qos(prefetch.saturating_mul(2), BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                queue.dlq.as_str().into(),
                format!("messages-broker-ingester/{}", queue.dlq).as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let result = self.batches(queue, &channel, consumer, session).await;
        let _ = channel.close(200, "ingester stopping".into()).await;
        result
    }

    /// Collects batches (up to the prefetch, or what came within the linger) and stores them,
    /// up to [`WRITES_IN_FLIGHT`] at once, acking each once it and every earlier one are stored.
    async fn batches(
        &self,
        queue: &DeadLetterQueue,
        channel: &Channel,
        mut consumer: Consumer,
        session: &CancellationToken,
    ) -> anyhow::Result<()> {
        let max = usize::from(self.settings.ingest.prefetch);
        let mut collecting: Vec<Delivery> = Vec::with_capacity(max);
        // Set at a batch's first delivery: a partial batch waits this long for more.
        let linger = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(linger);
        // Yields in delivery order, so the multiple ack of one never covers an unstored batch.
        let mut writes = FuturesOrdered::new();
        let stopped = loop {
            let room = writes.len() < WRITES_IN_FLIGHT;
            if room && collecting.len() >= max {
                writes.push_back(self.store_batch(queue, std::mem::take(&mut collecting), session));
                continue;
            }
            tokio::select! {
                biased;
                _ = session.cancelled() => break Ok(()),
                // Acks first: they free the prefetch for the next deliveries.
                Some(stored) = writes.next() => match stored {
                    Some(stored) => self.acknowledge(queue, channel, stored).await?,
                    None => return Ok(()), // cancelled while the database was down: unacked, so requeued
                },
                () = &mut linger, if room && !collecting.is_empty() => {
                    writes.push_back(self.store_batch(queue, std::mem::take(&mut collecting), session));
                }
                next = consumer.next(), if collecting.len() < max => match next {
                    Some(delivery) => {
                        if collecting.is_empty() {
                            linger.as_mut().reset(Instant::now() + self.settings.ingest.batch_linger);
                        }
                        collecting.push(delivery?);
                    }
                    None => break Ok(()),
                },
            }
        };
        // Stopping: writes under way finish (one held by a database outage gives up) and are
        // acked; what was still being collected is requeued when the channel closes.
        while let Some(stored) = writes.next().await {
            let Some(stored) = stored else { break };
            self.acknowledge(queue, channel, stored).await?;
        }
        stopped
    }
}

impl Ingester {
    /// A step: fingerprints, batch after batch, every row that has none or one of an older
    /// algorithm version (rows stored before failure groups existed, or by an older replica
    /// during a rolling update). Returns how many rows it computed.
    pub async fn backfill_fingerprints(&self, cancel: &CancellationToken) -> Result<u64, StoreError> {
        let mut done = 0;
        while !cancel.is_cancelled() {
            let batch = failed_messages::backfill_fingerprints(&self.pool, BACKFILL_BATCH).await?;
            done += batch;
            if batch < u64::from(BACKFILL_BATCH) {
                break;
            }
        }
        Ok(done)
    }

    async fn backfill_sweep(&self, cancel: &CancellationToken) {
        match self.backfill_fingerprints(cancel).await {
            Ok(0) => {}
            Ok(rows) => info!(rows, "Fingerprints computed for failed messages that had none."),
            Err(err) => {
                warn!(error = %err, "Cannot compute the fingerprints of older failed messages; will try on the next sweep.")
            }
        }
    }

    /// Per connection, one consumer task per dead-letter queue.
    async fn ingest(&mut self, cancel: &CancellationToken) -> anyhow::Result<()> {
        loop {
            let Some(link) = wait_for_link(&mut self.link, cancel).await else {
                return Ok(());
            };
            match self.wait_until_ready(cancel).await {
                None => return Ok(()),
                Some(false) => continue,
                Some(true) => {}
            }
            self.link.mark_unchanged();
            self.ingest_on(&link, cancel).await?;
            if cancel.is_cancelled() {
                return Ok(());
            }
        }
    }
}

impl Worker for Ingester {
    fn name(&self) -> &'static str {
        "ingester"
    }

    /// Ingestion, and beside it the fingerprint backfill: at start (once migrated), then every
    /// [`BACKFILL_EVERY`]. In this role rather than in the migrations: it runs off the start path
    /// (readiness never waits for a large table), in the role that writes fingerprints anyway,
    /// and again later for rows an older replica still wrote during a rolling update.
    async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        let backfill = self.clone();
        let sweeps = ticker::scan_periodically(BACKFILL_EVERY, self.db_migrated.clone(), &cancel, || {
            backfill.backfill_sweep(&cancel)
        });
        tokio::select! {
            ingested = self.ingest(&cancel) => ingested,
            // Ends only when cancelled or when its schedule fails.
            swept = sweeps => swept,
        }
    }
}

/// A dead letter as a row: where it was first published, why it died, what it carried.
pub fn dead_letter_row(
    delivery: &Delivery,
    source_queue: &str,
    settings: &Settings,
    now: DateTime<Utc>,
) -> NewFailedMessage {
    dead_letter_row_from(
        &delivery.properties,
        &delivery.data,
        &delivery.exchange.to_string(),
        &delivery.routing_key.to_string(),
        source_queue,
        settings,
        now,
    )
}

/// [`dead_letter_row`] over plain parts, for unit tests.
pub fn dead_letter_row_from(
    properties: &BasicProperties,
    body: &[u8],
    delivery_exchange: &str,
    delivery_routing_key: &str,
    source_queue: &str,
    settings: &Settings,
    now: DateTime<Utc>,
) -> NewFailedMessage {
    let empty = FieldTable::default();
    let table = properties.headers().as_ref().unwrap_or(&empty);
    // Once as JSON: the headers column, and its x-death list is the death history.
    let headers_json = headers::table_to_json(table);
    let death = Death::read(
        table,
        &headers_json,
        source_queue,
        delivery_exchange,
        delivery_routing_key,
        now,
    );
    let mut error_message = format!("{} in {} (death count {})", death.reason, death.queue, death.count);
    if let Some(why) = ERROR_HEADERS.iter().find_map(|h| text(table.inner().get(*h))) {
        error_message.push_str(": ");
        error_message.push_str(&why);
    }
    let (payload, payload_encoding) = stored_payload(body);
    let retry_count = table
        .inner()
        .get(RETRY_COUNT_HEADER)
        .map(headers::to_json)
        .and_then(|v| v.as_u64())
        .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX));
    let max_retries = settings.max_retries();
    // Poison: the broker itself dead-lettered it again and again in a short time (a consumer
    // that crashes on it and requeues, a dead-letter cycle). Retrying would only feed the loop.
    let first_death_age = (now - death.failed_at).to_std().unwrap_or_default();
    let poison =
        death.count >= i64::from(settings.ingest.poison_deaths) && first_death_age <= settings.ingest.poison_window;
    if poison {
        error_message = format!(
            "poison: dead-lettered {} times from {} within {}s; {error_message}",
            death.count,
            death.queue,
            first_death_age.as_secs()
        );
    }
    let (status, next_retry_at) = retry::decide(&retry::schedule(settings), retry_count, max_retries, poison, now);
    let message_id = properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned())
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| derived_message_id(&death, body));
    NewFailedMessage {
        message_id,
        exchange: death.exchange,
        routing_key: death.routing_key,
        queue: death.queue,
        payload,
        payload_encoding,
        headers: json_text(&headers_json),
        death_history: death.history,
        error_message,
        retry_count,
        max_retries,
        status,
        failed_at: death.failed_at,
        next_retry_at,
    }
}

/// A header's value as text, when it is one.
fn text(value: Option<&AMQPValue>) -> Option<String> {
    value.map(headers::to_json).and_then(|v| v.as_str().map(str::to_owned))
}

/// Where and why a message died, from its `x-death` headers (the delivery's own exchange and
/// routing key when the broker gave none).
struct Death {
    exchange: String,
    routing_key: String,
    queue: String,
    reason: String,
    count: i64,
    failed_at: DateTime<Utc>,
    /// Every death, as JSON text.
    history: String,
}

impl Death {
    fn read(
        table: &FieldTable,
        headers_json: &serde_json::Value,
        source_queue: &str,
        delivery_exchange: &str,
        delivery_routing_key: &str,
        now: DateTime<Utc>,
    ) -> Self {
        let header = |name: &str| table.inner().get(name);
        // x-death lists deaths most recent first; the one from our source queue says where it came from.
        let deaths: Vec<&FieldTable> = match header("x-death") {
            Some(AMQPValue::FieldArray(items)) => items
                .as_slice()
                .iter()
                .filter_map(|v| match v {
                    AMQPValue::FieldTable(t) => Some(t),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let death = deaths
            .iter()
            .find(|d| text(d.inner().get("queue")).as_deref() == Some(source_queue))
            .or_else(|| deaths.first())
            .copied();
        let field = |name: &str| death.and_then(|d| d.inner().get(name));
        let routing_key = match field("routing-keys") {
            Some(AMQPValue::FieldArray(keys)) => keys.as_slice().first().and_then(|k| text(Some(k))),
            _ => None,
        };
        let failed_at = match field("time") {
            Some(AMQPValue::Timestamp(t)) => DateTime::from_timestamp(*t as i64, 0).unwrap_or(now),
            _ => now,
        };
        Self {
            exchange: text(field("exchange"))
                .or_else(|| text(header("x-first-death-exchange")))
                .unwrap_or_else(|| delivery_exchange.to_owned()),
            routing_key: routing_key.unwrap_or_else(|| delivery_routing_key.to_owned()),
            queue: text(field("queue")).unwrap_or_else(|| source_queue.to_owned()),
            reason: text(field("reason"))
                .or_else(|| text(header("x-first-death-reason")))
                .unwrap_or_else(|| "dead-lettered".into()),
            count: field("count")
                .map(headers::to_json)
                .and_then(|v| v.as_i64())
                .unwrap_or(1),
            failed_at: failed_at.min(now),
            history: death_history(headers_json),
        }
    }
}

/// Every death (the tables of the x-death list) as JSON text: the list converted with the headers.
fn death_history(headers_json: &serde_json::Value) -> String {
    let deaths = match headers_json.get("x-death") {
        Some(serde_json::Value::Array(items)) => items.iter().filter(|v| v.is_object()).collect(),
        _ => Vec::new(),
    };
    serde_json::to_string(&deaths).unwrap_or_else(|_| "[]".into())
}

/// JSON text, written straight into a buffer: the `Display` of a value goes through the
/// formatter for every token, several times slower on a dead letter's headers.
fn json_text(value: &serde_json::Value) -> String {
    // A `Value` always serializes (its keys are strings).
    serde_json::to_string(value).unwrap_or_default()
}

/// The body as stored: JSON as JSON; other bodies losslessly as a JSON string (text or base64).
fn stored_payload(body: &[u8]) -> (String, PayloadEncoding) {
    let (payload, encoding) = PayloadEncoding::decode(body);
    (json_text(&payload), encoding)
}

/// A message published without a message_id still gets a stable identity, so a redelivery of
/// the same dead letter lands on the same row.
fn derived_message_id(death: &Death, body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for part in [
        death.exchange.as_bytes(),
        death.routing_key.as_bytes(),
        death.queue.as_bytes(),
        death.failed_at.to_rfc3339().as_bytes(),
        body,
    ] {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part);
    }
    format!("derived-{}", hex::encode(&hash.finalize()[..16]))
}

#[cfg(test)]
mod tests {
    use lapin::types::{FieldArray, ShortString};

    use super::*;

    fn death(queue: &str, exchange: &str, key: &str, reason: &str, count: i64) -> AMQPValue {
        let mut t = FieldTable::default();
        t.insert("queue".into(), AMQPValue::LongString(queue.into()));
        t.insert("exchange".into(), AMQPValue::LongString(exchange.into()));
        t.insert("reason".into(), AMQPValue::LongString(reason.into()));
        t.insert("count".into(), AMQPValue::LongLongInt(count));
        t.insert("time".into(), AMQPValue::Timestamp(1_790_000_000));
        t.insert(
            "routing-keys".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString(key.into())])),
        );
        AMQPValue::FieldTable(t)
    }

    fn props(extra: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![death(
                "orders_queue",
                "orders_exchange",
                "orders.created",
                "rejected",
                1,
            )])),
        );
        for (k, v) in extra {
            headers.insert(ShortString::from(*k), v.clone());
        }
        BasicProperties::default()
            .with_message_id("m-1".into())
            .with_headers(headers)
    }

    #[test]
    fn a_rejected_message_keeps_its_origin_and_reason() {
        let settings = Settings::default();
        let now = Utc::now();
        let props = props(&[("x-error", AMQPValue::LongString("stock service down".into()))]);
        let row = dead_letter_row_from(
            &props,
            br#"{"event":"order.created"}"#,
            "dead_letters_exchange",
            "orders_queue",
            "orders_queue",
            &settings,
            now,
        );
        assert_eq!(
            (row.exchange.as_str(), row.routing_key.as_str(), row.queue.as_str()),
            ("orders_exchange", "orders.created", "orders_queue")
        );
        assert_eq!(row.message_id, "m-1");
        assert_eq!(
            row.error_message,
            "rejected in orders_queue (death count 1): stock service down"
        );
        assert_eq!(row.payload_encoding, PayloadEncoding::Json);
        assert_eq!(row.status, Status::Pending);
        assert_eq!(row.retry_count, 0);
        let wait = (row.next_retry_at.unwrap() - now).num_milliseconds();
        assert!(
            (54_000..=66_000).contains(&wait),
            "first retry in about 1 min: {wait} ms"
        );
        assert_eq!(row.failed_at.timestamp(), 1_790_000_000);
        assert!(row.death_history.contains("orders.created"));
    }

    #[test]
    fn the_death_history_is_the_x_death_list_of_the_stored_headers() {
        let settings = Settings::default();
        let row = dead_letter_row_from(&props(&[]), b"{}", "", "", "orders_queue", &settings, Utc::now());
        let headers: serde_json::Value = serde_json::from_str(&row.headers).unwrap();
        let history: serde_json::Value = serde_json::from_str(&row.death_history).unwrap();
        assert_eq!(history, headers["x-death"]);
        assert_eq!(row.death_history, headers["x-death"].to_string());
    }

    #[test]
    fn non_json_bodies_are_kept_losslessly() {
        let settings = Settings::default();
        let row = dead_letter_row_from(
            &props(&[]),
            b"plain text",
            "",
            "",
            "orders_queue",
            &settings,
            Utc::now(),
        );
        assert_eq!(
            (row.payload.as_str(), row.payload_encoding),
            ("\"plain text\"", PayloadEncoding::Text)
        );
        let row = dead_letter_row_from(
            &props(&[]),
            &[0xff, 0x00, 0x9f],
            "",
            "",
            "orders_queue",
            &settings,
            Utc::now(),
        );
        assert_eq!(
            (row.payload.as_str(), row.payload_encoding),
            ("\"/wCf\"", PayloadEncoding::Base64)
        );
    }

    #[test]
    fn the_last_allowed_retry_ends_in_failed() {
        let settings = Settings::default();
        let props = props(&[(RETRY_COUNT_HEADER, AMQPValue::LongLongInt(3))]);
        let row = dead_letter_row_from(&props, b"{}", "", "", "orders_queue", &settings, Utc::now());
        assert_eq!(
            (row.retry_count, row.status, row.next_retry_at),
            (3, Status::Failed, None)
        );
        let props = self::props(&[(RETRY_COUNT_HEADER, AMQPValue::LongLongInt(2))]);
        let row = dead_letter_row_from(&props, b"{}", "", "", "orders_queue", &settings, Utc::now());
        assert_eq!(row.status, Status::Pending);
    }

    #[test]
    fn a_message_dead_lettered_over_and_over_is_poison() {
        let settings = Settings::default();
        let now = Utc::now();
        let looping = |seconds_ago: i64| {
            let AMQPValue::FieldTable(mut entry) =
                death("orders_queue", "orders_exchange", "orders.created", "rejected", 6)
            else {
                unreachable!()
            };
            entry.insert(
                "time".into(),
                AMQPValue::Timestamp((now.timestamp() - seconds_ago) as u64),
            );
            let mut headers = FieldTable::default();
            headers.insert(
                "x-death".into(),
                AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(entry)])),
            );
            BasicProperties::default()
                .with_message_id("p".into())
                .with_headers(headers)
        };
        let row = dead_letter_row_from(&looping(30), b"{}", "", "", "orders_queue", &settings, now);
        assert_eq!((row.status, row.next_retry_at), (Status::Failed, None));
        assert!(
            row.error_message
                .starts_with("poison: dead-lettered 6 times from orders_queue within 30s"),
            "{}",
            row.error_message
        );
        // The same count spread over days is not a loop.
        let row = dead_letter_row_from(&looping(3 * 86_400), b"{}", "", "", "orders_queue", &settings, now);
        assert_eq!(row.status, Status::Pending);
    }

    #[test]
    fn a_message_without_id_gets_a_stable_one() {
        let settings = Settings::default();
        let mut headers = FieldTable::default();
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![death("q", "e", "k", "expired", 1)])),
        );
        let props = BasicProperties::default().with_headers(headers);
        let a = dead_letter_row_from(&props, b"{}", "", "", "q", &settings, Utc::now());
        let b = dead_letter_row_from(&props, b"{}", "", "", "q", &settings, Utc::now());
        assert!(a.message_id.starts_with("derived-"));
        assert_eq!(a.message_id, b.message_id);
    }
}
