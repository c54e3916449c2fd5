//! `POST /api/messages/publish` and `/publish/batch`: validate, check the allow-list and rate
//! limits, fill in the platform envelope, hand to the publisher, answer after the broker's confirm.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Json,
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode},
};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};
use tracing::{Instrument, info_span};

use super::{
    AppState,
    auth::{Caller, Client},
    body::{json_body, too_large},
    error::{ApiError, ErrorBody, ErrorCode},
    idempotency::{Claim, Idempotency, Ticket},
    rate_limit::RateLimits,
    scheduled, schemas,
};
use crate::{
    amqp::{
        headers,
        publisher::{OutgoingMessage, PublishOutcome, Publisher},
        replies::Replies,
    },
    settings::Scope,
    shared::Shared,
    store::message_logs::NewMessageLog,
    trace::{self, TraceContext},
    workers::audit::{self, AuditSink},
};

/// Everything the publish routes need beyond the common state.
pub struct Publishing {
    pub publisher: Publisher,
    pub limits: RateLimits,
    /// Keys shared by every api replica (MySQL), with an in-process cache in front.
    pub idempotency: Arc<Idempotency>,
    /// `None` when `publish.audit` is off.
    pub audit: Option<AuditSink>,
    /// Request-reply (`POST /api/messages/request`): its own channel, shared by every request.
    pub replies: Replies,
}

impl Publishing {
    /// The api role's publishing parts: the confirm pipeline, the rate limits, the idempotency
    /// keys (and their cleanup), the audit writer and the replies worker.
    pub fn start(shared: &Shared) -> Self {
        let (settings, stages) = (&shared.settings, &shared.stages);
        let audit = settings.publish.audit.then(|| {
            let (sink, rx) = audit::channel(settings.publish.audit_queue, shared.metrics.clone());
            let writer = audit::run(
                shared.pool.clone(),
                rx,
                shared.metrics.clone(),
                stages.pipeline_cancel.clone(),
            );
            stages.pipeline.spawn_named("audit-writer", writer);
            sink
        });
        // A key is held for one publish: the confirm timeout, plus time to store the answer.
        let lease = settings.publish.confirm_timeout + Duration::from_secs(2);
        let idempotency = Arc::new(Idempotency::new(
            shared.pool.clone(),
            settings.publish.idempotency_ttl,
            settings.publish.idempotency_max_keys,
            lease,
        ));
        shared.spawn_role(idempotency.clone());
        // In the pipeline stage: it stops after HTTP, once the requests in flight are answered.
        let (replies, worker) = Replies::new(
            shared.link.clone(),
            shared.metrics.clone(),
            stages.pipeline_cancel.clone(),
        );
        stages.pipeline.spawn_named("replies", worker);
        Self {
            replies,
            publisher: shared.publisher(),
            limits: RateLimits::from_topology(&shared.topology.rate_limits),
            idempotency,
            audit,
        }
    }
}

/// Longest routing key, message_id and header name RabbitMQ accepts (AMQP short strings).
const SHORT_STRING: usize = 255;

/// One message of a request, checked for shape; the exchange is checked later against the topology.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishInput {
    pub exchange: String,
    pub routing_key: String,
    pub message: Map<String, Value>,
    pub message_id: Option<String>,
    pub headers: Vec<(String, Value)>,
    /// AMQP priority, 0 to 255.
    pub priority: Option<u8>,
    /// Delivered later: `delay` or `deliver_at`.
    pub when: Option<When>,
}

/// When a delayed message is due, as the client said it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum When {
    Delay(Duration),
    At(DateTime<Utc>),
}

