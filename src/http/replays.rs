//! Replays of the audit trail. `POST /api/replays` (scope `operate`) selects `message_logs` rows
//! by a filter and publishes a copy of each again, to its own exchange or to a target one:
//! `dry_run: true` answers the count and a sample; a real run must repeat that count as
//! `expected_count` (409 `count_changed` when it moved), so nobody replays 380,000 messages by
//! accident, and answers 202 with the queued replay, which the scheduler role runs (see
//! `workers::replayer`). `GET /api/replays` and `/api/replays/{id}` (scope `read`) show them;
//! `POST /api/replays/{id}/cancel` (scope `operate`) cancels one: a POST rather than a DELETE,
//! since the replay is kept, with what it did, after its cancel.

use std::collections::BTreeMap;

use axum::{
    Json,
    body::Bytes,
    extract::{
        Path, Query, State,
        rejection::{BytesRejection, PathRejection, QueryRejection},
    },
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use tracing::info;

use super::{
    AppState,
    auth::{Caller, Client},
    body::json_body,
    error::{ApiError, ErrorBody, ErrorCode, stored},
    failed::{parse_time, query_pairs},
    publish::check_target,
};
use crate::{
    settings::Scope,
    store::replays::{self, CancelRefusal, LogFilter, NewReplay, Replay},
};

/// Rows shown by a dry run.
const SAMPLE: u32 = 10;
/// Most message ids one replay may name.
const MAX_IDS: usize = 1000;
/// Longest exchange name, routing key, event and message_id (AMQP short strings).
const SHORT_STRING: usize = 255;
const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100;

/// A replay request, checked for shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayRequest {
    pub filter: LogFilter,
    /// `None`: every copy goes to its original exchange.
    pub target: Option<String>,
    pub dry_run: bool,
    pub expected_count: Option<u64>,
}

/// Checks the body; every problem is reported, keyed by its field path.
pub fn parse_request(value: Value) -> Result<ReplayRequest, BTreeMap<String, String>> {
    let mut fields = BTreeMap::new();
    let Value::Object(mut body) = value else {
        fields.insert("body".into(), "must be a JSON object".into());
        return Err(fields);
    };
    for key in body.keys() {
        if !matches!(key.as_str(), "filter" | "target" | "dry_run" | "expected_count") {
            fields.insert(key.clone(), "unknown field".into());
        }
    }
    let filter = match body.remove("filter") {
        None | Some(Value::Null) => LogFilter::default(),
        Some(Value::Object(map)) => parse_filter(map, &mut fields),
        Some(_) => {
            fields.insert("filter".into(), "must be an object".into());
            LogFilter::default()
        }
    };
    let target = match body.remove("target") {
        None | Some(Value::Null) => None,
        Some(Value::Object(mut map)) => {
            for key in map.keys().filter(|k| *k != "exchange") {
                fields.insert(format!("target.{key}"), "unknown field".into());
            }
            match map.remove("exchange") {
                None | Some(Value::Null) => None,
                Some(value) => text(value, "target.exchange", &mut fields),
            }
        }
        Some(_) => {
            fields.insert("target".into(), "must be an object: {\"exchange\": \"...\"}".into());
            None
        }
    };
    let dry_run = match body.remove("dry_run") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(_) => {
            fields.insert("dry_run".into(), "must be a boolean".into());
            false
        }
    };
    let expected_count = match body.remove("expected_count") {
        None | Some(Value::Null) => None,
        Some(value) => match value.as_u64() {
            Some(n) => Some(n),
            None => {
                fields.insert("expected_count".into(), "must be a non-negative integer".into());
                None
            }
        },
    };
    if fields.is_empty() {
        Ok(ReplayRequest {
            filter,
            target,
            dry_run,
            expected_count,
        })
    } else {
        Err(fields)
    }
}

