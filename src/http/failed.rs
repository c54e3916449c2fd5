//! Failed messages: list (paginated, filtered), show, retry one now, retry in bulk by filter,
//! delete, edit and retry. Database trouble answers 503 `database_unavailable`, never a 500.

use std::collections::BTreeMap;

use axum::{
    Json,
    body::Bytes,
    extract::{
        Path, Query, State,
        rejection::{BytesRejection, PathRejection, QueryRejection},
    },
    http::HeaderMap,
};
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{Value, json};
use tracing::info;

use super::{
    AppState,
    auth::Caller,
    body::json_body,
    error::{ApiError, ErrorBody, ErrorCode, stored},
};
use crate::{
    edit, fingerprint,
    settings::Scope,
    store::failed_messages::{self, Filter, Status},
};

const DEFAULT_PER_PAGE: u32 = 15;
const MAX_PER_PAGE: u32 = 100;

/// Filters and pagination, each checked; every bad one is reported (422 with fields).
#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    pub filter: Filter,
    pub page: u32,
    pub per_page: u32,
}

pub fn parse_query(pairs: &[(String, String)], paginated: bool) -> Result<ListQuery, BTreeMap<String, String>> {
    let mut fields = BTreeMap::new();
    let mut query = ListQuery {
        filter: Filter::default(),
        page: 1,
        per_page: DEFAULT_PER_PAGE,
    };
    let text = |key: &str, value: &str, fields: &mut BTreeMap<String, String>| {
        if value.is_empty() || value.len() > 255 {
            fields.insert(key.to_owned(), "must be 1 to 255 characters".into());
            None
        } else {
            Some(value.to_owned())
        }
    };
    for (key, value) in pairs {
        match key.as_str() {
            "status" => match value.parse::<Status>().ok() {
                Some(status) => query.filter.status = Some(status),
                None => {
                    fields.insert(key.clone(), "must be one of pending, retrying, failed, resolved".into());
                }
            },
            "exchange" => query.filter.exchange = text(key, value, &mut fields),
            "routing_key" => query.filter.routing_key = text(key, value, &mut fields),
            "queue" => query.filter.queue = text(key, value, &mut fields),
            "q" => query.filter.q = text(key, value, &mut fields),
            "fingerprint" if fingerprint::is_fingerprint(value) => query.filter.fingerprint = Some(value.clone()),
            "fingerprint" => {
                fields.insert(
                    key.clone(),
                    format!("must be {} lowercase hex digits", fingerprint::LEN),
                );
            }
            "from" | "to" => match parse_time(value) {
                Some(time) if key == "from" => query.filter.from = Some(time),
                Some(time) => query.filter.to = Some(time),
                None => {
                    fields.insert(key.clone(), "must be an RFC 3339 date-time or a YYYY-MM-DD date".into());
                }
            },
            "page" if paginated => match value.parse::<u32>() {
                Ok(page) if (1..=1_000_000).contains(&page) => query.page = page,
                _ => {
                    fields.insert(key.clone(), "must be an integer from 1 to 1000000".into());
                }
            },
            "per_page" if paginated => match value.parse::<u32>() {
                Ok(n) if (1..=MAX_PER_PAGE).contains(&n) => query.per_page = n,
                _ => {
                    fields.insert(key.clone(), format!("must be an integer from 1 to {MAX_PER_PAGE}"));
                }
            },
            _ => {
                fields.insert(key.clone(), "unknown filter".into());
            }
        }
    }
    if let (Some(from), Some(to)) = (query.filter.from, query.filter.to)
        && from > to
    {
        fields.insert("from".into(), "must not be after `to`".into());
    }
    if fields.is_empty() { Ok(query) } else { Err(fields) }
}

pub(super) fn parse_time(value: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            NaiveDate::parse_from_str(value, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc())
        })
}

