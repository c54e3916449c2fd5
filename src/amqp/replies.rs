//! Request-reply over RabbitMQ's direct reply-to: the replies worker owns one channel that consumes
//! `amq.rabbitmq.reply-to` (no-ack) and is in confirm mode; every request of the process is
//! published on that same channel (the broker requires it) with a fresh `correlation_id`, and its
//! reply is routed back to the waiting caller through a map correlation_id -> `oneshot`.
//!
//! The channel and its map form a [`Session`], shared with callers on a `watch`. A new connection
//! generation (or a dead channel) ends the session: every request still waiting is answered
//! `Unavailable` at once (its sender dropped), never left to time out.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt;
use lapin::{BasicProperties, Channel, Consumer, options::BasicConsumeOptions, types::FieldTable};
use tokio::{
    sync::{oneshot, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{
    connection::{LinkReceiver, pause_before_reopening, wait_for_link},
    publisher::{self, OutgoingMessage, PublishOutcome},
};
use crate::metrics::Metrics;

/// RabbitMQ's pseudo-queue for direct reply-to: no queue to declare, replies go straight to the
/// consumer of the channel that published the request.
pub const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// The header a responder sets on its reply to say the request failed; its value (a string) is
/// the reason, and the API answers 502 `reply_error` with it.
pub const ERROR_HEADER: &str = "mb-error";

/// Whether a message is a request of this service (`app_id` and direct reply-to; the broker
/// rewrites `reply_to` to `amq.rabbitmq.reply-to.<channel>`). Dead-lettered, it is worth nothing:
/// its caller has had its answer, and a retry would ask a responder whose reply nobody reads.
pub fn is_request(properties: &BasicProperties) -> bool {
    let text = |value: &Option<lapin::types::ShortString>| value.as_ref().map(|s| s.to_string());
    text(properties.app_id()).as_deref() == Some(publisher::APP_ID)
        && text(properties.reply_to()).is_some_and(|reply_to| reply_to.starts_with(REPLY_TO))
}

/// A reply as the responder sent it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub correlation_id: Option<String>,
    pub content_type: Option<String>,
    /// The reply's application headers, as JSON.
    pub headers: serde_json::Value,
    /// The responder's error header ([`ERROR_HEADER`]), when it set one.
    pub error: Option<String>,
    pub data: Vec<u8>,
}

impl Reply {
    /// A consumed reply as plain data: callers need no AMQP types.
    pub fn new(properties: &BasicProperties, data: Vec<u8>) -> Self {
        let text = |value: &Option<lapin::types::ShortString>| value.as_ref().map(|s| s.to_string());
        let table = properties.headers().as_ref();
        let error = table
            .and_then(|headers| headers.inner().get(ERROR_HEADER))
            .map(super::headers::to_json)
            .map(|error| error.as_str().map_or_else(|| error.to_string(), str::to_owned));
        Self {
            correlation_id: text(properties.correlation_id()),
            content_type: text(properties.content_type()),
            headers: table.map_or_else(
                || serde_json::Value::Object(Default::default()),
                super::headers::table_to_json,
            ),
            error,
            data,
        }
    }
}

/// What became of one request.
#[derive(Debug)]
pub enum RequestOutcome {
    /// Boxed: a reply's properties are ten times the size of the other variants.
    Replied(Box<Reply>),
    /// The request never reached a queue (unroutable, queue full, no broker, channel lost): the
    /// publisher's outcome says which.
    NotPublished(PublishOutcome),
    /// No reply before the deadline (or no confirm, when the broker is that slow).
    TimedOut,
}

/// The waiting requests of one channel. `None` once the session ended: a request that comes
/// after that is refused at once instead of waiting on a channel nobody reads.
type Waiting = Mutex<Option<HashMap<String, oneshot::Sender<Reply>>>>;

/// One reply channel and the requests waiting on it.
struct Session {
    channel: Channel,
    waiting: Waiting,
}

impl Session {
    /// Registers a request; `None` when the session already ended.
    fn wait_for(self: &Arc<Self>, correlation_id: String) -> Option<(Registration, oneshot::Receiver<Reply>)> {
        let (tx, rx) = oneshot::channel();
        let mut waiting = self.waiting.lock().expect("reply map poisoned");
        waiting.as_mut()?.insert(correlation_id.clone(), tx);
        let registration = Registration {
            session: Arc::clone(self),
            correlation_id,
        };
        Some((registration, rx))
    }

    /// Hands a reply to its request; `false` when nobody waits for it any more (too late).
    fn deliver(&self, correlation_id: &str, reply: Reply) -> bool {
        let sender = self
            .waiting
            .lock()
            .expect("reply map poisoned")
            .as_mut()
            .and_then(|waiting| waiting.remove(correlation_id));
        sender.is_some_and(|sender| sender.send(reply).is_ok())
    }

    /// Ends the session: every waiting request's sender is dropped, so it answers `Unavailable`.
    fn end(&self) -> usize {
        let ended = self.waiting.lock().expect("reply map poisoned").take();
        ended.map_or(0, |waiting| waiting.len())
    }
}

/// A request's place in the map, removed when the request ends in any way (answered, timed out,
/// or its HTTP client gone): a reply after that is a late one.
struct Registration {
    session: Arc<Session>,
    correlation_id: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(waiting) = self.session.waiting.lock().expect("reply map poisoned").as_mut() {
            waiting.remove(&self.correlation_id);
        }
    }
}

/// Cheap to clone; every clone uses the worker's current session.
#[derive(Clone)]
pub struct Replies {
    sessions: watch::Receiver<Option<Arc<Session>>>,
}

