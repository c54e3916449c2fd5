//! `/console/failures`: the failure groups (same queue, event and error once ids and numbers are
//! set aside), then `/console/failures/{fingerprint}`: one group's messages. Every filter of the
//! API, paged; bulk retry and delete of the filtered set behind a confirmation page that repeats
//! the count.

use axum::{
    Form,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::StatusCode,
    response::{Html, IntoResponse, Response},
};
use maud::{Markup, html};
use serde_json::Value;
use tracing::info;

use super::{
    api_error_page, described,
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
const FILTERS: [&str; 8] = [
    "status",
    "queue",
    "exchange",
    "routing_key",
    "from",
    "to",
    "q",
    "fingerprint",
];

/// The query's filters without the empty fields a GET form sends (a group's page adds its
/// fingerprint), each checked like the API's.
fn filters(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    fingerprint: Option<&str>,
) -> (Vec<(String, String)>, Result<ListQuery, String>) {
    let mut pairs: Vec<(String, String)> = query
        .map(|Query(pairs)| pairs)
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, v)| !v.trim().is_empty() && (fingerprint.is_none() || k != "fingerprint"))
        .collect();
    if let Some(fingerprint) = fingerprint {
        pairs.push(("fingerprint".into(), fingerprint.to_owned()));
    }
    let parsed = parse_query(&pairs, true).map_err(|fields| described(&fields));
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

pub async fn groups(
    State(state): State<AppState>,
    Operator(client): Operator,
    Flash(flash): Flash,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    listing(&state, &client, flash.as_deref(), None, query).await
}

pub async fn group(
    State(state): State<AppState>,
    Operator(client): Operator,
    Flash(flash): Flash,
    Path(fingerprint): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    listing(&state, &client, flash.as_deref(), Some(&fingerprint), query).await
}

/// A failures page: the filter form, then the groups, or the messages of the group with
/// `fingerprint` (422 for a bad filter).
async fn listing(
    state: &AppState,
    client: &Client,
    flash: Option<&str>,
    fingerprint: Option<&str>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let (pairs, parsed) = filters(query, fingerprint);
    let (status, results) = match parsed {
        Err(message) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            html! { p.error role="alert" { "Bad filter: " (message) } },
        ),
        Ok(query) => {
            let table = match fingerprint {
                None => group_table(state, client, &pairs, &query).await,
                Some(_) => rows(state, client, &pairs, &query).await,
            };
            match table {
                Ok(markup) => (StatusCode::OK, markup),
                Err(err) => return api_error_page(client, err),
            }
        }
    };
    let (title, action) = match fingerprint {
        None => ("Failures", "/console/failures".to_owned()),
        Some(fingerprint) => ("Failure group", format!("/console/failures/{fingerprint}")),
    };
    let body = html! {
        @match fingerprint {
            None => h1 { "Failures" },
            Some(fingerprint) => {
                h1 { "Failure group " code { (fingerprint) } }
                p { a href="/console/failures" { "← All groups" } }
            }
        }
        (filter_form(state, &pairs, &action))
        (results)
    };
    (status, Html(page(title, Some(client), flash, body).into_string())).into_response()
}

