//! The HTTP API. Every process serves the probes and `/metrics`; the `api` role adds the
//! authenticated `/api` routes.

pub mod auth;
pub mod error;
pub mod openapi;
pub mod probes;
pub mod topology;

use std::sync::Arc;

use axum::{Router, extract::DefaultBodyLimit, middleware, routing::get};
use sqlx::MySqlPool;
use tokio::sync::watch;

use crate::{
    amqp::connection::LinkReceiver,
    metrics::Metrics,
    settings::Settings,
    topology::Topology,
    workers::{Role, applier::TopologyState},
};

/// What handlers read. Everything is shared or a cheap `watch` receiver: handlers never call the
/// broker for state, they read what the workers published.
#[derive(Clone)]
pub struct AppState {
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
}

pub fn router(state: AppState) -> Router {
    let mut api = Router::new();
    if state.settings.app.roles.contains(Role::Api) {
        api = api.route("/api/topology", get(topology::show));
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
