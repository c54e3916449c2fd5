//! Helpers shared by the integration tests: unique names, a fresh database per test, an app
//! spawned on port 0 against the real RabbitMQ and MariaDB, and polling with a deadline.
#![allow(dead_code)] // each test binary uses its own subset

pub mod load;
pub mod process;
pub mod proxy;

use std::{future::Future, path::PathBuf, time::Duration};

use messages_broker::{
    amqp::management::ManagementClient,
    app::App,
    settings::{ClientSettings, Scope, Settings},
};
use sha2::{Digest, Sha256};
use sqlx::Connection;

pub const ADMIN_TOKEN: &str = "test-admin-token";
pub const READER_TOKEN: &str = "test-reader-token";
/// Publish scope, allowed only on `<prefix>_orders_exchange`.
pub const ORDERS_TOKEN: &str = "test-orders-token";

/// A short unique prefix: names stay readable in the management UI and never collide.
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &id[..10])
}

/// A small topology of the platform's shape, every name prefixed by `p`.
pub fn topology_toml(p: &str) -> String {
    format!(
        r#"
[queue_defaults]
message_ttl = 86400000
max_length = 10000
overflow = "reject-publish"
dead_letter_exchange = "{p}_dlx"

[dead_letter_queues]
message_ttl = 604800000

[[exchanges]]
name = "{p}_orders_exchange"
type = "topic"

[[exchanges]]
name = "{p}_events"
type = "fanout"

[[exchanges]]
name = "{p}_dlx"
type = "direct"
internal = true

[[exchanges]]
name = "{p}_limited_exchange"
type = "topic"

[[queues]]
name = "{p}_orders_queue"

[[queues]]
name = "{p}_small_queue"
max_length = 5

[[bindings]]
exchange = "{p}_orders_exchange"
queue = "{p}_orders_queue"
routing_key = "orders.#"

[[bindings]]
exchange = "{p}_events"
queue = "{p}_small_queue"

[[bindings]]
exchange = "{p}_limited_exchange"
queue = "{p}_orders_queue"
routing_key = "limited.#"

[[rate_limits]]
exchange = "{p}_limited_exchange"
per_second = 1
burst = 2
"#
    )
}

pub fn sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Settings for one test: port 0, its own database, its own topology file. Dropping it drops the
/// database and deletes the topology's queues and exchanges, also when an assertion failed.
pub struct TestEnv {
    pub prefix: String,
    pub settings: Settings,
    pub dir: tempfile::TempDir,
    /// A vhost made for this test (see [`TestEnv::with_shipped_topology`]), deleted at the end.
    own_vhost: Option<String>,
}

impl TestEnv {
    pub async fn new(prefix: &str) -> Self {
        let prefix = unique(prefix);
        init_logs();
        let dir = tempfile::tempdir().expect("temp dir");
        let topology_path = dir.path().join("topology.toml");
        std::fs::write(&topology_path, topology_toml(&prefix)).expect("write topology");
        let mut settings = Settings::default();
        settings.app.name = format!("mb-test-{prefix}");
        settings.app.host = "127.0.0.1".into();
        settings.app.port = 0;
        settings.app.topology_file = topology_path;
        settings.app.shutdown_timeout = Duration::from_secs(10);
        settings.rabbitmq.reconnect_min = Duration::from_millis(100);
        settings.rabbitmq.reconnect_max = Duration::from_secs(1);
        settings.database.database = format!("messages_broker_test_{prefix}");
        settings.auth.clients = vec![
            ClientSettings {
                name: "test-admin".into(),
                token_sha256: sha256_hex(ADMIN_TOKEN),
                scopes: vec![Scope::Admin],
                exchanges: None,
            },
            ClientSettings {
                name: "test-reader".into(),
                token_sha256: sha256_hex(READER_TOKEN),
                scopes: vec![Scope::Read],
                exchanges: None,
            },
            ClientSettings {
                name: "test-orders".into(),
                token_sha256: sha256_hex(ORDERS_TOKEN),
                scopes: vec![Scope::Publish],
                exchanges: Some(vec![format!("{prefix}_orders_exchange")]),
            },
        ];
        create_database(&settings).await;
        Self {
            prefix,
            settings,
            dir,
            own_vhost: None,
        }
    }

