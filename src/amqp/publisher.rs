//! The publisher worker: owns a channel in confirm mode and pipelines every request's publishes on
//! it; each request (one message, or a batch) gets one outcome per message on a `oneshot` once the
//! broker confirmed (or refused) them.
//!
//! Never one confirm at a time: publishes go out as requests arrive, confirms are awaited
//! together in a `FuturesUnordered`. A request in flight when its channel or connection dies gets
//! an error (its reply sender is dropped or answered `Unavailable`), never a false success.

use std::{sync::Arc, time::Duration};

use futures_util::{StreamExt, stream::FuturesUnordered};
use lapin::{
    BasicProperties, Channel, Confirmation,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable, ShortString},
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::connection::{LinkReceiver, pause_before_reopening, wait_for_link};

/// The `app_id` of every message this service publishes.
pub const APP_ID: &str = "messages-broker";

/// One message to publish. The payload is already the JSON body. Passed as an `Arc`: callers
/// keep it for the audit trail and their answer while it is in flight.
#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    pub exchange: String,
    pub routing_key: String,
    pub payload: bytes::Bytes,
    pub message_id: String,
    /// Application headers.
    pub headers: Vec<(String, AMQPValue)>,
    /// AMQP priority; queues declared with `max_priority` deliver higher ones first.
    pub priority: Option<u8>,
}

/// What the broker did with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Acked and routed to at least one queue.
    Confirmed,
    /// `mandatory` and no queue matched: returned by the broker (it still acks those).
    Unroutable,
    /// Nacked: with `x-overflow = reject-publish`, a full queue.
    Rejected,
    /// No connection, a channel error, or the connection died with the message in flight.
    Unavailable(String),
    /// No confirm within the deadline: the message may or may not be on the broker.
    TimedOut,
}

impl PublishOutcome {
    /// The `outcome` label of `messages_broker_published_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Confirmed => "published",
            Self::Unroutable => "unroutable",
            Self::Rejected => "queue_full",
            Self::Unavailable(_) => "broker_unavailable",
            Self::TimedOut => "timeout",
        }
    }
}

/// One request: its messages go out in order and are answered together.
struct Request {
    messages: Vec<Arc<OutgoingMessage>>,
    reply: Reply,
}

/// Cheap to clone; every clone feeds the same worker.
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::Sender<Request>,
    confirm_timeout: Duration,
}

/// Room for this many requests waiting for the worker; senders wait beyond it (backpressure).
const QUEUE_DEPTH: usize = 4096;

impl Publisher {
    /// The handle and the worker future to spawn (it ends when `cancel` fires and it drained).
    pub fn new(
        link: LinkReceiver,
        confirm_timeout: Duration,
        cancel: CancellationToken,
    ) -> (Self, impl Future<Output = ()> + Send) {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let worker = run(link, rx, confirm_timeout, cancel);
        (Self { tx, confirm_timeout }, worker)
    }

    /// Publishes one message and waits for the broker's answer.
    pub async fn publish(&self, message: Arc<OutgoingMessage>) -> PublishOutcome {
        let mut outcomes = self.publish_many(vec![message]).await;
        outcomes
            .pop()
            .unwrap_or(PublishOutcome::Unavailable("no outcome".into()))
    }

    /// Publishes every message, in order, and awaits all the confirms together: one request to
    /// the worker and one answer back, however many messages.
    pub async fn publish_many(&self, messages: Vec<Arc<OutgoingMessage>>) -> Vec<PublishOutcome> {
        let count = messages.len();
        let every = |outcome: PublishOutcome| vec![outcome; count];
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Request { messages, reply }).await.is_err() {
            return every(PublishOutcome::Unavailable("publisher stopped".into()));
        }
        // The worker bounds the confirms; this outer bound also covers time spent queued.
        match tokio::time::timeout(self.confirm_timeout * 2, answer).await {
            Ok(Ok(outcomes)) => outcomes,
            Ok(Err(_)) => every(PublishOutcome::Unavailable(
                "connection lost with the message in flight".into(),
            )),
            Err(_) => every(PublishOutcome::TimedOut),
        }
    }
}

async fn run(
    mut link: LinkReceiver,
    mut rx: mpsc::Receiver<Request>,
    confirm_timeout: Duration,
    cancel: CancellationToken,
) {
    loop {
        // Without a connection, answer at once: callers fail fast instead of piling up.
        let current = tokio::select! {
            _ = cancel.cancelled() => return,
            link = wait_for_link(&mut link, &cancel) => link,
            Some(request) = rx.recv(), if link.borrow().is_none() => {
                let unavailable = PublishOutcome::Unavailable("not connected to RabbitMQ".into());
                let _ = request.reply.send(vec![unavailable; request.messages.len()]);
                continue;
            }
        };
        let Some(current) = current else { return };
        link.mark_unchanged();
        let channel = match open_channel(&current.connection).await {
            Ok(channel) => channel,
            Err(err) => {
                warn!(error = %err, "Cannot open the publishing channel; retrying.");
                if pause_before_reopening(&cancel).await {
                    continue;
                }
                return;
            }
        };
        info!(generation = current.generation, "Publisher ready.");
        let stop = publish_on(&channel, &mut rx, &mut link, confirm_timeout, &cancel).await;
        // 200 is AMQP's reply-success code, not a duration.
        let _ = channel.close(200, "publisher done".into()).await;
        if stop {
            return;
        }
    }
}

