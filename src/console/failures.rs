//! `/console/failures`: the failed messages, filtered by every filter of the API, paged; bulk
//! retry of the filtered set behind a confirmation page that repeats the count.

use axum::{
    Form,
    extract::{Query, State, rejection::QueryRejection},
    http::StatusCode,
    response::{Html, IntoResponse, Response},
};
use maud::{Markup, html};
use serde_json::Value;
use tracing::info;

use super::{
    api_error_page,
    layout::{count, error_page, page, time},
    see_other,
    session::{Flash, Operator},
};
use crate::{
    http::{
        AppState,
        auth::Client,
        error::{ApiError, stored},
        failed::{ListQuery, parse_query},
    },
    settings::Scope,
    store::failed_messages,
};

/// The filters of the page's form, in the API's names.
const FILTERS: [&str; 7] = ["status", "queue", "exchange", "routing_key", "from", "to", "q"];

/// The query's filters without the empty fields a GET form sends, each checked like the API's.
fn filters(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> (Vec<(String, String)>, Result<ListQuery, String>) {
    let pairs: Vec<(String, String)> = query
        .map(|Query(pairs)| pairs)
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, v)| !v.trim().is_empty())
        .collect();
    let parsed = parse_query(&pairs, true).map_err(|fields| {
        fields
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join("; ")
    });
    (pairs, parsed)
}

/// `key=value&...` of the filters (not the page), percent-encoded, for links and forms.
fn encoded(pairs: &[(String, String)], skip: &[&str]) -> String {
    pairs
        .iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn urlencode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn value<'a>(pairs: &'a [(String, String)], key: &str) -> &'a str {
    pairs.iter().find(|(k, _)| k == key).map_or("", |(_, v)| v.as_str())
}

pub async fn list(
    State(state): State<AppState>,
    Operator(client): Operator,
    Flash(flash): Flash,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let (pairs, parsed) = filters(query);
    let (status, results) = match parsed {
        Err(message) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            html! { p.error role="alert" { "Bad filter: " (message) } },
        ),
        Ok(query) => match rows(&state, &client, &pairs, &query).await {
            Ok(markup) => (StatusCode::OK, markup),
            Err(err) => return api_error_page(&client, err),
        },
    };
    let body = html! {
        h1 { "Failures" }
        (filter_form(&state, &pairs))
        (results)
    };
    (
        status,
        Html(page("Failures", Some(&client), flash.as_deref(), body).into_string()),
    )
        .into_response()
}

fn filter_form(state: &AppState, pairs: &[(String, String)]) -> Markup {
    let status = value(pairs, "status");
    let queue = value(pairs, "queue");
    html! {
        form.filters method="get" action="/console/failures" {
            label { "Status "
                select name="status" {
                    option value="" selected[status.is_empty()] { "any" }
                    @for s in ["pending", "retrying", "failed", "resolved"] {
                        option value=(s) selected[status == s] { (s) }
                    }
                }
            }
            label { "Queue "
                select name="queue" {
                    option value="" selected[queue.is_empty()] { "all" }
                    @for q in state.topology.queues.iter().filter(|q| !q.is_dead_letter()) {
                        option value=(q.name) selected[queue == q.name] { (q.name) }
                    }
                }
            }
            label { "Exchange " input type="text" name="exchange" value=(value(pairs, "exchange")) size="14"; }
            label { "Routing key " input type="text" name="routing_key" value=(value(pairs, "routing_key")) size="14"; }
            label { "From " input type="text" name="from" value=(value(pairs, "from")) placeholder="YYYY-MM-DD" size="11"; }
            label { "To " input type="text" name="to" value=(value(pairs, "to")) placeholder="YYYY-MM-DD" size="11"; }
            label { "Text " input type="search" name="q" value=(value(pairs, "q")) size="16"; }
            button type="submit" { "Filter" }
        }
    }
}

