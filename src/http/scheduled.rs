//! Delayed delivery: a publish (or batch item) with `delay` or `deliver_at` is stored in MySQL and
//! answered 202 `{message_id, status: "scheduled", deliver_at}`; the scheduler role publishes it
//! when due. `GET /api/messages/scheduled` lists them (scope `read`), `DELETE
//! /api/messages/scheduled/{id}` cancels one still waiting (scope `operate`; 409 once sent).

use std::{collections::BTreeMap, time::Duration};

use axum::{
    Json,
    extract::{
        Path, Query, State,
        rejection::{PathRejection, QueryRejection},
    },
    http::StatusCode,
};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};
use tracing::info;

use super::{
    AppState,
    auth::{Caller, Client},
    error::{ApiError, ErrorBody, ErrorCode, stored},
    failed::{page_of, parse_time, query_pairs},
    idempotency::Ticket,
    publish::When,
};
use crate::{
    amqp::{headers, publisher::OutgoingMessage},
    settings::Scope,
    store::scheduled_messages::{self, CancelRefusal, NewScheduled, ScheduledFilter},
};

const DEFAULT_PER_PAGE: u32 = 15;
const MAX_PER_PAGE: u32 = 100;

/// When a message asked to be delivered, checked against `max_delay`. `None`: publish now (no
/// schedule, or a time already past).
pub fn deliver_at(when: Option<When>, max_delay: Duration, prefix: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    let now = Utc::now();
    let (field, at) = match when {
        None => return Ok(None),
        Some(When::Delay(delay)) => (
            "delay",
            now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX),
        ),
        Some(When::At(at)) => ("deliver_at", at),
    };
    let latest = now + chrono::Duration::from_std(max_delay).unwrap_or(chrono::Duration::MAX);
    if at > latest {
        let limit = humantime::format_duration(max_delay);
        return Err(ApiError::invalid_field(
            format!("{prefix}{field}"),
            format!("must be at most {limit} ahead (scheduling.max_delay)"),
        ));
    }
    Ok((at > now).then_some(at))
}

/// The 202 body: the publish answer with `status: scheduled` and the time.
pub fn answer(mut body: Value, deliver_at: DateTime<Utc>) -> Value {
    body["status"] = "scheduled".into();
    body["deliver_at"] = deliver_at.to_rfc3339_opts(SecondsFormat::Millis, true).into();
    body
}

/// 202 for a scheduled message, 201 for a published one (also for replayed answers).
pub fn status_of(body: &Value) -> StatusCode {
    match body["status"].as_str() {
        Some("scheduled") => StatusCode::ACCEPTED,
        _ => StatusCode::CREATED,
    }
}

/// Stores a delayed message; its idempotency key then answers the same 202.
pub async fn store(
    state: &AppState,
    client: &Client,
    message: &OutgoingMessage,
    deliver_at: DateTime<Utc>,
    ticket: Option<Ticket<'_>>,
    body: Value,
) -> Result<Value, ApiError> {
    let headers: Map<String, Value> = message
        .headers
        .iter()
        .map(|(name, value)| (name.clone(), headers::to_json(value)))
        .collect();
    let row = NewScheduled {
        message_id: message.message_id.clone(),
        client: client.name.clone(),
        exchange: message.exchange.clone(),
        routing_key: message.routing_key.clone(),
        // Our own serialized JSON, hence UTF-8.
        payload: String::from_utf8_lossy(&message.payload).into_owned(),
        headers: Value::Object(headers).to_string(),
        priority: message.priority,
        deliver_at,
    };
    if !stored(scheduled_messages::insert(state.database()?, &row).await)? {
        return Err(ApiError::new(
            ErrorCode::IdempotencyConflict,
            format!("message_id `{}` is already scheduled.", row.message_id),
        ));
    }
    if let Some(ticket) = ticket {
        ticket.complete(body.clone()).await;
    }
    Ok(body)
}

