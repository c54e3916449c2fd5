//! The operator console: server-rendered pages under `/console/`, served by the `api` role.
//! Sessions are signed cookies (see [`session`]); every POST must come from the console's own
//! origin; pages forbid scripts and styles from anywhere but `/console/static/`.

mod failures;
mod layout;
mod message;
mod overview;
mod queue;
pub mod session;

use axum::{
    Form, Router,
    extract::{Request, State, rejection::FormRejection},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{Html, IntoResponse, Redirect, Response},
    routing::{get, post},
};
use maud::html;
use serde::Deserialize;
use tracing::{info, warn};

use self::{
    layout::{error_page, page},
    session::{FLASH_COOKIE, Flash, cookie},
};
use crate::{
    http::{AppState, auth::Client, error::ApiError},
    settings::Scope,
};

const CSS: &str = include_str!("static/console.css");
const JS: &str = include_str!("static/console.js");

/// Scripts, styles and forms from the console itself only; no framing, no inline code.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/console", get(|| async { Redirect::permanent("/console/") }))
        .route("/console/", get(overview::show))
        .route("/console/login", get(login_form).post(login))
        .route("/console/logout", post(logout))
        .route("/console/failures", get(failures::groups))
        .route("/console/failures/confirm", get(failures::confirm))
        .route("/console/failures/retry", post(failures::retry))
        .route("/console/failures/delete", post(failures::delete))
        .route("/console/failures/{fingerprint}", get(failures::group))
        .route("/console/messages/{id}", get(message::show))
        .route("/console/messages/{id}/retry", post(message::retry))
        .route("/console/messages/{id}/delete", post(message::delete))
        .route("/console/messages/{id}/edit-retry", post(message::edit_retry))
        .route("/console/queues/{name}", get(queue::show))
        .route("/console/queues/{name}/purge", post(queue::purge))
        .route(
            "/console/static/console.css",
            get(|| async { asset("text/css; charset=utf-8", CSS) }),
        )
        .route(
            "/console/static/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", JS) }),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), guard))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// Every console request: POSTs only from our own origin (CSRF), security headers on every
/// answer, and the flash cookie cleared once a page has shown it.
async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if !matches!(*request.method(), Method::GET | Method::HEAD) && !same_origin(request.headers()) {
        warn!(path = %request.uri().path(), "Console POST refused: not from the console's origin.");
        return error_page(
            StatusCode::FORBIDDEN,
            None,
            "This form was not sent from the console's own pages (Origin check); reload the page and try again.",
        );
    }
    let had_flash = cookie(request.headers(), FLASH_COOKIE).is_some();
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if had_flash
        && !response.status().is_redirection()
        && let Ok(clear) = HeaderValue::from_str(&state.sessions.clear_flash_cookie())
    {
        response.headers_mut().append(header::SET_COOKIE, clear);
    }
    response
}

/// The request's `Origin` (else its `Referer`) names the host it was sent to.
fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    let (Some(host), Some(origin)) = (
        text(header::HOST),
        text(header::ORIGIN).or_else(|| text(header::REFERER)),
    ) else {
        return false;
    };
    origin
        .split_once("://")
        .map(|(_, rest)| rest.split('/').next().unwrap_or_default())
        .is_some_and(|authority| authority.eq_ignore_ascii_case(host))
}

/// Every bad field, as one line: `status: must be one of ...; from: ...`.
fn described(fields: &std::collections::BTreeMap<String, String>) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// 303 to `location` with a flash line for the next page.
fn see_other(state: &AppState, location: &str, flash: &str) -> Response {
    let mut response = Redirect::to(location).into_response();
    if let Ok(cookie) = HeaderValue::from_str(&state.sessions.flash_cookie(flash)) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// The API's error as a page, with the API's status (503 for the database, 404, 409...).
fn api_error_page(client: &Client, err: ApiError) -> Response {
    error_page(err.status(), Some(client), &err.message)
}

async fn login_form(State(state): State<AppState>, headers: HeaderMap, Flash(flash): Flash) -> Response {
    if state.sessions.operator(&state, &headers).is_some() {
        return Redirect::to("/console/").into_response();
    }
    login_page(StatusCode::OK, flash.as_deref(), None)
}

fn login_page(status: StatusCode, flash: Option<&str>, error: Option<&str>) -> Response {
    let body = html! {
        h1 { "Log in" }
        p { "Use an API token of a client with the `read` scope; `operate` adds the retry and delete buttons, `admin` the purge." }
        @if let Some(error) = error { p.error role="alert" { (error) } }
        form.login method="post" action="/console/login" {
            label for="token" { "API token" }
            input #token type="password" name="token" autocomplete="current-password" required autofocus;
            button type="submit" { "Log in" }
        }
    };
    (status, Html(page("Log in", None, flash, body).into_string())).into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(state): State<AppState>, form: Result<Form<LoginForm>, FormRejection>) -> Response {
    let Ok(Form(form)) = form else {
        return login_page(
            StatusCode::BAD_REQUEST,
            None,
            Some("The form was not complete; enter a token."),
        );
    };
    let Some(client) = state.clients.authenticate(form.token.trim()) else {
        return login_page(StatusCode::UNAUTHORIZED, None, Some("Unknown token."));
    };
    if !client.has_scope(Scope::Read) {
        return login_page(
            StatusCode::FORBIDDEN,
            None,
            Some(&format!(
                "Client `{}` lacks the `read` scope the console needs.",
                client.name
            )),
        );
    }
    info!(client = %client.name, "Console login.");
    let mut response = Redirect::to("/console/").into_response();
    if let Ok(cookie) = HeaderValue::from_str(&state.sessions.login_cookie(&client)) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

async fn logout(State(state): State<AppState>) -> Response {
    let mut response = see_other(&state, "/console/login", "Logged out.");
    if let Ok(cookie) = HeaderValue::from_str(&state.sessions.logout_cookie()) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (k.clone(), v.parse().unwrap())).collect()
    }

    #[test]
    fn posts_must_come_from_the_host_they_are_sent_to() {
        let ok = |pairs: &[(header::HeaderName, &str)]| same_origin(&headers(pairs));
        assert!(ok(&[
            (header::HOST, "console.example:8000"),
            (header::ORIGIN, "https://console.example:8000")
        ]));
        assert!(ok(&[
            (header::HOST, "127.0.0.1:8011"),
            (header::REFERER, "http://127.0.0.1:8011/console/failures?x=1")
        ]));
        assert!(!ok(&[
            (header::HOST, "console.example"),
            (header::ORIGIN, "https://evil.example")
        ]));
        assert!(!ok(&[
            (header::HOST, "console.example"),
            (header::ORIGIN, "https://console.example.evil.example")
        ]));
        assert!(!ok(&[(header::HOST, "console.example"), (header::ORIGIN, "null")]));
        assert!(!ok(&[(header::HOST, "console.example")]), "neither Origin nor Referer");
    }
}
