//! Event schemas: `[[schemas]]` of `topology.toml` maps events to JSON Schema files, one file per
//! event (or event pattern) and version, optionally for one exchange only. The files are read and
//! compiled once, by validation (so `topology check` refuses a bad file); the API then checks each
//! published message's `data` against the [`EventSchema`] that [`Schemas::resolve`] picks.
//!
//! - Event patterns use the topic-exchange syntax the platform already routes with: words
//!   separated by `.`, `*` stands for exactly one word, `#` for zero or more (`order.*` matches
//!   `order.created`, not `order.line.added`; `order.#` matches both and `order`).
//! - Versions are dotted numbers compared numerically: `1.10` > `1.9`, and `2` = `2.0`.
//! - The most specific declaration wins: one scoped to the message's exchange before one for any
//!   exchange, an exact event name before a pattern, then the first in the file. The versions of
//!   the event are those of that declaration (same `event` and `exchange` text).

use std::{cmp::Ordering, fmt, path::Path, sync::Arc};

use serde_json::Value;

/// An event name or pattern of `[[schemas]]`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPattern {
    text: String,
    words: Vec<Word>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Word {
    Literal(String),
    /// `*`: exactly one word.
    One,
    /// `#`: zero or more words.
    Any,
}

impl EventPattern {
    /// Words of ASCII letters, digits, `_`, `-` and `:` separated by single dots; `*` and `#`
    /// stand alone as words.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("must not be empty".into());
        }
        let mut words = Vec::new();
        for word in text.split('.') {
            words.push(match word {
                "" => return Err(format!("`{text}` has an empty word (two dots, or a dot at an end)")),
                "*" => Word::One,
                "#" => Word::Any,
                _ if word.contains(['*', '#']) => {
                    return Err(format!(
                        "`{text}`: `*` and `#` must be whole words (`order.*`, `order.#`), not part of `{word}`"
                    ));
                }
                _ if word
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':')) =>
                {
                    Word::Literal(word.to_owned())
                }
                _ => {
                    return Err(format!(
                        "`{text}`: words are ASCII letters, digits, `_`, `-`, `:` (or `*`, `#`)"
                    ));
                }
            });
        }
        Ok(Self {
            text: text.to_owned(),
            words,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether it names one event rather than a family of them.
    pub fn is_exact(&self) -> bool {
        self.words.iter().all(|w| matches!(w, Word::Literal(_)))
    }

    pub fn matches(&self, event: &str) -> bool {
        if self.is_exact() {
            return self.text == event;
        }
        let words: Vec<&str> = event.split('.').collect();
        matches_from(&self.words, &words)
    }
}

/// Topic matching, recursive only on `#` (patterns have a handful of words).
fn matches_from(pattern: &[Word], words: &[&str]) -> bool {
    match pattern.split_first() {
        None => words.is_empty(),
        Some((Word::Any, rest)) => (0..=words.len()).any(|skip| matches_from(rest, &words[skip..])),
        Some((Word::One, rest)) => !words.is_empty() && matches_from(rest, &words[1..]),
        Some((Word::Literal(literal), rest)) => {
            words.first() == Some(&literal.as_str()) && matches_from(rest, &words[1..])
        }
    }
}

/// A schema version: dotted numbers, compared numerically (`1.10` > `1.9`, `2` = `2.0`); shown
/// as written in the file.
#[derive(Debug, Clone)]
pub struct SchemaVersion {
    text: String,
    /// Trailing zeros dropped, so that equality and order ignore them.
    parts: Vec<u64>,
}

impl SchemaVersion {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        for part in text.split('.') {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "`{text}` is not a version: dotted numbers such as \"1.0\" or \"2.1\""
                ));
            }
            parts.push(part.parse().map_err(|_| format!("`{text}`: `{part}` is too large"))?);
        }
        while parts.len() > 1 && parts.last() == Some(&0) {
            parts.pop();
        }
        Ok(Self {
            text: text.to_owned(),
            parts,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `text` names this version (`2` and `2.0` name the same), without allocating: it
    /// runs once per published message.
    pub fn is_named_by(&self, text: &str) -> bool {
        let mut ours = self.parts.iter();
        for part in text.split('.') {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return false;
            }
            let Ok(number) = part.parse::<u64>() else {
                return false;
            };
            // Past our parts, only zeros may follow (our trailing zeros were dropped).
            if ours.next().map_or(number != 0, |&n| n != number) {
                return false;
            }
        }
        ours.next().is_none()
    }
}

impl PartialEq for SchemaVersion {
    fn eq(&self, other: &Self) -> bool {
        self.parts == other.parts
    }
}