/// Checks the shape of one publish request; every problem is reported, keyed by its field path.
pub fn parse_input(value: Value, prefix: &str) -> Result<PublishInput, BTreeMap<String, String>> {
    let mut fields = BTreeMap::new();
    let path = |name: &str| format!("{prefix}{name}");
    // Taken by value: the message moves into the envelope instead of being copied.
    let Value::Object(mut object) = value else {
        fields.insert(
            if prefix.is_empty() {
                "body".into()
            } else {
                prefix.trim_end_matches('.').into()
            },
            "must be a JSON object".into(),
        );
        return Err(fields);
    };
    for key in object.keys() {
        if !matches!(
            key.as_str(),
            "exchange" | "routing_key" | "message" | "message_id" | "headers" | "priority" | "delay" | "deliver_at"
        ) {
            fields.insert(path(key), "unknown field".into());
        }
    }
    let exchange = parse_exchange(object.remove("exchange"), &path("exchange"), &mut fields);
    let routing_key = parse_routing_key(object.remove("routing_key"), &path("routing_key"), &mut fields);
    let message_id = match object.remove("message_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() && s.len() <= SHORT_STRING => Some(s),
        Some(_) => {
            fields.insert(
                path("message_id"),
                format!("must be a non-empty string of at most {SHORT_STRING} bytes"),
            );
            None
        }
    };
    let headers = parse_headers(object.remove("headers"), &path("headers"), &mut fields);
    let priority = match object.remove("priority") {
        None | Some(Value::Null) => None,
        Some(value) => match value.as_u64().and_then(|p| u8::try_from(p).ok()) {
            Some(priority) => Some(priority),
            None => {
                fields.insert(path("priority"), "must be an integer from 0 to 255".into());
                None
            }
        },
    };
    let when = parse_when(object.remove("delay"), object.remove("deliver_at"), prefix, &mut fields);
    let message = match object.remove("message") {
        Some(Value::Object(message)) => {
            check_envelope(&message, &path("message."), &mut fields);
            message
        }
        Some(_) => {
            fields.insert(path("message"), "must be an object".into());
            Map::new()
        }
        None => {
            fields.insert(path("message"), "is required".into());
            Map::new()
        }
    };
    if fields.is_empty() {
        Ok(PublishInput {
            exchange,
            routing_key,
            message,
            message_id,
            headers,
            priority,
            when,
        })
    } else {
        Err(fields)
    }
}

/// `delay` (`"90s"`, `"15m"`) or `deliver_at` (RFC 3339), not both.
fn parse_when(
    delay: Option<Value>,
    deliver_at: Option<Value>,
    prefix: &str,
    fields: &mut BTreeMap<String, String>,
) -> Option<When> {
    let delay = delay.filter(|v| !v.is_null());
    let deliver_at = deliver_at.filter(|v| !v.is_null());
    match (delay, deliver_at) {
        (None, None) => None,
        (Some(_), Some(_)) => {
            fields.insert(
                format!("{prefix}delay"),
                "give either delay or deliver_at, not both".into(),
            );
            None
        }
        (Some(delay), None) => match delay.as_str().map(humantime::parse_duration) {
            Some(Ok(delay)) => Some(When::Delay(delay)),
            _ => {
                fields.insert(
                    format!("{prefix}delay"),
                    "must be a duration such as \"90s\" or \"15m\"".into(),
                );
                None
            }
        },
        (None, Some(at)) => match at.as_str().map(DateTime::parse_from_rfc3339) {
            Some(Ok(at)) => Some(When::At(at.with_timezone(&Utc))),
            _ => {
                fields.insert(format!("{prefix}deliver_at"), "must be an RFC 3339 date-time".into());
                None
            }
        },
    }
}

/// `exchange`: a non-empty string (whether the topology has it is checked later).
fn parse_exchange(value: Option<Value>, field: &str, fields: &mut BTreeMap<String, String>) -> String {
    let problem = match value {
        Some(Value::String(s)) if !s.is_empty() => return s,
        Some(Value::String(_)) => "must not be empty",
        Some(_) => "must be a string",
        None => "is required",
    };
    fields.insert(field.to_owned(), problem.into());
    String::new()
}

/// `routing_key`: a string of at most 255 bytes, possibly empty (fanout exchanges ignore it).
fn parse_routing_key(value: Option<Value>, field: &str, fields: &mut BTreeMap<String, String>) -> String {
    let problem = match value {
        Some(Value::String(s)) if s.len() <= SHORT_STRING => return s,
        Some(Value::String(_)) => format!("must be at most {SHORT_STRING} bytes"),
        Some(_) => "must be a string".into(),
        None => "is required (may be empty for fanout exchanges)".into(),
    };
    fields.insert(field.to_owned(), problem);
    String::new()
}

