//! The foundation against the real RabbitMQ and MariaDB: topology apply, recovery after a closed
//! connection, drift reported without dying, `topology diff`, probes, settings errors, SIGTERM.

mod common;

use std::time::Duration;

use common::*;
use lapin::{
    options::QueueDeclareOptions,
    types::{AMQPValue, FieldTable},
};
use messages_broker::{
    amqp::connection,
    app::load_topology,
    topology::declare::{self, Outcome},
};

#[tokio::test]
async fn apply_is_idempotent() {
    let env = TestEnv::new("apply").await;
    let topology = load_topology(&env.settings).unwrap();
    let conn = connection::connect(&env.settings.rabbitmq, "test apply").await.unwrap();

    let first = declare::declare(&conn, &topology, declare::Probe::Existence)
        .await
        .unwrap();
    assert!(first.is_complete(), "{:?}", first.failures().collect::<Vec<_>>());
    assert_eq!(first.created(), topology.exchanges.len() + topology.queues.len());

    let second = declare::declare(&conn, &topology, declare::Probe::Existence)
        .await
        .unwrap();
    assert!(second.is_complete());
    assert_eq!(second.created(), 0, "the second apply creates nothing");
    assert!(second.items.iter().all(|d| d.outcome == Outcome::Exists));

    // The seed's arguments, as the broker reports them.
    let queue = env.name("orders_queue");
    let live = TestApp::management_for(&env).queue(&queue).await.unwrap();
    assert!(live.durable && !live.auto_delete);
    assert_eq!(live.arguments["x-message-ttl"], 86_400_000);
    assert_eq!(live.arguments["x-max-length"], 10_000);
    assert_eq!(live.arguments["x-overflow"], "reject-publish");
    assert_eq!(live.arguments["x-dead-letter-exchange"], env.name("dlx").as_str());
    let dlq = TestApp::management_for(&env)
        .queue(&format!("{queue}.dlq"))
        .await
        .unwrap();
    assert_eq!(dlq.arguments["x-message-ttl"], 604_800_000);

    conn.close(200, "done".into()).await.unwrap();
}