fn parse_filter(mut map: Map<String, Value>, fields: &mut BTreeMap<String, String>) -> LogFilter {
    for key in map.keys() {
        if !matches!(
            key.as_str(),
            "exchange" | "routing_key" | "event" | "from" | "to" | "message_ids"
        ) {
            fields.insert(format!("filter.{key}"), "unknown field".into());
        }
    }
    let mut take = |name: &str| map.remove(name).filter(|v| !v.is_null());
    let mut filter = LogFilter {
        exchange: take("exchange").and_then(|v| text(v, "filter.exchange", fields)),
        event: take("event").and_then(|v| text(v, "filter.event", fields)),
        ..Default::default()
    };
    filter.routing_key = match take("routing_key") {
        None => None,
        Some(Value::String(s)) if s.len() <= SHORT_STRING => Some(s),
        Some(_) => {
            fields.insert(
                "filter.routing_key".into(),
                format!("must be a topic pattern (`*` one word, `#` any) of at most {SHORT_STRING} bytes"),
            );
            None
        }
    };
    for (name, slot) in [("from", &mut filter.from), ("to", &mut filter.to)] {
        match take(name) {
            None => {}
            Some(Value::String(s)) if parse_time(&s).is_some() => *slot = parse_time(&s),
            Some(_) => {
                fields.insert(
                    format!("filter.{name}"),
                    "must be an RFC 3339 date-time or a YYYY-MM-DD date".into(),
                );
            }
        }
    }
    if let (Some(from), Some(to)) = (filter.from, filter.to)
        && from > to
    {
        fields.insert("filter.from".into(), "must not be after `to`".into());
    }
    match take("message_ids") {
        None => {}
        Some(Value::Array(ids)) if (1..=MAX_IDS).contains(&ids.len()) => {
            for (i, id) in ids.into_iter().enumerate() {
                if let Some(id) = text(id, &format!("filter.message_ids[{i}]"), fields) {
                    filter.message_ids.push(id);
                }
            }
        }
        Some(_) => {
            fields.insert(
                "filter.message_ids".into(),
                format!("must be a list of 1 to {MAX_IDS} message ids"),
            );
        }
    }
    filter
}

/// A non-empty string of at most 255 bytes.
fn text(value: Value, field: &str, fields: &mut BTreeMap<String, String>) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() && s.len() <= SHORT_STRING => Some(s),
        _ => {
            fields.insert(
                field.to_owned(),
                format!("must be a non-empty string of at most {SHORT_STRING} bytes"),
            );
            None
        }
    }
}

