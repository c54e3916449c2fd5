//! `GET /api/queues`, `GET /api/queues/{queue}/stats` (scope `read`): the stats role's latest
//! snapshot, never a call to the broker. `POST /api/queues/{queue}/purge` (scope `admin`): an
//! emergency tool, guarded by `X-Confirm-Purge: <queue>`, done over AMQP on a throwaway channel.
//!
//! Queue names from the path are checked like topology names before anything else: a name
//! outside `A-Z a-z 0-9 _ . - :` (1 to 255 bytes) is answered 404 and never reaches the broker.

use std::{sync::Arc, time::Duration};

use axum::{
    Json,
    extract::{Path, State, rejection::PathRejection},
    http::{HeaderMap, HeaderName, HeaderValue},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use tracing::warn;

use super::{
    AppState,
    auth::Caller,
    error::{ApiError, ErrorBody, ErrorCode},
};
use crate::{
    amqp::calls,
    roles::Role,
    settings::Scope,
    topology::validate::is_plain_name,
    workers::stats::{QueueStats, Snapshot},
};

/// The confirmation header of a purge; its value must be the queue's name.
pub const CONFIRM_PURGE: &str = "x-confirm-purge";

/// Bound on opening the channel and on the purge itself.
const PURGE_TIMEOUT: Duration = Duration::from_secs(10);

/// One queue of `GET /api/queues`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QueueSummary {
    pub name: String,
    /// Ready + unacked (ready only when the snapshot comes from passive declares).
    pub message_count: u64,
    pub consumer_count: u64,
    /// Declared by this service's topology.
    pub managed: bool,
    pub dead_letter: bool,
    pub messages_ready: u64,
    /// `null` when the snapshot comes from passive declares.
    pub messages_unacked: Option<u64>,
    pub max_length: Option<u32>,
    pub depth_ratio: Option<f64>,
}

/// Messages per second, from the management API.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Rates {
    pub publish: f64,
    pub deliver: f64,
    pub ack: f64,
}

/// `GET /api/queues/{queue}/stats`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QueueStatsBody {
    pub name: String,
    /// False for a queue of the topology that the broker does not have (counts are then 0).
    pub exists: bool,
    pub managed: bool,
    pub dead_letter: bool,
    /// Messages in the queue: ready + unacked.
    pub depth: u64,
    pub ready: u64,
    /// `null` when the snapshot comes from passive declares.
    pub unacked: Option<u64>,
    pub consumers: u64,
    /// `null` when the snapshot comes from passive declares.
    pub rates: Option<Rates>,
    /// Capacity (`x-max-length`) from the topology.
    pub max_length: Option<u32>,
    /// `depth / max_length`.
    pub depth_ratio: Option<f64>,
    /// Failed messages of this queue (and its dead-letter pair) not resolved yet: pending,
    /// retrying or out of retries. `null` when the database could not be read.
    pub failed_messages: Option<u64>,
    /// Ready messages while deliveries stall (deliver rate ~0), else 0; `null` without rates.
    pub consumer_lag: Option<u64>,
    /// `management_api` or `passive_declare`.
    pub source: &'static str,
    /// When the stats role took the snapshot (RFC 3339).
    pub taken_at: String,
    /// Why the management API was not used, when it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub management_error: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PurgeBody {
    pub message: String,
    /// Messages removed (ready ones: unacked messages are not purged).
    pub purged: u32,
}

/// The latest usable snapshot, or why there is none.
fn snapshot(state: &AppState) -> Result<Arc<Snapshot>, ApiError> {
    if !state.settings.app.roles.contains(Role::Stats) {
        return Err(ApiError::new(
            ErrorCode::StatsUnavailable,
            format!(
                "Queue statistics are served by processes that also run the `stats` role; this one runs `{}`.",
                state.settings.app.roles
            ),
        ));
    }
    let current = state.stats.borrow().clone();
    match current {
        None => Err(ApiError::new(
            ErrorCode::StatsUnavailable,
            "The first poll of the queues has not finished yet; retry in a moment.",
        )
        .with_retry_after(1)),
        Some(snapshot) => match snapshot.unavailable_reason() {
            Some(reason) => Err(ApiError::new(
                ErrorCode::StatsUnavailable,
                format!("Queue statistics cannot be read right now ({reason})."),
            )
            .with_retry_after(5)),
            None => Ok(snapshot),
        },
    }
}

/// A queue name from the path, checked before it goes anywhere.
fn queue_name(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    match path {
        Ok(Path(name)) if is_plain_name(&name) => Ok(name),
        _ => Err(ApiError::not_found(
            "No such queue (names are 1 to 255 ASCII letters, digits, `_`, `.`, `-`, `:`).",
        )),
    }
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[utoipa::path(get, path = "/api/queues", operation_id = "list_queues", tag = "queues", security(("bearer" = [])), responses(
    (status = 200, body = [QueueSummary], description = "Every queue of the vhost (the topology's marked `managed`); headers X-Stats-Source and X-Stats-Taken-At say where and when the figures were read"),
    (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    (status = 503, body = ErrorBody, description = "stats_unavailable: no snapshot yet, the broker unreachable, or no `stats` role in this process"),
))]
pub async fn list(State(state): State<AppState>, Caller(client): Caller) -> Result<Response, ApiError> {
    client.require(Scope::Read)?;
    let snapshot = snapshot(&state)?;
    let body: Vec<QueueSummary> = snapshot.queues.iter().map(summary).collect();
    let mut response = Json(body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        HeaderName::from_static("x-stats-source"),
        HeaderValue::from_static(snapshot.source.as_str()),
    );
    if let Ok(taken_at) = HeaderValue::from_str(&rfc3339(snapshot.taken_at)) {
        headers.insert(HeaderName::from_static("x-stats-taken-at"), taken_at);
    }
    Ok(response)
}

fn summary(queue: &QueueStats) -> QueueSummary {
    QueueSummary {
        name: queue.name.clone(),
        message_count: queue.messages,
        consumer_count: queue.consumers,
        managed: queue.managed_by_topology,
        dead_letter: queue.is_dead_letter,
        messages_ready: queue.ready,
        messages_unacked: queue.unacked,
        max_length: queue.max_length,
        depth_ratio: queue.depth_ratio,
    }
}

#[utoipa::path(get, path = "/api/queues/{queue}/stats", operation_id = "queue_stats", tag = "queues", security(("bearer" = [])),
    params(("queue" = String, Path, description = "Queue name")),
    responses(
        (status = 200, body = QueueStatsBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "Neither on the broker nor in the topology"),
        (status = 503, body = ErrorBody, description = "stats_unavailable"),
    ))]
