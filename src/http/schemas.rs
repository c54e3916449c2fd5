//! Event schemas at the API: [`check_event`], the check of each published message's `data`
//! against its event's schema (publish, batch, request), and the routes that list them,
//! `GET /api/schemas` and `GET /api/schemas/{event}/{version}` (scope `read`).
//!
//! Refusals are 422 in the contract's shape, `fields` keyed like the other validation errors:
//! `schema_violation` with one key per problem, `message.data` followed by the JSON pointer of the
//! offending value inside `data` (`message.data/items/0/quantity`; in a batch prefixed by
//! `messages[i].`), or `message.metadata.version` when the event has no schema of that version;
//! `unknown_event` (`schemas.unknown_events = "reject"`) keyed `message.event`.

use std::{borrow::Cow, collections::BTreeMap};

use axum::{
    Json,
    extract::{Path, Query, State, rejection::PathRejection, rejection::QueryRejection},
};
use serde_json::{Map, Value, json};

use super::{
    AppState,
    auth::Caller,
    error::{ApiError, ErrorBody, ErrorCode},
    failed::query_pairs,
    publish::PublishInput,
};
use crate::{
    settings::{Scope, UnknownEvents},
    topology::schemas::{EventSchema, Resolution, SchemaVersion},
};

/// Problems listed in one answer at most; a huge array of bad items must not make a huge answer.
const MAX_VIOLATIONS: usize = 50;

/// Checks the message's `data` against the schema of its event and version (see
/// [`crate::topology::schemas`] for which one applies). A message without `metadata.version` is
/// checked against the newest schema and gets its version. `prefix` is the message's field path
/// in the request (`messages[3].` in a batch).
pub(super) fn check_event(state: &AppState, input: &mut PublishInput, prefix: &str) -> Result<(), ApiError> {
    let schemas = &state.topology.schemas;
    let unknown_events = state.settings.schemas.unknown_events;
    // The common case of a topology without schemas costs nothing more.
    if schemas.is_empty() && unknown_events == UnknownEvents::Allow {
        return Ok(());
    }
    let message = &input.message;
    // parse_input made sure of a non-empty string.
    let event = message.get("event").and_then(Value::as_str).unwrap_or_default();
    let version: Option<Cow<'_, str>> = match message.get("metadata").and_then(|m| m.get("version")) {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(Cow::Borrowed(text)),
        // A number (`2`, `1.5`) is read as written; anything else names no version.
        Some(other) => Some(Cow::Owned(other.to_string())),
    };
    let count = |outcome: &str| {
        state.metrics.schema_checks_total.with_label_values(&[outcome]).inc();
    };
    match schemas.resolve(&input.exchange, event, version.as_deref()) {
        Resolution::UnknownEvent if unknown_events == UnknownEvents::Allow => {
            count("unknown_event_allowed");
            Ok(())
        }
        Resolution::UnknownEvent => {
            count("unknown_event_rejected");
            Err(refusal(
                ErrorCode::UnknownEvent,
                format!("No schema is declared for event `{event}`, and unknown events are refused."),
                BTreeMap::from([(
                    format!("{prefix}message.event"),
                    format!(
                        "no [[schemas]] entry of the topology matches `{event}` on `{}` (schemas.unknown_events = \"reject\")",
                        input.exchange
                    ),
                )]),
            ))
        }
        Resolution::UnknownVersion { available } => {
            count("unknown_version");
            let version = version.unwrap_or_default();
            let available = list(&available);
            Err(refusal(
                ErrorCode::SchemaViolation,
                format!("Event `{event}` has no schema version `{version}` (available: {available})."),
                BTreeMap::from([(
                    format!("{prefix}message.metadata.version"),
                    format!("event `{event}` has no schema version `{version}`; available: {available}"),
                )]),
            ))
        }
        Resolution::Found { schema, defaulted } => {
            let data = message.get("data").unwrap_or(&Value::Null);
            // One more than shown, to say when the list was cut.
            let violations = schema.compiled.violations(data, MAX_VIOLATIONS + 1);
            if violations.is_empty() {
                count("valid");
                if defaulted {
                    stamp_version(&mut input.message, &schema.version);
                }
                return Ok(());
            }
            count("invalid");
            let cut = violations.len() > MAX_VIOLATIONS;
            let mut fields: BTreeMap<String, String> = BTreeMap::new();
            for violation in violations.into_iter().take(MAX_VIOLATIONS) {
                let key = format!("{prefix}message.data{}", violation.pointer);
                // Two problems at one place (a type and a pattern...) share its key.
                fields
                    .entry(key)
                    .and_modify(|text| {
                        text.push_str("; ");
                        text.push_str(&violation.message);
                    })
                    .or_insert(violation.message);
            }
            Err(refusal(
                ErrorCode::SchemaViolation,
                format!(
                    "The message's data does not match the schema of `{event}` version {}; see fields (`message.data` + a JSON pointer into data){}.",
                    schema.version,
                    if cut {
                        format!("; the first {MAX_VIOLATIONS} problems are shown")
                    } else {
                        String::new()
                    }
                ),
                fields,
            ))
        }
    }
}