impl Replies {
    /// The handle and the worker future to spawn (it ends when `cancel` fires).
    pub fn new(
        link: LinkReceiver,
        metrics: Arc<Metrics>,
        cancel: CancellationToken,
    ) -> (Self, impl Future<Output = ()> + Send) {
        let (tx, sessions) = watch::channel(None);
        (Self { sessions }, run(link, tx, metrics, cancel))
    }

    /// Publishes `message` as a request and waits for its reply until `deadline`. The request
    /// carries the time left as its `expiration`, so a responder never sees one nobody waits for.
    pub async fn request(&self, message: &OutgoingMessage, deadline: Instant) -> RequestOutcome {
        let not_connected =
            || RequestOutcome::NotPublished(PublishOutcome::Unavailable("not connected to RabbitMQ".into()));
        let Some(session) = self.sessions.borrow().clone() else {
            return not_connected();
        };
        let correlation_id = uuid::Uuid::new_v4().simple().to_string();
        let Some((_registration, reply)) = session.wait_for(correlation_id.clone()) else {
            return not_connected();
        };
        // At least 1 ms: an expiration of 0 would let the broker drop it before any responder.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let properties = publisher::properties(message)
            // Transient: a request is worth nothing after its timeout, a broker restart included.
            .with_delivery_mode(1)
            .with_reply_to(REPLY_TO.into())
            .with_correlation_id(correlation_id.as_str().into())
            .with_expiration(left.as_millis().to_string().as_str().into());
        let sent = tokio::time::timeout_at(deadline, publisher::publish_with(&session.channel, message, properties));
        match sent.await {
            Err(_) => return RequestOutcome::TimedOut,
            Ok(PublishOutcome::Confirmed) => {}
            Ok(other) => return RequestOutcome::NotPublished(other),
        }
        match tokio::time::timeout_at(deadline, reply).await {
            Ok(Ok(reply)) => RequestOutcome::Replied(Box::new(reply)),
            Ok(Err(_)) => RequestOutcome::NotPublished(PublishOutcome::Unavailable(
                "the connection was lost while waiting for the reply".into(),
            )),
            Err(_) => RequestOutcome::TimedOut,
        }
    }
}

async fn run(
    mut link: LinkReceiver,
    sessions: watch::Sender<Option<Arc<Session>>>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    while let Some(current) = wait_for_link(&mut link, &cancel).await {
        link.mark_unchanged();
        let (channel, consumer) = match open_session(&current.connection).await {
            Ok(opened) => opened,
            Err(err) => {
                warn!(error = %err, "Cannot open the reply channel; retrying.");
                if pause_before_reopening(&cancel).await {
                    continue;
                }
                return;
            }
        };
        let session = Arc::new(Session {
            channel: channel.clone(),
            waiting: Mutex::new(Some(HashMap::new())),
        });
        sessions.send_replace(Some(Arc::clone(&session)));
        info!(generation = current.generation, "Reply consumer ready.");
        let stop = route_replies(&session, consumer, &mut link, &metrics, &cancel).await;
        sessions.send_replace(None);
        let failed = session.end();
        if failed > 0 {
            warn!(
                failed,
                "Reply channel lost with requests waiting; they answer broker_unavailable."
            );
        }
        // 200 is AMQP's reply-success code, not a duration.
        let _ = channel.close(200, "replies done".into()).await;
        if stop {
            return;
        }
    }
}

/// A channel in confirm mode (for `mandatory` returns and nacks) consuming direct reply-to.
async fn open_session(connection: &lapin::Connection) -> lapin::Result<(Channel, Consumer)> {
    let channel = publisher::open_channel(connection).await?;
    let options = BasicConsumeOptions {
        no_ack: true, // direct reply-to requires it
        ..BasicConsumeOptions::default()
    };
    let consumer = channel
        .basic_consume(
            REPLY_TO.into(),
            "messages-broker-replies".into(),
            options,
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

/// Routes replies to their requests until the channel or connection fails (`false`) or we are
/// cancelled (`true`).
async fn route_replies(
    session: &Session,
    mut consumer: Consumer,
    link: &mut LinkReceiver,
    metrics: &Metrics,
    cancel: &CancellationToken,
) -> bool {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return true,
            // A new generation (or none): this channel belongs to a dead connection.
            _ = link.changed() => return false,
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => {
                    let correlation_id = delivery.properties.correlation_id().as_ref().map(|id| id.to_string());
                    let reply = Reply::new(&delivery.properties, delivery.data);
                    let delivered = correlation_id.is_some_and(|id| session.deliver(&id, reply));
                    if !delivered {
                        metrics.late_replies_total.inc();
                        debug!("A reply came after its request ended (or without a known correlation_id); dropped.");
                    }
                }
                Some(Err(err)) => {
                    warn!(error = %err, "Reply consumer failed; reopening.");
                    return false;
                }
                None => {
                    warn!("Reply consumer ended; reopening.");
                    return false;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_direct_reply_to_requests_are_requests() {
        let ours = BasicProperties::default().with_app_id(publisher::APP_ID.into());
        let rewritten = "amq.rabbitmq.reply-to.g1h2AA5yZXBseUA0MTY1NjkzNwAAAOgAAAAAZHY=";
        assert!(is_request(&ours.clone().with_reply_to(rewritten.into())));
        assert!(!is_request(&ours.clone().with_reply_to("my_replies".into())));
        assert!(!is_request(&ours));
        let theirs = BasicProperties::default().with_app_id("billing".into());
        assert!(!is_request(&theirs.with_reply_to(rewritten.into())));
    }
}