impl Eq for SchemaVersion {}

impl PartialOrd for SchemaVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SchemaVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        self.parts.cmp(&other.parts)
    }
}

impl fmt::Display for SchemaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// One `[[schemas]]` entry, its file compiled.
#[derive(Debug, PartialEq, Eq)]
pub struct EventSchema {
    pub event: EventPattern,
    pub version: SchemaVersion,
    /// Only messages published to this exchange; `None`: any exchange.
    pub exchange: Option<String>,
    /// As written in the topology file (relative to it).
    pub file: String,
    pub compiled: CompiledSchema,
}

/// A schema file, read and compiled.
pub struct CompiledSchema {
    /// The document, for `GET /api/schemas/{event}/{version}`.
    pub document: Value,
    validator: jsonschema::Validator,
}

impl fmt::Debug for CompiledSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledSchema").finish_non_exhaustive()
    }
}

/// The documents are compared, not the validators (the same document compiles the same).
impl PartialEq for CompiledSchema {
    fn eq(&self, other: &Self) -> bool {
        self.document == other.document
    }
}

impl Eq for CompiledSchema {}

/// One problem of `data`: where (a JSON pointer into `data`, `""` for `data` itself) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub pointer: String,
    pub message: String,
}

/// An error message echoes schema values (an `enum`'s options): kept readable in a 422.
const MAX_MESSAGE_CHARS: usize = 300;

impl CompiledSchema {
    /// Reads and compiles the schema file `file` (relative to `base_dir`); the error is the
    /// reason, naming the file.
    pub fn read(file: &str, base_dir: &Path) -> Result<Self, String> {
        let path = base_dir.join(file);
        let text = std::fs::read_to_string(&path)
            .map_err(|err| format!("cannot read schema file `{}`: {}", path.display(), io_reason(&err)))?;
        let document: Value = serde_json::from_str(&text)
            .map_err(|err| format!("schema file `{}` is not valid JSON: {err}", path.display()))?;
        Self::compile(document)
            .map_err(|reason| format!("schema file `{}` is not a valid JSON Schema: {reason}", path.display()))
    }

    /// Compiles a schema document: offline (a `$ref` to another file or a URL is refused, schemas
    /// are self-contained), `format` checked (an event's `date-time` or `email` is part of its
    /// contract), the draft from `$schema` (2020-12 when absent).
    pub fn compile(document: Value) -> Result<Self, String> {
        let validator = jsonschema::options()
            .offline()
            .should_validate_formats(true)
            .build(&document)
            .map_err(|err| match err.instance_path().as_str() {
                "" => err.to_string(),
                // Where in the schema document: `/properties/total/type`.
                at => format!("at {at}: {err}"),
            })?;
        Ok(Self { document, validator })
    }

    /// Every problem of `data`, in the validator's order, at most `limit` of them (a huge
    /// array of bad items must not make a huge answer). Empty when `data` is valid.
    pub fn violations(&self, data: &Value, limit: usize) -> Vec<Violation> {
        // The fast path: no error objects are built for a valid message.
        if self.validator.is_valid(data) {
            return Vec::new();
        }
        self.validator
            .iter_errors(data)
            .take(limit)
            .map(|error| {
                let mut pointer = error.instance_path().as_str().to_owned();
                // A missing property is reported where it should be, not at its parent.
                if let jsonschema::error::ValidationErrorKind::Required {
                    property: Value::String(name),
                } = error.kind()
                {
                    pointer.push('/');
                    pointer.push_str(&name.replace('~', "~0").replace('/', "~1"));
                }
                // Masked: the offending value is not echoed (it may be large, or personal data).
                let mut message = error.masked().to_string();
                if message.chars().count() > MAX_MESSAGE_CHARS {
                    message = message.chars().take(MAX_MESSAGE_CHARS).collect::<String>() + "...";
                }
                Violation { pointer, message }
            })
            .collect()
    }
}

