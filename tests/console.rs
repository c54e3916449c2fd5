//! The operator console against the real broker and database, through its HTTP pages as a
//! browser would use them (cookies, forms, redirects): login and sessions, scopes, CSRF,
//! escaping, and every action (retry, delete, bulk retry, purge). The browser test
//! (scripts/console_browser.py, driven by `browser_walks_through_a_failure`) adds Chromium.

mod common;

use std::time::Duration;

use common::*;
use reqwest::{StatusCode, header};
use serde_json::{Value, json};

/// A browser-like client of one app: no automatic redirects, cookies kept by hand.
struct Browser<'a> {
    app: &'a TestApp,
    http: reqwest::Client,
    cookies: Vec<(String, String)>,
}

struct Page {
    status: StatusCode,
    location: Option<String>,
    headers: header::HeaderMap,
    html: String,
}

impl<'a> Browser<'a> {
    fn new(app: &'a TestApp) -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Self {
            app,
            http,
            cookies: Vec::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Page {
        let response = request
            .header(header::COOKIE, self.cookie_header())
            .send()
            .await
            .unwrap();
        for set in response.headers().get_all(header::SET_COOKIE) {
            let set = set.to_str().unwrap();
            let (pair, attributes) = set.split_once(';').unwrap_or((set, ""));
            let (name, value) = pair.split_once('=').unwrap();
            self.cookies.retain(|(k, _)| k != name);
            if !attributes.contains("Max-Age=0") {
                self.cookies.push((name.to_owned(), value.to_owned()));
            }
        }
        Page {
            status: response.status(),
            location: response
                .headers()
                .get(header::LOCATION)
                .map(|v| v.to_str().unwrap().to_owned()),
            headers: response.headers().clone(),
            html: response.text().await.unwrap(),
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        let request = self.http.get(self.app.url(path));
        self.send(request).await
    }

    /// A form POST with the console's own Origin, as the page's form sends it.
    async fn post(&mut self, path: &str, form: &str) -> Page {
        let origin = self.app.base.clone();
        self.post_from(path, form, Some(&origin)).await
    }

    async fn post_from(&mut self, path: &str, form: &str, origin: Option<&str>) -> Page {
        let mut request = self
            .http
            .post(self.app.url(path))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form.to_owned());
        if let Some(origin) = origin {
            request = request.header(header::ORIGIN, origin);
        }
        self.send(request).await
    }

    /// POST, then follow the redirect (POST-redirect-GET).
    async fn submit(&mut self, path: &str, form: &str) -> Page {
        let answer = self.post(path, form).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{path}: {}", answer.html);
        self.get(&answer.location.unwrap()).await
    }

    async fn login(&mut self, token: &str) -> Page {
        self.post("/console/login", &format!("token={token}")).await
    }
}

/// Publishes one order through the API and rejects it, so it becomes a failed row; its id.
async fn failed_order(env: &TestEnv, app: &TestApp, data: Value) -> u64 {
    let pool = app.app.state.pool.clone().unwrap();
    let before: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM failed_messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    let body = json!({"exchange": env.name("orders_exchange"), "routing_key": "orders.created",
        "message": {"event": "order.created", "data": data}});
    assert_eq!(app.post_json("/api/messages/publish", &body).await.status(), 201);
    assert_eq!(reject_all(&env.settings, &env.name("orders_queue")).await, 1);
    assert!(
        eventually(Duration::from_secs(10), || async {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM failed_messages")
                .fetch_one(&pool)
                .await
                .unwrap()
                > before
        })
        .await
    );
    sqlx::query_scalar("SELECT MAX(id) FROM failed_messages")
        .fetch_one(&pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn login_sessions_and_logout() {
    let env = TestEnv::new("console_login").await;
    let app = env.spawn().await;
    app.wait_ready().await;
    let mut browser = Browser::new(&app);

    let page = browser.get("/console/").await;
    assert_eq!(
        (page.status, page.location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/console/login"))
    );
    let form = browser.get("/console/login").await;
    assert_eq!(form.status, 200);
    assert!(form.html.contains(r#"<label for="token">"#), "{}", form.html);

    assert_eq!(browser.login("not-a-token").await.status, StatusCode::UNAUTHORIZED);
    let publish_only = browser.login(ORDERS_TOKEN).await;
    assert_eq!(publish_only.status, StatusCode::FORBIDDEN);
    assert!(publish_only.html.contains("lacks the `read` scope"));
    assert!(browser.cookies.is_empty(), "no session for refused logins");

    let login = browser.login(READER_TOKEN).await;
    assert_eq!(
        (login.status, login.location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/console/"))
    );
    let set_cookie = login.headers[header::SET_COOKIE].to_str().unwrap();
    for attribute in [
        "mb_session=",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/console",
        "Max-Age=28800",
    ] {
        assert!(set_cookie.contains(attribute), "{set_cookie} lacks {attribute}");
    }
    assert!(
        !set_cookie.contains(READER_TOKEN),
        "the token never goes into the cookie"
    );

    let overview = browser.get("/console/").await;
    assert_eq!(overview.status, 200, "{}", overview.html);
    assert!(overview.html.contains("test-reader (read-only)"));
    let csp = overview.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert_eq!(overview.headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(overview.headers[header::X_FRAME_OPTIONS], "DENY");

    // A tampered session is no session.
    let session = browser
        .cookies
        .iter()
        .find(|(k, _)| k == "mb_session")
        .unwrap()
        .1
        .clone();
    let (text, tag) = session.split_once('.').unwrap();
    let mut forged = Browser::new(&app);
    let other_name = base64_url(&format!("{}|test-admin", text_prefix(text)));
    forged
        .cookies
        .push(("mb_session".into(), format!("{other_name}.{tag}")));
    assert_eq!(forged.get("/console/").await.status, StatusCode::SEE_OTHER);

    let logout = browser.post("/console/logout", "").await;
    assert_eq!(
        (logout.status, logout.location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/console/login"))
    );
    assert!(
        browser.cookies.iter().all(|(k, _)| k != "mb_session"),
        "logout clears the session"
    );
    let after = browser.get("/console/login").await;
    assert!(after.html.contains("Logged out."), "the flash line shows once");
    assert!(
        !browser.get("/console/login").await.html.contains("Logged out."),
        "and only once"
    );
    assert_eq!(browser.get("/console/").await.status, StatusCode::SEE_OTHER);
}

/// The session text without its last field (the client's name).
fn text_prefix(encoded: &str) -> String {
    use base64::Engine;
    let text = String::from_utf8(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(encoded)
            .unwrap(),
    )
    .unwrap();
    text.rsplit_once('|').unwrap().0.to_owned()
}

fn base64_url(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

#[tokio::test]
async fn the_overview_lists_every_queue_of_the_topology_with_its_figures() {
    let mut env = TestEnv::new("console_overview").await;
    env.settings.stats.interval = Duration::from_millis(200);
    let app = env.spawn().await;
    app.wait_ready().await;
    for _ in 0..3 {
        let body = json!({"exchange": env.name("events"), "routing_key": "", "message": {"event": "ping", "data": {}}});
        assert_eq!(app.post_json("/api/messages/publish", &body).await.status(), 201);
    }
    let mut browser = Browser::new(&app);
    browser.login(READER_TOKEN).await;
    let small = env.name("small_queue");
    // 3 of 5 messages, no consumer: the no-consumer condition holds, and the queue comes first.
    let needle = format!("{small} has 3 message(s) and no consumer");
    let mut page = browser.get("/console/").await;
    for _ in 0..50 {
        if page.html.contains(&needle) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        page = browser.get("/console/").await;
    }
    assert!(page.html.contains(&needle), "{}", page.html);
    for queue in ["orders_queue", "small_queue"] {
        assert!(
            page.html
                .contains(&format!(r#"href="/console/queues/{}""#, env.name(queue))),
            "{queue}"
        );
    }
    assert!(
        page.html.find(&small).unwrap() < page.html.find(&env.name("orders_queue")).unwrap(),
        "attention first"
    );
    assert!(page.html.contains(r#"<meter min="0" max="5""#), "{}", page.html);
    assert!(page.html.contains("data-refresh"), "the overview refreshes itself");

    let queue = browser.get(&format!("/console/queues/{small}")).await;
    assert_eq!(queue.status, 200);
    assert!(!queue.html.contains("Purge"), "a reader sees no purge");
    assert_eq!(
        browser.get("/console/queues/nope_queue").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        browser.get("/console/queues/..%2Fapi").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn purge_asks_for_the_queue_name_and_only_admins_get_it() {
    let env = TestEnv::new("console_purge").await;
    let app = env.spawn().await;
    app.wait_ready().await;
    for _ in 0..2 {
        let body = json!({"exchange": env.name("events"), "routing_key": "", "message": {"event": "ping", "data": {}}});
        assert_eq!(app.post_json("/api/messages/publish", &body).await.status(), 201);
    }
    let small = env.name("small_queue");
    let path = format!("/console/queues/{small}/purge");

    let mut reader = Browser::new(&app);
    reader.login(READER_TOKEN).await;
    assert_eq!(
        reader.post(&path, &format!("confirm={small}")).await.status,
        StatusCode::FORBIDDEN
    );

    let mut admin = Browser::new(&app);
    admin.login(ADMIN_TOKEN).await;
    assert!(
        admin
            .get(&format!("/console/queues/{small}"))
            .await
            .html
            .contains("Type the queue")
    );
    let wrong = admin.post(&path, "confirm=orders_queue").await;
    assert_eq!(wrong.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(wrong.html.contains("nothing was purged"));
    // Both messages are still there: the purge below counts them.
    let done = admin.submit(&path, &format!("confirm={small}")).await;
    assert!(
        done.html.contains(&format!("Purged 2 message(s) from {small}.")),
        "{}",
        done.html
    );
    assert!(drain(&env.settings, &small).await.is_empty());
}

#[tokio::test]
async fn message_page_escapes_payloads_and_acts_by_scope_with_csrf_checks() {
    let env = TestEnv::new("console_message").await;
    let app = env.spawn().await;
    app.wait_ready().await;
    let id = failed_order(
        &env,
        &app,
        json!({"note": "<script>alert('x')</script>", "order_id": 7}),
    )
    .await;
    let path = format!("/console/messages/{id}");

    let mut reader = Browser::new(&app);
    reader.login(READER_TOKEN).await;
    let page = reader.get(&path).await;
    assert_eq!(page.status, 200);
    assert!(
        !page.html.contains("<script>alert"),
        "a payload is never HTML: {}",
        page.html
    );
    assert!(page.html.contains("&lt;script&gt;alert("), "{}", page.html);
    assert!(page.html.contains("order.created") && page.html.contains("rejected"));
    assert!(
        !page.html.contains("Retry now") && !page.html.contains(">Delete<"),
        "a reader sees no buttons"
    );
    assert_eq!(
        reader.post(&format!("{path}/retry"), "").await.status,
        StatusCode::FORBIDDEN,
        "and the server refuses"
    );

    let mut admin = Browser::new(&app);
    admin.login(ADMIN_TOKEN).await;
    assert!(admin.get(&path).await.html.contains("Retry now"));
    // CSRF: a POST without our Origin (nor Referer), or from another site, is refused.
    assert_eq!(
        admin.post_from(&format!("{path}/retry"), "", None).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        admin
            .post_from(&format!("{path}/retry"), "", Some("http://evil.example"))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let status = || async {
        sqlx::query_scalar::<_, String>("SELECT CAST(status AS CHAR) FROM failed_messages WHERE id = ?")
            .bind(id)
            .fetch_one(app.app.state.pool.as_ref().unwrap())
            .await
            .unwrap()
    };
    assert_eq!(status().await, "pending", "refused POSTs changed nothing");

    let after = admin.submit(&format!("{path}/retry"), "").await;
    assert!(after.html.contains("republished and confirmed"), "{}", after.html);
    assert_eq!(status().await, "resolved");
    assert_eq!(
        drain(&env.settings, &env.name("orders_queue")).await.len(),
        1,
        "the message is back in its queue"
    );

    let other = failed_order(&env, &app, json!({"order_id": 8})).await;
    let deleted = admin.submit(&format!("/console/messages/{other}/delete"), "").await;
    assert!(deleted.html.contains(&format!("Message {other} deleted.")));
    assert_eq!(
        admin.get(&format!("/console/messages/{other}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(admin.get("/console/messages/abc").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn failures_groups_rows_and_bulk_actions_after_confirmation() {
    let env = TestEnv::new("console_failures").await;
    let app = env.spawn().await;
    app.wait_ready().await;
    for n in 0..3 {
        failed_order(&env, &app, json!({"order_id": n})).await;
    }
    let pool = app.app.state.pool.clone().unwrap();
    let mut admin = Browser::new(&app);
    admin.login(ADMIN_TOKEN).await;
    let queue = env.name("orders_queue");
    let groups = admin
        .get(&format!("/console/failures?status=pending&queue={queue}&exchange=&q="))
        .await;
    assert_eq!(groups.status, 200, "{}", groups.html);
    assert!(
        groups.html.contains("1 group(s) match."),
        "three orders rejected alike: {}",
        groups.html
    );
    let fingerprint: String = sqlx::query_scalar("SELECT MIN(fingerprint) FROM failed_messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        groups.html.contains(&format!("/console/failures/{fingerprint}?")),
        "{}",
        groups.html
    );
    let rows = admin
        .get(&format!("/console/failures/{fingerprint}?status=pending"))
        .await;
    assert_eq!(rows.status, 200, "{}", rows.html);
    assert!(rows.html.contains("3 message(s) match."), "{}", rows.html);
    assert_eq!(
        admin.get("/console/failures/not-a-fingerprint").await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let bad = admin.get("/console/failures?status=archived").await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(bad.html.contains("status: must be one of"));

    let confirm = admin
        .get(&format!(
            "/console/failures/confirm?action=retry&status=pending&fingerprint={fingerprint}"
        ))
        .await;
    assert_eq!(confirm.status, 200, "{}", confirm.html);
    assert!(confirm.html.contains("Retry 3 message(s)?"), "{}", confirm.html);
    let done = admin
        .submit(
            "/console/failures/retry",
            &format!("status=pending&fingerprint={fingerprint}"),
        )
        .await;
    assert!(done.html.contains("Queued 3 message(s) for retry."), "{}", done.html);
    let due: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM failed_messages WHERE next_retry_at <= UTC_TIMESTAMP(6)")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(due, 3);

    let mut reader = Browser::new(&app);
    reader.login(READER_TOKEN).await;
    let page = reader.get("/console/failures").await;
    assert!(
        !page.html.contains("Retry…") && !page.html.contains("Delete…"),
        "a reader sees no actions"
    );
    assert_eq!(
        reader.get("/console/failures/confirm?action=retry").await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        reader.post("/console/failures/delete", "status=pending").await.status,
        StatusCode::FORBIDDEN
    );

    let confirm = admin
        .get(&format!(
            "/console/failures/confirm?action=delete&fingerprint={fingerprint}"
        ))
        .await;
    assert!(confirm.html.contains("Delete 3 message(s)?"), "{}", confirm.html);
    let deleted = admin
        .submit("/console/failures/delete", &format!("fingerprint={fingerprint}"))
        .await;
    assert!(deleted.html.contains("Deleted 3 message(s)."), "{}", deleted.html);
    assert!(deleted.html.contains("0 group(s) match."), "{}", deleted.html);
}

/// The browser walk of scripts/console_browser.py (Chromium, playwright, axe-core) against the
/// service running the shipped topology in a vhost of its own, then the copy checked in the queue.
#[tokio::test]
async fn browser_walks_through_a_failure() {
    let mut env = TestEnv::new("console_browser").await;
    env.with_shipped_topology().await;
    env.settings.stats.interval = Duration::from_millis(500);
    env.settings.failed.edit_enabled = true;
    let app = env.spawn().await;
    app.wait_ready().await;
    let queues = app
        .app
        .state
        .topology
        .queues
        .iter()
        .filter(|q| !q.is_dead_letter())
        .count();
    assert_eq!(queues, 11, "the shipped topology has the seed's 11 service queues");

    let body = json!({"exchange": "orders_exchange", "routing_key": "orders.created",
        "message": {"event": "order.created", "metadata": {"version": "1.0"},
            "data": {"order_id": 4242, "note": "<script>alert(1)</script>"}}});
    assert_eq!(app.post_json("/api/messages/publish", &body).await.status(), 201);
    assert_eq!(reject_all(&env.settings, "orders_queue").await, 1);
    let pool = app.app.state.pool.clone().unwrap();
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

    let screenshots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/console_browser.py");
    let (base, shots, count) = (app.base.clone(), screenshots.clone(), queues.to_string());
    // The walk takes seconds of blocking work: off the runtime, so the app keeps serving.
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .args([
                "--base",
                &base,
                "--admin-token",
                ADMIN_TOKEN,
                "--reader-token",
                READER_TOKEN,
            ])
            .args(["--queues", &count, "--screenshots", shots.to_str().unwrap()])
            .output()
    })
    .await
    .unwrap()
    .expect("python3 runs (scripts/setup.sh installs chromium, playwright and axe-playwright-python)");
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "browser walk failed:\n{log}");
    println!("{log}screenshots in {}", screenshots.display());

    let delivered = drain(&env.settings, "orders_queue").await;
    assert_eq!(delivered.len(), 1, "the edited copy is in the queue");
    let copy: Value = serde_json::from_slice(&delivered[0].data).unwrap();
    assert_eq!(copy["data"]["order_id"], 4243, "{copy}");
    let headers = delivered[0].properties.headers().clone().unwrap_or_default();
    assert!(headers.inner().contains_key("mb-edit-of"), "{headers:?}");
}