    /// Puts a cuttable TCP proxy between the app and MariaDB (a database outage for this test
    /// only); returns the proxy and a pool that goes straight to the database.
    pub async fn behind_database_proxy(&mut self) -> (proxy::ChaosProxy, sqlx::MySqlPool) {
        let target = format!("{}:{}", self.settings.database.host, self.settings.database.port);
        let proxy = proxy::ChaosProxy::start(target.parse().expect("database address")).await;
        self.settings.database.port = proxy.addr.port();
        self.settings.database.connect_timeout = Duration::from_secs(1);
        let direct = messages_broker::store::pool(&Self::direct_database(&self.settings));
        (proxy, direct)
    }

    /// The database settings without any proxy in between.
    pub fn direct_database(settings: &Settings) -> messages_broker::settings::DatabaseSettings {
        let mut database = settings.database.clone();
        database.port = Settings::default().database.port;
        database
    }

    /// Runs the test with the shipped topology.toml (the platform's real queue names) in a vhost
    /// of its own, so that it shares nothing with other tests or a local run.
    pub async fn with_shipped_topology(&mut self) {
        let vhost = self.prefix.clone();
        let rabbitmq = &self.settings.rabbitmq;
        let api = format!("http://{}:{}/api", rabbitmq.host, rabbitmq.management_port);
        let http = reqwest::Client::new();
        for (path, body) in [
            (format!("{api}/vhosts/{vhost}"), serde_json::json!({})),
            (
                format!("{api}/permissions/{vhost}/{}", rabbitmq.user),
                serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"}),
            ),
        ] {
            let response = http
                .put(&path)
                .basic_auth(&rabbitmq.user, Some(rabbitmq.password.expose()))
                .json(&body)
                .send()
                .await
                .expect("management API");
            assert!(response.status().is_success(), "PUT {path}: {}", response.status());
        }
        self.settings.rabbitmq.vhost = vhost.clone();
        self.settings.app.topology_file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("topology.toml");
        self.own_vhost = Some(vhost);
    }

    pub fn topology_path(&self) -> PathBuf {
        self.settings.app.topology_file.clone()
    }

    pub fn name(&self, suffix: &str) -> String {
        format!("{}_{suffix}", self.prefix)
    }

    pub async fn spawn(&self) -> TestApp {
        let app = App::build(self.settings.clone()).await.expect("app builds");
        let base = format!("http://{}", app.addr());
        TestApp {
            app,
            base,
            http: reqwest::Client::new(),
            management: ManagementClient::new(&self.settings.rabbitmq),
        }
    }

    /// Cleans up now rather than at the end of the scope; dropping the env does the same.
    pub async fn cleanup(self) {
        drop(self);
    }
}

impl Drop for TestEnv {
    /// Like crates.io's `TestDatabase`: runs when the test ends, passed or panicked. `drop` cannot
    /// be async and usually runs on the test's runtime, where blocking on another future is
    /// refused: the cleanup gets its own thread and a small runtime there, and is waited for.
    fn drop(&mut self) {
        let settings = self.settings.clone();
        let prefix = self.prefix.clone();
        let own_vhost = self.own_vhost.clone();
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            // Bounded: a test that stopped the broker or the database must still end.
            // The timer is made inside `block_on`: outside it there is no runtime to register with.
            runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(30), remove_leftovers(settings, &prefix, own_vhost)).await
            })
        });
        // Best effort, and never a panic inside a panic: a failed cleanup only leaves leftovers.
        if !matches!(cleanup.join(), Ok(Ok(()))) {
            eprintln!(
                "TestEnv {}: cleanup failed or timed out; leftovers may remain",
                self.prefix
            );
        }
    }
}

