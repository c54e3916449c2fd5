//! The ingester role: consumes every dead-letter queue with manual acks and a prefetch, turns each
//! dead letter into a `failed_messages` row, writes rows in batches, and acks a batch only once
//! its rows are committed. Database down: it holds the batch (unacked, so the broker keeps it),
//! logs once, retries with backoff, and catches up when the database is back.

use std::{sync::Arc, time::Duration};

use base64::{Engine, engine::general_purpose::STANDARD};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use lapin::{
    BasicProperties, Channel, Consumer,
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable},
};
use sqlx::MySqlPool;
use tokio::{sync::watch, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{applier::TopologyState, retrier};
use crate::{
    amqp::{
        connection::{Link, LinkReceiver, wait_for_link},
        headers,
    },
    backoff::Backoff,
    metrics::Metrics,
    settings::Settings,
    store::failed_messages::{self, NewFailedMessage, PayloadEncoding, Status},
    topology::{QueueRole, Topology},
};

/// Header our retrier sets on republished messages: how many retries produced this copy.
/// RabbitMQ >= 3.13 owns `x-` headers (and x-death counts), so the count is ours.
pub const RETRY_COUNT_HEADER: &str = "mb-retry-count";

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

impl Ingester {
    /// The role's loop: per connection, one consumer task per dead-letter queue.
    pub async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        loop {
            let Some(link) = wait_for_link(&mut self.link, &cancel).await else {
                return Ok(());
            };
            // Consumers start once the queues exist and rows can be written.
            let mut applied = self.topology_state.clone();
            let mut migrated = self.db_migrated.clone();
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = self.link.changed() => continue,
                ready = async {
                    applied.wait_for(|s| matches!(s, TopologyState::Applied { .. })).await.is_ok()
                        && migrated.wait_for(|m| *m).await.is_ok()
                } => if !ready { return Ok(()) },
            }
            self.link.mark_unchanged();
            let session = cancel.child_token();
            let mut consumers = JoinSet::new();
            for queue in self.topology.dead_letter_queues() {
                let QueueRole::DeadLetter { source_queue } = &queue.role else {
                    continue;
                };
                let worker = QueueIngester {
                    ingester: self.clone(),
                    dlq: queue.name.clone(),
                    source_queue: source_queue.clone(),
                };
                let (link, session) = (link.clone(), session.clone());
                consumers.spawn(async move { worker.consume(&link, &session).await });
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
            if let Some(err) = failure {
                // The supervisor logs it and restarts the role with backoff.
                return Err(err);
            }
            if cancel.is_cancelled() {
                return Ok(());
            }
        }
    }
}

struct QueueIngester {
    ingester: Ingester,
    dlq: String,
    source_queue: String,
}

