//! Confirmed publishing. A worker keeps one channel in confirm mode open on the current
//! connection (reopened after a failure or a reconnect); callers publish on it directly and await
//! their own confirms, so a confirm wakes the caller's task itself, with no hop through another
//! task. Publishes of concurrent callers are pipelined on that channel, never one confirm at a
//! time. A message in flight when its channel or connection dies gets an error, never a false
//! success.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::{StreamExt, stream::FuturesUnordered};
use lapin::{
    BasicProperties, Channel, Confirmation,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable, ShortString},
};
use tokio::sync::{Notify, watch};
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

/// Where the publishing channel stands; the worker moves it, callers read it.
#[derive(Clone)]
enum Slot {
    /// No connection: publishes fail at once instead of piling up.
    Disconnected,
    /// A connection, its channel being opened: publishes wait for it (up to the confirm timeout).
    Opening,
    Ready(Channel),
    /// Shut down: no new publishes.
    Stopped,
}

/// What the callers and the worker share.
struct Shared {
    slot: watch::Sender<Slot>,
    /// Publishes under way: at shutdown the worker lets them settle before closing the channel.
    in_flight: AtomicUsize,
    /// A caller saw its channel fail: the worker checks it and reopens.
    failed: Notify,
}

/// Cheap to clone; every clone publishes on the same channel.
#[derive(Clone)]
pub struct Publisher {
    shared: Arc<Shared>,
    confirm_timeout: Duration,
}

impl Publisher {
    /// The handle and the worker future to spawn (it ends when `cancel` fires and the publishes
    /// under way settled).
    pub fn new(
        link: LinkReceiver,
        confirm_timeout: Duration,
        cancel: CancellationToken,
    ) -> (Self, impl Future<Output = ()> + Send) {
        let shared = Arc::new(Shared {
            slot: watch::Sender::new(Slot::Disconnected),
            in_flight: AtomicUsize::new(0),
            failed: Notify::new(),
        });
        let worker = run(shared.clone(), link, confirm_timeout, cancel);
        (
            Self {
                shared,
                confirm_timeout,
            },
            worker,
        )
    }

    /// Publishes one message and waits for the broker's answer.
    pub async fn publish(&self, message: Arc<OutgoingMessage>) -> PublishOutcome {
        let mut outcomes = self.publish_many(vec![message]).await;
        outcomes
            .pop()
            .unwrap_or(PublishOutcome::Unavailable("no outcome".into()))
    }

    /// Publishes every message, in order, and awaits all the confirms together, within one
    /// deadline (the confirm timeout); a message not confirmed by then is `TimedOut`.
    pub async fn publish_many(&self, messages: Vec<Arc<OutgoingMessage>>) -> Vec<PublishOutcome> {
        let every = |outcome: PublishOutcome| vec![outcome; messages.len()];
        let channel = match self.channel().await {
            Ok(channel) => channel,
            Err(unavailable) => return every(unavailable),
        };
        let outcomes = {
            let _under_way = UnderWay::enter(&self.shared);
            publish_all(&channel, &messages, self.confirm_timeout).await
        };
        let failed = outcomes.iter().any(|o| matches!(o, PublishOutcome::Unavailable(_)));
        if failed && !channel.status().connected() {
            self.shared.failed.notify_one();
        }
        outcomes
    }

    /// The channel to publish on, waiting while it is being opened.
    async fn channel(&self) -> Result<Channel, PublishOutcome> {
        let mut slot = self.shared.slot.subscribe();
        let settled = tokio::time::timeout(
            self.confirm_timeout,
            slot.wait_for(|slot| !matches!(slot, Slot::Opening)),
        )
        .await;
        let unavailable = |why: &str| Err(PublishOutcome::Unavailable(why.into()));
        match settled {
            Err(_) => unavailable("the publishing channel is not open yet"),
            Ok(Err(_)) => unavailable("publisher stopped"),
            Ok(Ok(slot)) => match &*slot {
                Slot::Ready(channel) => Ok(channel.clone()),
                Slot::Disconnected => unavailable("not connected to RabbitMQ"),
                Slot::Opening | Slot::Stopped => unavailable("publisher stopped"),
            },
        }
    }
}

/// Counts a publish under way for as long as it lives (a caller that gives up drops it too).
struct UnderWay<'a>(&'a Shared);

impl<'a> UnderWay<'a> {
    fn enter(shared: &'a Shared) -> Self {
        shared.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(shared)
    }
}

impl Drop for UnderWay<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn run(shared: Arc<Shared>, mut link: LinkReceiver, confirm_timeout: Duration, cancel: CancellationToken) {
    loop {
        shared.slot.send_replace(Slot::Disconnected);
        let Some(current) = wait_for_link(&mut link, &cancel).await else {
            break;
        };
        link.mark_unchanged();
        shared.slot.send_replace(Slot::Opening);
        let channel = match open_channel(&current.connection).await {
            Ok(channel) => channel,
            Err(err) => {
                warn!(error = %err, "Cannot open the publishing channel; retrying.");
                if pause_before_reopening(&cancel).await {
                    continue;
                }
                break;
            }
        };
        info!(generation = current.generation, "Publisher ready.");
        shared.slot.send_replace(Slot::Ready(channel.clone()));
        let stop = tokio::select! {
            _ = cancel.cancelled() => true,
            _ = link.changed() => false,
            _ = closed(&shared, &channel) => {
                warn!("Publishing channel closed; reopening.");
                false
            }
        };
        if stop {
            // No new publishes; those under way get their confirms (each bounded by the timeout).
            shared.slot.send_replace(Slot::Stopped);
            settle(&shared, confirm_timeout).await;
        }
        // 200 is AMQP's reply-success code, not a duration.
        let _ = channel.close(200, "publisher done".into()).await;
        if stop {
            return;
        }
    }
    shared.slot.send_replace(Slot::Stopped);
}

/// Returns once a caller reported a failure and the channel is indeed no longer open.
async fn closed(shared: &Shared, channel: &Channel) {
    loop {
        shared.failed.notified().await;
        if !channel.status().connected() {
            return;
        }
    }
}

/// Waits until no publish is under way, at most a little longer than one confirm timeout.
async fn settle(shared: &Shared, confirm_timeout: Duration) {
    let deadline = tokio::time::Instant::now() + confirm_timeout + Duration::from_secs(1);
    while shared.in_flight.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(crate) async fn open_channel(connection: &lapin::Connection) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(channel)
}

/// Sends the messages in order and waits for their confirms, all within one deadline (one timer
/// per call, not per message).
async fn publish_all(
    channel: &Channel,
    messages: &[Arc<OutgoingMessage>],
    confirm_timeout: Duration,
) -> Vec<PublishOutcome> {
    if let [message] = messages {
        // The common case (a single publish) needs no set of futures.
        let outcome = tokio::time::timeout(confirm_timeout, publish_one(channel, message)).await;
        return vec![outcome.unwrap_or(PublishOutcome::TimedOut)];
    }
    let mut outcomes = vec![None; messages.len()];
    // First polled in push order: lapin assigns delivery tags and queues frames in batch order.
    let mut pending: FuturesUnordered<_> = messages
        .iter()
        .enumerate()
        .map(|(index, message)| async move { (index, publish_one(channel, message).await) })
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
    outcomes
        .into_iter()
        .map(|outcome| outcome.unwrap_or(PublishOutcome::TimedOut))
        .collect()
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
