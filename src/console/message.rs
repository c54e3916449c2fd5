//! `/console/messages/{id}`: one failed message: what failed, the payload and headers as text,
//! its deaths and retries, its edited copy or original; retry, delete, edit and retry (scope
//! `operate`; editing also needs `failed.edit_enabled`).

use axum::{
    Form,
    extract::{Path, State, rejection::FormRejection},
    http::StatusCode,
    response::{Html, IntoResponse, Response},
};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::info;

use super::{
    api_error_page, described,
    layout::{error_page, page, time},
    see_other,
    session::{Flash, Operator},
};
use crate::{
    edit,
    http::{
        AppState,
        auth::Client,
        error::{ApiError, stored},
        positive_id,
        publish::new_message_id,
    },
    settings::Scope,
    store::failed_messages::{self, FailedMessage, Status},
};

/// Payloads longer than this many lines are folded behind a `<details>`.
const FOLD_LINES: usize = 200;

pub async fn show(
    State(state): State<AppState>,
    Operator(client): Operator,
    Flash(flash): Flash,
    Path(raw): Path<String>,
) -> Response {
    let Some(id) = positive_id(&raw) else {
        return error_page(
            StatusCode::NOT_FOUND,
            Some(&client),
            &format!("No failed message `{raw}`."),
        );
    };
    render(&state, &client, id, flash.as_deref(), None).await
}

/// A refused edit: the text as typed and why.
struct Refused<'a> {
    text: &'a str,
    error: &'a str,
}

async fn render(
    state: &AppState,
    client: &Client,
    id: u64,
    flash: Option<&str>,
    refused: Option<Refused<'_>>,
) -> Response {
    let row = match load(state, id).await {
        Ok(row) => row,
        Err(err) => return api_error_page(client, err),
    };
    let can_act = client.has_scope(Scope::Operate) && row.status != Status::Resolved && row.status != Status::Retrying;
    let can_edit = can_act && state.settings.failed.edit_enabled;
    let status = if refused.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let body = html! {
        h1 { (event_of(&row).unwrap_or("Failed message")) " " small { "#" (row.id) } }
        p.meta {
            (row.exchange) " → " (row.routing_key) " · queue "
            a href={ "/console/queues/" (row.queue) } { (row.queue) }
            " · status " strong.status { (row.status.as_str()) }
            " (" (row.retry_count) " of " (row.max_retries) " retries)"
        }
        p { "Failed " (time(row.failed_at)) ": " span.error { (row.error_message.as_deref().unwrap_or("no reason recorded")) } }
        dl.facts {
            dt { "message_id" } dd { code { (row.message_id) } }
            @if let Some(fingerprint) = &row.fingerprint {
                dt { "Failure group" } dd { a href={ "/console/failures/" (fingerprint) } { code { (fingerprint) } } }
            }
            @if let Some(original) = &row.edited_from {
                dt { "Edited copy of" } dd { (link_to(original, row.edited_from_id, "original")) }
            }
            @if let Some(copy) = &row.edited_to {
                dt { "Copied as" } dd { (link_to(copy, row.edited_to_id, "copy")) }
            }
            @if let Some(at) = row.last_retry_at { dt { "Last retry" } dd { (time(at)) } }
            @if let Some(at) = row.next_retry_at { dt { "Next retry" } dd { (time(at)) } }
            @if let Some(at) = row.resolved_at { dt { "Resolved" } dd { (time(at)) } }
        }
        @if can_act {
            div.actions {
                form.inline method="post" action={ "/console/messages/" (row.id) "/retry" } {
                    button type="submit" { "Retry now" }
                }
                form.inline method="post" action={ "/console/messages/" (row.id) "/delete" } {
                    button.danger type="submit" { "Delete" }
                }
            }
        }
        @if can_edit {
            details.edit open[refused.is_some()] {
                summary { "Edit and retry" }
                p { "Publishes a copy with a new message_id and an " code { "mb-edit-of" } " header; this message is resolved once RabbitMQ confirms the copy." }
                @if let Some(refused) = &refused { p.error role="alert" { (refused.error) } }
                form method="post" action={ "/console/messages/" (row.id) "/edit-retry" } {
                    label for="payload-editor" { "Payload (JSON)" }
                    textarea #payload-editor name="payload" spellcheck="false" {
                        (refused.as_ref().map_or_else(|| pretty(&row.payload), |r| r.text.to_owned()))
                    }
                    button type="submit" { "Edit and retry" }
                }
            }
        }
        div.columns {
            section aria-labelledby="payload" {
                h2 #payload { "Payload" }
                (folded(&pretty(&row.payload)))
            }
            section aria-labelledby="headers" {
                h2 #headers { "Headers" }
                (headers(row.headers.as_ref()))
            }
            section aria-labelledby="deaths" {
                h2 #deaths { "Deaths" }
                @match &row.death_history {
                    Some(history) => pre { (pretty(history)) },
                    None => p { "None recorded." },
                }
            }
        }
    };
    (
        status,
        Html(page(&format!("Message {}", row.id), Some(client), flash, body).into_string()),
    )
        .into_response()
}

/// The other message of an edit: a link to its row when it has one (the copy failed too).
fn link_to(message_id: &str, row: Option<u64>, label: &str) -> Markup {
    html! {
        @match row {
            Some(id) => { a href={ "/console/messages/" (id) } { (label) " #" (id) } " " }
            None => {}
        }
        code { (message_id) }
    }
}

async fn load(state: &AppState, id: u64) -> Result<FailedMessage, ApiError> {
    stored(failed_messages::find(state.database()?, id).await)?
        .ok_or_else(|| ApiError::not_found(format!("No failed message {id}.")))
}

