//! `POST /api/messages/request`: request-reply for services that speak HTTP only. The body is a
//! publish body plus `timeout`; it goes through publish's own steps (shape, allow-list, rate
//! limits, envelope), then to the replies worker, and the answer is the responder's reply.

use std::{collections::BTreeMap, time::Duration};

use axum::{
    Json,
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::HeaderMap,
};
use serde_json::{Map, Value};
use tokio::time::Instant;

use tracing::{Instrument, info_span};

use super::{
    AppState,
    auth::Caller,
    error::{ApiError, ErrorBody},
    publish::{PublishErrors, check_rate_limit, check_target, outgoing, parse_input, publishing_body},
    schemas,
};
use crate::{
    amqp::replies::Reply, settings::RequestSettings, store::failed_messages::PayloadEncoding, trace::TraceContext,
};

#[utoipa::path(post, path = "/api/messages/request", operation_id = "request_reply", tag = "messages", security(("bearer" = [])),
    request_body(content = Object, description = "A publish body plus \"timeout\"?: a duration (\"5s\", \"1500ms\") or milliseconds; default request.default_timeout, at most request.max_timeout"),
    responses(
        (status = 200, description = "The reply: {message_id, correlation_id, payload, payload_encoding (json|text|base64), headers, content_type}"),
        PublishErrors,
        (status = 502, body = ErrorBody, description = "reply_error: the responder set the mb-error header"),
        (status = 504, body = ErrorBody, description = "reply_timeout"),
    ))]
pub async fn request(
    State(state): State<AppState>,
    Caller(client): Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    // The deadline counts from arrival: the caller's timeout covers our own work too.
    let started = Instant::now();
    let limit = state.settings.app.max_body_bytes;
    let (publishing, mut value) = publishing_body(&state, &client, &headers, body, limit)?;
    let timeout = take_timeout(&mut value, &state.settings.request);
    let refused = refused_fields(&value);
    // Every problem at once: the body's, the timeout's and the delay's.
    let (mut input, timeout) = match (parse_input(value, ""), timeout) {
        (Ok(input), Ok(timeout)) if refused.is_empty() => {
            (input, timeout.unwrap_or(state.settings.request.default_timeout))
        }
        (parsed, timeout) => {
            let mut fields = parsed.err().unwrap_or_default();
            fields.extend(timeout.err());
            fields.extend(refused);
            return Err(ApiError::validation(fields));
        }
    };
    check_target(&state, &client, &input.exchange)?;
    schemas::check_event(&state, &mut input, "")?;
    check_rate_limit(&state, &publishing, &client, &input.exchange)?;
    let (exchange, routing_key) = (input.exchange.clone(), input.routing_key.clone());
    let trace = TraceContext::from_http(&headers);
    let (message, _) = outgoing(&state, &client, input, &trace)?;
    let outcome = publishing
        .replies
        .request(&message, started + timeout)
        .instrument(info_span!("request", trace_id = %trace.trace_id()))
        .await;
    let result = ApiError::from_request(outcome, &exchange, &routing_key, timeout)
        .map(|reply| Json(reply_body(&message.message_id, reply)));
    let metrics = &state.metrics;
    let label = result.as_ref().map_or_else(|err| err.code.as_str(), |_| "replied");
    metrics
        .requests_total
        .with_label_values(&[exchange.as_str(), label])
        .inc();
    metrics
        .request_duration_seconds
        .observe(started.elapsed().as_secs_f64());
    result
}

