//! Edit and retry, the policy: what an operator may change in a failed message before it goes
//! out again, and the copy that goes out. Pure: the retrier claims, publishes and records; the API
//! parses. The copy is a new message (new message_id, no retry count: its own retries start over)
//! that names its original in [`EDIT_OF_HEADER`].

use std::collections::BTreeMap;

use lapin::types::AMQPValue;
use serde_json::{Map, Value};

use crate::{
    amqp::{headers, publisher::OutgoingMessage},
    retry::RETRY_COUNT_HEADER,
    store::failed_messages::Claimed,
};

/// On an edited copy: the message_id of the message it replaces. The message_id rather than the
/// row id: it is what the platform's services saw and logged, it is unique in `failed_messages`
/// too, and it keeps its meaning outside this database (and after the original row is deleted).
pub const EDIT_OF_HEADER: &str = "mb-edit-of";

/// On an edited copy: the API client that edited it.
pub const EDITED_BY_HEADER: &str = "mb-edited-by";

/// Longest header name RabbitMQ accepts (an AMQP short string).
const SHORT_STRING: usize = 255;

/// What the operator asked: the new body, and header changes over the original's headers.
#[derive(Debug, Clone, PartialEq)]
pub struct Edit {
    /// The copy's body, published as this JSON.
    pub payload: Value,
    /// Set (`Some`) or removed (`None`), by name.
    pub headers: Vec<(String, Option<Value>)>,
}

/// Why header `name` may not be edited, if it may not: the headers that identify the message or
/// count its deaths and retries belong to the broker and to this service.
pub fn locked_header(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("x-") {
        Some("x- headers belong to the broker (x-death and the other death headers) and cannot be edited")
    } else if lower.starts_with("mb-") {
        Some("mb- headers are this service's (retry count, edit link) and cannot be edited")
    } else if matches!(
        lower.replace('-', "_").as_str(),
        "message_id" | "messageid" | "published_by"
    ) {
        Some("identifies the message or its publisher and cannot be edited; the copy gets a new message_id")
    } else {
        None
    }
}

/// The body of `POST /api/messages/failed/{id}/edit-retry`: `{"payload": <json>, "headers": {...}?}`.
/// Every problem at once, by field.
pub fn parse(body: Value) -> Result<Edit, BTreeMap<String, String>> {
    let mut fields = BTreeMap::new();
    let Value::Object(mut object) = body else {
        fields.insert("body".into(), "must be a JSON object with `payload`".into());
        return Err(fields);
    };
    let payload = match object.remove("payload") {
        None | Some(Value::Null) => {
            fields.insert("payload".into(), "is required: the JSON body of the copy".into());
            Value::Null
        }
        Some(payload) => payload,
    };
    let headers = match object.remove("headers") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(map)) => header_changes(map, &mut fields),
        Some(_) => {
            fields.insert("headers".into(), "must be an object".into());
            Vec::new()
        }
    };
    for key in object.keys() {
        fields.insert(key.clone(), "unknown field (expected `payload` and `headers`)".into());
    }
    if fields.is_empty() {
        Ok(Edit { payload, headers })
    } else {
        Err(fields)
    }
}

fn header_changes(map: Map<String, Value>, fields: &mut BTreeMap<String, String>) -> Vec<(String, Option<Value>)> {
    let mut changes = Vec::new();
    for (name, value) in map {
        let path = format!("headers.{name}");
        if name.is_empty() || name.len() > SHORT_STRING {
            fields.insert(path, format!("header names must be 1 to {SHORT_STRING} bytes"));
        } else if let Some(reason) = locked_header(&name) {
            fields.insert(path, reason.into());
        } else if value.is_null() {
            changes.push((name, None));
        } else if value.is_string() || value.is_boolean() || value.is_i64() {
            changes.push((name, Some(value)));
        } else {
            fields.insert(
                path,
                "must be a string, an integer, a boolean, or null to remove it".into(),
            );
        }
    }
    changes
}

/// The copy as it goes out: the original's exchange and routing key, the edited body, the
/// original's headers (without the broker's `x-` ones and this service's retry count and edit
/// links) with the changes applied, then the link to the original and the editor's name.
pub fn copy(original: &Claimed, edit: &Edit, message_id: String, editor: &str) -> OutgoingMessage {
    let stored: Map<String, Value> = original
        .headers
        .as_deref()
        .and_then(|h| serde_json::from_str(h).ok())
        .unwrap_or_default();
    let mut kept: Vec<(String, Value)> = stored
        .into_iter()
        .filter(|(name, _)| {
            let lower = name.to_ascii_lowercase();
            !lower.starts_with("x-")
                && ![RETRY_COUNT_HEADER, EDIT_OF_HEADER, EDITED_BY_HEADER].contains(&lower.as_str())
        })
        .collect();
    for (name, change) in &edit.headers {
        kept.retain(|(kept_name, _)| kept_name != name);
        if let Some(value) = change {
            kept.push((name.clone(), value.clone()));
        }
    }
    let mut message_headers: Vec<(String, AMQPValue)> = kept
        .iter()
        .map(|(name, value)| (name.clone(), headers::from_json(value)))
        .collect();
    message_headers.push((
        EDIT_OF_HEADER.into(),
        AMQPValue::LongString(original.message_id.as_str().into()),
    ));
    message_headers.push((EDITED_BY_HEADER.into(), AMQPValue::LongString(editor.into())));
    OutgoingMessage {
        exchange: original.exchange.clone(),
        routing_key: original.routing_key.clone(),
        payload: serde_json::to_vec(&edit.payload)
            .expect("a JSON value serializes")
            .into(),
        message_id,
        headers: message_headers,
        priority: None,
    }
}