pub async fn stats(
    State(state): State<AppState>,
    Caller(client): Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<QueueStatsBody>, ApiError> {
    client.require(Scope::Read)?;
    let name = queue_name(path)?;
    let snapshot = snapshot(&state)?;
    let source = snapshot.source.as_str();
    let taken_at = rfc3339(snapshot.taken_at);
    let management_error = snapshot.management_error.clone();
    if let Some(queue) = snapshot.queue(&name) {
        return Ok(Json(QueueStatsBody {
            name: queue.name.clone(),
            exists: true,
            managed: queue.managed_by_topology,
            dead_letter: queue.is_dead_letter,
            depth: queue.messages,
            ready: queue.ready,
            unacked: queue.unacked,
            consumers: queue.consumers,
            rates: match (queue.publish_rate, queue.deliver_rate, queue.ack_rate) {
                (Some(publish), Some(deliver), Some(ack)) => Some(Rates { publish, deliver, ack }),
                _ => None,
            },
            max_length: queue.max_length,
            depth_ratio: queue.depth_ratio,
            failed_messages: queue.failed_unresolved,
            consumer_lag: queue.consumer_lag,
            source,
            taken_at,
            management_error,
        }));
    }
    // Declared by the topology but absent from the broker: say so rather than 404.
    let declared = state
        .topology
        .queue(&name)
        .ok_or_else(|| ApiError::not_found(format!("No queue `{name}` on the broker nor in the topology.")))?;
    Ok(Json(QueueStatsBody {
        name: declared.name.clone(),
        exists: false,
        managed: true,
        dead_letter: declared.is_dead_letter(),
        depth: 0,
        ready: 0,
        unacked: None,
        consumers: 0,
        rates: None,
        max_length: declared.max_length,
        depth_ratio: None,
        failed_messages: None,
        consumer_lag: None,
        source,
        taken_at,
        management_error,
    }))
}

#[utoipa::path(post, path = "/api/queues/{queue}/purge", operation_id = "purge_queue", tag = "queues", security(("bearer" = [])),
    params(
        ("queue" = String, Path, description = "Queue name"),
        ("X-Confirm-Purge" = String, Header, description = "Must repeat the queue's name"),
    ),
    responses(
        (status = 200, body = PurgeBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody, description = "Not an admin"),
        (status = 404, body = ErrorBody, description = "No such queue on the broker"),
        (status = 409, body = ErrorBody, description = "purge_refused: the broker refused (e.g. an exclusive queue of another connection)"),
        (status = 428, body = ErrorBody, description = "confirmation_required: X-Confirm-Purge missing or not the queue's name"),
        (status = 503, body = ErrorBody, description = "broker_unavailable"),
    ))]
pub async fn purge(
    State(state): State<AppState>,
    Caller(client): Caller,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<PurgeBody>, ApiError> {
    client.require(Scope::Admin)?;
    let name = queue_name(path)?;
    let confirmed = headers
        .get(CONFIRM_PURGE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == name);
    if !confirmed {
        return Err(ApiError::new(
            ErrorCode::ConfirmationRequired,
            format!(
                "Purging deletes every ready message of `{name}` for good; send the header `X-Confirm-Purge: {name}` to confirm."
            ),
        ));
    }
    let link = state
        .link
        .borrow()
        .clone()
        .ok_or_else(|| ApiError::broker_unavailable("Not connected to RabbitMQ; retry later."))?;
    let what = format!("queue `{name}`");
    let purged = calls::purge_queue(&link.connection, &name, PURGE_TIMEOUT)
        .await
        .map_err(|err| ApiError::from_call(err, &what))?;
    warn!(client = %client.name, queue = %name, purged, "Queue purged.");
    Ok(Json(PurgeBody {
        message: format!("Queue `{name}` purged."),
        purged,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_names_are_checked_like_topology_names() {
        let ok = |name: &str| queue_name(Ok(Path(name.to_owned()))).is_ok();
        assert!(ok("orders_queue"));
        assert!(ok("orders_queue.dlq"));
        assert!(ok("amq.gen-JzTY20BRgKO-HjmUJj0wLg"));
        assert!(ok("a:b-c"));
        assert!(!ok(""));
        assert!(!ok("../api/vhosts"));
        assert!(!ok("orders queue"));
        assert!(!ok("orders%2Fqueue"));
        assert!(!ok("é"));
        assert!(!ok(&"q".repeat(256)));
        assert!(ok(&"q".repeat(255)));
        assert_eq!(queue_name(Ok(Path("a/b".into()))).unwrap_err().status(), 404);
    }
}