/// `headers`: an object of strings, integers and booleans; `x-` names belong to the broker.
fn parse_headers(value: Option<Value>, field: &str, fields: &mut BTreeMap<String, String>) -> Vec<(String, Value)> {
    let mut headers = Vec::new();
    let map = match value {
        None | Some(Value::Null) => return headers,
        Some(Value::Object(map)) => map,
        Some(_) => {
            fields.insert(field.to_owned(), "must be an object".into());
            return headers;
        }
    };
    for (name, value) in map {
        let path = format!("{field}.{name}");
        if name.is_empty() || name.len() > SHORT_STRING {
            fields.insert(path, format!("header names must be 1 to {SHORT_STRING} bytes"));
        } else if name.to_ascii_lowercase().starts_with("x-") {
            // RabbitMQ owns x- headers (x-death, x-delay...): clients must not forge them.
            fields.insert(path, "x- headers are reserved for the broker".into());
        } else if value.is_string() || value.is_boolean() || value.is_i64() {
            headers.push((name, value));
        } else {
            fields.insert(path, "must be a string, an integer or a boolean".into());
        }
    }
    headers
}

/// The platform envelope: `event` and `data` required, `timestamp` RFC 3339, `metadata` an object.
fn check_envelope(message: &Map<String, Value>, prefix: &str, fields: &mut BTreeMap<String, String>) {
    match message.get("event") {
        Some(Value::String(s)) if !s.trim().is_empty() => {}
        Some(Value::String(_)) => {
            fields.insert(format!("{prefix}event"), "must not be empty".into());
        }
        Some(_) => {
            fields.insert(format!("{prefix}event"), "must be a string".into());
        }
        None => {
            fields.insert(format!("{prefix}event"), "is required".into());
        }
    }
    match message.get("data") {
        Some(Value::Object(_)) => {}
        Some(_) => {
            fields.insert(format!("{prefix}data"), "must be an object".into());
        }
        None => {
            fields.insert(format!("{prefix}data"), "is required".into());
        }
    }
    match message.get("timestamp") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if chrono::DateTime::parse_from_rfc3339(s).is_ok() => {}
        Some(_) => {
            fields.insert(format!("{prefix}timestamp"), "must be an RFC 3339 date-time".into());
        }
    }
    match message.get("metadata") {
        None | Some(Value::Null) | Some(Value::Object(_)) => {}
        Some(_) => {
            fields.insert(format!("{prefix}metadata"), "must be an object".into());
        }
    }
}

/// Fills what the platform envelope promises: `timestamp`, `metadata.service`, `metadata.version`.
pub fn complete_envelope(mut message: Map<String, Value>, client: &str) -> Map<String, Value> {
    if message.get("timestamp").is_none_or(Value::is_null) {
        message.insert(
            "timestamp".into(),
            Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true).into(),
        );
    }
    let metadata = message.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    if metadata.is_null() {
        *metadata = Value::Object(Map::new());
    }
    if let Value::Object(metadata) = metadata {
        metadata.entry("service").or_insert_with(|| client.into());
        metadata.entry("version").or_insert_with(|| "1.0".into());
    }
    message
}

/// One message on its way: either already answered, or ready for the publisher.
enum Prepared<'a> {
    Answered(Result<Value, ApiError>),
    Ready {
        message: Arc<OutgoingMessage>,
        ticket: Option<Ticket<'a>>,
        body: Value,
    },
    /// Delayed: stored in MySQL, published by the scheduler role when due.
    Scheduled {
        message: Arc<OutgoingMessage>,
        deliver_at: DateTime<Utc>,
        ticket: Option<Ticket<'a>>,
        body: Value,
    },
}