async fn group_table(
    state: &AppState,
    client: &Client,
    pairs: &[(String, String)],
    query: &ListQuery,
) -> Result<Markup, ApiError> {
    let pool = state.database()?;
    let (groups, total) = stored(failed_messages::groups(pool, &query.filter, query.page, query.per_page).await)?;
    let last_page = total.div_ceil(u64::from(query.per_page)).max(1);
    let filters = encoded(pairs, &["page", "per_page"]);
    let can_act = client.has_scope(Scope::Operate);
    Ok(html! {
        p.meta { (count(total)) " group(s) match." }
        table {
            caption { "Failure groups, most recently failing first (page " (query.page) " of " (last_page) ")" }
            thead { tr {
                th scope="col" .num { "Messages" } th scope="col" { "Queue" } th scope="col" { "Event" }
                th scope="col" { "Error (example)" } th scope="col" .num { "Pending" } th scope="col" .num { "Failed" }
                th scope="col" .num { "Resolved" } th scope="col" { "First" } th scope="col" { "Last" }
                @if can_act { th scope="col" { "Actions" } }
            } }
            tbody { @for g in &groups {
                @let group_filters = with_fingerprint(pairs, &g.fingerprint);
                tr {
                    th scope="row" .num { a href={ "/console/failures/" (g.fingerprint) "?" (encoded(pairs, &["page", "per_page", "fingerprint"])) }
                        aria-label={ (g.count) " messages of group " (g.error_pattern) } { (count(g.count)) } }
                    td { (g.queue) }
                    td { (g.event.as_deref().unwrap_or("–")) }
                    td.error { (g.example_error.as_deref().unwrap_or(&g.error_pattern)) }
                    td.num { (count(g.counts.pending + g.counts.retrying)) }
                    td.num { (count(g.counts.failed)) }
                    td.num { (count(g.counts.resolved)) }
                    td { (time(g.first_seen)) }
                    td { (time(g.last_seen)) }
                    @if can_act { td {
                        a href={ "/console/failures/confirm?action=retry&" (group_filters) } { "Retry…" } " "
                        a href={ "/console/failures/confirm?action=delete&" (group_filters) } { "Delete…" }
                    } }
                }
            } }
        }
        (pages("/console/failures", &filters, query.page, last_page))
    })
}

/// The filters of `pairs` for one group's actions.
fn with_fingerprint(pairs: &[(String, String)], fingerprint: &str) -> String {
    let mut pairs: Vec<(String, String)> = pairs
        .iter()
        .filter(|(k, _)| FILTERS.contains(&k.as_str()) && k != "fingerprint")
        .cloned()
        .collect();
    pairs.push(("fingerprint".into(), fingerprint.to_owned()));
    encoded(&pairs, &[])
}

fn pages(path: &str, filters: &str, page: u32, last_page: u64) -> Markup {
    html! {
        nav.pages aria-label="Pages" {
            @if page > 1 { a rel="prev" href={ (path) "?" (filters) "&page=" (page - 1) } { "← Newer" } }
            @if u64::from(page) < last_page { a rel="next" href={ (path) "?" (filters) "&page=" (page + 1) } { "Older →" } }
        }
    }
}

