//! `[[schemas]]`: event schemas. Each entry's event pattern, version and exchange are checked,
//! and its file is read and compiled here, so that `topology check` refuses a missing file,
//! invalid JSON or an invalid JSON Schema with the entry's path, among every other error.

use super::{ExchangeInfo, Validator};
use crate::topology::schemas::{CompiledSchema, EventPattern, EventSchema, SchemaVersion, Schemas};

impl Validator<'_> {
    /// Every `[[schemas]]` entry in file order, compiled; only the valid ones are kept (any
    /// error fails validation as a whole anyway).
    pub(super) fn check_schemas(&mut self) -> Schemas {
        let file = self.file;
        // (event, version, exchange) of each earlier entry, for duplicates.
        let mut seen: Vec<(usize, EventPattern, SchemaVersion, Option<&str>)> = Vec::new();
        let mut resolved = Vec::with_capacity(file.schemas.len());
        for (i, spec) in file.schemas.iter().enumerate() {
            let at = |field: &str| format!("schemas[{i}].{field}");
            let event = EventPattern::parse(&spec.event).map_err(|reason| self.error(at("event"), reason));
            let version = SchemaVersion::parse(&spec.version).map_err(|reason| self.error(at("version"), reason));
            let mut exchange_ok = true;
            if let Some(exchange) = spec.exchange.as_deref() {
                let problem = match self.exchanges.get(exchange) {
                    None => Some(format!("exchange `{exchange}` is not declared in [[exchanges]]")),
                    Some(ExchangeInfo { internal: true, .. }) => Some(format!(
                        "exchange `{exchange}` is internal: the API never publishes to it"
                    )),
                    Some(_) => None,
                };
                if let Some(problem) = problem {
                    self.error(at("exchange"), problem);
                    exchange_ok = false;
                }
            }
            // Read even when the entry has other errors: a bad file is reported in the same pass.
            let compiled = if spec.file.trim().is_empty() {
                self.error(
                    at("file"),
                    "must not be empty (a JSON Schema file, relative to the topology file)",
                );
                None
            } else {
                CompiledSchema::read(&spec.file, &file.base_dir)
                    .map_err(|reason| self.error(at("file"), reason))
                    .ok()
            };
            let (Ok(event), Ok(version)) = (event, version) else {
                continue;
            };
            let exchange = spec.exchange.as_deref();
            if let Some((first, ..)) = seen
                .iter()
                .find(|(_, e, v, x)| *e == event && *v == version && *x == exchange)
            {
                self.error(
                    format!("schemas[{i}]"),
                    format!(
                        "duplicate of schemas[{first}] (same event `{}`, version {version} and exchange)",
                        event.as_str()
                    ),
                );
                continue;
            }
            seen.push((i, event.clone(), version.clone(), exchange));
            if let Some(schema) = compiled.filter(|_| exchange_ok) {
                resolved.push(EventSchema {
                    event,
                    version,
                    exchange: spec.exchange.clone(),
                    file: spec.file.clone(),
                    compiled: schema,
                });
            }
        }
        Schemas::new(resolved)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    use crate::topology::{Topology, TopologyError, parse, schemas::Resolution, validate};

    /// Validates `text` as if it were a file in `dir` (schema files are read from there).
    fn check_in(dir: &Path, text: &str) -> Result<Topology, Vec<TopologyError>> {
        let mut file = parse(text).expect("test TOML parses");
        file.base_dir = dir.to_path_buf();
        validate(&file)
    }

    const EXCHANGES: &str = r#"
[[exchanges]]
name = "orders_exchange"
type = "topic"

[[exchanges]]
name = "dlx"
type = "direct"
internal = true
"#;

    #[test]
    fn every_bad_entry_and_file_is_reported_at_once_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("not_json.json"), "{\"type\": ").unwrap();
        std::fs::write(
            dir.path().join("not_schema.json"),
            r#"{"properties": {"n": {"type": 12}}}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("ok.json"), r#"{"type": "object"}"#).unwrap();
        let text = format!(
            r#"{EXCHANGES}
[[schemas]]
event = "order..created"
version = "v1"
file = "missing.json"

[[schemas]]
event = "order.*"
version = "1"
file = "not_json.json"
exchange = "nope"

[[schemas]]
event = "order.cre*"
version = "1.0"
file = "not_schema.json"
exchange = "dlx"

[[schemas]]
event = "order.paid"
version = "2"
file = ""

[[schemas]]
event = "order.paid"
version = "2.0"
file = "ok.json"
"#
        );
        let errors: Vec<String> = check_in(dir.path(), &text)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        let at = dir.path().display();
        assert_eq!(
            errors,
            vec![
                "schemas[0].event: `order..created` has an empty word (two dots, or a dot at an end)".to_owned(),
                "schemas[0].version: `v1` is not a version: dotted numbers such as \"1.0\" or \"2.1\"".to_owned(),
                format!("schemas[0].file: cannot read schema file `{at}/missing.json`: No such file or directory"),
                "schemas[1].exchange: exchange `nope` is not declared in [[exchanges]]".to_owned(),
                format!(
                    "schemas[1].file: schema file `{at}/not_json.json` is not valid JSON: EOF while parsing a value at line 1 column 9"
                ),
                "schemas[2].event: `order.cre*`: `*` and `#` must be whole words (`order.*`, `order.#`), not part of `cre*`"
                    .to_owned(),
                "schemas[2].exchange: exchange `dlx` is internal: the API never publishes to it".to_owned(),
                format!(
                    "schemas[2].file: schema file `{at}/not_schema.json` is not a valid JSON Schema: at /properties/n/type: 12 is not valid under any of the schemas listed in the 'anyOf' keyword"
                ),
                "schemas[3].file: must not be empty (a JSON Schema file, relative to the topology file)".to_owned(),
                "schemas[4]: duplicate of schemas[3] (same event `order.paid`, version 2.0 and exchange)".to_owned(),
            ]
        );
    }

    #[test]
    fn valid_entries_are_compiled_in_file_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("orders")).unwrap();
        std::fs::write(dir.path().join("orders/v1.json"), r#"{"required": ["order_id"]}"#).unwrap();
        let text = format!(
            r#"{EXCHANGES}
[[schemas]]
event = "order.created"
version = "1.0"
file = "orders/v1.json"

[[schemas]]
event = "order.created"
version = "1.0"
file = "orders/v1.json"
exchange = "orders_exchange"
"#
        );
        let topology = check_in(dir.path(), &text).expect("valid");
        let listed: Vec<(&str, &str, Option<&str>)> = topology
            .schemas
            .iter()
            .map(|s| (s.event.as_str(), s.version.as_str(), s.exchange.as_deref()))
            .collect();
        assert_eq!(
            listed,
            [
                ("order.created", "1.0", None),
                ("order.created", "1.0", Some("orders_exchange"))
            ]
        );
        let schema = topology.schemas.iter().next().unwrap();
        assert_eq!(schema.compiled.violations(&serde_json::json!({}), 10).len(), 1);
    }

    #[test]
    fn the_shipped_schemas_compile_and_accept_their_examples() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(root.join("topology.toml")).unwrap();
        let topology = check_in(root, &text).expect("the repository topology is valid");
        let listed: Vec<String> = topology
            .schemas
            .iter()
            .map(|s| format!("{} {}", s.event.as_str(), s.version))
            .collect();
        assert_eq!(
            listed,
            [
                "order.created 1.0",
                "order.created 2.0",
                "product.updated 1.0",
                "basket.checked_out 1.0",
                "user.registered 1.0"
            ]
        );
        let violations = |event: &str, version: &str, data: serde_json::Value| match topology.schemas.resolve(
            "orders_exchange",
            event,
            Some(version),
        ) {
            Resolution::Found { schema, .. } => schema.compiled.violations(&data, 10),
            other => panic!("{event} {version}: {other:?}"),
        };
        // README's example.
        assert_eq!(violations("order.created", "1.0", json!({"order_id": 42})), []);
        assert_eq!(violations("order.created", "2.0", json!({"order_id": 42})).len(), 4);
        let order = json!({"order_id": 42, "customer_id": "c-7", "currency": "EUR", "total": 19.9,
            "items": [{"product_id": 3, "quantity": 2, "unit_price": 9.95}], "placed_at": "2026-12-01T10:00:00Z"});
        assert_eq!(violations("order.created", "2.0", order), []);
        let user = json!({"user_id": 1, "email": "ada@example.com", "password": "x"});
        let pointers: Vec<String> = violations("user.registered", "1", user)
            .into_iter()
            .map(|v| v.pointer)
            .collect();
        assert_eq!(pointers, ["/password"]);
    }
}
