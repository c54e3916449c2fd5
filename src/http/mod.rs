//! The HTTP API. Every process serves the probes and `/metrics`; the `api` role adds the
//! authenticated `/api` routes.

pub mod auth;
pub mod body;
pub mod error;
pub mod failed;
pub mod failure_groups;
pub mod idempotency;
pub mod openapi;
pub mod probes;
pub mod publish;
pub mod queues;
pub mod rate_limit;
pub mod replays;
pub mod request;
pub mod scheduled;
pub mod schemas;
pub mod server;
pub mod topology;

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;

use axum::{
    Router,
    extract::DefaultBodyLimit,
    middleware,
    routing::{delete, get, post},
};
use sqlx::MySqlPool;
use tokio::sync::watch;
use tracing::error;

use crate::{
    amqp::{connection::LinkReceiver, management::ManagementClient},
    metrics::Metrics,
    roles::Role,
    settings::Settings,
    shared::{Shared, Stages},
    topology::Topology,
    workers::{applier::TopologyState, retrier::Retrier},
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
    pub retrier: Option<Arc<Retrier>>,
    /// The stats role's latest snapshot; stays `None` in processes without the role.
    pub stats: crate::workers::stats::SnapshotReceiver,
    /// For the readiness check of processes without the stats role (the others read the snapshot).
    pub management: ManagementClient,
    /// Signs and checks the console's session and flash cookies.
    pub sessions: crate::console::session::Sessions,
}

impl AppContext {
    /// What the handlers read, from the shared parts; `publishing` and the retry routes'
    /// retrier only where this process runs the `api` role.
    pub fn new(shared: &Shared) -> Self {
        let api = shared.runs(Role::Api);
        Self {
            clients: Arc::new(auth::Clients::from_settings(&shared.settings.auth.clients)),
            settings: shared.settings.clone(),
            topology: shared.topology.clone(),
            metrics: shared.metrics.clone(),
            link: shared.link.clone(),
            topology_state: shared.topology_state.subscribe(),
            pool: shared
                .settings
                .app
                .roles
                .0
                .iter()
                .any(|r| r.needs_database())
                .then(|| shared.pool.clone()),
            db_migrated: shared.db_migrated.clone(),
            publishing: api.then(|| Arc::new(publish::Publishing::start(shared))),
            retrier: api.then(|| Arc::new(Retrier::new(shared))),
            stats: shared.stats.subscribe(),
            management: shared.management.clone(),
            sessions: crate::console::session::Sessions::from_settings(&shared.settings.console),
        }
    }

    /// The database of the routes that read rows; `None` only in processes without a role that
    /// needs one, which also serve none of those routes.
    pub fn database(&self) -> Result<&MySqlPool, error::ApiError> {
        self.pool.as_ref().ok_or_else(|| {
            error::ApiError::not_found("This process has no database; rows are served by the `api` role.")
        })
    }
}

/// A row id of a path: a positive integer, else nothing can be named by it.
pub fn positive_id(raw: &str) -> Option<u64> {
    raw.parse::<u64>().ok().filter(|id| *id > 0)
}

/// Binds the HTTP port (0 in tests) and serves until the first stage stops, under the limits of
/// `[app]` (see [`server`]); a server that ends on its own fires `stages.fatal`. Answers the bound
/// address.
pub async fn serve(state: AppState, stages: &Stages) -> anyhow::Result<SocketAddr> {
    let bind = format!("{}:{}", state.settings.app.host, state.settings.app.port);
    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .with_context(|| format!("Failed to bind the HTTP port {bind} (APP_HOST/APP_PORT)"))?;
    let addr = listener.local_addr()?;
    let limits = server::Limits::from_settings(&state.settings.app);
    let metrics = state.metrics.clone();
    let router = router(state);
    let (stop, fatal) = (stages.front_cancel.clone(), stages.fatal.clone());
    stages.front.spawn_named("http", async move {
        server::run(listener, router, limits, metrics, stop.clone()).await;
        // The loop only ends when asked to; anything else leaves the process without probes.
        if !stop.is_cancelled() {
            error!("HTTP server ended on its own; stopping.");
            fatal.cancel();
        }
    });
    Ok(addr)
}

pub fn router(state: AppState) -> Router {
    let mut router = Router::new()
        .route("/api/health", get(probes::health))
        .route("/api/ready", get(probes::ready))
        .route("/metrics", get(probes::metrics))
        .route("/api/openapi.json", get(openapi::document));
    // Without the `api` role there are no authenticated routes, and axum refuses (panics on) a
    // route_layer over no routes: those paths fall through to the JSON 404.
    if state.settings.app.roles.contains(Role::Api) {
        router = router.merge(api_routes(&state)).merge(crate::console::routes(&state));
    }
    router
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.settings.app.max_body_bytes))
        .with_state(state)
}

/// The `api` role's routes, all behind the bearer token.
fn api_routes(state: &AppState) -> Router<AppState> {
    let batch_limit = DefaultBodyLimit::max(state.settings.publish.max_batch_body_bytes);
    Router::new()
        .route("/api/topology", get(topology::show))
        .route("/api/messages/publish", post(publish::publish))
        .route(
            "/api/messages/publish/batch",
            post(publish::publish_batch).layer(batch_limit),
        )
        .route("/api/messages/request", post(request::request))
        .route("/api/messages/failed", get(failed::list))
        .route("/api/messages/failed/retry", post(failed::retry_matching))
        .route("/api/messages/failed/{id}", get(failed::show).delete(failed::delete))
        .route("/api/messages/retry/{id}", post(failed::retry_one))
        .route("/api/messages/failed/groups", get(failure_groups::list))
        .route(
            "/api/messages/failed/groups/{fingerprint}/retry",
            post(failure_groups::retry),
        )
        .route(
            "/api/messages/failed/groups/{fingerprint}/delete",
            post(failure_groups::delete),
        )
        .route("/api/messages/failed/{id}/edit-retry", post(failed::edit_retry))
        .route("/api/messages/scheduled", get(scheduled::list))
        .route("/api/messages/scheduled/{id}", delete(scheduled::cancel))
        .route("/api/replays", get(replays::list).post(replays::create))
        .route("/api/replays/{id}", get(replays::show))
        .route("/api/replays/{id}/cancel", post(replays::cancel))
        .route("/api/schemas", get(schemas::list_schemas))
        .route("/api/schemas/{event}/{version}", get(schemas::show_schema))
        .route("/api/queues", get(queues::list))
        .route("/api/queues/{queue}/stats", get(queues::stats))
        .route("/api/queues/{queue}/purge", post(queues::purge))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_token))
}
