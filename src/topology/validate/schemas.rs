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
