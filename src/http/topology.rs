//! `GET /api/topology`: the resolved topology this process works with (scope `read`).

use axum::{Json, extract::State};

use super::{
    AppState,
    auth::Caller,
    error::{ApiError, ErrorBody},
};
use crate::{settings::Scope, topology::Topology};

#[utoipa::path(get, path = "/api/topology", operation_id = "show_topology", tag = "topology", security(("bearer" = [])), responses(
    (status = 200, description = "Exchanges, queues (with derived dead-letter queues), bindings and rate limits"),
    (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)
))]
pub async fn show(State(state): State<AppState>, Caller(client): Caller) -> Result<Json<Topology>, ApiError> {
    client.require(Scope::Read)?;
    Ok(Json((*state.topology).clone()))
}
