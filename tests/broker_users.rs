//! `[[users]]` against the real broker: the applier creates the users with their permissions and
//! topic permissions; a service user publishes where it may and gets ACCESS_REFUSED elsewhere;
//! a user without its password is skipped without costing readiness; `topology diff` reports a
//! permission changed by hand and a user the file does not know, and `topology apply` restores
//! the permission. Every user is named with the test's prefix, so `TestEnv`'s cleanup deletes
//! them, also when an assertion failed.

mod common;

use std::time::Duration;

use base64::Engine;
use common::*;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection,
    options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions},
    types::FieldTable,
};
use messages_broker::amqp::connection;
use sha2::{Digest, Sha256};

const ORDERS_PASSWORD: &str = "orders-secret";
const EVENTS_PASSWORD: &str = "events-secret";

/// RabbitMQ's `rabbit_password_hashing_sha256`: base64(salt ++ sha256(salt ++ password)).
fn rabbit_hash(password: &str) -> String {
    let salt: [u8; 4] = fastrand::u32(..).to_be_bytes();
    let digest = Sha256::new().chain_update(salt).chain_update(password).finalize();
    let mut bytes = salt.to_vec();
    bytes.extend_from_slice(&digest);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Three users: orders (password file, topic permission), events (password hash), ghost
/// (password from a variable nobody sets).
fn users_toml(env: &TestEnv, password_file: &str) -> String {
    let p = &env.prefix;
    let hash = rabbit_hash(EVENTS_PASSWORD);
    format!(
        r#"
[[users]]
name = "{p}-orders"
password_file = "{password_file}"
write = "^{p}_orders_exchange$"
read = '^{p}_orders_queue(\.dlq)?$'

[[users.topic_permissions]]
exchange = "{p}_orders_exchange"
write = '^orders\..*'

[[users]]
name = "{p}-events"
password_hash = "{hash}"
tags = ["monitoring"]
write = "^{p}_events$"
read = "^{p}_small_queue$"

[[users]]
name = "{p}-ghost"
password_env = "MB_TEST_UNSET_PASSWORD_{}"
read = ".*"
"#,
        p.rsplit('_').next().unwrap_or_default()
    )
}

/// An AMQP connection signed in as `user`, and a channel in confirm mode.
async fn connect_as(env: &TestEnv, user: &str, password: &str) -> (Connection, Channel) {
    let mut settings = env.settings.rabbitmq.clone();
    settings.user = user.to_owned();
    settings.password = messages_broker::settings::Secret::new(password);
    let conn = connection::connect(&settings, &format!("test {user}"))
        .await
        .unwrap_or_else(|err| panic!("{user} connects: {err}"));
    let channel = fresh_channel(&conn).await;
    (conn, channel)
}

async fn fresh_channel(conn: &Connection) -> Channel {
    let channel = conn.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    channel
}

/// Publishes one message and waits for the broker's answer: the confirm, or the error that
/// closed the channel.
async fn publish(channel: &Channel, exchange: &str, routing_key: &str) -> lapin::Result<Confirmation> {
    let sent = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default(),
        )
        .await?;
    tokio::time::timeout(Duration::from_secs(10), sent)
        .await
        .expect("the broker answers within 10 s")
}

/// The broker closed the channel with 403 ACCESS_REFUSED, for the resource named in `detail`
/// (its reply reads `ACCESS_REFUSED - access to topic 'payments.created' in exchange ...`).
fn assert_refused<T: std::fmt::Debug>(what: &str, detail: &str, result: lapin::Result<T>) {
    let text = result.expect_err(what).to_string();
    assert!(
        text.contains("ACCESS_REFUSED") && text.contains(detail),
        "{what}: expected ACCESS_REFUSED on {detail}, got {text}"
    );
}

