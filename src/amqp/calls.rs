//! Broker calls the broker may refuse, on a throwaway channel: a refusal (a soft error such as
//! NOT_FOUND or PRECONDITION_FAILED) closes the channel it came on, so each refusal replaces the
//! channel and nothing else ever shares it. Every call is bounded: a broker under a resource
//! alarm can stall a channel forever.

use std::time::Duration;

use lapin::{
    Channel, Connection,
    options::QueuePurgeOptions,
    protocol::{AMQPErrorKind, AMQPSoftError},
};

/// Why a call did not go through, without lapin's types (callers map it to their own answers).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The broker has no such entity (NOT_FOUND).
    #[error("not found: {0}")]
    NotFound(String),
    /// The broker refused the call (another soft error: PRECONDITION_FAILED, RESOURCE_LOCKED...).
    #[error("refused: {0}")]
    Refused(String),
    #[error("no answer in time")]
    TimedOut,
    /// The connection failed or is closing: nothing more can be done on it.
    #[error("{0}")]
    Disconnected(String),
}

impl From<lapin::Error> for CallError {
    fn from(err: lapin::Error) -> Self {
        if let lapin::ErrorKind::ProtocolError(amqp) = err.kind()
            && let AMQPErrorKind::Soft(soft) = amqp.kind()
        {
            let reason = amqp.get_message().to_string();
            return match soft {
                AMQPSoftError::NOTFOUND => Self::NotFound(reason),
                _ => Self::Refused(reason),
            };
        }
        Self::Disconnected(err.to_string())
    }
}

impl CallError {
    /// A refusal of this one call; the connection is fine.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::NotFound(_) | Self::Refused(_))
    }
}

/// A channel of our own for calls that may be refused.
pub struct ThrowawayChannel<'a> {
    connection: &'a Connection,
    channel: Channel,
    timeout: Duration,
}

impl<'a> ThrowawayChannel<'a> {
    pub async fn open(connection: &'a Connection, timeout: Duration) -> Result<Self, CallError> {
        let channel = bounded(timeout, connection.create_channel()).await?;
        Ok(Self {
            connection,
            channel,
            timeout,
        })
    }

    /// Runs one call; after a refusal the next call gets a fresh channel.
    pub async fn call<T, F, Fut>(&mut self, call: F) -> Result<T, CallError>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: Future<Output = lapin::Result<T>>,
    {
        let result = bounded(self.timeout, call(self.channel.clone())).await;
        if result.as_ref().is_err_and(CallError::is_refusal) {
            self.channel = bounded(self.timeout, self.connection.create_channel()).await?;
        }
        result
    }

    pub async fn close(self, reason: &str) {
        let _ = bounded(self.timeout, self.channel.close(200, reason.into())).await;
    }
}

async fn bounded<T>(timeout: Duration, call: impl Future<Output = lapin::Result<T>>) -> Result<T, CallError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result.map_err(CallError::from),
        Err(_) => Err(CallError::TimedOut),
    }
}

/// Removes the ready messages of `queue`; answers how many.
pub async fn purge_queue(connection: &Connection, queue: &str, timeout: Duration) -> Result<u32, CallError> {
    let mut channel = ThrowawayChannel::open(connection, timeout).await?;
    let purged = channel
        .call(|channel| async move { channel.queue_purge(queue.into(), QueuePurgeOptions::default()).await })
        .await;
    channel.close("purged").await;
    purged
}