fn event_of(row: &FailedMessage) -> Option<&str> {
    row.payload.get("event").and_then(Value::as_str)
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// A `<pre>`, folded after [`FOLD_LINES`] lines.
fn folded(text: &str) -> Markup {
    let lines = text.lines().count();
    if lines <= FOLD_LINES {
        return html! { pre { (text) } };
    }
    let head: String = text.lines().take(FOLD_LINES).collect::<Vec<_>>().join("\n");
    html! {
        pre { (head) }
        details { summary { "Show all " (lines) " lines" } pre { (text) } }
    }
}

fn headers(headers: Option<&Value>) -> Markup {
    match headers.and_then(Value::as_object).filter(|h| !h.is_empty()) {
        None => html! { p { "None." } },
        Some(map) => html! {
            table.compact {
                thead { tr { th scope="col" { "Header" } th scope="col" { "Value" } } }
                tbody { @for (name, value) in map {
                    tr { th scope="row" { (name) } td { code { (match value { Value::String(s) => s.clone(), other => other.to_string() }) } } }
                } }
            }
        },
    }
}

/// The row id of an action's path, once the client may act (scope `operate`); else the page.
fn actionable(client: &Client, raw: &str) -> Result<u64, Box<Response>> {
    let Some(id) = positive_id(raw) else {
        let page = error_page(
            StatusCode::NOT_FOUND,
            Some(client),
            &format!("No failed message `{raw}`."),
        );
        return Err(Box::new(page));
    };
    client
        .require(Scope::Operate)
        .map_err(|err| Box::new(api_error_page(client, err)))?;
    Ok(id)
}

pub async fn retry(State(state): State<AppState>, Operator(client): Operator, Path(raw): Path<String>) -> Response {
    let id = match actionable(&client, &raw) {
        Ok(id) => id,
        Err(page) => return *page,
    };
    let Some(retrier) = state.retrier.as_ref() else {
        return error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(&client),
            "This process cannot republish.",
        );
    };
    let flash = match stored(retrier.retry_now(id).await) {
        Ok(Ok((_, true))) => {
            info!(client = %client.name, id, "Failed message retried from the console.");
            format!("Message {id} republished and confirmed: resolved.")
        }
        Ok(Ok((_, false))) => {
            format!("RabbitMQ did not confirm the republish of {id}; it stays pending and will be retried.")
        }
        Ok(Err(refusal)) => ApiError::from_claim(refusal, id).message,
        Err(err) => return api_error_page(&client, err),
    };
    see_other(&state, &format!("/console/messages/{id}"), &flash)
}

pub async fn delete(State(state): State<AppState>, Operator(client): Operator, Path(raw): Path<String>) -> Response {
    let id = match actionable(&client, &raw) {
        Ok(id) => id,
        Err(page) => return *page,
    };
    let deleted = match state.database() {
        Ok(pool) => stored(failed_messages::delete(pool, id).await),
        Err(err) => Err(err),
    };
    match deleted {
        Ok(true) => {
            info!(client = %client.name, id, "Failed message deleted from the console.");
            see_other(&state, "/console/failures", &format!("Message {id} deleted."))
        }
        Ok(false) => error_page(
            StatusCode::NOT_FOUND,
            Some(&client),
            &format!("No failed message {id}."),
        ),
        Err(err) => api_error_page(&client, err),
    }
}

#[derive(Deserialize)]
pub struct EditForm {
    payload: String,
}

pub async fn edit_retry(
    State(state): State<AppState>,
    Operator(client): Operator,
    Path(raw): Path<String>,
    form: Result<Form<EditForm>, FormRejection>,
) -> Response {
    let id = match actionable(&client, &raw) {
        Ok(id) => id,
        Err(page) => return *page,
    };
    if !state.settings.failed.edit_enabled {
        return error_page(
            StatusCode::FORBIDDEN,
            Some(&client),
            "Edit and retry is turned off on this service (failed.edit_enabled).",
        );
    }
    let Ok(Form(form)) = form else {
        return error_page(StatusCode::BAD_REQUEST, Some(&client), "The form was not complete.");
    };
    let edit = serde_json::from_str::<Value>(&form.payload)
        .map_err(|err| format!("Not valid JSON: {err}."))
        .and_then(|payload| edit::parse(json!({ "payload": payload })).map_err(|fields| described(&fields)));
    let edit = match edit {
        Ok(edit) => edit,
        Err(error) => {
            return render(
                &state,
                &client,
                id,
                None,
                Some(Refused {
                    text: &form.payload,
                    error: &error,
                }),
            )
            .await;
        }
    };
    let Some(retrier) = state.retrier.as_ref() else {
        return error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(&client),
            "This process cannot republish.",
        );
    };
    let copy_id = new_message_id();
    let flash = match stored(retrier.edit_and_retry(id, &edit, copy_id.clone(), &client.name).await) {
        Ok(Ok((row, outcome))) => match ApiError::from_publish(&outcome, &row.exchange, &row.routing_key) {
            None => {
                info!(client = %client.name, id, copy = %copy_id, "Failed message edited and retried from the console.");
                format!("Published an edited copy ({copy_id}); message {id} is resolved.")
            }
            Some(err) => format!("The copy was not published: {} Message {id} is unchanged.", err.message),
        },
        Ok(Err(refusal)) => ApiError::from_claim(refusal, id).message,
        Err(err) => return api_error_page(&client, err),
    };
    see_other(&state, &format!("/console/messages/{id}"), &flash)
}