async fn rows(
    state: &AppState,
    client: &Client,
    pairs: &[(String, String)],
    query: &ListQuery,
) -> Result<Markup, ApiError> {
    let pool = super::pool(state)?;
    let (rows, total) = stored(failed_messages::list(pool, &query.filter, query.page, query.per_page).await)?;
    let last_page = total.div_ceil(u64::from(query.per_page)).max(1);
    let filters = encoded(pairs, &["page", "per_page"]);
    Ok(html! {
        p.meta { (count(total)) " message(s) match." }
        @if client.has_scope(Scope::Operate) && total > 0 {
            div.actions {
                a.button href={ "/console/failures/confirm?action=retry&" (filters) } { "Retry the matching messages…" }
            }
        }
        table {
            caption { "Failed messages, newest first (page " (query.page) " of " (last_page) ")" }
            thead { tr {
                th scope="col" { "#" } th scope="col" { "Queue" } th scope="col" { "Event" }
                th scope="col" { "Error" } th scope="col" { "Status" } th scope="col" .num { "Retries" } th scope="col" { "Failed" }
            } }
            tbody { @for row in &rows {
                tr {
                    th scope="row" { a href={ "/console/messages/" (row.id) } { (row.id) } }
                    td { (row.queue) }
                    td { (row.payload.get("event").and_then(Value::as_str).unwrap_or("–")) }
                    td.error { (row.error_message.as_deref().unwrap_or("")) }
                    td { (row.status.as_str()) }
                    td.num { (row.retry_count) "/" (row.max_retries) }
                    td { (time(row.failed_at)) }
                }
            } }
        }
        nav.pages aria-label="Pages" {
            @if query.page > 1 { a rel="prev" href={ "/console/failures?" (filters) "&page=" (query.page - 1) } { "← Newer" } }
            @if u64::from(query.page) < last_page { a rel="next" href={ "/console/failures?" (filters) "&page=" (query.page + 1) } { "Older →" } }
        }
    })
}

/// The confirmation page of a bulk action: the count it will touch and the filters spelled out.
pub async fn confirm(
    State(state): State<AppState>,
    Operator(client): Operator,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    if let Err(err) = client.require(Scope::Operate) {
        return api_error_page(&client, err);
    }
    let (mut pairs, _) = filters(query);
    pairs.retain(|(k, _)| FILTERS.contains(&k.as_str()));
    let query = match parse_query(&pairs, false) {
        Ok(query) => query,
        Err(_) => return error_page(StatusCode::UNPROCESSABLE_ENTITY, Some(&client), "Bad filter."),
    };
    let retryable = match super::pool(&state) {
        Ok(pool) => stored(failed_messages::count_retryable(pool, &query.filter).await),
        Err(err) => Err(err),
    };
    let retryable = match retryable {
        Ok(n) => n,
        Err(err) => return api_error_page(&client, err),
    };
    let body = html! {
        h1 { "Retry " (count(retryable)) " message(s)?" }
        p { "Every pending or failed message matching these filters becomes due now; the retrier republishes them on its next scan." }
        (spelled_out(&pairs))
        form method="post" action="/console/failures/retry" {
            @for (key, value) in &pairs { input type="hidden" name=(key) value=(value); }
            button type="submit" { "Retry " (count(retryable)) " message(s)" }
            " " a href={ "/console/failures?" (encoded(&pairs, &[])) } { "Cancel" }
        }
    };
    Html(page("Confirm retry", Some(&client), None, body).into_string()).into_response()
}

fn spelled_out(pairs: &[(String, String)]) -> Markup {
    html! {
        @if pairs.is_empty() { p { strong { "No filter: every failed message." } } }
        @else { ul { @for (key, value) in pairs { li { (key) " = " code { (value) } } } } }
    }
}

pub async fn retry(
    State(state): State<AppState>,
    Operator(client): Operator,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    if let Err(err) = client.require(Scope::Operate) {
        return api_error_page(&client, err);
    }
    let pairs: Vec<(String, String)> = pairs
        .into_iter()
        .filter(|(k, v)| FILTERS.contains(&k.as_str()) && !v.is_empty())
        .collect();
    let query = match parse_query(&pairs, false) {
        Ok(query) => query,
        Err(_) => return error_page(StatusCode::UNPROCESSABLE_ENTITY, Some(&client), "Bad filter."),
    };
    let queued = match super::pool(&state) {
        Ok(pool) => stored(failed_messages::make_due(pool, &query.filter).await),
        Err(err) => Err(err),
    };
    match queued {
        Ok(queued) => {
            info!(client = %client.name, queued, filter = ?query.filter, "Bulk retry queued from the console.");
            see_other(
                &state,
                &format!("/console/failures?{}", encoded(&pairs, &[])),
                &format!("Queued {} message(s) for retry.", count(queued)),
            )
        }
        Err(err) => api_error_page(&client, err),
    }
}
