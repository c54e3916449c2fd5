//! Failure groups: the failed messages that share a fingerprint (same queue, same event, same
//! error once its ids, numbers and times are set aside; see src/fingerprint.rs). List them with
//! the failed-message list's filters, and retry or delete a whole group.
//!
//! A group is the set of rows with its fingerprint, nothing stored apart: acting on a
//! well-formed fingerprint that no row has (any more) answers a count of 0, like the bulk retry
//! whose filters match nothing, so a repeated POST (a form sent twice) is no error. A path
//! segment that is not a fingerprint at all names no group: 404.

use axum::{
    Json,
    body::Bytes,
    extract::{
        Path, Query, State,
        rejection::{BytesRejection, PathRejection, QueryRejection},
    },
    http::HeaderMap,
};
use serde_json::{Value, json};
use tracing::info;

use super::{
    AppState,
    auth::Caller,
    error::{ApiError, ErrorBody, stored},
    failed::{filter_pairs, page_of, parse_query, query_pairs},
};
use crate::{
    fingerprint,
    settings::Scope,
    store::failed_messages::{self, Filter},
};

#[utoipa::path(get, path = "/api/messages/failed/groups", operation_id = "list_failure_groups", tag = "failed messages", security(("bearer" = [])),
    params(
        ("status" = Option<String>, Query, description = "pending | retrying | failed | resolved: count only these rows"),
        ("exchange" = Option<String>, Query), ("routing_key" = Option<String>, Query), ("queue" = Option<String>, Query),
        ("from" = Option<String>, Query, description = "failed_at >= (RFC 3339 or YYYY-MM-DD)"),
        ("to" = Option<String>, Query, description = "failed_at <= (RFC 3339 or YYYY-MM-DD)"),
        ("q" = Option<String>, Query, description = "substring of message_id, payload or error"),
        ("fingerprint" = Option<String>, Query, description = "one group: 16 lowercase hex digits"),
        ("page" = Option<u32>, Query), ("per_page" = Option<u32>, Query, description = "1 to 100, default 15"),
    ),
    responses(
        (status = 200, description = "{data, page, per_page, total, last_page}: groups, the most recently failing first, each {fingerprint, queue, event, example_error, error_pattern, example_id, count, counts{pending, retrying, failed, resolved}, first_seen, last_seen}; total counts groups"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "bad filter"), (status = 503, body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    Caller(client): Caller,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    client.require(Scope::Read)?;
    let query = parse_query(&query_pairs(query)?, true).map_err(ApiError::validation)?;
    let (groups, total) =
        stored(failed_messages::groups(state.database()?, &query.filter, query.page, query.per_page).await)?;
    Ok(Json(page_of(json!(groups), total, query.page, query.per_page)))
}

#[utoipa::path(post, path = "/api/messages/failed/groups/{fingerprint}/retry", operation_id = "retry_failure_group", tag = "failed messages", security(("bearer" = [])),
    params(
        ("fingerprint" = String, Path, description = "16 lowercase hex digits"),
        ("status" = Option<String>, Query), ("exchange" = Option<String>, Query), ("routing_key" = Option<String>, Query),
        ("queue" = Option<String>, Query), ("from" = Option<String>, Query), ("to" = Option<String>, Query), ("q" = Option<String>, Query),
    ),
    request_body(content = Object, description = "Optional: more filters as a JSON object, as for the bulk retry"),
    responses((status = 200, description = "{queued: N}: every pending or failed row of the group (matching the filters) is due now; 0 when none"),
        (status = 400, body = ErrorBody, description = "invalid_json"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "not a fingerprint"), (status = 408, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn retry(
    State(state): State<AppState>,
    Caller(client): Caller,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    client.require(Scope::Operate)?;
    let filter = group_filter(&state, path, query, &headers, body)?;
    let queued = stored(failed_messages::make_due(state.database()?, &filter).await)?;
    info!(client = %client.name, queued, filter = ?filter, "Failure group retry queued.");
    Ok(Json(json!({ "queued": queued })))
}

#[utoipa::path(post, path = "/api/messages/failed/groups/{fingerprint}/delete", operation_id = "delete_failure_group", tag = "failed messages", security(("bearer" = [])),
    params(
        ("fingerprint" = String, Path, description = "16 lowercase hex digits"),
        ("status" = Option<String>, Query), ("exchange" = Option<String>, Query), ("routing_key" = Option<String>, Query),
        ("queue" = Option<String>, Query), ("from" = Option<String>, Query), ("to" = Option<String>, Query), ("q" = Option<String>, Query),
    ),
    request_body(content = Object, description = "Optional: more filters as a JSON object, as for the bulk retry"),
    responses((status = 200, description = "{deleted: N}: every row of the group matching the filters, whatever its status; 0 when none"),
        (status = 400, body = ErrorBody, description = "invalid_json"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "not a fingerprint"), (status = 408, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Caller(client): Caller,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    client.require(Scope::Operate)?;
    let filter = group_filter(&state, path, query, &headers, body)?;
    let deleted = stored(failed_messages::delete_matching(state.database()?, &filter).await)?;
    info!(client = %client.name, deleted, filter = ?filter, "Failure group deleted.");
    Ok(Json(json!({ "deleted": deleted })))
}

/// The rows a group action touches: the path's fingerprint and the other filters.
fn group_filter(
    state: &AppState,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Filter, ApiError> {
    let fingerprint = match path {
        Ok(Path(raw)) if fingerprint::is_fingerprint(&raw) => raw,
        Ok(Path(raw)) => return Err(ApiError::not_found(format!("No failure group `{raw}`."))),
        Err(_) => return Err(ApiError::not_found("No such failure group.")),
    };
    let pairs = filter_pairs(state, query, headers, body)?;
    if pairs.iter().any(|(key, _)| key == "fingerprint") {
        return Err(ApiError::invalid_field("fingerprint", "is given by the path"));
    }
    let mut query = parse_query(&pairs, false).map_err(ApiError::validation)?;
    query.filter.fingerprint = Some(fingerprint);
    Ok(query.filter)
}
