//! Failure groups and edit-and-retry against the real broker and database: fingerprints at
//! ingestion and by the backfill, the groups API with its counts and filters, the fingerprint
//! filter of the list and of the bulk retry, group retry and delete, and edit-retry (the copy on
//! the broker, the links both ways, locked headers, two edits at once, the setting, the scopes).

mod common;

use std::time::Duration;

use chrono::Utc;
use common::*;
use lapin::options::{BasicGetOptions, BasicRejectOptions};
use messages_broker::{
    amqp::headers,
    fingerprint,
    store::{
        self,
        failed_messages::{self, NewFailedMessage, PayloadEncoding, Status},
    },
};
use serde_json::{Value, json};

/// A failed message of the test's orders queue, stored as the ingester would.
fn row(env: &TestEnv, n: usize, error: &str, status: Status) -> NewFailedMessage {
    NewFailedMessage {
        message_id: format!("{}-m-{n}", env.prefix),
        exchange: env.name("orders_exchange"),
        routing_key: "orders.created".into(),
        queue: env.name("orders_queue"),
        payload: json!({"event": "order.created", "data": {"n": n}}).to_string(),
        payload_encoding: PayloadEncoding::Json,
        headers: json!({"tenant": "fr", "x-death": []}).to_string(),
        death_history: "[]".into(),
        error_message: error.into(),
        retry_count: if status == Status::Failed { 3 } else { 0 },
        max_retries: 3,
        status,
        // n seconds ago: the higher n, the older.
        failed_at: Utc::now() - chrono::Duration::seconds(n as i64),
        // Far enough that no retrier would take it during the test.
        next_retry_at: (status == Status::Pending).then(|| Utc::now() + chrono::Duration::hours(1)),
    }
}

/// An app without the retrier and ingester roles: rows stay as the test put them.
async fn api_only(env: &mut TestEnv) -> TestApp {
    env.settings.app.roles = "applier,api".parse().unwrap();
    let app = env.spawn().await;
    app.wait_ready().await;
    app
}

async fn json_of(response: reqwest::Response, status: u16, what: &str) -> Value {
    assert_eq!(response.status(), status, "{what}");
    response
        .json()
        .await
        .unwrap_or_else(|err| panic!("{what}: not JSON: {err}"))
}