async fn prepare<'a>(
    state: &AppState,
    publishing: &'a Publishing,
    client: &Client,
    value: Value,
    prefix: &str,
    idempotency_key: Option<&str>,
    trace: &TraceContext,
) -> Prepared<'a> {
    // Batch items are the ones with a field prefix (`messages[i].`).
    let in_batch = !prefix.is_empty();
    let mut input = match parse_input(value, prefix) {
        Ok(input) => input,
        Err(fields) => return Prepared::Answered(Err(ApiError::validation(fields))),
    };
    if let Err(err) = check_target(state, client, &input.exchange) {
        return Prepared::Answered(Err(err));
    }
    // Before the idempotency key and the rate limit: a refused message holds or spends neither.
    if let Err(err) = schemas::check_event(state, &mut input, prefix) {
        return Prepared::Answered(Err(err));
    }
    let key = idempotency_key.map(str::to_owned).or_else(|| input.message_id.clone());
    let ticket = match &key {
        None => None,
        Some(key) => match publishing.idempotency.claim(&client.name, key, !in_batch).await {
            Claim::Replay(body) => return Prepared::Answered(Ok(body)),
            Claim::First(ticket) => Some(ticket),
            Claim::Busy => {
                return Prepared::Answered(Err(ApiError::new(
                    ErrorCode::IdempotencyConflict,
                    format!("A request with message_id `{key}` is being published; retry to get its result."),
                )));
            }
        },
    };
    if let Err(err) = check_rate_limit(state, publishing, client, &input.exchange) {
        return Prepared::Answered(Err(err));
    }
    let deliver_at = match scheduled::deliver_at(input.when, state.settings.scheduling.max_delay, prefix) {
        Ok(at) => at,
        Err(err) => return Prepared::Answered(Err(err)),
    };
    match outgoing(state, client, input, trace) {
        Ok((message, body)) => match deliver_at {
            None => Prepared::Ready { message, ticket, body },
            Some(deliver_at) => {
                let body = scheduled::answer(body, deliver_at);
                Prepared::Scheduled {
                    message,
                    deliver_at,
                    ticket,
                    body,
                }
            }
        },
        Err(err) => Prepared::Answered(Err(err)),
    }
}

/// The exchange must be a public one of the topology, and in the client's allow-list.
pub(super) fn check_target(state: &AppState, client: &Client, exchange: &str) -> Result<(), ApiError> {
    match state.topology.exchange(exchange) {
        Some(found) if !found.internal => {}
        _ => {
            return Err(ApiError::new(
                ErrorCode::UnknownExchange,
                format!("`{exchange}` is not a public exchange of the topology."),
            ));
        }
    }
    if !client.may_publish_to(exchange) {
        return Err(ApiError::forbidden(format!(
            "Client `{}` may not publish to `{exchange}`.",
            client.name
        )));
    }
    Ok(())
}

/// 429 with `Retry-After` when a bucket of the topology's rate limits is empty (counted).
pub(super) fn check_rate_limit(
    state: &AppState,
    publishing: &Publishing,
    client: &Client,
    exchange: &str,
) -> Result<(), ApiError> {
    let Err(wait) = publishing.limits.check(&client.name, exchange) else {
        return Ok(());
    };
    state
        .metrics
        .rate_limited_total
        .with_label_values(&[client.name.as_str()])
        .inc();
    count(state, exchange, ErrorCode::RateLimited.as_str());
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    Err(ApiError::new(
        ErrorCode::RateLimited,
        format!(
            "Rate limit reached for `{}` on `{exchange}`; retry in {seconds} s.",
            client.name
        ),
    )
    .with_retry_after(seconds))
}

/// The message as it goes to the broker (envelope completed, id given), and the 201 body.
pub(super) fn outgoing(
    state: &AppState,
    client: &Client,
    input: PublishInput,
    trace: &TraceContext,
) -> Result<(Arc<OutgoingMessage>, Value), ApiError> {
    let message_id = input.message_id.clone().unwrap_or_else(new_message_id);
    let envelope = complete_envelope(input.message, &client.name);
    let payload = bytes::Bytes::from(serde_json::to_vec(&envelope).expect("a JSON map serializes"));
    if payload.len() > state.settings.app.max_body_bytes {
        return Err(too_large(state.settings.app.max_body_bytes));
    }
    let mut headers: Vec<_> = input
        .headers
        .iter()
        .map(|(name, value)| (name.clone(), headers::from_json(value)))
        .collect();
    headers.extend(trace::headers_for(trace, &headers));
    headers.push(("published-by".into(), headers::from_json(&client.name.as_str().into())));
    let body = json!({
        "message_id": message_id,
        "exchange": input.exchange,
        "routing_key": input.routing_key,
        "status": "published",
    });
    let message = Arc::new(OutgoingMessage {
        exchange: input.exchange,
        routing_key: input.routing_key,
        payload,
        message_id,
        headers,
        priority: input.priority,
    });
    Ok((message, body))
}

/// A UUIDv7: time-ordered, so message_logs' unique index grows at its end instead of at random
/// pages; its 74 random bits come from fastrand (no system call per message).
pub(crate) fn new_message_id() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64);
    let mut random = [0u8; 10];
    fastrand::fill(&mut random);
    uuid::Builder::from_unix_timestamp_millis(millis, &random)
        .into_uuid()
        .to_string()
}