/// Deletes the topology's queues and exchanges, the broker users named with the test's prefix,
/// and drops the test database (best effort).
async fn remove_leftovers(settings: Settings, prefix: &str, own_vhost: Option<String>) {
    let management = ManagementClient::new(&settings.rabbitmq);
    if let Some(vhost) = own_vhost {
        let rabbitmq = &settings.rabbitmq;
        let _ = reqwest::Client::new()
            .delete(format!(
                "http://{}:{}/api/vhosts/{vhost}",
                rabbitmq.host, rabbitmq.management_port
            ))
            .basic_auth(&rabbitmq.user, Some(rabbitmq.password.expose()))
            .send()
            .await;
    }
    // Every user a test makes (in its topology or by hand) starts with its unique prefix.
    for user in management.users().await.unwrap_or_default() {
        if user.name.starts_with(prefix) {
            let _ = management.delete_user(&user.name).await;
        }
    }
    if let Ok(topology) = messages_broker::app::load_topology(&settings) {
        for queue in &topology.queues {
            let _ = management.delete_queue(&queue.name).await;
        }
        for exchange in &topology.exchanges {
            let _ = management.delete_exchange(&exchange.name).await;
        }
    }
    // Straight to the database: a test may have left its settings pointing at a cut proxy.
    let direct = Settings {
        database: TestEnv::direct_database(&settings),
        ..settings
    };
    drop_database(&direct).await;
}

pub struct TestApp {
    pub app: App,
    pub base: String,
    pub http: reqwest::Client,
    pub management: ManagementClient,
}

impl TestApp {
    pub fn management_for(env: &TestEnv) -> ManagementClient {
        ManagementClient::new(&env.settings.rabbitmq)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GET without a token.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.anonymous().get(path).await
    }

    /// Requests as the admin client (every scope).
    pub fn as_admin(&self) -> Caller<'_> {
        self.caller(Some(ADMIN_TOKEN))
    }

    /// Requests as the reader client (read scope only).
    pub fn as_reader(&self) -> Caller<'_> {
        self.caller(Some(READER_TOKEN))
    }

    /// Requests as the orders client (publish scope, on `<prefix>_orders_exchange` only).
    pub fn as_orders_client(&self) -> Caller<'_> {
        self.caller(Some(ORDERS_TOKEN))
    }

    /// Requests without any token.
    pub fn anonymous(&self) -> Caller<'_> {
        self.caller(None)
    }

    /// Requests with `token` as the bearer token (a forged one too), or none.
    pub fn caller<'a>(&'a self, token: Option<&'a str>) -> Caller<'a> {
        Caller { app: self, token }
    }

    pub async fn ready_status(&self) -> (u16, serde_json::Value) {
        let response = self.get("/api/ready").await;
        let status = response.status().as_u16();
        (status, response.json().await.expect("ready answers JSON"))
    }

    pub async fn wait_ready(&self) {
        let ok = eventually(Duration::from_secs(20), || async { self.ready_status().await.0 == 200 }).await;
        assert!(ok, "app never became ready: {:?}", self.ready_status().await);
    }

    /// Closes this app's AMQP connection(s) through the management API, as an operator would.
    pub async fn close_connections(&self, app_name: &str) -> usize {
        // The management API lists a new connection a moment after it opens.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut closed = 0;
            let conns = self.management.connections().await.unwrap_or_default();
            for conn in conns.iter().filter(|c| {
                c.client_properties
                    .connection_name
                    .as_deref()
                    .is_some_and(|n| n.starts_with(app_name))
            }) {
                if self.management.close_connection(&conn.name).await.is_ok() {
                    closed += 1;
                }
            }
            if closed > 0 || tokio::time::Instant::now() >= deadline {
                return closed;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// POST with the admin token and a JSON body.
    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.as_admin().post(path, body).await
    }

    pub async fn stop(self) {
        self.app
            .shutdown(Duration::from_secs(10))
            .await
            .expect("clean shutdown");
    }
}