async fn fingerprint_of(pool: &sqlx::MySqlPool, message_id: &str) -> Option<String> {
    sqlx::query_scalar("SELECT fingerprint FROM failed_messages WHERE message_id = ?")
        .bind(message_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn status_of(pool: &sqlx::MySqlPool, message_id: &str) -> String {
    sqlx::query_scalar("SELECT CAST(status AS CHAR) FROM failed_messages WHERE message_id = ?")
        .bind(message_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn row_id(pool: &sqlx::MySqlPool, message_id: &str) -> u64 {
    sqlx::query_scalar("SELECT id FROM failed_messages WHERE message_id = ?")
        .bind(message_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Plays a failing consumer for one message: takes it from `queue`, rejects it (dead-lettered)
/// and answers what it was.
async fn reject_one(env: &TestEnv, queue: &str) -> lapin::message::BasicGetMessage {
    let conn = messages_broker::amqp::connection::connect(&env.settings.rabbitmq, "test rejecter")
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let mut got = None;
    for _ in 0..50 {
        got = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .unwrap();
        if got.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let message = got.unwrap_or_else(|| panic!("nothing in {queue}"));
    message.reject(BasicRejectOptions { requeue: false }).await.unwrap();
    let _ = conn.close(200, "done".into()).await;
    message
}

fn header(message: &lapin::message::BasicGetMessage, name: &str) -> Option<Value> {
    let table = message.delivery.properties.headers().as_ref()?;
    table.inner().get(name).map(headers::to_json)
}

#[tokio::test]
async fn ingestion_puts_messages_that_differ_by_an_id_in_one_group_and_the_groups_api_counts_them() {
    let env = TestEnv::new("fg_ingest").await;
    let app = env.spawn().await;
    app.wait_ready().await;
    let pool = app.app.state.pool.clone().unwrap();
    let exchange = env.name("orders_exchange");
    // The failing consumer's reason travels in an `error` header (the ingester reads it).
    let cases = [
        ("order.created", "order 123 not found"),
        ("order.created", "order 456 not found"),
        ("order.created", "stock service down since 2026-12-07T10:00:00Z"),
        ("order.paid", "order 789 not found"),
    ];
    let mut ids = Vec::new();
    for (event, error) in cases {
        let body = json!({
            "exchange": exchange, "routing_key": "orders.created",
            "message": {"event": event, "data": {"order_id": 1}},
            "headers": {"error": error},
        });
        let published = json_of(app.post_json("/api/messages/publish", &body).await, 201, "publish").await;
        ids.push(published["message_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(reject_all(&env.settings, &env.name("orders_queue")).await, 4);
    let stored = eventually(Duration::from_secs(10), || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM failed_messages WHERE fingerprint IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap()
            == 4
    })
    .await;
    assert!(stored, "four fingerprinted rows");
    let fp: Vec<String> = {
        let mut fp = Vec::new();
        for id in &ids {
            fp.push(fingerprint_of(&pool, id).await.unwrap());
        }
        fp
    };
    assert_eq!(fp[0], fp[1], "only the order id differs: one group");
    assert_ne!(fp[0], fp[2], "another error");
    assert_ne!(fp[0], fp[3], "another event");
    let version: u8 = sqlx::query_scalar("SELECT fingerprint_version FROM failed_messages LIMIT 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(version, fingerprint::VERSION);

    // The groups: three, the shared one with both rows.
    let groups = json_of(app.as_reader().get("/api/messages/failed/groups").await, 200, "groups").await;
    assert_eq!(
        (groups["total"].as_u64(), groups["page"].as_u64()),
        (Some(3), Some(1)),
        "{groups}"
    );
    let shared = groups["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["fingerprint"] == fp[0].as_str())
        .unwrap_or_else(|| panic!("{groups}"));
    assert_eq!(shared["count"], 2, "{shared}");
    assert_eq!(
        shared["counts"],
        json!({"pending": 2, "retrying": 0, "failed": 0, "resolved": 0})
    );
    assert_eq!(shared["queue"], env.name("orders_queue").as_str());
    assert_eq!(shared["event"], "order.created");
    assert!(
        shared["error_pattern"]
            .as_str()
            .unwrap()
            .ends_with(": order <n> not found"),
        "{shared}"
    );
    assert!(
        shared["example_error"].as_str().unwrap().contains("not found"),
        "{shared}"
    );
    assert!(
        shared["first_seen"].as_str() <= shared["last_seen"].as_str(),
        "{shared}"
    );

    // The list and the bulk retry take the fingerprint as a filter.
    let list = json_of(
        app.as_reader()
            .get(&format!("/api/messages/failed?fingerprint={}", fp[0]))
            .await,
        200,
        "list by fingerprint",
    )
    .await;
    assert_eq!(list["total"], 2, "{list}");
    assert!(
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["fingerprint"] == fp[0].as_str())
    );
    let bulk = json_of(
        app.as_admin()
            .post(&format!("/api/messages/failed/retry?fingerprint={}", fp[0]), &json!({}))
            .await,
        200,
        "bulk retry by fingerprint",
    )
    .await;
    assert_eq!(bulk, json!({"queued": 2}));
    // Queued now: the retrier republishes those two, and only those.
    let republished = eventually(Duration::from_secs(15), || async {
        status_of(&pool, &ids[0]).await == "resolved" && status_of(&pool, &ids[1]).await == "resolved"
    })
    .await;
    assert!(republished, "the group's rows were not retried");
    for id in &ids[2..] {
        assert_eq!(status_of(&pool, id).await, "pending", "{id} is not in the group");
    }
    assert_eq!(drain(&env.settings, &env.name("orders_queue")).await.len(), 2);
    let groups = json_of(
        app.as_reader()
            .get(&format!("/api/messages/failed/groups?fingerprint={}", fp[0]))
            .await,
        200,
        "one group",
    )
    .await;
    assert_eq!(groups["total"], 1, "{groups}");
    assert_eq!(
        groups["data"][0]["counts"],
        json!({"pending": 0, "retrying": 0, "failed": 0, "resolved": 2})
    );
    app.stop().await;
}

#[tokio::test]
async fn the_groups_api_filters_sorts_and_pages_and_groups_are_retried_and_deleted_by_count() {
    let mut env = TestEnv::new("fg_api").await;
    let app = api_only(&mut env).await;
    let pool = app.app.state.pool.clone().unwrap();
    // Group A: 3 failed, 2 resolved, the most recent; B: 3 pending, older; C: 1 pending, oldest.
    let mut rows = Vec::new();
    for n in 0..5 {
        let status = if n < 3 { Status::Failed } else { Status::Resolved };
        rows.push(row(&env, n, &format!("order {} not found", 1000 + n), status));
    }
    for n in 10..13 {
        rows.push(row(
            &env,
            n,
            &format!("carrier API timeout after {n}s"),
            Status::Pending,
        ));
    }
    rows.push(row(&env, 100, "customer bob@example.com unknown", Status::Pending));
    failed_messages::upsert_batch(&pool, &rows).await.unwrap();
    let (a, b, c) = (
        fingerprint_of(&pool, &rows[0].message_id).await.unwrap(),
        fingerprint_of(&pool, &rows[5].message_id).await.unwrap(),
        fingerprint_of(&pool, &rows[8].message_id).await.unwrap(),
    );

    let groups = json_of(app.as_reader().get("/api/messages/failed/groups").await, 200, "groups").await;
    let order: Vec<&str> = groups["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["fingerprint"].as_str().unwrap())
        .collect();
    assert_eq!(order, vec![a.as_str(), b.as_str(), c.as_str()], "last seen first");
    assert_eq!(groups["data"][0]["count"], 5);
    assert_eq!(
        groups["data"][0]["counts"],
        json!({"pending": 0, "retrying": 0, "failed": 3, "resolved": 2})
    );
    assert_eq!(groups["data"][0]["error_pattern"], "order <n> not found");
    assert_eq!(
        groups["data"][0]["example_error"], "order 1004 not found",
        "the latest stored row's"
    );
    assert_eq!(groups["data"][2]["error_pattern"], "customer <email> unknown");
    // Paged like the list; `total` counts groups.
    let page = json_of(
        app.as_reader()
            .get("/api/messages/failed/groups?per_page=1&page=2")
            .await,
        200,
        "page 2",
    )
    .await;
    assert_eq!(
        (&page["total"], &page["last_page"], &page["data"][0]["fingerprint"]),
        (&json!(3), &json!(3), &json!(b))
    );
    let past = json_of(
        app.as_reader()
            .get("/api/messages/failed/groups?per_page=2&page=9")
            .await,
        200,
        "past the end",
    )
    .await;
    assert_eq!((&past["total"], &past["data"]), (&json!(3), &json!([])));
    // The list's filters: a status counts only those rows.
    let failed = json_of(
        app.as_reader().get("/api/messages/failed/groups?status=failed").await,
        200,
        "failed only",
    )
    .await;
    assert_eq!(failed["total"], 1);
    assert_eq!(
        failed["data"][0]["counts"],
        json!({"pending": 0, "retrying": 0, "failed": 3, "resolved": 0})
    );
    let none = json_of(
        app.as_reader().get("/api/messages/failed/groups?queue=elsewhere").await,
        200,
        "another queue",
    )
    .await;
    assert_eq!((&none["total"], &none["data"]), (&json!(0), &json!([])));
    let searched = json_of(
        app.as_reader().get("/api/messages/failed/groups?q=carrier").await,
        200,
        "q",
    )
    .await;
    assert_eq!(searched["data"][0]["fingerprint"], b.as_str());
    for bad in ["fingerprint=XYZ", "status=lost", "per_page=101", "colour=red"] {
        expect_error(
            bad,
            app.as_reader().get(&format!("/api/messages/failed/groups?{bad}")).await,
            422,
            "validation_failed",
        )
        .await;
    }
    // A page of one group's rows, by fingerprint and status.
    let list = json_of(
        app.as_reader()
            .get(&format!(
                "/api/messages/failed?fingerprint={a}&status=failed&per_page=2"
            ))
            .await,
        200,
        "rows of a",
    )
    .await;
    assert_eq!((&list["total"], &list["last_page"]), (&json!(3), &json!(2)), "{list}");

    // Group retry: the pending and failed rows matching, counted; resolved ones are left.
    let retried = json_of(
        app.as_admin()
            .post(&format!("/api/messages/failed/groups/{a}/retry"), &json!({}))
            .await,
        200,
        "retry a",
    )
    .await;
    assert_eq!(retried, json!({"queued": 3}));
    let due: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM failed_messages WHERE fingerprint = ? AND status = 'pending' AND next_retry_at <= UTC_TIMESTAMP(6)",
    )
    .bind(&a)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(due, 3, "due now, for the retrier");
    // More filters in the query string or a JSON body narrow the group.
    let narrowed = json_of(
        app.as_admin()
            .post(
                &format!("/api/messages/failed/groups/{b}/retry"),
                &json!({"status": "failed"}),
            )
            .await,
        200,
        "retry b, failed only",
    )
    .await;
    assert_eq!(narrowed, json!({"queued": 0}));
    expect_error(
        "fingerprint twice",
        app.as_admin()
            .post(
                &format!("/api/messages/failed/groups/{b}/retry"),
                &json!({"fingerprint": a}),
            )
            .await,
        422,
        "validation_failed",
    )
    .await;

    // Group delete: every row of the group, whatever its status; again: 0.
    let deleted = json_of(
        app.as_admin()
            .post(&format!("/api/messages/failed/groups/{b}/delete"), &json!({}))
            .await,
        200,
        "delete b",
    )
    .await;
    assert_eq!(deleted, json!({"deleted": 3}));
    let again = json_of(
        app.as_admin()
            .post(&format!("/api/messages/failed/groups/{b}/delete"), &json!({}))
            .await,
        200,
        "delete b again",
    )
    .await;
    assert_eq!(
        again,
        json!({"deleted": 0}),
        "a group is its rows: none left, none deleted"
    );
    let deleted = json_of(
        app.as_admin()
            .post(
                &format!("/api/messages/failed/groups/{a}/delete?status=resolved"),
                &json!({}),
            )
            .await,
        200,
        "delete a's resolved rows",
    )
    .await;
    assert_eq!(deleted, json!({"deleted": 2}));
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM failed_messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 4, "a's three and c's one");
    // A well-formed fingerprint nobody has: 0; a segment that is none: 404.
    let unknown = json_of(
        app.as_admin()
            .post("/api/messages/failed/groups/0123456789abcdef/retry", &json!({}))
            .await,
        200,
        "unknown group",
    )
    .await;
    assert_eq!(unknown, json!({"queued": 0}));
    for bad in ["0123456789ABCDEF", "123", "..%2F..%2Fx", "0123456789abcdef0"] {
        for action in ["retry", "delete"] {
            expect_error(
                bad,
                app.as_admin()
                    .post(&format!("/api/messages/failed/groups/{bad}/{action}"), &json!({}))
                    .await,
                404,
                "not_found",
            )
            .await;
        }
    }

    // Scopes: a reader lists groups but acts on none.
    for action in ["retry", "delete"] {
        expect_error(
            action,
            app.as_reader()
                .post(&format!("/api/messages/failed/groups/{c}/{action}"), &json!({}))
                .await,
            403,
            "forbidden",
        )
        .await;
    }
    expect_error(
        "anonymous",
        app.anonymous().get("/api/messages/failed/groups").await,
        401,
        "unauthorized",
    )
    .await;
    assert_eq!(
        status_of(&pool, &rows[8].message_id).await,
        "pending",
        "the reader changed nothing"
    );
    app.stop().await;
}

#[tokio::test]
async fn rows_stored_without_a_current_fingerprint_get_one_from_the_ingester() {
    let env = TestEnv::new("fg_backfill").await;
    // Rows from before failure groups: migrated database, fingerprints taken away (and one of an
    // older algorithm version), then the service starts.
    let pool = store::pool(&env.settings.database);
    store::migrate(&pool).await.unwrap();
    let rows: Vec<_> = (0..1_203)
        .map(|n| row(&env, n, &format!("order {n} not found"), Status::Failed))
        .collect();
    for chunk in rows.chunks(500) {
        failed_messages::upsert_batch(&pool, chunk).await.unwrap();
    }
    sqlx::query("UPDATE failed_messages SET fingerprint = NULL, fingerprint_version = NULL WHERE id > 1")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE failed_messages SET fingerprint = 'ffffffffffffffff', fingerprint_version = 0 WHERE id = 1")
        .execute(&pool)
        .await
        .unwrap();

    let app = env.spawn().await;
    app.wait_ready().await;
    let expected = fingerprint::of_stored(&rows[0].queue, &rows[0].payload, Some("order 1 not found"));
    let done = eventually(Duration::from_secs(20), || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM failed_messages WHERE fingerprint = ? AND fingerprint_version = ?",
        )
        .bind(&expected)
        .bind(fingerprint::VERSION)
        .fetch_one(&pool)
        .await
        .unwrap()
            == 1_203
    })
    .await;
    assert!(done, "every row, the older version's too, in the one group");
    let groups = json_of(app.as_reader().get("/api/messages/failed/groups").await, 200, "groups").await;
    assert_eq!(
        (&groups["total"], &groups["data"][0]["count"]),
        (&json!(1), &json!(1_203))
    );
    app.stop().await;
}

#[tokio::test]
async fn an_edited_copy_goes_out_with_a_new_id_and_both_rows_point_at_each_other() {
    let mut env = TestEnv::new("fg_edit").await;
    env.settings.failed.edit_enabled = true;
    let app = env.spawn().await;
    app.wait_ready().await;
    let pool = app.app.state.pool.clone().unwrap();
    let queue = env.name("orders_queue");
    let mut body = publish_body(&env.name("orders_exchange"), "orders.created");
    body["headers"] = json!({"tenant": "fr", "trace": "t-1"});
    let published = json_of(app.post_json("/api/messages/publish", &body).await, 201, "publish").await;
    let original = published["message_id"].as_str().unwrap().to_owned();
    reject_one(&env, &queue).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM failed_messages")
                .fetch_one(&pool)
                .await
                .unwrap()
                == 1
        })
        .await
    );
    let original_id = row_id(&pool, &original).await;

    let edited = json_of(
        app.as_admin()
            .post(
                &format!("/api/messages/failed/{original_id}/edit-retry"),
                &json!({
                    "payload": {"event": "order.created", "data": {"order_id": 43}},
                    "headers": {"tenant": "de", "trace": null},
                }),
            )
            .await,
        200,
        "edit-retry",
    )
    .await;
    assert_eq!(edited["status"], "resolved", "{edited}");
    let copy_id = edited["edited_to"].as_str().unwrap().to_owned();
    assert_ne!(copy_id, original);

    // The copy on the broker: new message_id, the edited body and headers, the link to the
    // original; the consumer fails it again.
    let copy = reject_one(&env, &queue).await;
    assert_eq!(
        copy.delivery.properties.message_id().as_ref().unwrap().as_str(),
        copy_id
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&copy.delivery.data).unwrap(),
        json!({"event": "order.created", "data": {"order_id": 43}})
    );
    assert_eq!(header(&copy, "mb-edit-of"), Some(json!(original)));
    assert_eq!(header(&copy, "mb-edited-by"), Some(json!("test-admin")));
    assert_eq!(header(&copy, "tenant"), Some(json!("de")));
    assert_eq!(header(&copy, "trace"), None, "removed by the edit");
    assert_eq!(
        header(&copy, "mb-retry-count"),
        None,
        "a new message: its retries start over"
    );

    // Ingested as a new failure that points at its original; the original points at it.
    assert!(
        eventually(Duration::from_secs(10), || async {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM failed_messages WHERE message_id = ?")
                .bind(&copy_id)
                .fetch_one(&pool)
                .await
                .unwrap()
                == 1
        })
        .await,
        "the failed copy was not stored"
    );
    let copy_row_id = row_id(&pool, &copy_id).await;
    let copy_row = json_of(
        app.as_reader()
            .get(&format!("/api/messages/failed/{copy_row_id}"))
            .await,
        200,
        "copy row",
    )
    .await;
    assert_eq!(
        (
            &copy_row["status"],
            &copy_row["retry_count"],
            &copy_row["edited_from"],
            &copy_row["edited_from_id"]
        ),
        (&json!("pending"), &json!(0), &json!(original), &json!(original_id)),
        "{copy_row}"
    );
    let original_row = json_of(
        app.as_reader()
            .get(&format!("/api/messages/failed/{original_id}"))
            .await,
        200,
        "original row",
    )
    .await;
    assert_eq!(
        (
            &original_row["status"],
            &original_row["edited_to"],
            &original_row["edited_to_id"]
        ),
        (&json!("resolved"), &json!(copy_id), &json!(copy_row_id)),
        "{original_row}"
    );
    // Resolved: a second edit is a conflict.
    expect_error(
        "edit of a resolved row",
        app.as_admin()
            .post(
                &format!("/api/messages/failed/{original_id}/edit-retry"),
                &json!({"payload": {}}),
            )
            .await,
        409,
        "already_resolved",
    )
    .await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("messages_broker_retries_total{outcome=\"edited\"} 1"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn edit_retry_refuses_locked_headers_bad_bodies_and_unroutable_copies_leaving_the_row_as_it_was() {
    let mut env = TestEnv::new("fg_edit_bad").await;
    env.settings.failed.edit_enabled = true;
    let app = api_only(&mut env).await;
    let pool = app.app.state.pool.clone().unwrap();
    let mut nowhere = row(&env, 1, "order 1 not found", Status::Failed);
    nowhere.routing_key = "nothing.binds.this".into();
    let rows = [row(&env, 0, "order 0 not found", Status::Failed), nowhere];
    failed_messages::upsert_batch(&pool, &rows).await.unwrap();
    let id = row_id(&pool, &rows[0].message_id).await;
    let path = format!("/api/messages/failed/{id}/edit-retry");

    let locked = expect_error(
        "locked headers",
        app.as_admin()
            .post(
                &path,
                &json!({"payload": {"event": "e"}, "headers": {
                    "x-death": [], "X-First-Death-Queue": "q", "mb-retry-count": 0, "mb-edit-of": "m",
                    "message_id": "mine", "published-by": "me", "tenant": "ok",
                }}),
            )
            .await,
        422,
        "validation_failed",
    )
    .await;
    let named: Vec<&str> = locked["fields"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        named,
        vec![
            "headers.X-First-Death-Queue",
            "headers.mb-edit-of",
            "headers.mb-retry-count",
            "headers.message_id",
            "headers.published-by",
            "headers.x-death",
        ],
        "{locked}"
    );
    for (what, body, field) in [
        ("no payload", json!({"headers": {}}), "payload"),
        (
            "headers not an object",
            json!({"payload": 1, "headers": ["a"]}),
            "headers",
        ),
        (
            "a nested header value",
            json!({"payload": 1, "headers": {"h": {"a": 1}}}),
            "headers.h",
        ),
        ("an unknown field", json!({"payload": 1, "priority": 9}), "priority"),
        ("not an object", json!("payload"), "body"),
    ] {
        let error = expect_error(what, app.as_admin().post(&path, &body).await, 422, "validation_failed").await;
        assert!(error["fields"].get(field).is_some(), "{what}: {error}");
    }
    let broken = app
        .as_admin()
        .request(reqwest::Method::POST, &path)
        .header("content-type", "application/json")
        .body("{\"payload\": {")
        .send()
        .await
        .unwrap();
    expect_error("unparseable JSON", broken, 400, "invalid_json").await;
    expect_error(
        "no such row",
        app.as_admin()
            .post("/api/messages/failed/999999/edit-retry", &json!({"payload": 1}))
            .await,
        404,
        "not_found",
    )
    .await;
    expect_error(
        "not an id",
        app.as_admin()
            .post("/api/messages/failed/abc/edit-retry", &json!({"payload": 1}))
            .await,
        404,
        "not_found",
    )
    .await;
    expect_error(
        "reader",
        app.as_reader().post(&path, &json!({"payload": 1})).await,
        403,
        "forbidden",
    )
    .await;
    // None of that touched the row.
    let untouched = failed_messages::find(&pool, id).await.unwrap().unwrap();
    assert_eq!(
        (untouched.status, untouched.retry_count, untouched.edited_to),
        (Status::Failed, 3, None)
    );

    // A copy that no queue takes: 422 unroutable, and the original stays failed (not queued for
    // an automatic retry of its unedited body).
    let nowhere_id = row_id(&pool, &rows[1].message_id).await;
    expect_error(
        "unroutable copy",
        app.as_admin()
            .post(
                &format!("/api/messages/failed/{nowhere_id}/edit-retry"),
                &json!({"payload": {"event": "e"}}),
            )
            .await,
        422,
        "unroutable",
    )
    .await;
    let after = failed_messages::find(&pool, nowhere_id).await.unwrap().unwrap();
    assert_eq!(
        (after.status, after.retry_count, after.next_retry_at, after.edited_to),
        (Status::Failed, 3, None, None)
    );
    app.stop().await;
}

#[tokio::test]
async fn two_edits_of_one_row_at_once_publish_one_copy_and_the_other_gets_409() {
    let mut env = TestEnv::new("fg_edit_race").await;
    env.settings.failed.edit_enabled = true;
    let app = api_only(&mut env).await;
    let pool = app.app.state.pool.clone().unwrap();
    let rows: Vec<_> = (0..5)
        .map(|n| row(&env, n, "order 9 not found", Status::Pending))
        .collect();
    failed_messages::upsert_batch(&pool, &rows).await.unwrap();
    for (n, original) in rows.iter().enumerate() {
        let path = format!(
            "/api/messages/failed/{}/edit-retry",
            row_id(&pool, &original.message_id).await
        );
        let edit = |version: usize| json!({"payload": {"event": "order.created", "data": {"n": n, "by": version}}});
        let (admin, one, two) = (app.as_admin(), edit(1), edit(2));
        let (first, second) = tokio::join!(admin.post(&path, &one), admin.post(&path, &two));
        let mut statuses = [first.status().as_u16(), second.status().as_u16()];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 409], "row {n}");
        let loser = if first.status() == 409 { first } else { second };
        let code = loser.json::<Value>().await.unwrap()["error"].clone();
        assert!(
            code == "retry_in_progress" || code == "already_resolved",
            "row {n}: {code}"
        );
        assert_eq!(status_of(&pool, &original.message_id).await, "resolved");
    }
    let copies = drain(&env.settings, &env.name("orders_queue")).await;
    assert_eq!(copies.len(), 5, "one copy per row");
    app.stop().await;
}

#[tokio::test]
async fn edit_retry_is_off_unless_the_setting_turns_it_on() {
    let mut env = TestEnv::new("fg_edit_off").await;
    let app = api_only(&mut env).await;
    let pool = app.app.state.pool.clone().unwrap();
    let rows = [row(&env, 0, "order 1 not found", Status::Failed)];
    failed_messages::upsert_batch(&pool, &rows).await.unwrap();
    let id = row_id(&pool, &rows[0].message_id).await;
    let error = expect_error(
        "disabled",
        app.as_admin()
            .post(&format!("/api/messages/failed/{id}/edit-retry"), &json!({"payload": 1}))
            .await,
        403,
        "edit_disabled",
    )
    .await;
    assert!(
        error["message"].as_str().unwrap().contains("failed.edit_enabled"),
        "{error}"
    );
    // The scope is checked first: a reader hears about its scope, not the setting.
    expect_error(
        "reader",
        app.as_reader()
            .post(&format!("/api/messages/failed/{id}/edit-retry"), &json!({"payload": 1}))
            .await,
        403,
        "forbidden",
    )
    .await;
    assert_eq!(status_of(&pool, &rows[0].message_id).await, "failed");
    assert!(drain(&env.settings, &env.name("orders_queue")).await.is_empty());
    app.stop().await;
}