#[tokio::test]
async fn service_users_get_exactly_their_permissions_and_diff_reports_drift() {
    let env = TestEnv::new("users").await;
    let p = env.prefix.clone();
    let password_file = env.dir.path().join("orders-password");
    std::fs::write(&password_file, format!("{ORDERS_PASSWORD}\n")).unwrap();
    let topology_path = env.topology_path();
    let mut text = std::fs::read_to_string(&topology_path).unwrap();
    text.push_str(&users_toml(&env, &password_file.display().to_string()));
    std::fs::write(&topology_path, text).unwrap();

    // The applier: ready although the ghost's password is nowhere.
    let app = env.spawn().await;
    app.wait_ready().await;
    let management = TestApp::management_for(&env);
    let live: Vec<String> = management.users().await.unwrap().into_iter().map(|u| u.name).collect();
    assert!(live.contains(&format!("{p}-orders")), "{live:?}");
    assert!(live.contains(&format!("{p}-events")), "{live:?}");
    assert!(!live.contains(&format!("{p}-ghost")), "no password, no user: {live:?}");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("messages_broker_topology_users_unapplied 1"),
        "{metrics}"
    );

    // The orders service: its exchange with its routing keys, nothing else.
    let orders_exchange = env.name("orders_exchange");
    let (conn, channel) = connect_as(&env, &format!("{p}-orders"), ORDERS_PASSWORD).await;
    let confirmation = publish(&channel, &orders_exchange, "orders.created").await.unwrap();
    assert!(confirmation.is_ack(), "{confirmation:?}");
    assert_refused(
        "a routing key outside the topic permission",
        "access to topic 'payments.created'",
        publish(&channel, &orders_exchange, "payments.created").await,
    );
    let channel = fresh_channel(&conn).await;
    assert_refused(
        "another service's exchange",
        &format!("access to exchange '{}'", env.name("events")),
        publish(&channel, &env.name("events"), "").await,
    );
    let channel = fresh_channel(&conn).await;
    assert_refused(
        "consuming another service's queue",
        &format!("access to queue '{}'", env.name("small_queue")),
        channel
            .basic_consume(
                env.name("small_queue").as_str().into(),
                "thief".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await,
    );
    let _ = conn.close(200, "done".into()).await;

    // The events user signs in with the password behind the file's hash.
    let (conn, channel) = connect_as(&env, &format!("{p}-events"), EVENTS_PASSWORD).await;
    let confirmation = publish(&channel, &env.name("events"), "").await.unwrap();
    assert!(confirmation.is_ack(), "{confirmation:?}");
    let _ = conn.close(200, "done".into()).await;
    app.stop().await;

    // Drift made by hand: a wider write permission and a user the file does not know.
    management
        .put_permissions(
            &format!("{p}-orders"),
            &serde_json::json!({"configure": "", "write": ".*", "read": format!("^{p}_orders_queue$")}),
        )
        .await
        .unwrap();
    let stranger = format!("{p}-stranger");
    management
        .put_user(&stranger, &serde_json::json!({"password": "x", "tags": ""}))
        .await
        .unwrap();
    let path = topology_path.to_str().unwrap();
    let (code, stdout, stderr) = run_cli(&["topology", "diff"], &[("TOPOLOGY_FILE", path)]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    let expected = [
        format!(r#"~ user {p}-orders: write is ".*" on the broker, "^{p}_orders_exchange$" in the file"#),
        format!(
            r#"~ user {p}-orders: read is "^{p}_orders_queue$" on the broker, "^{p}_orders_queue(\.dlq)?$" in the file"#
        ),
        format!("+ user {stranger}: on the broker, not in the file"),
        format!("- user {p}-ghost: in the file, missing on the broker"),
        format!("note: user {p}-ghost cannot be applied from here: environment variable"),
    ];
    for line in expected {
        assert!(stdout.contains(&line), "missing `{line}` in:\n{stdout}");
    }
    assert!(!stdout.contains("+ user guest:"), "guest is not reported: {stdout}");
    assert!(
        !stdout.contains(&format!("user {p}-events")),
        "events has no drift: {stdout}"
    );

    // `topology apply` puts the permission back, says why the ghost is skipped, keeps the stranger.
    let (code, stdout, stderr) = run_cli(&["topology", "apply"], &[("TOPOLOGY_FILE", path)]);
    assert_eq!(code, 0, "a skipped user is no failure: {stdout}{stderr}");
    assert!(stdout.contains(&format!("updated  user {p}-orders")), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "SKIPPED  user {p}-ghost: environment variable MB_TEST_UNSET_PASSWORD_"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("users: 2 in place, 1 skipped (password source missing), 0 failed, 0 deleted"),
        "{stdout}"
    );
    let (_, stdout, _) = run_cli(&["topology", "diff"], &[("TOPOLOGY_FILE", path)]);
    assert!(!stdout.contains(&format!("~ user {p}-orders")), "{stdout}");
    assert!(
        stdout.contains(&format!("+ user {stranger}: on the broker, not in the file")),
        "{stdout}"
    );
}
