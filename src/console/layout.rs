//! The page shell and the small formatting helpers every page uses. maud escapes every
//! interpolated string: payloads and error texts always show as text, never as HTML.

use axum::{
    http::StatusCode,
    response::{Html, IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

use crate::{http::auth::Client, settings::Scope};

/// One console page: title, the operator's bar, the flash line, then `body`.
pub fn page(title: &str, operator: Option<&Client>, flash: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · messages-broker" }
                link rel="stylesheet" href="/console/static/console.css";
                script src="/console/static/console.js" defer {}
            }
            body {
                header.bar {
                    a.brand href="/console/" { "messages-broker" }
                    @if let Some(client) = operator {
                        nav aria-label="Console" {
                            a href="/console/" { "Overview" }
                            a href="/console/failures" { "Failures" }
                        }
                        span.who { (client.name) " (" (scope_label(client)) ")" }
                        form.inline method="post" action="/console/logout" {
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main {
                    @if let Some(message) = flash {
                        p.flash role="status" { (message) }
                    }
                    (body)
                }
            }
        }
    }
}

/// The strongest scope, as the bar shows it.
fn scope_label(client: &Client) -> &'static str {
    if client.has_scope(Scope::Admin) {
        "admin"
    } else if client.has_scope(Scope::Operate) {
        "operate"
    } else {
        "read-only"
    }
}

/// An error page with its status: the console's answer to what cannot be done.
pub fn error_page(status: StatusCode, operator: Option<&Client>, message: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let body = html! {
        h1 { (title) }
        p.error role="alert" { (message) }
        p { a href="/console/" { "Back to the overview" } }
    };
    (status, Html(page(title, operator, None, body).into_string())).into_response()
}

/// `12,345`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// UTC, with the date unless it is today.
pub fn time(at: DateTime<Utc>) -> String {
    if at.date_naive() == Utc::now().date_naive() {
        at.format("%H:%M:%S UTC").to_string()
    } else {
        at.format("%Y-%m-%d %H:%M UTC").to_string()
    }
}

pub fn rate(per_second: Option<f64>) -> String {
    per_second.map_or_else(|| "–".to_owned(), |r| format!("{r:.1}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_have_thousands_separators() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(8612), "8,612");
        assert_eq!(count(1_234_567), "1,234,567");
    }

    #[test]
    fn text_is_escaped() {
        let markup = page(
            "<b>",
            None,
            Some("<script>alert(1)</script>"),
            html! { pre { "</pre><img src=x>" } },
        );
        let html = markup.into_string();
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("&lt;/pre&gt;&lt;img src=x&gt;"));
        assert!(html.contains("<title>&lt;b&gt; · messages-broker</title>"));
    }
}
