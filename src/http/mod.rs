//! The HTTP API. Every process serves the probes and `/metrics`; the `api` role adds the
//! authenticated `/api` routes.

pub mod auth;
pub mod body;
pub mod error;
pub mod failed;
pub mod idempotency;
pub mod openapi;
pub mod probes;
pub mod publish;
pub mod queues;
pub mod rate_limit;
pub mod topology;

use std::sync::Arc;

use axum::{
    Router,
    extract::DefaultBodyLimit,
    middleware,
    routing::{get, post},
};
use sqlx::MySqlPool;
use tokio::sync::watch;

use crate::{
    amqp::{connection::LinkReceiver, management::ManagementClient},
    metrics::Metrics,
    roles::Role,
    settings::Settings,
    topology::Topology,
    workers::applier::TopologyState,
};

/// What handlers read, behind one `Arc`: axum clones the state for every extractor of every
/// request, and one reference count is cheaper than a dozen (and the management client's strings).
pub type AppState = Arc<AppContext>;

/// Everything is shared or a `watch` receiver: handlers never call the broker for state, they
/// read what the workers published.
pub struct AppContext {
    pub settings: Arc<Settings>,
    pub topology: Arc<Topology>,
    pub metrics: Arc<Metrics>,
    pub clients: Arc<auth::Clients>,
    pub link: LinkReceiver,
    pub topology_state: watch::Receiver<TopologyState>,
    /// `None` when no role of this process needs the database.
    pub pool: Option<MySqlPool>,
    /// True once migrations ran (or were not asked for) on this process's database.
    pub db_migrated: watch::Receiver<bool>,
    /// The publisher and its guards; `None` unless this process runs the `api` role.
    pub publishing: Option<Arc<publish::Publishing>>,
    /// Retries on demand (manual and bulk retry routes); needs the publisher and the database.
    pub retrier: Option<Arc<crate::workers::retrier::Retrier>>,
    /// The stats role's latest snapshot; stays `None` in processes without the role.
    pub stats: crate::workers::stats::SnapshotReceiver,
    /// For the readiness check of processes without the stats role (the others read the snapshot).
    pub management: ManagementClient,
}

pub fn router(state: AppState) -> Router {
    let mut api = Router::new();
    if state.settings.app.roles.contains(Role::Api) {
        let batch_limit = DefaultBodyLimit::max(state.settings.publish.max_batch_body_bytes);
        api = api
            .route("/api/topology", get(topology::show))
            .route("/api/messages/publish", post(publish::publish))
            .route(
                "/api/messages/publish/batch",
                post(publish::publish_batch).layer(batch_limit),
            )
            .route("/api/messages/failed", get(failed::list))
            .route("/api/messages/failed/retry", post(failed::retry_matching))
            .route("/api/messages/failed/{id}", get(failed::show).delete(failed::delete))
            .route("/api/messages/retry/{id}", post(failed::retry_one));
        api = api
            .route("/api/queues", get(queues::list))
            .route("/api/queues/{queue}/stats", get(queues::stats))
            .route("/api/queues/{queue}/purge", post(queues::purge));
    }
    let api = api.route_layer(middleware::from_fn_with_state(state.clone(), auth::require_token));

    Router::new()
        .route("/api/health", get(probes::health))
        .route("/api/ready", get(probes::ready))
        .route("/metrics", get(probes::metrics))
        .route("/api/openapi.json", get(openapi::document))
        .merge(api)
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.settings.app.max_body_bytes))
        .with_state(state)
}
