//! Failure groups: the fingerprint of a failed message, a hash of its queue, its event name and
//! its error text with the parts that vary from one message to the next (numbers, UUIDs, hex ids,
//! e-mails, URLs, ISO timestamps) replaced by placeholders, so that "order 123 not found" and
//! "order 456 not found" from the same queue and event fall in one group.
//!
//! Pure: no I/O. The store computes the fingerprint of every row it writes from the row's own
//! columns ([`of_stored`]), at ingestion and when it backfills older rows, so the two can never
//! disagree. A change to the algorithm bumps [`VERSION`]; rows stored with an older version are
//! recomputed by the backfill.

use sha2::{Digest, Sha256};

/// The algorithm's version, stored beside each fingerprint (`fingerprint_version`).
pub const VERSION: u8 = 1;

/// Hex digits kept of the SHA-256: 64 bits, far from any collision for a table's groups, and
/// short enough for a URL path segment.
pub const LEN: usize = 16;

/// The fingerprint of a failure: 16 lowercase hex digits.
pub fn fingerprint(queue: &str, event: &str, error: &str) -> String {
    let mut hash = Sha256::new();
    hash.update([VERSION]);
    // Length-prefixed parts: ("ab", "c") and ("a", "bc") must not hash alike.
    for part in [queue, event, &normalise(error)] {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part.as_bytes());
    }
    let mut hex = hex::encode(hash.finalize());
    hex.truncate(LEN);
    hex
}

/// The fingerprint of a row from its stored columns: the payload as stored (JSON text) gives the
/// event (the platform envelope's `event`, empty when there is none).
pub fn of_stored(queue: &str, payload_json: &str, error: Option<&str>) -> String {
    fingerprint(queue, &event_of(payload_json).unwrap_or_default(), error.unwrap_or(""))
}

/// The envelope's `event` of a stored payload, when the payload is a JSON object that has one.
pub fn event_of(payload_json: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        event: Option<serde_json::Value>,
    }
    // Other fields are skipped without being built.
    match serde_json::from_str::<Envelope>(payload_json).ok()?.event? {
        serde_json::Value::String(event) => Some(event),
        _ => None,
    }
}

/// Whether `text` is a well-formed fingerprint (what a path or a filter may name).
pub fn is_fingerprint(text: &str) -> bool {
    text.len() == LEN && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The error text with its varying parts replaced: `<uuid>`, `<time>`, `<email>`, `<url>`,
/// `<hex>`, `<n>`; runs of whitespace become one space. A hand-written scanner: one pass, each
/// pattern tried only where a token starts, every look-ahead bounded.
pub fn normalise(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_whitespace() {
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            if !out.is_empty() && i < bytes.len() {
                out.push(' ');
            }
            continue;
        }
        let boundary = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
        if boundary && b.is_ascii_alphanumeric() {
            // In this order: a URL or an e-mail may contain any of the later ones.
            let matched = url(bytes, i)
                .map(|end| (end, "<url>"))
                .or_else(|| email(bytes, i).map(|end| (end, "<email>")))
                .or_else(|| uuid(bytes, i).map(|end| (end, "<uuid>")))
                .or_else(|| timestamp(bytes, i).map(|end| (end, "<time>")))
                .or_else(|| hex_id(bytes, i).map(|end| (end, "<hex>")));
            if let Some((end, placeholder)) = matched {
                out.push_str(placeholder);
                i = end;
                continue;
            }
        }
        if b.is_ascii_digit() {
            // Digits anywhere, inside words too ("ORD123" -> "ORD<n>"), with one decimal part.
            i = digits_end(bytes, i);
            if i + 1 < bytes.len() && bytes[i] == b'.' && bytes[i + 1].is_ascii_digit() {
                i = digits_end(bytes, i + 1);
            }
            out.push_str("<n>");
        } else if b.is_ascii_alphabetic() {
            // A run of letters at once: the patterns above start only at a token's start.
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                i += 1;
            }
            out.push_str(&text[start..i]);
        } else {
            // Punctuation or a whole non-ASCII character (never split: its bytes are all >= 0x80).
            let len = text[i..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&text[i..i + len]);
            i += len;
        }
    }
    out
}

fn digits_end(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        i += 1;
    }
    i
}

/// A token must not run on into letters or digits ("2026-12-07x" is no timestamp).
fn ends_token(bytes: &[u8], end: usize) -> bool {
    end >= bytes.len() || !bytes[end].is_ascii_alphanumeric()
}

/// `n` characters of `class` from `i`; the position after them.
fn exactly(bytes: &[u8], i: usize, n: usize, class: fn(&u8) -> bool) -> Option<usize> {
    (i + n <= bytes.len() && bytes[i..i + n].iter().all(class)).then_some(i + n)
}