/// The oldest `published_at` the audit trail still holds (`retention.message_logs` ago).
fn retention_horizon(state: &AppState) -> DateTime<Utc> {
    let keep = chrono::Duration::from_std(state.settings.retention.message_logs).unwrap_or(chrono::Duration::MAX);
    Utc::now().checked_sub_signed(keep).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

const PAST_RETENTION: &str = "The range starts before the retention horizon (retention.message_logs): messages \
    older than it may already be deleted from the audit trail and cannot be replayed.";

/// A replay as the API shows it.
fn replay_body(replay: &Replay) -> Value {
    let done = replay.published + replay.failed;
    let mut body = json!({
        "id": replay.id,
        "status": replay.status,
        "filter": replay.filter,
        "target": {"exchange": replay.target_exchange},
        "total": replay.total,
        "published": replay.published,
        "failed": replay.failed,
        "progress": if replay.total == 0 { 1.0 } else { (done as f64 / replay.total as f64).min(1.0) },
        "cursor": replay.cursor_log_id,
        "until_log_id": replay.until_log_id,
        "past_retention": replay.past_retention,
        "requested_by": replay.requested_by,
        "owner": replay.owner,
        "lease_until": replay.lease_until,
        "last_error": replay.last_error,
        "created_at": replay.created_at,
        "started_at": replay.started_at,
        "finished_at": replay.finished_at,
    });
    if replay.past_retention {
        body["warning"] = PAST_RETENTION.into();
    }
    body
}

/// Where the copies go: the target, or the filter's exchange; both must be public exchanges of
/// the topology (and in the client's allow-list). Neither: each copy to its original exchange.
fn destination(state: &AppState, client: &Client, request: &ReplayRequest) -> Result<(), ApiError> {
    match request.target.as_deref().or(request.filter.exchange.as_deref()) {
        Some(exchange) => check_target(state, client, exchange),
        None => Ok(()),
    }
}

#[utoipa::path(post, path = "/api/replays", operation_id = "create_replay", tag = "replays", security(("bearer" = [])),
    request_body(content = Object, description = "{\"filter\"?: {\"exchange\"?, \"routing_key\"? (topic pattern: `*` one word, `#` any), \
        \"event\"?, \"from\"?, \"to\"? (published_at, RFC 3339 or YYYY-MM-DD), \"message_ids\"? (1 to 1000)}, \
        \"target\"?: {\"exchange\"}, \"dry_run\"?: bool, \"expected_count\"?: integer (required unless dry_run)}"),
    responses(
        (status = 200, description = "Dry run: {dry_run, count, sample (10 rows), filter, target, past_retention, retention_horizon, warning?}"),
        (status = 202, description = "The queued replay; Location: /api/replays/{id}"),
        (status = 400, body = ErrorBody, description = "invalid_json"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "count_changed, with the current `count`"),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "validation_failed (expected_count missing, a bad filter), unknown_exchange"),
        (status = 503, body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    Caller(client): Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    client.require(Scope::Operate)?;
    let request =
        parse_request(json_body(&headers, body, state.settings.app.max_body_bytes)?).map_err(ApiError::validation)?;
    destination(&state, &client, &request)?;
    let pool = state.database()?;
    let (count, until_log_id) = stored(replays::count_matching(pool, &request.filter).await)?;
    let horizon = retention_horizon(&state);
    let past_retention = request.filter.from.is_some_and(|from| from < horizon);
    if request.dry_run {
        let rows = stored(replays::matching(pool, &request.filter, 0, u64::MAX, SAMPLE).await)?;
        let sample: Vec<Value> = rows
            .iter()
            .map(|row| {
                let payload: Value = serde_json::from_str(&row.payload).unwrap_or_else(|_| row.payload.clone().into());
                json!({
                    "id": row.id,
                    "message_id": row.message_id,
                    "exchange": row.exchange,
                    "routing_key": row.routing_key,
                    "event": payload["event"],
                    "published_at": row.published_at,
                    "payload": payload,
                })
            })
            .collect();
        let mut answer = json!({
            "dry_run": true,
            "count": count,
            "sample": sample,
            "filter": request.filter,
            "target": {"exchange": request.target},
            "past_retention": past_retention,
            "retention_horizon": horizon,
        });
        if past_retention {
            answer["warning"] = PAST_RETENTION.into();
        }
        return Ok(Json(answer).into_response());
    }
    let Some(expected) = request.expected_count else {
        return Err(ApiError::invalid_field(
            "expected_count",
            "is required for a real run: make a dry run and send its count",
        ));
    };
    if expected != count {
        let mut err = ApiError::new(
            ErrorCode::CountChanged,
            format!(
                "The filter selects {count} messages now, not {expected}; check with a dry run and send the new count."
            ),
        );
        err.count = Some(count);
        return Err(err);
    }
    let new = NewReplay {
        filter: request.filter,
        target_exchange: request.target,
        requested_by: client.name.clone(),
        total: count,
        until_log_id,
        past_retention,
    };
    let id = stored(replays::insert(pool, &new).await)?;
    let replay = stored(replays::find(pool, id).await)?.ok_or_else(|| ApiError::not_found("The replay vanished."))?;
    info!(client = %client.name, replay = id, total = count, target = ?new.target_exchange, filter = ?new.filter, "Replay queued.");
    let location = HeaderValue::from_str(&format!("/api/replays/{id}")).expect("a path of digits");
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(replay_body(&replay)),
    )
        .into_response())
}

#[utoipa::path(get, path = "/api/replays", operation_id = "list_replays", tag = "replays", security(("bearer" = [])),
    params(("limit" = Option<u32>, Query, description = "1 to 100, default 20")),
    responses((status = 200, description = "{data: [replay, ...]}, newest first"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "bad limit"), (status = 503, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Caller(client): Caller,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    client.require(Scope::Read)?;
    let mut limit = DEFAULT_LIMIT;
    let mut fields = BTreeMap::new();
    for (key, value) in query_pairs(query)? {
        match key.as_str() {
            "limit" => match value.parse::<u32>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => limit = n,
                _ => drop(fields.insert(key, format!("must be an integer from 1 to {MAX_LIMIT}"))),
            },
            _ => drop(fields.insert(key, "unknown parameter".into())),
        }
    }
    if !fields.is_empty() {
        return Err(ApiError::validation(fields));
    }
    let replays = stored(replays::list(state.database()?, limit).await)?;
    Ok(Json(
        json!({ "data": replays.iter().map(replay_body).collect::<Vec<_>>() }),
    ))
}