pub(super) fn query_pairs(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Vec<(String, String)>, ApiError> {
    query
        .map(|Query(pairs)| pairs)
        .map_err(|_| ApiError::validation(BTreeMap::from([("query".into(), "is not a valid query string".into())])))
}

/// The id segment: a segment that is not even UTF-8 names no row either.
fn path_id(path: Result<Path<String>, PathRejection>) -> Result<u64, ApiError> {
    match path {
        Ok(Path(raw)) => parse_id(&raw),
        Err(_) => Err(ApiError::not_found("No such failed message.")),
    }
}

/// Ids are positive integers; anything else cannot name a row.
fn parse_id(raw: &str) -> Result<u64, ApiError> {
    super::positive_id(raw).ok_or_else(|| ApiError::not_found(format!("No failed message `{raw}`.")))
}

#[utoipa::path(get, path = "/api/messages/failed", operation_id = "list_failed_messages", tag = "failed messages", security(("bearer" = [])),
    params(
        ("status" = Option<String>, Query, description = "pending | retrying | failed | resolved"),
        ("exchange" = Option<String>, Query), ("routing_key" = Option<String>, Query), ("queue" = Option<String>, Query),
        ("from" = Option<String>, Query, description = "failed_at >= (RFC 3339 or YYYY-MM-DD)"),
        ("to" = Option<String>, Query, description = "failed_at <= (RFC 3339 or YYYY-MM-DD)"),
        ("q" = Option<String>, Query, description = "substring of message_id, payload or error"),
        ("fingerprint" = Option<String>, Query, description = "one failure group: 16 lowercase hex digits"),
        ("page" = Option<u32>, Query), ("per_page" = Option<u32>, Query, description = "1 to 100, default 15"),
    ),
    responses(
        (status = 200, description = "{data, page, per_page, total, last_page}"),
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
    let (data, total) =
        stored(failed_messages::list(state.database()?, &query.filter, query.page, query.per_page).await)?;
    Ok(Json(page_of(json!(data), total, query.page, query.per_page)))
}

/// A paginated list's answer: `{data, page, per_page, total, last_page}`.
pub(super) fn page_of(data: Value, total: u64, page: u32, per_page: u32) -> Value {
    json!({
        "data": data,
        "page": page,
        "per_page": per_page,
        "total": total,
        "last_page": total.div_ceil(u64::from(per_page)).max(1),
    })
}

#[utoipa::path(get, path = "/api/messages/failed/{id}", operation_id = "show_failed_message", tag = "failed messages", security(("bearer" = [])),
    params(("id" = u64, Path)),
    responses((status = 200, description = "One failed message with headers and death history"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    Caller(client): Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    client.require(Scope::Read)?;
    let id = path_id(id)?;
    let row = stored(failed_messages::find(state.database()?, id).await)?
        .ok_or_else(|| ApiError::not_found(format!("No failed message {id}.")))?;
    Ok(Json(json!(row)))
}

#[utoipa::path(post, path = "/api/messages/retry/{id}", operation_id = "retry_failed_message", tag = "failed messages", security(("bearer" = [])),
    params(("id" = u64, Path)),
    responses((status = 200, description = "The row after the retry (status resolved once republished and confirmed)"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "already_resolved, retry_in_progress"), (status = 503, body = ErrorBody)))]
pub async fn retry_one(
    State(state): State<AppState>,
    Caller(client): Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    client.require(Scope::Operate)?;
    let id = path_id(id)?;
    let retrier = state
        .retrier
        .as_ref()
        .ok_or_else(|| ApiError::broker_unavailable("This process cannot republish."))?;
    match stored(retrier.retry_now(id).await)? {
        Ok((row, true)) => {
            info!(client = %client.name, id, "Failed message retried by hand.");
            Ok(Json(json!(row)))
        }
        Ok((_, false)) => Err(ApiError::broker_unavailable(
            "RabbitMQ did not confirm the republish; the message stays pending and will be retried.",
        )),
        Err(refusal) => Err(ApiError::from_claim(refusal, id)),
    }
}