fn literal(bytes: &[u8], i: usize, byte: u8) -> Option<usize> {
    (bytes.get(i) == Some(&byte)).then_some(i + 1)
}

/// `scheme://rest`, up to whitespace or a quote; trailing punctuation is the sentence's.
fn url(bytes: &[u8], i: usize) -> Option<usize> {
    if !bytes[i].is_ascii_alphabetic() {
        return None;
    }
    let mut j = i + 1;
    while j < bytes.len() && j - i < 32 && (bytes[j].is_ascii_alphanumeric() || b"+.-".contains(&bytes[j])) {
        j += 1;
    }
    if !bytes[j..].starts_with(b"://") {
        return None;
    }
    let rest = j + 3;
    let mut end = rest;
    while end < bytes.len() && !bytes[end].is_ascii_whitespace() && !b"\"'<>`".contains(&bytes[end]) {
        end += 1;
    }
    while end > rest && b".,;:!?)]}".contains(&bytes[end - 1]) {
        end -= 1;
    }
    (end > rest).then_some(end)
}

/// `local@domain.tld`: a local part of at most 64 characters, a domain of two labels or more.
fn email(bytes: &[u8], i: usize) -> Option<usize> {
    let local = |b: &u8| b.is_ascii_alphanumeric() || b"._%+_-".contains(b);
    let mut j = i;
    while j < bytes.len() && j - i < 64 && local(&bytes[j]) {
        j += 1;
    }
    let at = literal(bytes, j, b'@')?;
    let label = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-';
    let (mut end, mut labels, mut k) = (at, 0, at);
    loop {
        let start = k;
        while k < bytes.len() && k - at < 255 && label(&bytes[k]) {
            k += 1;
        }
        if k == start {
            break;
        }
        labels += 1;
        end = k;
        if bytes.get(k) == Some(&b'.') && bytes.get(k + 1).is_some_and(label) {
            k += 1;
        } else {
            break;
        }
    }
    (labels >= 2).then_some(end)
}

/// `8-4-4-4-12` hex digits.
fn uuid(bytes: &[u8], i: usize) -> Option<usize> {
    let mut j = i;
    for (n, group) in [8, 4, 4, 4, 12].into_iter().enumerate() {
        if n > 0 {
            j = literal(bytes, j, b'-')?;
        }
        j = exactly(bytes, j, group, u8::is_ascii_hexdigit)?;
    }
    ends_token(bytes, j).then_some(j)
}

/// ISO 8601: `YYYY-MM-DD`, optionally `[T ]HH:MM[:SS[.fff]]` and `Z` or `+HH[:]MM`.
fn timestamp(bytes: &[u8], i: usize) -> Option<usize> {
    let digit = u8::is_ascii_digit;
    let mut j = exactly(bytes, i, 4, digit)?;
    j = exactly(bytes, literal(bytes, j, b'-')?, 2, digit)?;
    j = exactly(bytes, literal(bytes, j, b'-')?, 2, digit)?;
    let time = |k: usize| -> Option<usize> {
        let mut k = exactly(bytes, k, 2, digit)?;
        k = exactly(bytes, literal(bytes, k, b':')?, 2, digit)?;
        if let Some(seconds) = literal(bytes, k, b':').and_then(|s| exactly(bytes, s, 2, digit)) {
            k = seconds;
            if let Some(fraction) = literal(bytes, k, b'.').and_then(|f| exactly(bytes, f, 1, digit)) {
                k = digits_end(bytes, fraction);
            }
        }
        Some(k)
    };
    if let Some(after) = [b'T', b't', b' ']
        .iter()
        .find_map(|sep| literal(bytes, j, *sep).and_then(time))
    {
        j = after;
        if let Some(zulu) = literal(bytes, j, b'Z').or_else(|| literal(bytes, j, b'z')) {
            j = zulu;
        } else if let Some(sign) = literal(bytes, j, b'+').or_else(|| literal(bytes, j, b'-'))
            && let Some(hours) = exactly(bytes, sign, 2, digit)
        {
            j = hours;
            let minutes = literal(bytes, j, b':').unwrap_or(j);
            if let Some(end) = exactly(bytes, minutes, 2, digit) {
                j = end;
            }
        }
    }
    ends_token(bytes, j).then_some(j)
}

