//! W3C trace context (https://www.w3.org/TR/trace-context/): the `traceparent` a client sends with
//! a publish travels with the message as AMQP headers, so one message can be followed from the
//! request through the broker, its dead letter, retries, edits and replays. Without a valid one,
//! the service starts a trace. Each publish is a hop: same trace id, a new parent (span) id.

use axum::http::HeaderMap;

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// The spec's limit on `tracestate` (32 members of at most 256 bytes would be more; 512 is what
/// vendors are asked to propagate at least).
const MAX_TRACESTATE: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits, not all zero.
    trace_id: String,
    /// 16 lowercase hex digits, not all zero: this hop's span.
    span_id: String,
    /// Trace flags (bit 0: sampled).
    flags: u8,
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// A new trace, sampled.
    pub fn start() -> Self {
        Self {
            // fastrand, not uuid's v4: that asks the kernel (getrandom) for every request's trace.
            trace_id: format!("{:032x}", fastrand::u128(1..)),
            span_id: new_span_id(),
            flags: 1,
            tracestate: None,
        }
    }

    /// The caller's trace, continued with a new span; a new trace when `traceparent` is missing
    /// or malformed (the spec's rule: restart rather than propagate garbage).
    pub fn continue_from(traceparent: Option<&str>, tracestate: Option<&str>) -> Self {
        match traceparent.and_then(parse) {
            Some((trace_id, flags)) => Self {
                trace_id,
                span_id: new_span_id(),
                flags,
                tracestate: tracestate
                    .map(str::trim)
                    .filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE && s.is_ascii())
                    .map(str::to_owned),
            },
            None => Self::start(),
        }
    }

    /// From an HTTP request's `traceparent` and `tracestate` headers.
    pub fn from_http(headers: &HeaderMap) -> Self {
        let text = |name| {
            headers
                .get(name)
                .and_then(|v: &axum::http::HeaderValue| v.to_str().ok())
        };
        Self::continue_from(text(TRACEPARENT), text(TRACESTATE))
    }

    pub fn trace_id(&self) -> &str {
        &self.trace_id
    }

    /// `00-<trace id>-<span id>-<flags>`.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, self.span_id, self.flags)
    }
}

/// The `traceparent` and `tracestate` headers of a message (none already among `headers`).
pub fn headers_for(
    ctx: &TraceContext,
    headers: &[(String, lapin::types::AMQPValue)],
) -> Vec<(String, lapin::types::AMQPValue)> {
    use lapin::types::AMQPValue;
    // A message of a batch may carry its own trace: it wins over the request's.
    if headers.iter().any(|(name, _)| name.eq_ignore_ascii_case(TRACEPARENT)) {
        return Vec::new();
    }
    let mut out = vec![(TRACEPARENT.to_owned(), AMQPValue::LongString(ctx.traceparent().into()))];
    if let Some(state) = &ctx.tracestate {
        out.push((TRACESTATE.to_owned(), AMQPValue::LongString(state.as_str().into())));
    }
    out
}

/// The trace id of a message's headers, for log lines ("-" when it has none).
pub fn trace_id_in(headers: &[(String, lapin::types::AMQPValue)]) -> String {
    logged(
        headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(TRACEPARENT))
            .map(|(_, v)| v),
    )
}

/// The trace id of a delivered message's headers, for log lines ("-" when it has none).
pub fn trace_id_in_table(table: Option<&lapin::types::FieldTable>) -> String {
    logged(table.and_then(|t| {
        t.inner()
            .iter()
            .find(|(name, _)| name.as_str().eq_ignore_ascii_case(TRACEPARENT))
            .map(|(_, v)| v)
    }))
}

/// A `traceparent` header value's trace id, or "-".
fn logged(value: Option<&lapin::types::AMQPValue>) -> String {
    match value {
        Some(lapin::types::AMQPValue::LongString(s)) => trace_id_of(&s.to_string()),
        _ => None,
    }
    .unwrap_or_else(|| "-".to_owned())
}

/// The trace id in stored headers (a JSON object), for log lines ("-" when there is none).
pub fn trace_id_in_json(headers: Option<&str>) -> String {
    headers
        .and_then(|h| serde_json::from_str::<serde_json::Value>(h).ok())
        .and_then(|h| h.get(TRACEPARENT).and_then(|v| v.as_str()).and_then(trace_id_of))
        .unwrap_or_else(|| "-".to_owned())
}

/// The trace id of a `traceparent` value, if it is one.
pub fn trace_id_of(traceparent: &str) -> Option<String> {
    parse(traceparent).map(|(trace_id, _)| trace_id)
}

/// Trace id and flags of a valid `traceparent`. Version `00` is exactly four fields; a later
/// version may add fields after the flags (read as version 00, as the spec asks).
fn parse(value: &str) -> Option<(String, u8)> {
    let value = value.trim();
    let mut fields = value.split('-');
    let (version, trace_id, parent_id, flags) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
    let hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let zero = |s: &str| s.bytes().all(|b| b == b'0');
    if !hex(version, 2) || version == "ff" || (version == "00" && fields.next().is_some()) {
        return None;
    }
    if !hex(trace_id, 32) || zero(trace_id) || !hex(parent_id, 16) || zero(parent_id) || !hex(flags, 2) {
        return None;
    }
    Some((trace_id.to_owned(), u8::from_str_radix(flags, 16).ok()?))
}

fn new_span_id() -> String {
    // Never all zero (invalid in the spec).
    format!("{:016x}", fastrand::u64(1..))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_parent_is_continued_with_a_new_span() {
        let ctx = TraceContext::continue_from(Some(PARENT), Some("vendor=abc"));
        assert_eq!(ctx.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let out = ctx.traceparent();
        assert!(
            out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && out.ends_with("-01"),
            "{out}"
        );
        assert_ne!(out, PARENT, "a new parent id for this hop");
        assert_eq!(parse(&out).unwrap().0, ctx.trace_id());
        assert_eq!(ctx.tracestate.as_deref(), Some("vendor=abc"));
    }

    #[test]
    fn malformed_parents_start_a_new_trace() {
        for bad in [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let ctx = TraceContext::continue_from(Some(bad), Some("vendor=abc"));
            assert_ne!(ctx.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736", "{bad}");
            assert!(parse(&ctx.traceparent()).is_some(), "a started trace is valid");
            assert_eq!(ctx.tracestate, None, "no state without its parent: {bad}");
        }
        // A later version may carry more fields: read as version 00.
        assert!(parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more").is_some());
    }

    #[test]
    fn started_traces_differ() {
        assert_ne!(TraceContext::start().trace_id(), TraceContext::start().trace_id());
    }
}