#[utoipa::path(post, path = "/api/messages/failed/retry", operation_id = "retry_failed_messages", tag = "failed messages",
    request_body(content = Object, description = "Optional: the same filters as a JSON object, e.g. {\"exchange\": \"orders_exchange\"}"), security(("bearer" = [])),
    params(
        ("status" = Option<String>, Query), ("exchange" = Option<String>, Query), ("routing_key" = Option<String>, Query),
        ("queue" = Option<String>, Query), ("from" = Option<String>, Query), ("to" = Option<String>, Query), ("q" = Option<String>, Query),
        ("fingerprint" = Option<String>, Query, description = "one failure group: 16 lowercase hex digits"),
    ),
    responses((status = 200, description = "{queued: N}: every pending or failed row matching is due now"),
        (status = 400, body = ErrorBody, description = "invalid_json"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 408, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn retry_matching(
    State(state): State<AppState>,
    Caller(client): Caller,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    client.require(Scope::Operate)?;
    let pairs = filter_pairs(&state, query, &headers, body)?;
    let query = parse_query(&pairs, false).map_err(ApiError::validation)?;
    let queued = stored(failed_messages::make_due(state.database()?, &query.filter).await)?;
    info!(client = %client.name, queued, filter = ?query.filter, "Bulk retry queued.");
    Ok(Json(json!({ "queued": queued })))
}

/// The filters of a bulk action: the query string's, and those of a JSON object body
/// (`{"exchange": "orders_exchange", "from": "..."}`) when there is one.
pub(super) fn filter_pairs(
    state: &AppState,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Vec<(String, String)>, ApiError> {
    let mut pairs = query_pairs(query)?;
    let has_body = body.as_ref().is_ok_and(|b| !b.iter().all(u8::is_ascii_whitespace));
    if has_body || body.is_err() {
        let Value::Object(map) = json_body(headers, body, state.settings.app.max_body_bytes)? else {
            return Err(ApiError::new(
                ErrorCode::InvalidJson,
                "The body must be a JSON object of filters.",
            ));
        };
        for (key, value) in map {
            let value = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
            pairs.push((key, value));
        }
    }
    Ok(pairs)
}

#[utoipa::path(delete, path = "/api/messages/failed/{id}", operation_id = "delete_failed_message", tag = "failed messages", security(("bearer" = [])),
    params(("id" = u64, Path)),
    responses((status = 200, description = "{message}"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Caller(client): Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    client.require(Scope::Operate)?;
    let id = path_id(id)?;
    if !stored(failed_messages::delete(state.database()?, id).await)? {
        return Err(ApiError::not_found(format!("No failed message {id}.")));
    }
    info!(client = %client.name, id, "Failed message deleted.");
    Ok(Json(json!({ "message": format!("Failed message {id} deleted.") })))
}

#[utoipa::path(post, path = "/api/messages/failed/{id}/edit-retry", operation_id = "edit_and_retry_failed_message", tag = "failed messages", security(("bearer" = [])),
    params(("id" = u64, Path)),
    request_body(content = Object, description = "{\"payload\": <any JSON: the copy's body>, \"headers\": {\"name\": string | integer | boolean | null (removes it)}?}. x- and mb- headers, message_id and published-by cannot be edited."),
    responses((status = 200, description = "The original row after: resolved, `edited_to` = the copy's message_id; the copy carries `mb-edit-of` = the original's message_id"),
        (status = 400, body = ErrorBody, description = "invalid_json"), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "forbidden (scope), edit_disabled (failed.edit_enabled is off)"),
        (status = 404, body = ErrorBody), (status = 408, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "already_resolved, retry_in_progress (another edit or retry holds the row)"),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "validation_failed (fields name each locked or bad header), unroutable"),
        (status = 503, body = ErrorBody, description = "queue_full, broker_unavailable (the original is back as it was), database_unavailable")))]
pub async fn edit_retry(
    State(state): State<AppState>,
    Caller(client): Caller,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    client.require(Scope::Operate)?;
    if !state.settings.failed.edit_enabled {
        return Err(ApiError::new(
            ErrorCode::EditDisabled,
            "Edit and retry is turned off on this service (failed.edit_enabled).",
        ));
    }
    let id = path_id(id)?;
    let edit =
        edit::parse(json_body(&headers, body, state.settings.app.max_body_bytes)?).map_err(ApiError::validation)?;
    let retrier = state
        .retrier
        .as_ref()
        .ok_or_else(|| ApiError::broker_unavailable("This process cannot republish."))?;
    let copy_id = super::publish::new_message_id();
    match stored(retrier.edit_and_retry(id, &edit, copy_id, &client.name).await)? {
        Ok((row, outcome)) => match ApiError::from_publish(&outcome, &row.exchange, &row.routing_key) {
            None => Ok(Json(json!(row))),
            Some(err) => Err(err),
        },
        Err(refusal) => Err(ApiError::from_claim(refusal, id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn filters_parse() {
        let q = parse_query(
            &pairs(&[
                ("status", "failed"),
                ("exchange", "orders_exchange"),
                ("from", "2026-11-01"),
                ("per_page", "50"),
            ]),
            true,
        )
        .unwrap();
        assert_eq!(q.filter.status, Some(Status::Failed));
        assert_eq!(q.filter.from.unwrap().to_rfc3339(), "2026-11-01T00:00:00+00:00");
        assert_eq!((q.page, q.per_page), (1, 50));
        let q = parse_query(&pairs(&[("fingerprint", "0123456789abcdef")]), false).unwrap();
        assert_eq!(q.filter.fingerprint.as_deref(), Some("0123456789abcdef"));
    }

    #[test]
    fn every_bad_filter_is_reported() {
        let err = parse_query(
            &pairs(&[
                ("status", "lost"),
                ("per_page", "101"),
                ("page", "0"),
                ("to", "soon"),
                ("color", "red"),
                ("q", ""),
                ("fingerprint", "0123456789ABCDEF"),
            ]),
            true,
        )
        .unwrap_err();
        let keys: Vec<&str> = err.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            vec!["color", "fingerprint", "page", "per_page", "q", "status", "to"]
        );
        let err = parse_query(&pairs(&[("from", "2026-11-02"), ("to", "2026-11-01")]), true).unwrap_err();
        assert!(err.contains_key("from"));
        // The bulk retry takes no pagination.
        assert!(parse_query(&pairs(&[("page", "2")]), false).is_err());
    }

    #[test]
    fn ids_are_positive_integers() {
        assert_eq!(parse_id("12").unwrap(), 12);
        for bad in ["0", "-1", "abc", "..%2F", "1;DROP TABLE x", ""] {
            assert_eq!(parse_id(bad).unwrap_err().code, ErrorCode::NotFound);
        }
    }
}