impl QueueIngester {
    async fn consume(&self, link: &Link, session: &CancellationToken) -> anyhow::Result<()> {
        let prefetch = self.ingester.settings.ingest.prefetch;
        let channel = link.connection.create_channel().await?;
        // Twice the batch in flight: the next batch arrives while the previous one is written.
        channel
            .basic_qos(prefetch.saturating_mul(2), BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                self.dlq.as_str().into(),
                format!("messages-broker-ingester/{}", self.dlq).as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let result = self.batches(&channel, consumer, session).await;
        let _ = channel.close(200, "ingester stopping".into()).await;
        result
    }

    /// Collects a batch (up to the prefetch, or what came within the linger), stores it, acks it.
    async fn batches(
        &self,
        channel: &Channel,
        mut consumer: Consumer,
        session: &CancellationToken,
    ) -> anyhow::Result<()> {
        let settings = &self.ingester.settings;
        let max = usize::from(settings.ingest.prefetch);
        loop {
            let first = tokio::select! {
                _ = session.cancelled() => return Ok(()),
                next = consumer.next() => match next {
                    Some(delivery) => delivery?,
                    None => return Ok(()),
                },
            };
            let mut batch = vec![first];
            let linger = tokio::time::sleep(settings.ingest.batch_linger);
            tokio::pin!(linger);
            while batch.len() < max {
                tokio::select! {
                    _ = &mut linger => break,
                    next = consumer.next() => match next {
                        Some(delivery) => batch.push(delivery?),
                        None => break,
                    },
                }
            }
            if !self.store(&batch, session).await {
                return Ok(()); // cancelled while the database was down: unacked, so requeued
            }
            let last = batch.last().expect("a batch has at least one delivery");
            // One ack for the whole batch: tags on this channel only grow, and all are stored.
            channel
                .basic_ack(last.delivery_tag, BasicAckOptions { multiple: true })
                .await?;
            self.ingester
                .metrics
                .dead_letters_ingested_total
                .with_label_values(&[self.dlq.as_str()])
                .inc_by(batch.len() as u64);
        }
    }

    /// Writes the batch, retrying while the database is unavailable. `false` if cancelled.
    async fn store(&self, batch: &[Delivery], session: &CancellationToken) -> bool {
        let settings = &self.ingester.settings;
        let now = Utc::now();
        let rows: Vec<NewFailedMessage> = batch
            .iter()
            .map(|d| dead_letter_row(d, &self.source_queue, settings, now))
            .collect();
        let exhausted = rows.iter().filter(|r| r.status == Status::Failed).count();
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            match failed_messages::upsert_batch(&self.ingester.pool, &rows).await {
                Ok(()) => {
                    if backoff.attempts() > 0 {
                        info!(queue = %self.dlq, rows = rows.len(), "Database back: held dead letters stored.");
                    }
                    if exhausted > 0 {
                        self.ingester
                            .metrics
                            .retries_total
                            .with_label_values(&["exhausted"])
                            .inc_by(exhausted as u64);
                    }
                    return true;
                }
                Err(err) => {
                    let delay = backoff.next_delay();
                    if backoff.attempts() == 1 {
                        warn!(queue = %self.dlq, rows = rows.len(), error = %err, "Cannot store dead letters; holding them unacked and retrying.");
                    }
                    tokio::select! {
                        _ = session.cancelled() => return false,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
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
    let header = |name: &str| table.inner().get(name);
    let text = |value: Option<&AMQPValue>| value.map(headers::to_json).and_then(|v| v.as_str().map(str::to_owned));

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
    let death_field = |name: &str| death.and_then(|d| d.inner().get(name));
    let exchange = text(death_field("exchange"))
        .or_else(|| text(header("x-first-death-exchange")))
        .unwrap_or_else(|| delivery_exchange.to_owned());
    let routing_key = match death_field("routing-keys") {
        Some(AMQPValue::FieldArray(keys)) => keys.as_slice().first().and_then(|k| text(Some(k))),
        _ => None,
    }
    .unwrap_or_else(|| delivery_routing_key.to_owned());
    let queue = text(death_field("queue")).unwrap_or_else(|| source_queue.to_owned());
    let reason = text(death_field("reason"))
        .or_else(|| text(header("x-first-death-reason")))
        .unwrap_or_else(|| "dead-lettered".into());
    let count = death_field("count")
        .map(headers::to_json)
        .and_then(|v| v.as_i64())
        .unwrap_or(1);
    let failed_at = match death_field("time") {
        Some(AMQPValue::Timestamp(t)) => DateTime::from_timestamp(*t as i64, 0).unwrap_or(now),
        _ => now,
    };
    let failed_at = failed_at.min(now);
    let mut error_message = format!("{reason} in {queue} (death count {count})");
    if let Some(why) = ERROR_HEADERS.iter().find_map(|h| text(header(h))) {
        error_message.push_str(": ");
        error_message.push_str(&why);
    }

    let (payload, payload_encoding) = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(json) => (json.to_string(), PayloadEncoding::Json),
        Err(_) => match std::str::from_utf8(body) {
            Ok(text) => (serde_json::Value::from(text).to_string(), PayloadEncoding::Text),
            Err(_) => (
                serde_json::Value::from(STANDARD.encode(body)).to_string(),
                PayloadEncoding::Base64,
            ),
        },
    };
    let retry_count = header(RETRY_COUNT_HEADER)
        .map(headers::to_json)
        .and_then(|v| v.as_u64())
        .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX));
    let max_retries = settings.max_retries();
    // Poison: the broker itself dead-lettered it again and again in a short time (a consumer
    // that crashes on it and requeues, a dead-letter cycle). Retrying would only feed the loop.
    let first_death_age = (now - failed_at).to_std().unwrap_or_default();
    let poison = count >= i64::from(settings.ingest.poison_deaths) && first_death_age <= settings.ingest.poison_window;
    if poison {
        error_message = format!(
            "poison: dead-lettered {count} times from {queue} within {}s; {error_message}",
            first_death_age.as_secs()
        );
    }
    let (status, next_retry_at) = if retry_count >= max_retries || poison {
        (Status::Failed, None)
    } else {
        let delay = retrier::retry_delay(&settings.retry_schedule(), retry_count);
        (
            Status::Pending,
            Some(now + chrono::Duration::from_std(delay).unwrap_or_default()),
        )
    };
    let message_id = properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned())
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| derived_message_id(&exchange, &routing_key, &queue, failed_at, body));
    NewFailedMessage {
        message_id,
        exchange,
        routing_key,
        queue,
        payload,
        payload_encoding,
        headers: headers::table_to_json(table).to_string(),
        death_history: serde_json::Value::Array(deaths.iter().map(|d| headers::table_to_json(d)).collect()).to_string(),
        error_message,
        retry_count,
        max_retries,
        status,
        failed_at,
        next_retry_at,
    }
}

/// A message published without a message_id still gets a stable identity, so a redelivery of
/// the same dead letter lands on the same row.
fn derived_message_id(exchange: &str, routing_key: &str, queue: &str, failed_at: DateTime<Utc>, body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for part in [
        exchange.as_bytes(),
        routing_key.as_bytes(),
        queue.as_bytes(),
        failed_at.to_rfc3339().as_bytes(),
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