fn count(state: &AppState, exchange: &str, outcome: &str) {
    state
        .metrics
        .published_total
        .with_label_values(&[exchange, outcome])
        .inc();
}

/// Turns the broker's answer into the API's, and records it.
async fn settle(
    state: &AppState,
    publishing: &Publishing,
    client: &Client,
    message: &OutgoingMessage,
    outcome: PublishOutcome,
    ticket: Option<Ticket<'_>>,
    body: Value,
) -> Result<Value, ApiError> {
    let result = match ApiError::from_publish(&outcome, &message.exchange, &message.routing_key) {
        None => Ok(body),
        Some(err) => Err(err),
    };
    count(state, &message.exchange, outcome.label());
    if let Ok(body) = &result {
        if let Some(ticket) = ticket {
            ticket.complete(body.clone()).await;
        }
        if let Some(audit) = &publishing.audit {
            // The trace headers go with it: a replay of this message continues its trace.
            let trace_headers: Vec<(&str, Value)> = message
                .headers
                .iter()
                .filter(|(name, _)| name == trace::TRACEPARENT || name == trace::TRACESTATE)
                .map(|(name, value)| (name.as_str(), headers::to_json(value)))
                .collect();
            let metadata = audit_metadata(&client.name, &trace_headers);
            audit.record(NewMessageLog {
                message_id: message.message_id.clone(),
                exchange: message.exchange.clone(),
                routing_key: message.routing_key.clone(),
                payload: message.payload.clone(),
                published_at: Utc::now(),
                metadata: metadata.to_string(),
            });
        }
    }
    result
}

/// The audit row's `metadata`: `{"client": ..., "headers": {...}}` (headers only when there are
/// some), serialized straight from borrowed parts: no JSON tree per message.
fn audit_metadata(client: &str, headers: &[(&str, Value)]) -> String {
    #[derive(serde::Serialize)]
    struct Metadata<'a> {
        client: &'a str,
        #[serde(skip_serializing_if = "Headers::is_empty")]
        headers: Headers<'a>,
    }
    struct Headers<'a>(&'a [(&'a str, Value)]);
    impl Headers<'_> {
        fn is_empty(&self) -> bool {
            self.0.is_empty()
        }
    }
    impl serde::Serialize for Headers<'_> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.collect_map(self.0.iter().map(|(name, value)| (name, value)))
        }
    }
    serde_json::to_string(&Metadata {
        client,
        headers: Headers(headers),
    })
    .expect("strings and JSON values serialize")
}

fn publishing(state: &AppState) -> Result<&Arc<Publishing>, ApiError> {
    state
        .publishing
        .as_ref()
        .ok_or_else(|| ApiError::not_found("Publishing is served by the `api` role."))
}

/// What every publishing route does first, in this order: the scope, the role, the JSON body (at
/// most `limit` bytes).
pub(super) fn publishing_body(
    state: &AppState,
    client: &Client,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<(Arc<Publishing>, Value), ApiError> {
    client.require(Scope::Publish)?;
    let publishing = publishing(state)?.clone();
    Ok((publishing, json_body(headers, body, limit)?))
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if !key.trim().is_empty() && key.len() <= SHORT_STRING => Ok(Some(key.trim().to_owned())),
        _ => {
            let mut fields = BTreeMap::new();
            fields.insert(
                "Idempotency-Key".into(),
                format!("must be 1 to {SHORT_STRING} visible ASCII characters"),
            );
            Err(ApiError::validation(fields))
        }
    }
}

/// The error answers of one publish, in the OpenAPI document of the routes that publish one
/// message (publish, request).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // never built: only its documentation is used
pub(super) enum PublishErrors {
    #[response(status = 400, description = "invalid_json")]
    InvalidJson(ErrorBody),
    #[response(status = 401, description = "")]
    Unauthorized(ErrorBody),
    #[response(status = 403, description = "")]
    Forbidden(ErrorBody),
    #[response(status = 408, description = "request_timeout: the body stalled")]
    RequestTimeout(ErrorBody),
    #[response(status = 413, description = "payload_too_large")]
    PayloadTooLarge(ErrorBody),
    #[response(status = 415, description = "unsupported_media_type")]
    UnsupportedMediaType(ErrorBody),
    #[response(
        status = 422,
        description = "validation_failed, unknown_exchange, unroutable, schema_violation (data against its event's schema), unknown_event"
    )]
    Unprocessable(ErrorBody),
    #[response(status = 429, description = "rate_limited, with Retry-After")]
    RateLimited(ErrorBody),
    #[response(status = 503, description = "queue_full, broker_unavailable")]
    Unavailable(ErrorBody),
}