/// The id segment: a positive integer, else no replay.
fn replay_id(path: Result<Path<String>, PathRejection>) -> Result<u64, ApiError> {
    let not_found = || ApiError::not_found("No such replay.");
    match path {
        Ok(Path(raw)) => super::positive_id(&raw).ok_or_else(not_found),
        Err(_) => Err(not_found()),
    }
}

#[utoipa::path(get, path = "/api/replays/{id}", operation_id = "show_replay", tag = "replays", security(("bearer" = [])),
    params(("id" = u64, Path)),
    responses((status = 200, description = "The replay: status (queued, running, completed, cancelled, failed), total, published, failed, \
        progress, cursor, past_retention, owner, lease_until, created_at, started_at, finished_at..."),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    Caller(client): Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    client.require(Scope::Read)?;
    let id = replay_id(id)?;
    let replay = stored(replays::find(state.database()?, id).await)?
        .ok_or_else(|| ApiError::not_found(format!("No replay {id}.")))?;
    Ok(Json(replay_body(&replay)))
}

#[utoipa::path(post, path = "/api/replays/{id}/cancel", operation_id = "cancel_replay", tag = "replays", security(("bearer" = [])),
    params(("id" = u64, Path)),
    responses((status = 200, description = "The replay, cancelled (its replayer stops after the batch in flight)"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "replay_finished: completed or failed already"), (status = 503, body = ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    Caller(client): Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    client.require(Scope::Operate)?;
    let id = replay_id(id)?;
    match stored(replays::cancel(state.database()?, id).await)? {
        Ok(replay) => {
            info!(client = %client.name, replay = id, published = replay.published, "Replay cancelled.");
            Ok(Json(replay_body(&replay)))
        }
        Err(CancelRefusal::NotFound) => Err(ApiError::not_found(format!("No replay {id}."))),
        Err(CancelRefusal::Finished(status)) => Err(ApiError::new(
            ErrorCode::ReplayFinished,
            format!(
                "Replay {id} is {}; only a queued or running replay can be cancelled.",
                status.as_str()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_parses_with_its_filter_and_target() {
        let request = parse_request(json!({
            "filter": {"exchange": "orders_exchange", "routing_key": "orders.#", "event": "order.created",
                       "from": "2026-12-01", "to": "2026-12-02T00:00:00Z", "message_ids": ["a", "b"]},
            "target": {"exchange": "audit_exchange"},
            "expected_count": 2,
        }))
        .unwrap();
        assert_eq!(request.filter.routing_key.as_deref(), Some("orders.#"));
        assert_eq!(request.filter.message_ids, ["a", "b"]);
        assert_eq!(request.target.as_deref(), Some("audit_exchange"));
        assert_eq!((request.dry_run, request.expected_count), (false, Some(2)));
        assert_eq!(parse_request(json!({})).unwrap().filter, LogFilter::default());
    }

    #[test]
    fn every_bad_field_is_reported() {
        let fields = parse_request(json!({
            "filter": {"exchange": "", "from": "soon", "to": "2026-01-01", "message_ids": [], "color": 1, "event": 3},
            "target": {"exchange": 5, "queue": "q"},
            "dry_run": "yes",
            "expected_count": -1,
            "extra": true,
        }))
        .unwrap_err();
        let keys: Vec<&str> = fields.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "dry_run",
                "expected_count",
                "extra",
                "filter.color",
                "filter.event",
                "filter.exchange",
                "filter.from",
                "filter.message_ids",
                "target.exchange",
                "target.queue",
            ]
        );
        let fields =
            parse_request(json!({"filter": {"from": "2026-02-01", "to": "2026-01-01", "message_ids": ["", "ok"]}}))
                .unwrap_err();
        assert!(fields.contains_key("filter.from"), "{fields:?}");
        assert!(fields.contains_key("filter.message_ids[0]"), "{fields:?}");
        assert!(parse_request(json!([1])).unwrap_err().contains_key("body"));
    }
}
