//! Liveness, readiness and metrics: open to all, cheap, and served by every process.

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
};
use serde::Serialize;

use super::AppState;
use crate::{
    store,
    workers::{applier::TopologyState, stats::Source},
};

/// Bound on the management API check of processes without the stats role.
const MANAGEMENT_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    pub status: &'static str,
    pub service: &'static str,
}

/// Liveness: the process answers. Deliberately checks nothing else.
#[utoipa::path(get, path = "/api/health", tag = "probes", responses((status = 200, body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health {
        status: "healthy",
        service: "messages-broker",
    })
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: &'static str,
    pub checks: Checks,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Checks {
    pub broker: Check,
    pub topology: Check,
    pub database: Check,
    /// Informational: never makes the process unready on its own, since the stats role falls
    /// back to passive declares without it (no rates then).
    pub management: Check,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Check {
    /// `up`, `down`, or `skipped` when this process's roles do not need it.
    pub status: &'static str,
    pub detail: String,
}

impl Check {
    fn up(detail: impl Into<String>) -> Self {
        Self {
            status: "up",
            detail: detail.into(),
        }
    }
    fn down(detail: impl Into<String>) -> Self {
        Self {
            status: "down",
            detail: detail.into(),
        }
    }
    fn skipped(detail: impl Into<String>) -> Self {
        Self {
            status: "skipped",
            detail: detail.into(),
        }
    }
    fn ok(&self) -> bool {
        self.status != "down"
    }
}

/// Readiness: broker connected, topology applied, database reachable and migrated. The
/// management API's state is reported too, but does not count.
#[utoipa::path(get, path = "/api/ready", tag = "probes", responses(
    (status = 200, body = Readiness), (status = 503, body = Readiness, description = "At least one check is down")
))]
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let broker = match &*state.link.borrow() {
        Some(link) => Check::up(format!("connected (connection #{})", link.generation)),
        None => Check::down("not connected to RabbitMQ"),
    };
    let topology = match &*state.topology_state.borrow() {
        TopologyState::Applied { .. } => Check::up("applied"),
        TopologyState::Pending => Check::down("not applied yet"),
        TopologyState::Failed { problems, .. } => Check::down(problems.join("; ")),
    };
    let database = async {
        match &state.pool {
            None => Check::skipped("no role of this process uses the database"),
            Some(pool) => match store::ping(pool).await {
                Err(err) => Check::down(err.to_string()),
                Ok(()) if !*state.db_migrated.borrow() => Check::down("migrations not applied yet"),
                Ok(()) => Check::up("reachable, migrated"),
            },
        }
    };
    let (database, management) = tokio::join!(database, management_check(&state));
    let all_ok = broker.ok() && topology.ok() && database.ok();
    let body = Readiness {
        status: if all_ok { "ready" } else { "not_ready" },
        checks: Checks {
            broker,
            topology,
            database,
            management,
        },
    };
    let status = if all_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// The management API as the stats role last saw it; processes without the role (or before its
/// first poll) ask the API itself, briefly.
async fn management_check(state: &AppState) -> Check {
    let snapshot = state.stats.borrow().clone();
    if let Some(snapshot) = snapshot {
        let age = (chrono::Utc::now() - snapshot.taken_at).num_seconds().max(0);
        return match snapshot.source {
            Source::ManagementApi => Check::up(format!("reachable (queue stats read {age} s ago)")),
            Source::PassiveDeclare | Source::Unavailable => Check::down(format!(
                "{} ({age} s ago); queue stats fall back to passive declares",
                snapshot.management_error.as_deref().unwrap_or("unreachable")
            )),
        };
    }
    match tokio::time::timeout(MANAGEMENT_CHECK_TIMEOUT, state.management.overview()).await {
        Ok(Ok(_)) => Check::up("reachable"),
        Ok(Err(err)) => Check::down(err.to_string()),
        Err(_) => Check::down(format!("no answer within {MANAGEMENT_CHECK_TIMEOUT:?}")),
    }
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "probes", responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
}