/// One identity's requests to the app under test: its bearer token goes on each of them.
#[derive(Clone, Copy)]
pub struct Caller<'a> {
    app: &'a TestApp,
    /// `None`: no Authorization header at all.
    token: Option<&'a str>,
}

impl Caller<'_> {
    /// A request to `path` with this identity's token, to add headers or a raw body to.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.app.http.request(method, self.app.url(path));
        match self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        send(self.request(reqwest::Method::GET, path)).await
    }

    /// POST with a JSON body.
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        send(self.request(reqwest::Method::POST, path).json(body)).await
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        send(self.request(reqwest::Method::DELETE, path)).await
    }
}

/// Sends a request that must reach the app (any status will do).
pub async fn send(request: reqwest::RequestBuilder) -> reqwest::Response {
    request.send().await.expect("request sent")
}

/// The contract's error answer: exactly `status`, and `code` as its JSON `error`. Returns the
/// body for further checks. `what` names the case in a failed assertion.
pub async fn expect_error(what: &str, response: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(response.status(), status, "{what}");
    let body: serde_json::Value = response
        .json()
        .await
        .unwrap_or_else(|err| panic!("{what}: not JSON: {err}"));
    assert_eq!(body["error"], code, "{what}: {body}");
    body
}

/// Logs of the app under test, shown by libtest for failing tests (RUST_LOG to tune).
pub fn init_logs() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,lapin=off,sqlx=warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Takes every message from `queue` (acking it) until it stays empty for a moment.
pub async fn drain(settings: &Settings, queue: &str) -> Vec<lapin::message::BasicGetMessage> {
    let conn = messages_broker::amqp::connection::connect(&settings.rabbitmq, "test drain")
        .await
        .expect("connect");
    let channel = conn.create_channel().await.expect("channel");
    let mut out = Vec::new();
    let mut empty_polls = 0;
    while empty_polls < 3 {
        match channel
            .basic_get(queue.into(), lapin::options::BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            Some(message) => {
                out.push(message);
                empty_polls = 0;
            }
            None => {
                empty_polls += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let _ = conn.close(200, "drained".into()).await;
    out
}

/// A port free on 127.0.0.1 right now (for a service the test starts as a separate process).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A publish body for `exchange` with a minimal valid envelope.
pub fn publish_body(exchange: &str, routing_key: &str) -> serde_json::Value {
    serde_json::json!({
        "exchange": exchange,
        "routing_key": routing_key,
        "message": {"event": "order.created", "data": {"order_id": 42}},
    })
}

/// Polls `check` every 100 ms until it holds or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn server_connection(settings: &Settings) -> sqlx::MySqlConnection {
    let options = settings.database.connect_options().database("");
    sqlx::MySqlConnection::connect_with(&options)
        .await
        .expect("connect to MariaDB (run scripts/setup.sh)")
}

async fn create_database(settings: &Settings) {
    let mut conn = server_connection(settings).await;
    // The name is ours (prefix + uuid hex), never user input.
    let sql = format!("CREATE DATABASE `{}` CHARACTER SET utf8mb4", settings.database.database);
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .expect("create test database");
}

async fn drop_database(settings: &Settings) {
    let options = settings.database.connect_options().database("");
    let Ok(mut conn) = sqlx::MySqlConnection::connect_with(&options).await else {
        return;
    };
    let sql = format!("DROP DATABASE IF EXISTS `{}`", settings.database.database);
    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await;
}

/// Runs the real binary with `args` and extra environment; returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_messages-broker"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("binary runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Plays a failing consumer: rejects (no requeue) every message of `queue`; returns how many.
pub async fn reject_all(settings: &Settings, queue: &str) -> usize {
    use lapin::options::{BasicGetOptions, BasicRejectOptions};
    let conn = messages_broker::amqp::connection::connect(&settings.rabbitmq, "test rejecter")
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let mut rejected = 0;
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .unwrap()
    {
        message.reject(BasicRejectOptions { requeue: false }).await.unwrap();
        rejected += 1;
    }
    let _ = conn.close(200, "done".into()).await;
    rejected
}