/// `0x` followed by hex digits, or a whole token of 8 hex digits or more that mixes digits and
/// letters (a pure number is `<n>`, a word like "deadbeef" stays a word).
fn hex_id(bytes: &[u8], i: usize) -> Option<usize> {
    let hex_run = |from: usize| {
        let mut j = from;
        while j < bytes.len() && bytes[j].is_ascii_hexdigit() {
            j += 1;
        }
        j
    };
    if bytes[i] == b'0' && matches!(bytes.get(i + 1), Some(b'x' | b'X')) {
        let end = hex_run(i + 2);
        if end > i + 2 && ends_token(bytes, end) {
            return Some(end);
        }
    }
    let end = hex_run(i);
    let token = &bytes[i..end];
    (token.len() >= 8
        && token.iter().any(u8::is_ascii_digit)
        && token.iter().any(u8::is_ascii_alphabetic)
        && ends_token(bytes, end))
    .then_some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varying_parts_become_placeholders() {
        let cases = [
            ("order 123 not found", "order <n> not found"),
            ("order 456 not found", "order <n> not found"),
            ("amount 12.50 exceeds 10", "amount <n> exceeds <n>"),
            ("order ORD123 failed", "order ORD<n> failed"),
            (
                "user 550e8400-E29B-41d4-a716-446655440000 missing",
                "user <uuid> missing",
            ),
            ("blob 5f3a9c0e1b2d locked", "blob <hex> locked"),
            ("pointer 0xDEADbeef", "pointer <hex>"),
            ("cafe beef deadbeef stay words", "cafe beef deadbeef stay words"),
            ("12345678 is a number", "<n> is a number"),
            (
                "mail to Jane.Doe+shop@mail.example.com bounced",
                "mail to <email> bounced",
            ),
            ("not an email: a@b", "not an email: a@b"),
            (
                "GET https://api.example.com/v1/orders/42?x=1 failed.",
                "GET <url> failed.",
            ),
            ("(see http://x.io/a)", "(see <url>)"),
            ("no url: http:// here", "no url: http:// here"),
            ("at 2026-12-07T10:11:12.345Z timeout", "at <time> timeout"),
            ("at 2026-12-07 10:11:12+01:00 timeout", "at <time> timeout"),
            ("due 2026-12-07.", "due <time>."),
            ("at 2026-12-07T10:11 local", "at <time> local"),
            (
                "rejected in orders_queue (death count 3): stock  \n down ",
                "rejected in orders_queue (death count <n>): stock down",
            ),
            ("timeout after 30s", "timeout after <n>s"),
            ("ünïcödé 42 ✓", "ünïcödé <n> ✓"),
            ("", ""),
        ];
        for (input, expected) in cases {
            assert_eq!(normalise(input), expected, "input: {input:?}");
        }
    }

    #[test]
    fn messages_differing_only_by_ids_share_a_fingerprint() {
        let a = fingerprint("orders_queue", "order.created", "order 123 not found");
        let b = fingerprint("orders_queue", "order.created", "order 456 not found");
        assert_eq!(a, b);
        assert!(is_fingerprint(&a), "{a}");
        assert_ne!(a, fingerprint("orders_queue", "order.paid", "order 123 not found"));
        assert_ne!(a, fingerprint("baskets_queue", "order.created", "order 123 not found"));
        assert_ne!(
            a,
            fingerprint("orders_queue", "order.created", "order 123 was cancelled")
        );
        // Parts are length-prefixed: moving a character from one part to the next changes it.
        assert_ne!(fingerprint("ab", "c", ""), fingerprint("a", "bc", ""));
    }

    #[test]
    fn the_event_comes_from_the_stored_envelope() {
        assert_eq!(
            event_of(r#"{"event":"order.created","data":{"id":1}}"#).as_deref(),
            Some("order.created")
        );
        for payload in [r#""plain text""#, r#"{"data":{}}"#, r#"{"event":7}"#, "[1]", "not json"] {
            assert_eq!(event_of(payload), None, "{payload}");
        }
        assert_eq!(
            of_stored("q", r#"{"event":"e"}"#, Some("id 1")),
            fingerprint("q", "e", "id 2")
        );
    }

    #[test]
    fn only_sixteen_lowercase_hex_digits_name_a_group() {
        assert!(is_fingerprint("0123456789abcdef"));
        for bad in [
            "0123456789ABCDEF",
            "0123456789abcde",
            "0123456789abcdefa",
            "0123456789abcdeg",
            "",
        ] {
            assert!(!is_fingerprint(bad), "{bad}");
        }
    }

    #[test]
    fn long_and_hostile_texts_are_scanned_in_linear_time() {
        let text = "a.".repeat(50_000) + &"9".repeat(50_000) + &"@".repeat(10_000);
        let started = std::time::Instant::now();
        let normalised = normalise(&text);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert!(normalised.contains("<n>"));
    }
}