pub(crate) async fn open_channel(connection: &lapin::Connection) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(channel)
}

/// Publishes on one channel until it or the connection fails (`false`) or we are cancelled and
/// every in-flight confirm has settled (`true`).
async fn publish_on(
    channel: &Channel,
    rx: &mut mpsc::Receiver<Request>,
    link: &mut LinkReceiver,
    confirm_timeout: Duration,
    cancel: &CancellationToken,
) -> bool {
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            // Settle confirms first: it keeps the in-flight set (and its memory) small.
            biased;
            Some((outcomes, reply)) = in_flight.next() => {
                let channel_lost = answer(reply, outcomes) && !channel.status().connected();
                if channel_lost {
                    // The rest in flight on this channel are dropped: their callers get an error.
                    warn!("Publishing channel closed; reopening.");
                    return false;
                }
            }
            _ = cancel.cancelled() => {
                // In-flight confirms finish (each bounded by the confirm timeout); no new work.
                while let Some((outcomes, reply)) = in_flight.next().await {
                    answer(reply, outcomes);
                }
                return true;
            }
            _ = link.changed() => return false,
            request = rx.recv() => {
                let Some(Request { messages, reply }) = request else { return true };
                // Sending is also in flight: waiting for each frame write would serialize requests.
                in_flight.push(publish_all(channel.clone(), messages, reply, confirm_timeout));
            }
        }
    }
}

type Reply = oneshot::Sender<Vec<PublishOutcome>>;

/// Sends the outcomes to the caller (gone callers are fine); `true` when one says the channel
/// or connection failed under it.
fn answer(reply: Reply, outcomes: Vec<PublishOutcome>) -> bool {
    let failed = outcomes.iter().any(|o| matches!(o, PublishOutcome::Unavailable(_)));
    let _ = reply.send(outcomes);
    failed
}

/// Sends the messages in order and waits for their confirms, all within one deadline (one timer
/// per request, not per message); a message not confirmed by then is `TimedOut`.
async fn publish_all(
    channel: Channel,
    messages: Vec<Arc<OutgoingMessage>>,
    reply: Reply,
    confirm_timeout: Duration,
) -> (Vec<PublishOutcome>, Reply) {
    let mut outcomes = vec![None; messages.len()];
    // First polled in push order: lapin assigns delivery tags and queues frames in batch order.
    let mut pending: FuturesUnordered<_> = messages
        .iter()
        .enumerate()
        .map(|(index, message)| {
            let channel = &channel;
            async move { (index, publish_one(channel, message).await) }
        })
        .collect();
    let deadline = tokio::time::sleep(confirm_timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = pending.next() => match next {
                Some((index, outcome)) => outcomes[index] = Some(outcome),
                None => break,
            },
            _ = &mut deadline => break,
        }
    }
    drop(pending);
    let outcomes = outcomes
        .into_iter()
        .map(|outcome| outcome.unwrap_or(PublishOutcome::TimedOut))
        .collect();
    (outcomes, reply)
}

/// Sends one message and waits for its confirm. lapin assigns the delivery tag and queues the
/// frames on the first poll, so concurrent sends on one channel keep tags and frames in step.
async fn publish_one(channel: &Channel, message: &OutgoingMessage) -> PublishOutcome {
    publish_with(channel, message, properties(message)).await
}

/// [`publish_one`] with the properties given: the request-reply worker adds its own (reply_to,
/// correlation_id, expiration) and shares the confirm handling.
pub(crate) async fn publish_with(
    channel: &Channel,
    message: &OutgoingMessage,
    properties: BasicProperties,
) -> PublishOutcome {
    let sent = channel
        .basic_publish(
            ShortString::from(message.exchange.as_str()),
            ShortString::from(message.routing_key.as_str()),
            BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            &message.payload,
            properties,
        )
        .await;
    match sent {
        Err(err) => PublishOutcome::Unavailable(err.to_string()),
        Ok(confirm) => match confirm.await {
            Ok(confirmation) => outcome_of(confirmation),
            Err(err) => PublishOutcome::Unavailable(err.to_string()),
        },
    }
}

fn outcome_of(confirmation: Confirmation) -> PublishOutcome {
    match confirmation {
        Confirmation::Ack(None) => PublishOutcome::Confirmed,
        Confirmation::Ack(Some(_)) => PublishOutcome::Unroutable,
        Confirmation::Nack(_) => PublishOutcome::Rejected,
        Confirmation::NotRequested => PublishOutcome::Unavailable("channel not in confirm mode".into()),
    }
}

pub(crate) fn properties(message: &OutgoingMessage) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (name, value) in &message.headers {
        headers.insert(ShortString::from(name.as_str()), value.clone());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(ShortString::from(message.message_id.as_str()))
        .with_timestamp(now)
        .with_app_id(APP_ID.into())
        .with_headers(headers);
    match message.priority {
        Some(priority) => properties.with_priority(priority),
        None => properties,
    }
}