/// The original a stored message was edited from: its `mb-edit-of` header, from the headers as
/// stored (JSON text).
pub fn edit_of(headers_json: &str) -> Option<String> {
    // Most rows are no copy: skip the parse when the name is not even there.
    if !headers_json.contains(EDIT_OF_HEADER) {
        return None;
    }
    let headers: Map<String, Value> = serde_json::from_str(headers_json).ok()?;
    match headers.get(EDIT_OF_HEADER)? {
        Value::String(id) if !id.is_empty() && id.len() <= SHORT_STRING => Some(id.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::failed_messages::PayloadEncoding;

    fn claimed() -> Claimed {
        Claimed {
            id: 7,
            message_id: "orig-1".into(),
            exchange: "orders_exchange".into(),
            routing_key: "orders.created".into(),
            payload: r#"{"event":"order.created"}"#.into(),
            payload_encoding: PayloadEncoding::Json,
            headers: Some(
                r#"{"x-death": [], "x-first-death-queue": "q", "tenant": "fr", "trace": "t1",
                    "mb-retry-count": 2, "mb-edit-of": "older", "published-by": "orders-service"}"#
                    .into(),
            ),
            retry_count: 3,
            max_retries: 3,
        }
    }

    #[test]
    fn every_locked_or_bad_header_is_reported_by_name() {
        let err = parse(json!({
            "payload": {"event": "order.created"},
            "headers": {"x-death": [], "X-Custom": "a", "mb-retry-count": 0, "mb-edit-of": "x",
                        "message_id": "m", "Message-Id": "m", "published-by": "me",
                        "tenant": {"nested": true}, "ok": "fine", "gone": null},
            "extra": 1,
        }))
        .unwrap_err();
        let keys: Vec<&str> = err.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            vec![
                "extra",
                "headers.Message-Id",
                "headers.X-Custom",
                "headers.mb-edit-of",
                "headers.mb-retry-count",
                "headers.message_id",
                "headers.published-by",
                "headers.tenant",
                "headers.x-death",
            ]
        );
        assert!(err["headers.x-death"].contains("broker"), "{err:?}");
    }

    #[test]
    fn the_payload_is_required_and_the_body_an_object() {
        assert!(parse(json!({"headers": {}})).unwrap_err().contains_key("payload"));
        assert!(parse(json!({"payload": null})).unwrap_err().contains_key("payload"));
        assert!(parse(json!([1])).unwrap_err().contains_key("body"));
        assert!(
            parse(json!({"payload": 1, "headers": "h"}))
                .unwrap_err()
                .contains_key("headers")
        );
        let edit = parse(json!({"payload": "text is JSON too"})).unwrap();
        assert_eq!((edit.payload, edit.headers), (json!("text is JSON too"), vec![]));
    }

    #[test]
    fn the_copy_is_a_new_message_that_names_its_original() {
        let edit = parse(json!({
            "payload": {"event": "order.created", "data": {"order_id": 43}},
            "headers": {"tenant": "de", "trace": null, "fixed": true},
        }))
        .unwrap();
        let message = copy(&claimed(), &edit, "new-id".into(), "ops");
        assert_eq!(message.message_id, "new-id");
        assert_eq!(
            (message.exchange.as_str(), message.routing_key.as_str()),
            ("orders_exchange", "orders.created")
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&message.payload).unwrap(),
            json!({"event": "order.created", "data": {"order_id": 43}})
        );
        let mut names: Vec<&str> = message.headers.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            vec!["fixed", EDIT_OF_HEADER, EDITED_BY_HEADER, "published-by", "tenant"]
        );
        let value = |name: &str| {
            message
                .headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| headers::to_json(v))
        };
        assert_eq!(value("tenant"), Some(json!("de")));
        assert_eq!(value(EDIT_OF_HEADER), Some(json!("orig-1")));
        assert_eq!(value("published-by"), Some(json!("orders-service")));
    }

    #[test]
    fn a_stored_copy_names_its_original() {
        assert_eq!(
            edit_of(r#"{"mb-edit-of": "orig-1", "x-death": []}"#).as_deref(),
            Some("orig-1")
        );
        assert_eq!(edit_of(r#"{"tenant": "fr"}"#), None);
        assert_eq!(edit_of(r#"{"mb-edit-of": 5}"#), None);
        assert_eq!(edit_of("not json mb-edit-of"), None);
    }
}