#[utoipa::path(post, path = "/api/messages/publish", operation_id = "publish_message", tag = "messages", security(("bearer" = [])),
    request_body(content = Object, description = "{\"exchange\", \"routing_key\", \"message\": {\"event\", \"data\", \"timestamp\"?, \"metadata\"?}, \"message_id\"?, \"headers\"?}"),
    params(("Idempotency-Key" = Option<String>, Header, description = "Publishing the same key again within 24 h answers the first result")),
    responses(
        (status = 201, description = "Confirmed by the broker: {message_id, exchange, routing_key, status: published}"),
        PublishErrors,
    ))]
pub async fn publish(
    State(state): State<AppState>,
    Caller(client): Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let started = Instant::now();
    let (publishing, value) = publishing_body(&state, &client, &headers, body, state.settings.app.max_body_bytes)?;
    let key = idempotency_key(&headers)?;
    let trace = TraceContext::from_http(&headers);
    let span = info_span!("publish", trace_id = %trace.trace_id());
    async move {
        match prepare(&state, &publishing, &client, value, "", key.as_deref(), &trace).await {
            Prepared::Answered(result) => result.map(|body| (scheduled::status_of(&body), Json(body))),
            Prepared::Scheduled {
                message,
                deliver_at,
                ticket,
                body,
            } => scheduled::store(&state, &client, &message, deliver_at, ticket, body)
                .await
                .map(|b| (StatusCode::ACCEPTED, Json(b))),
            Prepared::Ready { message, ticket, body } => {
                let outcome = publishing.publisher.publish(Arc::clone(&message)).await;
                state
                    .metrics
                    .publish_duration_seconds
                    .observe(started.elapsed().as_secs_f64());
                settle(&state, &publishing, &client, &message, outcome, ticket, body)
                    .await
                    .map(|b| (StatusCode::CREATED, Json(b)))
            }
        }
    }
    .instrument(span)
    .await
}

#[utoipa::path(post, path = "/api/messages/publish/batch", operation_id = "publish_batch", tag = "messages", security(("bearer" = [])),
    request_body(content = Object, description = "{\"messages\": [publish bodies]} (at most 500)"),
    responses(
        (status = 200, description = "{results: [...]}: one per message, in order; each {index, status: 201, message_id, exchange, routing_key} or {index, status, error, message}"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 408, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "not a list, or more than the batch limit"),
    ))]
pub async fn publish_batch(
    State(state): State<AppState>,
    Caller(client): Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let started = Instant::now();
    let limit = state.settings.publish.max_batch_body_bytes;
    let (publishing, mut value) = publishing_body(&state, &client, &headers, body, limit)?;
    let items = batch_items(&mut value, state.settings.publish.max_batch_messages)?;
    let trace = TraceContext::from_http(&headers);
    let span = info_span!("publish_batch", trace_id = %trace.trace_id(), messages = items.len());
    async move {
        let mut slots = Vec::with_capacity(items.len());
        let mut seen_ids = std::collections::HashSet::new();
        for (index, item) in items.into_iter().enumerate() {
            let prefix = format!("messages[{index}].");
            if let Some(id) = item.get("message_id").and_then(Value::as_str)
                && !seen_ids.insert(id.to_owned())
            {
                let fields = BTreeMap::from([(format!("{prefix}message_id"), "appears twice in this batch".into())]);
                slots.push(Prepared::Answered(Err(ApiError::validation(fields))));
                continue;
            }
            slots.push(prepare(&state, &publishing, &client, item, &prefix, None, &trace).await);
        }
        let ready: Vec<Arc<OutgoingMessage>> = slots
            .iter()
            .filter_map(|slot| match slot {
                Prepared::Ready { message, .. } => Some(Arc::clone(message)),
                Prepared::Answered(_) | Prepared::Scheduled { .. } => None,
            })
            .collect();
        let mut outcomes = publishing.publisher.publish_many(ready).await.into_iter();
        state
            .metrics
            .publish_duration_seconds
            .observe(started.elapsed().as_secs_f64());

        let mut results = Vec::with_capacity(slots.len());
        for (index, slot) in slots.into_iter().enumerate() {
            let result = match slot {
                Prepared::Answered(result) => result,
                Prepared::Scheduled {
                    message,
                    deliver_at,
                    ticket,
                    body,
                } => scheduled::store(&state, &client, &message, deliver_at, ticket, body).await,
                Prepared::Ready { message, ticket, body } => {
                    let outcome = outcomes
                        .next()
                        .unwrap_or(PublishOutcome::Unavailable("no outcome".into()));
                    settle(&state, &publishing, &client, &message, outcome, ticket, body).await
                }
            };
            results.push(match result {
                Ok(mut body) => {
                    let status = scheduled::status_of(&body).as_u16();
                    body["index"] = index.into();
                    body["status"] = status.into();
                    body
                }
                Err(err) => err.to_item(index),
            });
        }
        // Built as a Value directly: `json!` would serialize (deep-copy) the results first.
        let mut body = Map::new();
        body.insert("results".into(), Value::Array(results));
        Ok(Json(Value::Object(body)))
    }
    .instrument(span)
    .await
}