/// Takes `timeout` out of the body (publish's parser refuses unknown fields): a humantime string
/// or milliseconds, more than 0 and at most `request.max_timeout`. The error is keyed by field.
fn take_timeout(body: &mut Value, settings: &RequestSettings) -> Result<Option<Duration>, (String, String)> {
    let Some(value) = body.as_object_mut().and_then(|object| object.remove("timeout")) else {
        return Ok(None);
    };
    let problem = |reason: String| Err(("timeout".to_owned(), reason));
    let timeout = match value {
        Value::Null => return Ok(None),
        Value::String(text) => match humantime::parse_duration(text.trim()) {
            Ok(timeout) => timeout,
            Err(err) => return problem(format!("must be a duration like \"5s\" or \"1500ms\": {err}")),
        },
        Value::Number(number) => match number.as_u64() {
            Some(millis) => Duration::from_millis(millis),
            None => return problem("must be a whole number of milliseconds".into()),
        },
        _ => return problem("must be a duration string or a number of milliseconds".into()),
    };
    let max = settings.max_timeout;
    if timeout.is_zero() || timeout > max {
        return problem(format!(
            "must be more than 0 and at most {}",
            humantime::format_duration(max)
        ));
    }
    Ok(Some(timeout))
}

/// Publish's fields that a request cannot take: its caller waits for the reply now, so it cannot
/// be delayed (`delay`, `deliver_at`).
fn refused_fields(body: &Value) -> BTreeMap<String, String> {
    ["delay", "deliver_at"]
        .into_iter()
        .filter(|field| body.get(field).is_some_and(|value| !value.is_null()))
        .map(|field| {
            (
                field.to_owned(),
                "a request cannot be delayed: its caller waits for the reply".to_owned(),
            )
        })
        .collect()
}

/// The 200 answer: the reply's body by the same rule as failed payloads, and its headers.
fn reply_body(message_id: &str, reply: Reply) -> Value {
    let (payload, encoding) = PayloadEncoding::decode(&reply.data);
    let mut body = Map::new();
    body.insert("message_id".into(), message_id.into());
    body.insert(
        "correlation_id".into(),
        reply.correlation_id.map_or(Value::Null, Value::from),
    );
    body.insert("payload".into(), payload);
    body.insert("payload_encoding".into(), encoding.as_str().into());
    body.insert("headers".into(), reply.headers);
    body.insert(
        "content_type".into(),
        reply.content_type.map_or(Value::Null, Value::from),
    );
    Value::Object(body)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn timeout_of(body: Value) -> Result<Option<Duration>, (String, String)> {
        let mut body = body;
        let settings = RequestSettings::default();
        let result = take_timeout(&mut body, &settings);
        assert!(body.get("timeout").is_none(), "taken out of the body");
        result
    }

    #[test]
    fn a_timeout_is_a_duration_or_milliseconds_within_the_maximum() {
        assert_eq!(timeout_of(json!({})), Ok(None));
        assert_eq!(timeout_of(json!({"timeout": "2s"})), Ok(Some(Duration::from_secs(2))));
        assert_eq!(
            timeout_of(json!({"timeout": 1500})),
            Ok(Some(Duration::from_millis(1500)))
        );
        for bad in [json!("soon"), json!(0), json!("31s"), json!(-1), json!(1.5), json!([])] {
            let err = timeout_of(json!({ "timeout": bad })).unwrap_err();
            assert_eq!(err.0, "timeout", "{bad}");
        }
    }

    #[test]
    fn a_request_cannot_be_delayed() {
        let fields = refused_fields(&json!({"delay": "5s", "deliver_at": null, "priority": 9}));
        assert_eq!(fields.keys().collect::<Vec<_>>(), ["delay"]);
        assert!(refused_fields(&json!({"exchange": "e"})).is_empty());
    }

    #[test]
    fn a_reply_body_is_json_text_or_base64() {
        let reply = |data: &[u8]| Reply {
            correlation_id: Some("c1".into()),
            content_type: None,
            headers: json!({}),
            error: None,
            data: data.to_vec(),
        };
        let body = reply_body("m1", reply(br#"{"ok":true}"#));
        assert_eq!(body["payload"], json!({"ok": true}));
        assert_eq!(body["payload_encoding"], "json");
        assert_eq!(body["correlation_id"], "c1");
        assert_eq!(
            reply_body("m1", reply(b"plain")).get("payload_encoding"),
            Some(&json!("text"))
        );
        let binary = reply_body("m1", reply(&[0xff, 0xfe]));
        assert_eq!(binary["payload_encoding"], "base64");
        assert_eq!(binary["payload"], "//4=");
    }
}
