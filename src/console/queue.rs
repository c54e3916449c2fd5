//! `/console/queues/{name}`: one queue's figures and its dead-letter queue; purge for admins,
//! who must type the queue's name.

use std::time::Duration;

use axum::{
    Form,
    extract::{Path, State, rejection::FormRejection},
    http::StatusCode,
    response::{Html, IntoResponse, Response},
};
use maud::html;
use serde::Deserialize;
use tracing::warn;

use super::{
    layout::{count, error_page, page, rate, time},
    overview::{alerts_of, depth},
    see_other,
    session::{Flash, Operator},
};
use crate::{
    amqp::calls,
    http::{AppState, auth::Client, error::ApiError},
    settings::Scope,
    topology::validate::is_plain_name,
};

const PURGE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn show(
    State(state): State<AppState>,
    Operator(client): Operator,
    Flash(flash): Flash,
    Path(name): Path<String>,
) -> Response {
    render(&state, &client, &name, flash.as_deref(), None)
}

fn render(state: &AppState, client: &Client, name: &str, flash: Option<&str>, purge_error: Option<&str>) -> Response {
    let declared = state.topology.queue(name);
    let snapshot = state.stats.borrow().clone();
    let stats = snapshot.as_ref().and_then(|s| s.queue(name));
    if !is_plain_name(name) || (declared.is_none() && stats.is_none()) {
        return error_page(
            StatusCode::NOT_FOUND,
            Some(client),
            &format!("No queue `{name}` in the topology nor on the broker."),
        );
    }
    let dead_letter = state.topology.dead_letter_queue_of(name);
    let source = declared.and_then(|q| q.source_queue());
    let body = html! {
        h1 { "Queue " (name) }
        @if let Some(snapshot) = &snapshot {
            p.meta { "Stats taken at " (time(snapshot.taken_at)) "." }
        }
        @match stats {
            None => p.alert { "No figures for this queue: it is not on the broker, or this process does not run the stats role." },
            Some(q) => {
                @let alerts = alerts_of(q);
                @if !alerts.is_empty() {
                    ul.alerts { @for alert in &alerts { li { (alert) } } }
                }
                dl.facts {
                    dt { "Depth / capacity" } dd { (depth(q)) }
                    dt { "Ready" } dd { (count(q.ready)) }
                    dt { "Unacked" } dd { (q.unacked.map_or_else(|| "–".to_owned(), count)) }
                    dt { "Consumers" } dd { (q.consumers) }
                    dt { "Publish / deliver / ack per second" } dd { (rate(q.publish_rate)) " / " (rate(q.deliver_rate)) " / " (rate(q.ack_rate)) }
                    dt { "Unresolved failures" } dd {
                        @match q.failed_unresolved {
                            Some(n) => a href={ "/console/failures?queue=" (name) } { (count(n)) },
                            None => "unknown",
                        }
                    }
                }
            }
        }
        @if let Some(dlq) = dead_letter {
            p { "Dead letters go to " a href={ "/console/queues/" (dlq.name) } { (dlq.name) } ": "
                (snapshot.as_ref().and_then(|s| s.queue(&dlq.name)).map_or_else(|| "–".to_owned(), |d| count(d.messages))) " waiting." }
        }
        @if let Some(source) = source {
            p { "Dead-letter queue of " a href={ "/console/queues/" (source) } { (source) } "." }
        }
        @if client.has_scope(Scope::Admin) {
            section aria-labelledby="purge" {
                h2 #purge { "Purge" }
                p { "Deletes every ready message of " strong { (name) } " for good. Unacked messages stay." }
                @if let Some(error) = purge_error { p.error role="alert" { (error) } }
                form method="post" action={ "/console/queues/" (name) "/purge" } {
                    label for="confirm" { "Type the queue's name to confirm" }
                    input #confirm type="text" name="confirm" autocomplete="off" required;
                    button.danger type="submit" { "Purge " (name) }
                }
            }
        }
    };
    let status = if purge_error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    (status, Html(page(name, Some(client), flash, body).into_string())).into_response()
}

#[derive(Deserialize)]
pub struct PurgeForm {
    confirm: String,
}

pub async fn purge(
    State(state): State<AppState>,
    Operator(client): Operator,
    Path(name): Path<String>,
    form: Result<Form<PurgeForm>, FormRejection>,
) -> Response {
    if !client.has_scope(Scope::Admin) {
        return error_page(StatusCode::FORBIDDEN, Some(&client), "Purging needs the `admin` scope.");
    }
    if !is_plain_name(&name) {
        return error_page(StatusCode::NOT_FOUND, Some(&client), "No such queue.");
    }
    if form.as_ref().map_or(true, |Form(f)| f.confirm.trim() != name) {
        return render(
            &state,
            &client,
            &name,
            None,
            Some("The name typed is not the queue's name: nothing was purged."),
        );
    }
    let Some(link) = state.link.borrow().clone() else {
        return error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(&client),
            "Not connected to RabbitMQ; retry later.",
        );
    };
    match calls::purge_queue(&link.connection, &name, PURGE_TIMEOUT).await {
        Ok(purged) => {
            warn!(client = %client.name, queue = %name, purged, "Queue purged from the console.");
            see_other(
                &state,
                &format!("/console/queues/{name}"),
                &format!("Purged {} message(s) from {name}.", count(u64::from(purged))),
            )
        }
        Err(err) => {
            let err = ApiError::from_call(err, &format!("queue `{name}`"));
            error_page(err.status(), Some(&client), &err.message)
        }
    }
}
