//! One AMQP connection per process, kept alive by a supervisor loop: connect, publish the live
//! connection on a `watch`, wait for it to die, back off with jitter, connect again.
//!
//! lapin's own auto-recovery is young (see STYLE.md), so recovery is ours: every consumer of the
//! `watch` sees a new [`Link`] with a higher generation and redoes its setup (declares, channels).

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use lapin::{Connection, ConnectionProperties, Event};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{backoff::Backoff, metrics::Metrics, settings::RabbitMqSettings};

/// A live connection. `generation` grows with every reconnect so watchers can tell a new
/// connection from the one they already set up.
#[derive(Clone)]
pub struct Link {
    pub connection: Arc<Connection>,
    pub generation: u64,
}

pub type LinkSender = watch::Sender<Option<Link>>;
pub type LinkReceiver = watch::Receiver<Option<Link>>;

/// How often the connection status is polled in addition to lapin's error events.
const STATUS_POLL: Duration = Duration::from_millis(500);

pub fn link_channel() -> (LinkSender, LinkReceiver) {
    watch::channel(None)
}

/// Waits until a connection is published (or `cancel` fires).
pub async fn wait_for_link(rx: &mut LinkReceiver, cancel: &CancellationToken) -> Option<Link> {
    tokio::select! {
        _ = cancel.cancelled() => None,
        link = rx.wait_for(Option::is_some) => link.ok().and_then(|l| l.clone()),
    }
}

/// The pause after a channel failed to open, before the next try: short, since callers wait on
/// that channel; not zero, or a connection that refuses channels (closing, or at channel_max)
/// would be asked in a tight loop. `false` when cancelled meanwhile.
pub async fn pause_before_reopening(cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(Duration::from_millis(200)) => true,
    }
}

/// Opens one connection, named so operators (and tests) can find it in the management UI.
pub async fn connect(settings: &RabbitMqSettings, name: &str) -> lapin::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let attempt = Connection::connect_uri(settings.amqp_uri(), properties);
    // The URI's connection_timeout covers TCP; this also bounds the AMQP handshake.
    match tokio::time::timeout(settings.connect_timeout * 2, attempt).await {
        Ok(result) => result,
        Err(_) => Err(lapin::Error::from(lapin::ErrorKind::IOError(Arc::new(
            std::io::Error::new(std::io::ErrorKind::TimedOut, "AMQP handshake timed out"),
        )))),
    }
}

/// The connection supervisor. Returns only when `cancel` fires, after closing the connection.
pub async fn run_connection(
    settings: RabbitMqSettings,
    name: String,
    metrics: Arc<Metrics>,
    tx: LinkSender,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(settings.reconnect_min, settings.reconnect_max);
    let mut generation = 0u64;
    loop {
        let connection = tokio::select! {
            _ = cancel.cancelled() => return,
            result = connect(&settings, &name) => result,
        };
        let connection = match connection {
            Ok(connection) => Arc::new(connection),
            Err(err) => {
                let delay = backoff.next_delay();
                // Log loudly once per outage, then quietly: an outage must not flood the logs.
                if backoff.attempts() == 1 {
                    warn!(uri = %settings.display_uri(), error = %err, retry_in = ?delay, "Cannot connect to RabbitMQ; retrying with backoff. Check RABBITMQ_HOST/PORT/USER/PASSWORD/VHOST.");
                } else {
                    debug!(error = %err, attempt = backoff.attempts(), retry_in = ?delay, "RabbitMQ still unreachable.");
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        };
        generation += 1;
        if generation > 1 {
            metrics.amqp_reconnects_total.inc();
        }
        backoff.reset();
        metrics.amqp_connected.set(1);
        info!(uri = %settings.display_uri(), generation, "Connected to RabbitMQ.");
        tx.send_replace(Some(Link {
            connection: connection.clone(),
            generation,
        }));

        let reason = tokio::select! {
            _ = cancel.cancelled() => None,
            reason = wait_until_closed(&connection) => Some(reason),
        };
        tx.send_replace(None);
        metrics.amqp_connected.set(0);
        match reason {
            None => {
                // Shutdown: a clean close tells the broker to requeue our unacked deliveries now.
                let close = connection.close(200, "messages-broker shutting down".into());
                let _ = tokio::time::timeout(Duration::from_secs(2), close).await;
                info!("RabbitMQ connection closed.");
                return;
            }
            Some(reason) => {
                warn!(generation, %reason, "RabbitMQ connection lost; reconnecting.");
            }
        }
    }
}

/// Resolves with a reason once the connection is no longer usable.
async fn wait_until_closed(connection: &Connection) -> String {
    let mut events = connection.events_listener();
    let mut poll = tokio::time::interval(STATUS_POLL);
    loop {
        tokio::select! {
            event = events.next() => match event {
                // Soft errors close one channel (a passive declare of a missing queue); the
                // connection lives on and their owner handles them.
                Some(Event::Error(err)) if err.is_amqp_soft_error() => debug!(error = %err, "Channel-level error."),
                Some(Event::Error(err)) => return err.to_string(),
                Some(Event::ConnectionBlocked(reason)) => warn!(%reason, "RabbitMQ blocked this connection (resource alarm); publishes will wait."),
                Some(Event::ConnectionUnblocked) => info!("RabbitMQ unblocked this connection."),
                Some(_) => {}
                None => return "event stream ended".into(),
            },
            _ = poll.tick() => {
                let status = connection.status();
                if status.closed() || status.errored() || status.closing() {
                    return "connection closed".into();
                }
            }
        }
    }
}