/// `No such file or directory (os error 2)` -> `No such file or directory`.
fn io_reason(err: &std::io::Error) -> String {
    let text = err.to_string();
    match text.rfind(" (os error ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// Every compiled schema of the topology, shared: the topology is cloned per `GET /api/topology`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schemas(Arc<[EventSchema]>);

/// Which schema applies to one message.
#[derive(Debug)]
pub enum Resolution<'a> {
    /// No declaration matches the event (on this exchange).
    UnknownEvent,
    Found {
        schema: &'a EventSchema,
        /// The message named no version: `schema` is the newest, and the message gets its version.
        defaulted: bool,
    },
    /// The event has schemas, none of this version (or the version is not dotted numbers).
    UnknownVersion { available: Vec<&'a SchemaVersion> },
}

impl Schemas {
    pub fn new(schemas: Vec<EventSchema>) -> Self {
        Self(schemas.into())
    }

    pub fn iter(&self) -> impl Iterator<Item = &EventSchema> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The schema of `event` published to `exchange` in `version` (the newest when `None`).
    pub fn resolve(&self, exchange: &str, event: &str, version: Option<&str>) -> Resolution<'_> {
        // Rank of a matching declaration: lower wins; the index keeps the file order last.
        let best = self
            .0
            .iter()
            .enumerate()
            .filter(|(_, s)| s.exchange.as_deref().is_none_or(|e| e == exchange) && s.event.matches(event))
            .min_by_key(|(i, s)| (s.exchange.is_none(), !s.event.is_exact(), *i));
        let Some((_, best)) = best else {
            return Resolution::UnknownEvent;
        };
        // Nothing is allocated on the way to a schema: this runs once per published message.
        let versions = || {
            self.0
                .iter()
                .filter(|s| s.exchange == best.exchange && s.event.text == best.event.text)
        };
        let Some(wanted) = version else {
            let newest = versions()
                .max_by(|a, b| a.version.cmp(&b.version))
                .expect("the best declaration is among them");
            return Resolution::Found {
                schema: newest,
                defaulted: true,
            };
        };
        match versions().find(|s| s.version.is_named_by(wanted)) {
            Some(schema) => Resolution::Found {
                schema,
                defaulted: false,
            },
            None => {
                let mut available: Vec<&SchemaVersion> = versions().map(|s| &s.version).collect();
                available.sort();
                Resolution::UnknownVersion { available }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pattern(text: &str) -> EventPattern {
        EventPattern::parse(text).unwrap()
    }

    fn version(text: &str) -> SchemaVersion {
        SchemaVersion::parse(text).unwrap()
    }

    #[test]
    fn patterns_match_like_topic_routing_keys() {
        let cases = [
            ("order.created", "order.created", true),
            ("order.created", "order.updated", false),
            ("order.*", "order.created", true),
            ("order.*", "order", false),
            ("order.*", "order.line.added", false),
            ("order.#", "order", true),
            ("order.#", "order.line.added", true),
            ("*.created", "basket.created", true),
            ("*.created", "created", false),
            ("#.checked_out", "basket.checked_out", true),
            ("#.checked_out", "checked_out", true),
            ("#", "anything.at.all", true),
            ("order.#.added", "order.added", true),
            ("order.#.added", "order.line.item.added", true),
            ("order.#.added", "order.line.removed", false),
        ];
        for (p, event, expected) in cases {
            assert_eq!(pattern(p).matches(event), expected, "{p} vs {event}");
        }
        assert!(pattern("order.created").is_exact());
        assert!(!pattern("order.*").is_exact());
    }

    #[test]
    fn bad_patterns_say_why() {
        for bad in [
            "",
            "order..created",
            ".order",
            "order.",
            "order.cre*",
            "order.a#",
            "order created",
        ] {
            assert!(EventPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(version("1.10") > version("1.9"));
        assert!(version("2") > version("1.99"));
        assert_eq!(version("2"), version("2.0"));
        assert_eq!(version("2.0.0"), version("2"));
        assert!(version("1.0.1") > version("1"));
        assert_eq!(version("1.10").to_string(), "1.10");
        for bad in ["", "1.", "v1", "1.x", "1..2", "-1", "1.0-beta"] {
            assert!(SchemaVersion::parse(bad).is_err(), "{bad:?} accepted");
            assert!(!version("1").is_named_by(bad), "{bad:?} names 1");
        }
        for (ours, text, named) in [
            ("2.0", "2", true),
            ("2", "2.0.0", true),
            ("1.10", "1.10", true),
            ("1.10", "1.1", false),
            ("1.0.1", "1.0", false),
            ("1.0", "1.0.1", false),
            ("0", "0.0", true),
            ("3", "99999999999999999999999", false),
        ] {
            assert_eq!(version(ours).is_named_by(text), named, "{ours} vs {text}");
        }
    }

    /// A schema requiring `{"n": integer}`, without a file.
    fn schema(event: &str, v: &str, exchange: Option<&str>) -> EventSchema {
        let document = json!({"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}});
        EventSchema {
            event: pattern(event),
            version: version(v),
            exchange: exchange.map(str::to_owned),
            file: format!("{event}.{v}.json"),
            compiled: CompiledSchema::compile(document).unwrap(),
        }
    }

    fn found(resolution: Resolution<'_>) -> (String, String, bool) {
        match resolution {
            Resolution::Found { schema, defaulted } => (schema.file.clone(), schema.version.to_string(), defaulted),
            other => panic!("expected a schema, got {other:?}"),
        }
    }

    #[test]
    fn the_newest_version_is_the_default_and_a_named_one_is_taken() {
        let schemas = Schemas::new(vec![
            schema("order.created", "1.9", None),
            schema("order.created", "1.10", None),
            schema("order.created", "1.2", None),
        ]);
        assert_eq!(found(schemas.resolve("x", "order.created", None)).1, "1.10");
        assert!(found(schemas.resolve("x", "order.created", None)).2, "defaulted");
        assert_eq!(
            found(schemas.resolve("x", "order.created", Some("1.9"))),
            ("order.created.1.9.json".into(), "1.9".into(), false)
        );
        // `1.2.0` is `1.2`.
        assert_eq!(found(schemas.resolve("x", "order.created", Some("1.2.0"))).1, "1.2");
        match schemas.resolve("x", "order.created", Some("3.0")) {
            Resolution::UnknownVersion { available } => {
                let names: Vec<&str> = available.iter().map(|v| v.as_str()).collect();
                assert_eq!(names, ["1.2", "1.9", "1.10"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            schemas.resolve("x", "order.created", Some("latest")),
            Resolution::UnknownVersion { .. }
        ));
        assert!(matches!(
            schemas.resolve("x", "order.updated", None),
            Resolution::UnknownEvent
        ));
    }

    #[test]
    fn the_most_specific_declaration_wins() {
        let schemas = Schemas::new(vec![
            schema("order.#", "1.0", None),
            schema("order.*", "1.0", None),
            schema("order.created", "2.0", None),
            schema("order.*", "5.0", Some("orders_exchange")),
            schema("order.created", "7.0", Some("special_exchange")),
        ]);
        // Exact beats patterns; its versions only (no 1.0 inherited from `order.*`).
        assert_eq!(found(schemas.resolve("other", "order.created", None)).1, "2.0");
        assert!(matches!(
            schemas.resolve("other", "order.created", Some("1.0")),
            Resolution::UnknownVersion { .. }
        ));
        // Among patterns, the first in the file.
        assert_eq!(
            found(schemas.resolve("other", "order.updated", None)).0,
            "order.#.1.0.json"
        );
        // Scoped to the exchange beats everything for any exchange, even an exact name.
        assert_eq!(
            found(schemas.resolve("orders_exchange", "order.created", None)).1,
            "5.0"
        );
        assert_eq!(
            found(schemas.resolve("special_exchange", "order.created", None)).1,
            "7.0"
        );
        // A scoped declaration never applies elsewhere.
        assert!(matches!(
            Schemas::new(vec![schema("a.b", "1", Some("e1"))]).resolve("e2", "a.b", None),
            Resolution::UnknownEvent
        ));
    }

    #[test]
    fn violations_carry_pointers_and_no_instance_values() {
        let document = json!({
            "type": "object",
            "required": ["order_id", "items"],
            "properties": {
                "order_id": {"type": "integer"},
                "email": {"type": "string", "format": "email"},
                "items": {"type": "array", "items": {"type": "object", "required": ["sku"],
                    "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1}}}}
            }
        });
        let s = CompiledSchema::compile(document).unwrap();
        assert!(s.violations(&json!({"order_id": 1, "items": []}), 50).is_empty());
        let data = json!({"email": "secret-not-an-email", "items": [{"sku": "a"}, {"quantity": 0}]});
        let violations = s.violations(&data, 50);
        let pointers: Vec<&str> = violations.iter().map(|v| v.pointer.as_str()).collect();
        for expected in ["/order_id", "/email", "/items/1/sku", "/items/1/quantity"] {
            assert!(pointers.contains(&expected), "{expected} missing from {violations:?}");
        }
        assert!(
            violations.iter().all(|v| !v.message.contains("secret-not-an-email")),
            "{violations:?}"
        );
        assert_eq!(s.violations(&data, 2).len(), 2, "limited");
    }

    #[test]
    fn remote_references_are_refused_at_compile_time() {
        let compile = CompiledSchema::compile;
        assert!(compile(json!({"$ref": "https://example.com/schema.json"})).is_err());
        assert!(compile(json!({"$ref": "file:///etc/passwd"})).is_err());
        assert!(compile(json!({"$ref": "other.json"})).is_err());
        assert!(compile(json!({"type": "no-such-type"})).is_err());
        assert!(compile(json!({"$defs": {"n": {"type": "integer"}}, "$ref": "#/$defs/n"})).is_ok());
    }
}
