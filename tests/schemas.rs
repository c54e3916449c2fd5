//! Event schemas against the real broker: `[[schemas]]` of the topology checks the `data` of
//! publish, batch and request per event and version (422 `schema_violation` with a JSON pointer
//! per problem), unknown events allowed or refused by the setting, `GET /api/schemas`, and
//! `topology check` refusing bad schema files.

mod common;

use common::*;
use messages_broker::settings::UnknownEvents;
use serde_json::{Value, json};

/// order.created 1.0: an integer `order_id`.
const ORDER_V1: &str =
    r#"{"type": "object", "required": ["order_id"], "properties": {"order_id": {"type": "integer"}}}"#;

/// order.created 2.0: also `items`, each with a `sku` and a positive `quantity`.
const ORDER_V2: &str = r#"{
  "type": "object",
  "required": ["order_id", "items"],
  "properties": {
    "order_id": {"type": "integer"},
    "email": {"type": "string", "format": "email"},
    "items": {"type": "array", "minItems": 1, "items": {
      "type": "object", "required": ["sku", "quantity"],
      "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1}}
    }}
  }
}"#;

/// Any `basket.*` event: a `basket_id`.
const BASKET_ANY: &str = r#"{"type": "object", "required": ["basket_id"]}"#;

/// The test's topology plus three schema declarations; the files beside it, in a subdirectory.
async fn env_with_schemas(prefix: &str, unknown_events: UnknownEvents) -> TestEnv {
    let mut env = TestEnv::new(prefix).await;
    env.settings.schemas.unknown_events = unknown_events;
    let dir = env.dir.path().join("schemas");
    std::fs::create_dir(&dir).unwrap();
    for (name, text) in [
        ("order.created.v1.json", ORDER_V1),
        ("order.created.v2.json", ORDER_V2),
        ("basket.any.json", BASKET_ANY),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let mut topology = std::fs::read_to_string(env.topology_path()).unwrap();
    topology.push_str(
        r#"
[[schemas]]
event = "order.created"
version = "1.0"
file = "schemas/order.created.v1.json"

[[schemas]]
event = "order.created"
version = "2.0"
file = "schemas/order.created.v2.json"

[[schemas]]
event = "basket.*"
version = "1"
file = "schemas/basket.any.json"
"#,
    );
    std::fs::write(env.topology_path(), topology).unwrap();
    env
}

/// A publish body of `event` with `data`, and `metadata.version` when given.
fn event_body(env: &TestEnv, event: &str, version: Option<&str>, data: Value) -> Value {
    let mut message = json!({"event": event, "data": data});
    if let Some(version) = version {
        message["metadata"] = json!({ "version": version });
    }
    json!({"exchange": env.name("orders_exchange"), "routing_key": "orders.created", "message": message})
}

fn valid_v2() -> Value {
    json!({"order_id": 7, "items": [{"sku": "SKU-1", "quantity": 2}]})
}

/// The keys of a 422's `fields`.
fn field_keys(body: &Value) -> Vec<String> {
    body["fields"].as_object().expect("fields").keys().cloned().collect()
}

#[tokio::test]
async fn each_version_has_its_schema_and_the_newest_is_the_default() {
    let env = env_with_schemas("schema_versions", UnknownEvents::Allow).await;
    let app = env.spawn().await;
    app.wait_ready().await;
    let admin = app.as_admin();
    let publish = |body: Value| async move { admin.post("/api/messages/publish", &body).await };

    // Valid in 1.0 and in 2.0, each against its own schema.
    let v1 = publish(event_body(&env, "order.created", Some("1.0"), json!({"order_id": 1}))).await;
    assert_eq!(v1.status(), 201);
    let v2 = publish(event_body(&env, "order.created", Some("2.0"), valid_v2())).await;
    assert_eq!(v2.status(), 201);
    // `2` is `2.0`.
    assert_eq!(
        publish(event_body(&env, "order.created", Some("2"), valid_v2()))
            .await
            .status(),
        201
    );
    // What 1.0 accepts, 2.0 refuses.
    let body = expect_error(
        "1.0 data sent as 2.0",
        publish(event_body(&env, "order.created", Some("2.0"), json!({"order_id": 1}))).await,
        422,
        "schema_violation",
    )
    .await;
    assert_eq!(field_keys(&body), ["message.data/items"]);
    assert!(body["message"].as_str().unwrap().contains("version 2.0"), "{body}");

    // No version: checked against the newest (2.0), and the message carries it.
    let defaulted = publish(event_body(&env, "order.created", None, valid_v2())).await;
    assert_eq!(defaulted.status(), 201);
    expect_error(
        "1.0 data without a version",
        publish(event_body(&env, "order.created", None, json!({"order_id": 1}))).await,
        422,
        "schema_violation",
    )
    .await;

    // A version the event has no schema of names the ones it has.
    let body = expect_error(
        "unknown version",
        publish(event_body(&env, "order.created", Some("3.0"), valid_v2())).await,
        422,
        "schema_violation",
    )
    .await;
    assert_eq!(
        body["fields"]["message.metadata.version"],
        "event `order.created` has no schema version `3.0`; available: 1.0, 2.0"
    );

    // A pattern: every basket.* event needs a basket_id.
    let body = expect_error(
        "basket.* pattern",
        publish(event_body(&env, "basket.checked_out", None, json!({"id": 1}))).await,
        422,
        "schema_violation",
    )
    .await;
    assert_eq!(field_keys(&body), ["message.data/basket_id"]);
    assert_eq!(
        publish(event_body(&env, "basket.checked_out", None, json!({"basket_id": 1})))
            .await
            .status(),
        201
    );

    // An event without a schema passes (schemas.unknown_events = "allow", the default).
    assert_eq!(
        publish(event_body(&env, "order.shipped", None, json!({"anything": true})))
            .await
            .status(),
        201
    );

    // Only the six accepted messages reached the queue, each with the version it was checked in.
    let messages = drain(&env.settings, &env.name("orders_queue")).await;
    let seen: Vec<(String, String)> = messages
        .iter()
        .map(|m| {
            let payload: Value = serde_json::from_slice(&m.delivery.data).unwrap();
            (
                payload["event"].as_str().unwrap().to_owned(),
                payload["metadata"]["version"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let pairs: Vec<(&str, &str)> = seen.iter().map(|(e, v)| (e.as_str(), v.as_str())).collect();
    assert_eq!(
        pairs,
        [
            ("order.created", "1.0"),
            ("order.created", "2.0"),
            ("order.created", "2"),
            ("order.created", "2.0"),
            ("basket.checked_out", "1"),
            // Filled in by the envelope, as for every message without a version.
            ("order.shipped", "1.0"),
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn invalid_data_is_refused_with_a_pointer_per_problem() {
    let env = env_with_schemas("schema_invalid", UnknownEvents::Allow).await;
    let app = env.spawn().await;
    app.wait_ready().await;

    let data =
        json!({"order_id": "seven", "email": "not-an-email", "items": [{"sku": "a", "quantity": 1}, {"quantity": 0}]});
    let body = event_body(&env, "order.created", Some("2.0"), data);
    let answer = expect_error(
        "invalid 2.0",
        app.as_admin().post("/api/messages/publish", &body).await,
        422,
        "schema_violation",
    )
    .await;
    assert_eq!(
        field_keys(&answer),
        [
            "message.data/email",
            "message.data/items/1/quantity",
            "message.data/items/1/sku",
            "message.data/order_id",
        ]
    );
    // The offending values are not echoed.
    assert!(!answer.to_string().contains("not-an-email"), "{answer}");

    // A refused message holds no idempotency key: the same message_id, now valid, goes through.
    let mut with_id = body.clone();
    with_id["message_id"] = json!("schema-invalid-then-valid");
    assert_eq!(
        app.as_admin().post("/api/messages/publish", &with_id).await.status(),
        422
    );
    with_id["message"]["data"] = valid_v2();
    assert_eq!(
        app.as_admin().post("/api/messages/publish", &with_id).await.status(),
        201
    );
    assert_eq!(drain(&env.settings, &env.name("orders_queue")).await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_batch_refuses_only_its_invalid_message() {
    let env = env_with_schemas("schema_batch", UnknownEvents::Allow).await;
    let app = env.spawn().await;
    app.wait_ready().await;

    let messages = vec![
        event_body(&env, "order.created", Some("1.0"), json!({"order_id": 1})),
        event_body(&env, "order.created", Some("1.0"), json!({"order_id": "one"})),
        event_body(&env, "order.created", None, valid_v2()),
    ];
    let response = app
        .as_admin()
        .post("/api/messages/publish/batch", &json!({ "messages": messages }))
        .await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    let results = answer["results"].as_array().unwrap();
    let statuses: Vec<u64> = results.iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [201, 422, 201]);
    assert_eq!(results[1]["index"], 1);
    assert_eq!(results[1]["error"], "schema_violation");
    assert_eq!(field_keys(&results[1]), ["messages[1].message.data/order_id"]);
    assert_eq!(drain(&env.settings, &env.name("orders_queue")).await.len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn a_request_is_checked_before_it_is_sent() {
    let env = env_with_schemas("schema_request", UnknownEvents::Allow).await;
    let app = env.spawn().await;
    app.wait_ready().await;

    let mut body = event_body(&env, "order.created", Some("2.0"), json!({"order_id": 1, "items": []}));
    body["timeout"] = json!("300ms");
    let answer = expect_error(
        "invalid request",
        app.as_admin().post("/api/messages/request", &body).await,
        422,
        "schema_violation",
    )
    .await;
    assert_eq!(field_keys(&answer), ["message.data/items"]);
    assert!(drain(&env.settings, &env.name("orders_queue")).await.is_empty());

    // Valid: it goes out and waits for a reply; nobody answers here, hence the timeout (the
    // request itself expires in the queue with it).
    body["message"]["data"] = valid_v2();
    expect_error(
        "valid request",
        app.as_admin().post("/api/messages/request", &body).await,
        504,
        "reply_timeout",
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn unknown_events_are_refused_when_the_setting_says_reject() {
    let env = env_with_schemas("schema_reject", UnknownEvents::Reject).await;
    let app = env.spawn().await;
    app.wait_ready().await;

    let body = event_body(&env, "order.shipped", None, json!({"order_id": 1}));
    let answer = expect_error(
        "unknown event",
        app.as_admin().post("/api/messages/publish", &body).await,
        422,
        "unknown_event",
    )
    .await;
    assert_eq!(field_keys(&answer), ["message.event"]);
    // In a batch too, next to a known event that passes.
    let batch = json!({"messages": [body, event_body(&env, "order.created", Some("1.0"), json!({"order_id": 1}))]});
    let answer: Value = app
        .as_admin()
        .post("/api/messages/publish/batch", &batch)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["results"][0]["error"], "unknown_event");
    assert_eq!(answer["results"][1]["status"], 201);
    assert_eq!(drain(&env.settings, &env.name("orders_queue")).await.len(), 1);

    let listed: Value = app.as_reader().get("/api/schemas").await.json().await.unwrap();
    assert_eq!(listed["unknown_events"], "reject");
    app.stop().await;
}

#[tokio::test]
async fn the_schemas_are_listed_for_readers() {
    let env = env_with_schemas("schema_list", UnknownEvents::Allow).await;
    let app = env.spawn().await;

    let response = app.as_reader().get("/api/schemas").await;
    assert_eq!(response.status(), 200);
    let listed: Value = response.json().await.unwrap();
    assert_eq!(
        listed,
        json!({"unknown_events": "allow", "schemas": [
            {"event": "order.created", "version": "1.0", "exchange": null, "file": "schemas/order.created.v1.json"},
            {"event": "order.created", "version": "2.0", "exchange": null, "file": "schemas/order.created.v2.json"},
            {"event": "basket.*", "version": "1", "exchange": null, "file": "schemas/basket.any.json"},
        ]})
    );

    // One declaration with its document; the version compares numerically.
    let one: Value = app
        .as_reader()
        .get("/api/schemas/order.created/2")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["version"], "2.0");
    assert_eq!(one["schema"], serde_json::from_str::<Value>(ORDER_V2).unwrap());
    let pattern = app.as_reader().get("/api/schemas/basket.*/1.0").await;
    assert_eq!(pattern.status(), 200);
    for missing in [
        "/api/schemas/order.created/9.0",
        "/api/schemas/order.created/latest",
        "/api/schemas/order.updated/1.0",
        "/api/schemas/order.created/1.0?exchange=other",
    ] {
        expect_error(missing, app.as_reader().get(missing).await, 404, "not_found").await;
    }
    expect_error(
        "anonymous",
        app.anonymous().get("/api/schemas").await,
        401,
        "unauthorized",
    )
    .await;
    expect_error(
        "publish scope only",
        app.as_orders_client().get("/api/schemas").await,
        403,
        "forbidden",
    )
    .await;
    app.stop().await;
}

#[test]
fn topology_check_reports_every_bad_schema_file_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("schemas")).unwrap();
    std::fs::write(dir.path().join("schemas/broken.json"), "{\"type\": \"object\",").unwrap();
    std::fs::write(dir.path().join("schemas/not_a_schema.json"), r#"{"minimum": "ten"}"#).unwrap();
    std::fs::write(dir.path().join("schemas/good.json"), ORDER_V1).unwrap();
    let file = dir.path().join("topology.toml");
    let entries = [
        ("order.created", "1.0", "schemas/good.json"),
        ("order.paid", "1.0", "schemas/missing.json"),
        ("order.cancelled", "1.0", "schemas/broken.json"),
        ("order.shipped", "1.0", "schemas/not_a_schema.json"),
    ];
    let mut text = "[[exchanges]]\nname = \"orders_exchange\"\ntype = \"topic\"\n".to_owned();
    for (event, version, path) in entries {
        text.push_str(&format!(
            "\n[[schemas]]\nevent = \"{event}\"\nversion = \"{version}\"\nfile = \"{path}\"\n"
        ));
    }
    std::fs::write(&file, text).unwrap();

    // run_cli runs in the repository: the files are found relative to the topology file instead.
    let (code, stdout, _) = run_cli(&["topology", "check", file.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{stdout}");
    let at = dir.path().join("schemas");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(
        lines[0].ends_with(&format!(
            "schemas[1].file: cannot read schema file `{}/missing.json`: No such file or directory",
            at.display()
        )),
        "{stdout}"
    );
    assert!(
        lines[1].contains(&format!(
            "schemas[2].file: schema file `{}/broken.json` is not valid JSON",
            at.display()
        )),
        "{stdout}"
    );
    assert!(
        lines[2].contains(&format!(
            "schemas[3].file: schema file `{}/not_a_schema.json` is not a valid JSON Schema: at /minimum",
            at.display()
        )),
        "{stdout}"
    );
    assert!(lines[3].ends_with("3 error(s)"), "{stdout}");

    // The shipped topology and its schemas pass.
    let (code, stdout, _) = run_cli(&["topology", "check", "topology.toml"], &[]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("5 event schemas"), "{stdout}");
}