fn filter_form(state: &AppState, pairs: &[(String, String)], action: &str) -> Markup {
    let status = value(pairs, "status");
    let queue = value(pairs, "queue");
    html! {
        form.filters method="get" action=(action) {
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
    let pool = state.database()?;
    let (rows, total) = stored(failed_messages::list(pool, &query.filter, query.page, query.per_page).await)?;
    let last_page = total.div_ceil(u64::from(query.per_page)).max(1);
    let filters = encoded(pairs, &["page", "per_page"]);
    Ok(html! {
        p.meta { (count(total)) " message(s) match." }
        @if client.has_scope(Scope::Operate) && total > 0 {
            div.actions {
                a.button href={ "/console/failures/confirm?action=retry&" (filters) } { "Retry the matching messages…" }
                a.button.danger href={ "/console/failures/confirm?action=delete&" (filters) } { "Delete the matching messages…" }
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
        (pages(&format!("/console/failures/{}", value(pairs, "fingerprint")), &encoded(pairs, &["page", "per_page", "fingerprint"]), query.page, last_page))
    })
}

/// Query or form fields, in their order.
type Pairs = Vec<(String, String)>;

/// A bulk action on the filtered set.
#[derive(Clone, Copy, PartialEq)]
enum Bulk {
    Retry,
    Delete,
}

impl Bulk {
    fn parse(pairs: &[(String, String)]) -> Option<Self> {
        match value(pairs, "action") {
            "retry" => Some(Self::Retry),
            "delete" => Some(Self::Delete),
            _ => None,
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Self::Retry => "Retry",
            Self::Delete => "Delete",
        }
    }
}

/// The checked filters of a bulk action's query or form (other fields are ignored).
fn bulk_filters(client: &Client, pairs: Vec<(String, String)>) -> Result<(Pairs, ListQuery), Box<Response>> {
    let pairs: Vec<(String, String)> = pairs
        .into_iter()
        .filter(|(k, v)| FILTERS.contains(&k.as_str()) && !v.is_empty())
        .collect();
    match parse_query(&pairs, false) {
        Ok(query) => Ok((pairs, query)),
        Err(fields) => Err(Box::new(error_page(
            StatusCode::UNPROCESSABLE_ENTITY,
            Some(client),
            &format!("Bad filter: {}", described(&fields)),
        ))),
    }
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
    let raw = query.map(|Query(pairs)| pairs).unwrap_or_default();
    let Some(action) = Bulk::parse(&raw) else {
        return error_page(
            StatusCode::UNPROCESSABLE_ENTITY,
            Some(&client),
            "Unknown action: retry or delete.",
        );
    };
    let (pairs, query) = match bulk_filters(&client, raw) {
        Ok(checked) => checked,
        Err(page) => return *page,
    };
    let touched = match state.database() {
        Ok(pool) => match action {
            Bulk::Retry => stored(failed_messages::count_retryable(pool, &query.filter).await),
            Bulk::Delete => stored(failed_messages::list(pool, &query.filter, 1, 1).await).map(|(_, total)| total),
        },
        Err(err) => Err(err),
    };
    let touched = match touched {
        Ok(n) => n,
        Err(err) => return api_error_page(&client, err),
    };
    let verb = action.verb();
    let path = if action == Bulk::Retry {
        "/console/failures/retry"
    } else {
        "/console/failures/delete"
    };
    let body = html! {
        h1 { (verb) " " (count(touched)) " message(s)?" }
        @match action {
            Bulk::Retry => p { "Every pending or failed message matching these filters becomes due now; the retrier republishes them on its next scan." },
            Bulk::Delete => p { "Every message matching these filters, whatever its status, is deleted from the database for good." },
        }
        (spelled_out(&pairs))
        form method="post" action=(path) {
            @for (key, value) in &pairs { input type="hidden" name=(key) value=(value); }
            button.danger[action == Bulk::Delete] type="submit" { (verb) " " (count(touched)) " message(s)" }
            " " a href={ "/console/failures?" (encoded(&pairs, &[])) } { "Cancel" }
        }
    };
    Html(page(&format!("Confirm: {}", verb.to_lowercase()), Some(&client), None, body).into_string()).into_response()
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
    bulk(state, client, Bulk::Retry, pairs).await
}

pub async fn delete(
    State(state): State<AppState>,
    Operator(client): Operator,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    bulk(state, client, Bulk::Delete, pairs).await
}

async fn bulk(state: AppState, client: std::sync::Arc<Client>, action: Bulk, pairs: Vec<(String, String)>) -> Response {
    if let Err(err) = client.require(Scope::Operate) {
        return api_error_page(&client, err);
    }
    let (pairs, query) = match bulk_filters(&client, pairs) {
        Ok(checked) => checked,
        Err(page) => return *page,
    };
    let done = match state.database() {
        Ok(pool) => match action {
            Bulk::Retry => stored(failed_messages::make_due(pool, &query.filter).await),
            Bulk::Delete => stored(failed_messages::delete_matching(pool, &query.filter).await),
        },
        Err(err) => Err(err),
    };
    match done {
        Ok(n) => {
            info!(client = %client.name, count = n, action = action.verb(), filter = ?query.filter, "Bulk action from the console.");
            let flash = match action {
                Bulk::Retry => format!("Queued {} message(s) for retry.", count(n)),
                Bulk::Delete => format!("Deleted {} message(s).", count(n)),
            };
            let back: Vec<(String, String)> = pairs
                .into_iter()
                .filter(|(k, _)| action == Bulk::Retry || k != "fingerprint")
                .collect();
            see_other(&state, &format!("/console/failures?{}", encoded(&back, &[])), &flash)
        }
        Err(err) => api_error_page(&client, err),
    }
}