#[tokio::test]
async fn ready_reports_each_check_and_the_app_serves_probes() {
    let env = TestEnv::new("probes").await;
    let app = env.spawn().await;
    app.wait_ready().await;
    let (_, body) = app.ready_status().await;
    assert_eq!(body["checks"]["broker"]["status"], "up");
    assert_eq!(body["checks"]["topology"]["status"], "up");
    assert_eq!(body["checks"]["database"]["status"], "up");

    let health: serde_json::Value = app.get("/api/health").await.json().await.unwrap();
    assert_eq!(
        health,
        serde_json::json!({"status": "healthy", "service": "messages-broker"})
    );

    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("messages_broker_amqp_connected 1"), "{metrics}");
    assert!(metrics.contains(&format!(
        "messages_broker_queue_max_length{{queue=\"{}\"}} 5",
        env.name("small_queue")
    )));

    let openapi: serde_json::Value = app.get("/api/openapi.json").await.json().await.unwrap();
    assert!(openapi["paths"]["/api/ready"].is_object());

    // The auth layer: no token, unknown token, enough scope.
    assert_eq!(app.get("/api/topology").await.status(), 401);
    let wrong = app
        .http
        .get(app.url("/api/topology"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let body: serde_json::Value = wrong.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");
    let ok = app
        .http
        .get(app.url("/api/topology"))
        .bearer_auth(READER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    let missing = app.get("/api/nothing-here").await;
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.json::<serde_json::Value>().await.unwrap()["error"], "not_found");

    // Migrations ran on the test's own database.
    let pool = app.app.state.pool.clone().unwrap();
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() ORDER BY table_name",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let names: Vec<&str> = tables.iter().map(|t| t.0.as_str()).collect();
    assert!(
        names.contains(&"failed_messages") && names.contains(&"message_logs"),
        "{names:?}"
    );

    app.stop().await;
}

#[tokio::test]
async fn topology_comes_back_after_the_connection_is_closed() {
    let env = TestEnv::new("reconnect").await;
    let app = env.spawn().await;
    app.wait_ready().await;

    // Someone deletes an exchange, then the connection drops: the applier must redeclare it.
    let exchange = env.name("orders_exchange");
    app.management.delete_exchange(&exchange).await.unwrap();
    assert!(app.close_connections(&env.settings.app.name).await >= 1);

    let back = eventually(Duration::from_secs(20), || async {
        let generation = app.app.link().borrow().as_ref().map(|l| l.generation);
        generation >= Some(2) && app.ready_status().await.0 == 200
    })
    .await;
    assert!(back, "no reconnect: {:?}", app.ready_status().await);
    let exchanges = app.management.exchanges().await.unwrap();
    assert!(exchanges.iter().any(|e| e.name == exchange), "exchange not redeclared");
    assert_eq!(app.app.state.metrics.amqp_reconnects_total.get(), 1);

    app.stop().await;
}

#[tokio::test]
async fn a_drifted_queue_is_reported_not_fatal() {
    let env = TestEnv::new("drift").await;
    // The queue exists with another max-length before the service starts.
    let queue = env.name("orders_queue");
    let conn = connection::connect(&env.settings.rabbitmq, "test drift").await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(7));
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();

    let app = env.spawn().await;
    let failed = eventually(Duration::from_secs(15), || async {
        let (status, body) = app.ready_status().await;
        status == 503
            && body["checks"]["topology"]["detail"]
                .as_str()
                .is_some_and(|d| d.contains("x-max-length"))
    })
    .await;
    let (_, body) = app.ready_status().await;
    assert!(failed, "{body}");
    let detail = body["checks"]["topology"]["detail"].as_str().unwrap();
    assert!(detail.contains(&queue) && detail.contains("x-max-length"), "{detail}");

    // The rest of the topology is in place and the process is alive.
    let queues = app.management.queues().await.unwrap();
    assert!(queues.iter().any(|q| q.name == env.name("small_queue")));
    assert_eq!(app.get("/api/health").await.status(), 200);

    // `topology diff` names the difference and exits 1.
    let path = env.topology_path();
    let (code, stdout, _) = run_cli(&["topology", "diff"], &[("TOPOLOGY_FILE", path.to_str().unwrap())]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains(&format!(
            "~ queue {queue}: x-max-length is 7 on the broker, 10000 in the file"
        )),
        "{stdout}"
    );

    conn.close(200, "done".into()).await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn topology_diff_finds_a_hand_made_difference() {
    let env = TestEnv::new("diff").await;
    let path = env.topology_path();
    let path = path.to_str().unwrap();
    let (code, stdout, stderr) = run_cli(&["topology", "apply"], &[("TOPOLOGY_FILE", path)]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("created  exchange {}", env.name("orders_exchange"))),
        "{stdout}"
    );
    let (code, stdout, _) = run_cli(&["topology", "diff"], &[("TOPOLOGY_FILE", path)]);
    assert_eq!(code, 0, "{stdout}");

    // By hand: remove a binding.
    let conn = connection::connect(&env.settings.rabbitmq, "test diff").await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel
        .queue_unbind(
            env.name("orders_queue").as_str().into(),
            env.name("orders_exchange").as_str().into(),
            "orders.#".into(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (code, stdout, _) = run_cli(&["topology", "diff"], &[("TOPOLOGY_FILE", path)]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains(&format!(
            "- binding {} -> {} (\"orders.#\")",
            env.name("orders_exchange"),
            env.name("orders_queue")
        )),
        "{stdout}"
    );
    conn.close(200, "done".into()).await.unwrap();
}

#[test]
fn a_bad_setting_exits_2_naming_the_key() {
    let (code, _, stderr) = run_cli(&["topology", "check"], &[("APP_PORT", "notanumber")]);
    assert_eq!(code, 2);
    assert_eq!(
        stderr.trim(),
        "error: invalid setting `app.port` (from APP_PORT): invalid type: found string \"notanumber\", expected u16"
    );

    let (code, _, stderr) = run_cli(&["serve"], &[("WORKER_ROLES", "api,bogus")]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("`app.roles` (from WORKER_ROLES)") && stderr.contains("bogus"),
        "{stderr}"
    );

    let (code, _, stderr) = run_cli(&["serve", "--roles", "nope"], &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("`--roles`"), "{stderr}");
}

/// The binary's compiled-in jemalloc options (src/main.rs) reach jemalloc: a renamed symbol after
/// an allocator upgrade would drop them silently. `stats_print` merges with them, not replaces.
#[test]
fn the_allocator_options_are_in_effect() {
    let (code, _, stderr) = run_cli(&["--help"], &[("_RJEM_MALLOC_CONF", "stats_print:true")]);
    assert_eq!(code, 0);
    for option in ["opt.narenas: 1", "opt.dirty_decay_ms: 1000", "opt.muzzy_decay_ms: 0"] {
        assert!(
            stderr.contains(option),
            "`{option}` missing from jemalloc's stats:\n{stderr}"
        );
    }
}

/// Kubernetes injects `<SERVICE>_PORT=tcp://...` for every Service; ours is named messages-broker.
#[test]
fn kubernetes_service_variables_are_not_settings() {
    let injected = [
        ("MESSAGES_BROKER_PORT", "tcp://10.0.0.1:8000"),
        ("MESSAGES_BROKER_SERVICE_HOST", "10.0.0.1"),
        ("MESSAGES_BROKER_PORT_8000_TCP", "tcp://10.0.0.1:8000"),
    ];
    let (code, stdout, stderr) = run_cli(&["topology", "check", "topology.toml"], &injected);
    assert_eq!(code, 0, "{stdout}{stderr}");
    // A real setting in the generic form still counts.
    let (code, _, stderr) = run_cli(&["topology", "check"], &[("MESSAGES_BROKER_APP__PORT", "x")]);
    assert_eq!(code, 2, "{stderr}");
}

/// The example Secret's `auth.toml` is a valid settings layer, as the README tells the operator
/// to copy it: its clients and the console's session key load.
#[test]
fn the_example_secrets_auth_toml_is_a_valid_settings_layer() {
    let secret = std::fs::read_to_string("compose/kubernetes/base/secret.example.yaml").unwrap();
    let auth_toml: String = secret
        .lines()
        .skip_while(|line| line.trim() != "auth.toml: |")
        .skip(1)
        .take_while(|line| line.starts_with("    ") || line.is_empty())
        .map(|line| format!("{}\n", line.strip_prefix("    ").unwrap_or(line)))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth.toml");
    std::fs::write(&file, &auth_toml).unwrap();
    let settings = messages_broker::settings::Settings::load(std::path::Path::new("config"), Some(&file))
        .unwrap_or_else(|err| panic!("{err}\n{auth_toml}"));
    let names: Vec<&str> = settings.auth.clients.iter().map(|c| c.name.as_str()).collect();
    assert!(
        names.contains(&"orders-service") && names.contains(&"operations"),
        "{names:?}"
    );
    assert!(settings.console.session_key.expose().len() >= 32);
}

#[test]
fn topology_check_prints_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        r#"
[[exchanges]]
name = "a"
type = "bogus"

[[bindings]]
exchange = "missing_exchange"
queue = "missing_queue"
"#,
    )
    .unwrap();
    let (code, stdout, _) = run_cli(&["topology", "check", file.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("exchanges[0].type"), "{stdout}");
    assert!(stdout.contains("bindings[0].exchange"), "{stdout}");
    assert!(stdout.contains("bindings[0].queue"), "{stdout}");

    let (code, stdout, _) = run_cli(&["topology", "check", "/nonexistent/topology.toml"], &[]);
    assert_eq!(code, 1);
    assert!(stdout.contains("cannot read topology file"), "{stdout}");

    let (code, stdout, _) = run_cli(&["topology", "check"], &[]);
    assert_eq!(code, 0, "{stdout}");
}

#[tokio::test]
async fn sigterm_stops_the_process_cleanly_within_the_deadline() {
    let env = TestEnv::new("sigterm").await;
    let port = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_messages-broker"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("TOPOLOGY_FILE", env.topology_path())
        .env("APP_PORT", port.to_string())
        .env("DB_DATABASE", &env.settings.database.database)
        .env("MESSAGES_BROKER_APP__SHUTDOWN_TIMEOUT", "5s")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/api/ready");
    let ready = eventually(Duration::from_secs(20), || async {
        client.get(&url).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(ready, "the binary never became ready");

    let started = std::time::Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "still running past the deadline"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn mysql_tls_is_selected_by_settings() {
    use messages_broker::{settings::SslMode, store};
    let env = TestEnv::new("tls").await;
    let mut plain = env.settings.database.clone();
    plain.ssl_mode = SslMode::Disabled;
    let pool = store::pool(&plain);
    store::ping(&pool).await.expect("plain connection");
    let have_ssl: (String, String) = sqlx::query_as("SHOW VARIABLES LIKE 'have_ssl'")
        .fetch_one(&pool)
        .await
        .unwrap();

    let mut required = env.settings.database.clone();
    required.ssl_mode = SslMode::Required;
    required.connect_timeout = Duration::from_secs(2);
    let result = store::ping(&store::pool(&required)).await;
    // The setting reaches the driver: TLS is demanded, and the server's answer decides.
    if have_ssl.1 == "YES" {
        result.expect("TLS connection to a server that offers it");
    } else {
        assert!(result.is_err(), "ssl_mode=required must refuse a server without TLS");
    }
}

#[tokio::test]
async fn replicas_migrating_together_take_turns() {
    use messages_broker::store;
    let env = TestEnv::new("migrate").await;
    let pools: Vec<_> = (0..4).map(|_| store::pool(&env.settings.database)).collect();
    let results = futures_util::future::join_all(pools.iter().map(store::migrate)).await;
    for result in results {
        result.expect("every replica migrates without error");
    }
    let versions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(&pools[0])
        .await
        .unwrap();
    assert_eq!(versions, store::MIGRATOR.iter().count() as i64);
}

#[tokio::test]
async fn a_failed_test_leaves_no_database_or_queue_behind() {
    // A "test" that declares its topology, then fails an assertion.
    let (names_tx, names_rx) = std::sync::mpsc::channel();
    let failed = tokio::spawn(async move {
        let env = TestEnv::new("dropped").await;
        let conn = connection::connect(&env.settings.rabbitmq, "test dropped")
            .await
            .unwrap();
        let topology = load_topology(&env.settings).unwrap();
        declare::declare(&conn, &topology, declare::Probe::Existence)
            .await
            .unwrap();
        let _ = conn.close(200, "declared".into()).await;
        names_tx.send((env.settings.clone(), env.name("orders_queue"))).unwrap();
        panic!("an assertion failed");
    })
    .await;
    assert!(failed.unwrap_err().is_panic());
    let (settings, queue) = names_rx.recv().unwrap();

    let management = messages_broker::amqp::management::ManagementClient::new(&settings.rabbitmq);
    assert!(management.queue(&queue).await.is_err(), "{queue} is still declared");
    let options = settings.database.connect_options().database("");
    let mut conn = <sqlx::MySqlConnection as sqlx::Connection>::connect_with(&options)
        .await
        .unwrap();
    let left: Option<String> =
        sqlx::query_scalar("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?")
            .bind(&settings.database.database)
            .fetch_optional(&mut conn)
            .await
            .unwrap();
    assert_eq!(left, None, "the test database is still there");
}

/// config/default.toml lists every key with its built-in default: a process started without
/// `--roles` runs every role, the newest included.
#[test]
fn the_default_config_file_runs_every_role() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml")).unwrap();
    let file: toml::Table = text.parse().unwrap();
    let roles = file["app"]["roles"].as_str().unwrap();
    assert_eq!(roles, messages_broker::roles::Roles::all().to_string());
}