/// The batch's `messages`: a list of 1 to `max` items.
fn batch_items(body: &mut Value, max: usize) -> Result<Vec<Value>, ApiError> {
    match body.get_mut("messages").map(Value::take) {
        Some(Value::Array(items)) if !items.is_empty() && items.len() <= max => Ok(items),
        Some(Value::Array(items)) if items.is_empty() => Err(ApiError::invalid_field("messages", "must not be empty")),
        Some(Value::Array(_)) => Err(ApiError::invalid_field("messages", format!("at most {max} messages"))),
        _ => Err(ApiError::invalid_field("messages", "must be a list")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_metadata_names_the_client_and_the_trace_headers() {
        assert_eq!(audit_metadata("orders", &[]), r#"{"client":"orders"}"#);
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let metadata: Value =
            serde_json::from_str(&audit_metadata("orders", &[("traceparent", parent.into())])).unwrap();
        assert_eq!(
            metadata,
            json!({"client": "orders", "headers": {"traceparent": parent}})
        );
    }

    #[test]
    fn a_valid_body_parses() {
        let value = json!({"exchange": "orders_exchange", "routing_key": "orders.created",
            "message": {"event": "order.created", "data": {"id": 1}}, "headers": {"tenant": "fr", "n": 2, "b": true}});
        let input = parse_input(value.clone(), "").unwrap();
        assert_eq!(input.exchange, "orders_exchange");
        assert_eq!(input.headers.len(), 3);
    }

    #[test]
    fn every_problem_is_listed_with_its_path() {
        let value = json!({"exchange": 3, "message": {"event": "", "data": [], "timestamp": "yesterday", "metadata": 1},
            "headers": {"x-death": "forged", "h": 1.5}, "extra": true});
        let fields = parse_input(value.clone(), "").unwrap_err();
        let keys: Vec<&str> = fields.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            vec![
                "exchange",
                "extra",
                "headers.h",
                "headers.x-death",
                "message.data",
                "message.event",
                "message.metadata",
                "message.timestamp",
                "routing_key"
            ]
        );
        assert_eq!(parse_input(json!([1]), "").unwrap_err().keys().next().unwrap(), "body");
        assert!(
            parse_input(json!({"exchange": "e", "routing_key": "r"}), "")
                .unwrap_err()
                .contains_key("message")
        );
    }

    #[test]
    fn generated_message_ids_are_time_ordered_uuids() {
        let first = new_message_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = new_message_id();
        let parsed = uuid::Uuid::parse_str(&first).unwrap();
        assert_eq!(parsed.get_version_num(), 7);
        assert!(first < second, "{first} then {second}");
    }

    #[test]
    fn the_envelope_is_completed_not_overwritten() {
        let mut message = Map::new();
        message.insert("event".into(), "a".into());
        message.insert("metadata".into(), json!({"version": "2.0"}));
        let done = complete_envelope(message, "orders-service");
        assert!(chrono::DateTime::parse_from_rfc3339(done["timestamp"].as_str().unwrap()).is_ok());
        assert_eq!(done["metadata"], json!({"version": "2.0", "service": "orders-service"}));
    }
}