/// Filters and pagination of the list; every bad one is reported.
fn parse_filter(pairs: &[(String, String)]) -> Result<(ScheduledFilter, u32, u32), BTreeMap<String, String>> {
    let mut fields = BTreeMap::new();
    let (mut filter, mut page, mut per_page) = (ScheduledFilter::default(), 1, DEFAULT_PER_PAGE);
    let mut bad = |key: &str, reason: &str| drop(fields.insert(key.to_owned(), reason.to_owned()));
    for (key, value) in pairs {
        match key.as_str() {
            "status" => match value.parse() {
                Ok(status) => filter.status = Some(status),
                Err(_) => bad(key, "must be one of scheduled, sent, cancelled, failed"),
            },
            "exchange" | "routing_key" if value.is_empty() || value.len() > 255 => {
                bad(key, "must be 1 to 255 characters")
            }
            "exchange" => filter.exchange = Some(value.clone()),
            "routing_key" => filter.routing_key = Some(value.clone()),
            "from" | "to" => match parse_time(value) {
                Some(at) if key == "from" => filter.from = Some(at),
                Some(at) => filter.to = Some(at),
                None => bad(key, "must be an RFC 3339 date-time or a YYYY-MM-DD date"),
            },
            "page" => match value.parse::<u32>() {
                Ok(n) if (1..=1_000_000).contains(&n) => page = n,
                _ => bad(key, "must be an integer from 1 to 1000000"),
            },
            "per_page" => match value.parse::<u32>() {
                Ok(n) if (1..=MAX_PER_PAGE).contains(&n) => per_page = n,
                _ => bad(key, "must be an integer from 1 to 100"),
            },
            _ => bad(key, "unknown filter"),
        }
    }
    if fields.is_empty() {
        Ok((filter, page, per_page))
    } else {
        Err(fields)
    }
}

#[utoipa::path(get, path = "/api/messages/scheduled", operation_id = "list_scheduled_messages", tag = "messages", security(("bearer" = [])),
    params(
        ("status" = Option<String>, Query, description = "scheduled | sent | cancelled | failed"),
        ("exchange" = Option<String>, Query), ("routing_key" = Option<String>, Query),
        ("from" = Option<String>, Query, description = "deliver_at >= (RFC 3339 or YYYY-MM-DD)"),
        ("to" = Option<String>, Query, description = "deliver_at <= (RFC 3339 or YYYY-MM-DD)"),
        ("page" = Option<u32>, Query), ("per_page" = Option<u32>, Query, description = "1 to 100, default 15"),
    ),
    responses(
        (status = 200, description = "{data, page, per_page, total, last_page}, soonest first"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "bad filter"), (status = 503, body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    Caller(client): Caller,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    client.require(Scope::Read)?;
    let (filter, page, per_page) = parse_filter(&query_pairs(query)?).map_err(ApiError::validation)?;
    let (data, total) = stored(scheduled_messages::list(state.database()?, &filter, page, per_page).await)?;
    Ok(Json(page_of(json!(data), total, page, per_page)))
}

#[utoipa::path(delete, path = "/api/messages/scheduled/{id}", operation_id = "cancel_scheduled_message", tag = "messages", security(("bearer" = [])),
    params(("id" = u64, Path)),
    responses((status = 200, description = "The row, now cancelled"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "not_scheduled: already sent, cancelled or failed"), (status = 503, body = ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    Caller(client): Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    client.require(Scope::Operate)?;
    let not_found = || ApiError::not_found("No such scheduled message.");
    let id = match id {
        Ok(Path(raw)) => super::positive_id(&raw).ok_or_else(not_found)?,
        Err(_) => return Err(not_found()),
    };
    match stored(scheduled_messages::cancel(state.database()?, id).await)? {
        Ok(row) => {
            info!(client = %client.name, id, message_id = %row.message_id, "Scheduled message cancelled.");
            Ok(Json(json!(row)))
        }
        Err(CancelRefusal::NotFound) => Err(not_found()),
        Err(CancelRefusal::NotScheduled(status)) => Err(ApiError::new(
            ErrorCode::NotScheduled,
            format!(
                "Scheduled message {id} is {}; only a waiting message can be cancelled.",
                <&str>::from(status)
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::scheduled_messages::ScheduledStatus;

    #[test]
    fn a_schedule_is_bounded_and_a_past_time_means_now() {
        let week = Duration::from_secs(7 * 24 * 3600);
        let at = deliver_at(Some(When::Delay(Duration::from_secs(90))), week, "")
            .unwrap()
            .unwrap();
        assert!(at > Utc::now() + chrono::Duration::seconds(85));
        let past = Utc::now() - chrono::Duration::seconds(5);
        assert_eq!(deliver_at(Some(When::At(past)), week, "").unwrap(), None);
        let err = deliver_at(Some(When::Delay(week * 2)), week, "messages[3].").unwrap_err();
        assert!(err.fields.unwrap().contains_key("messages[3].delay"));
    }

    #[test]
    fn every_bad_filter_is_reported() {
        let pairs: Vec<(String, String)> = [
            ("status", "lost"),
            ("per_page", "500"),
            ("color", "red"),
            ("from", "soon"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let fields = parse_filter(&pairs).unwrap_err();
        let keys: Vec<&str> = fields.keys().map(String::as_str).collect();
        assert_eq!(keys, ["color", "from", "per_page", "status"]);
        assert_eq!(
            parse_filter(&[("status".into(), "sent".into())]).unwrap().0.status,
            Some(ScheduledStatus::Sent)
        );
    }
}