fn refusal(code: ErrorCode, message: String, fields: BTreeMap<String, String>) -> ApiError {
    let mut err = ApiError::new(code, message);
    err.fields = Some(fields);
    err
}

fn list(versions: &[&SchemaVersion]) -> String {
    versions.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
}

/// `metadata.version` of a message that named none: the version it was checked against.
fn stamp_version(message: &mut Map<String, Value>, version: &SchemaVersion) {
    let metadata = message.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    if metadata.is_null() {
        *metadata = Value::Object(Map::new());
    }
    if let Value::Object(metadata) = metadata {
        metadata.insert("version".into(), version.as_str().into());
    }
}

/// One schema in the list: where it applies and its file.
fn summary(schema: &EventSchema) -> Value {
    json!({
        "event": schema.event.as_str(),
        "version": schema.version.as_str(),
        "exchange": schema.exchange,
        "file": schema.file,
    })
}

#[utoipa::path(get, path = "/api/schemas", operation_id = "list_schemas", tag = "schemas", security(("bearer" = [])), responses(
    (status = 200, description = "{unknown_events: allow|reject, schemas: [{event, version, exchange, file}]}: the event schemas of the topology, in file order"),
    (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
))]
pub async fn list_schemas(State(state): State<AppState>, Caller(client): Caller) -> Result<Json<Value>, ApiError> {
    client.require(Scope::Read)?;
    let schemas: Vec<Value> = state.topology.schemas.iter().map(summary).collect();
    Ok(Json(json!({
        "unknown_events": state.settings.schemas.unknown_events,
        "schemas": schemas,
    })))
}

#[utoipa::path(get, path = "/api/schemas/{event}/{version}", operation_id = "show_schema", tag = "schemas", security(("bearer" = [])),
    params(
        ("event" = String, Path, description = "The event or pattern as declared (`order.created`, `order.*`)"),
        ("version" = String, Path, description = "Compared numerically: `2` finds `2.0`"),
        ("exchange" = Option<String>, Query, description = "The declaration scoped to this exchange; without it, the one for any exchange"),
    ),
    responses(
        (status = 200, description = "{event, version, exchange, file, schema}: the declaration and its JSON Schema document"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "No such declaration"),
        (status = 422, body = ErrorBody, description = "A bad query string"),
    ))]
pub async fn show_schema(
    State(state): State<AppState>,
    Caller(client): Caller,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    client.require(Scope::Read)?;
    let not_found = || ApiError::not_found("No such event schema.");
    let Ok(Path((event, version))) = path else {
        return Err(not_found());
    };
    let exchange = query_pairs(query)?
        .into_iter()
        .find(|(key, _)| key == "exchange")
        .map(|(_, value)| value);
    let version = SchemaVersion::parse(&version).map_err(|_| not_found())?;
    let schema = state
        .topology
        .schemas
        .iter()
        .find(|s| s.event.as_str() == event && s.version == version && s.exchange == exchange)
        .ok_or_else(not_found)?;
    let mut body = summary(schema);
    body["schema"] = schema.compiled.document.clone();
    Ok(Json(body))
}
