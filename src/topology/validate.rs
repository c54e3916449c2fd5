//! Turns a [`TopologyFile`] into a [`Topology`], or into the list of EVERY problem in it.
//!
//! Validation never stops at the first error: an operator running `topology check` fixes the whole
//! file in one pass. Errors come in file order — `queue_defaults`, `dead_letter_queues`,
//! `exchanges`, `queues`, `bindings`, `rate_limits` — then the cross checks that only make sense
//! once every section is known (derived dead-letter queues and their bindings). Within one item,
//! the checks of single fields come first, then the checks that combine fields.

use std::collections::HashMap;
use std::path::Path;

use super::model::*;

/// One problem of the topology file: where it is (`exchanges[2].type`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct TopologyError {
    pub path: String,
    pub reason: String,
}

impl TopologyError {
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// AMQP short strings (names, routing keys) are at most 255 bytes.
const MAX_NAME_BYTES: usize = 255;

/// RabbitMQ refuses to let clients declare exchanges or queues with this prefix.
const RESERVED_PREFIX: &str = "amq.";

/// Reads, parses and validates a topology file.
pub fn load(path: &Path) -> Result<Topology, Vec<TopologyError>> {
    validate(&read(path)?)
}

/// Reads and parses a topology file, leaving validation to the caller (who may adjust it first).
pub fn read(path: &Path) -> Result<TopologyFile, Vec<TopologyError>> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        vec![TopologyError::new(
            path.display().to_string(),
            format!(
                "cannot read topology file: {} (set TOPOLOGY_FILE or pass the file path)",
                io_reason(&err)
            ),
        )]
    })?;
    parse(&text).map_err(|err| vec![err])
}

/// `No such file or directory (os error 2)` -> `No such file or directory`: the number helps nobody.
fn io_reason(err: &std::io::Error) -> String {
    let text = err.to_string();
    match text.rfind(" (os error ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// Parses the TOML text. Syntax errors and unknown keys are reported at `line L, column C`.
pub fn parse(text: &str) -> Result<TopologyFile, TopologyError> {
    toml::from_str(text).map_err(|err| {
        let path = match err.span() {
            Some(span) => {
                let (line, column) = line_column(text, span.start);
                format!("line {line}, column {column}")
            }
            None => "topology file".to_owned(),
        };
        let reason = err.message().lines().next().unwrap_or_default().trim();
        TopologyError::new(path, reason)
    })
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = before.iter().rposition(|b| *b == b'\n').map_or(0, |at| at + 1);
    let in_line = &before[line_start..];
    let column = std::str::from_utf8(in_line).map_or(in_line.len(), |s| s.chars().count()) + 1;
    (line, column)
}

/// Checks everything and resolves the topology: defaults applied, dead-letter queues derived.
pub fn validate(file: &TopologyFile) -> Result<Topology, Vec<TopologyError>> {
    Validator::new(file).run()
}

/// What a reference to an exchange needs to know about it.
struct ExchangeInfo {
    /// `None` when the declared type is itself invalid (already reported on the exchange).
    kind: Option<ExchangeKind>,
    internal: bool,
}

struct Validator<'a> {
    file: &'a TopologyFile,
    errors: Vec<TopologyError>,
    /// First declaration of each exchange name; duplicates are reported, not indexed.
    exchanges: HashMap<&'a str, ExchangeInfo>,
}

impl<'a> Validator<'a> {
    fn new(file: &'a TopologyFile) -> Self {
        // Indexed before anything is checked: the defaults (first in the report) refer to exchanges.
        let mut exchanges = HashMap::new();
        for spec in &file.exchanges {
            exchanges.entry(spec.name.as_str()).or_insert_with(|| ExchangeInfo {
                kind: parse_exchange_kind(&spec.kind),
                internal: spec.internal,
            });
        }
        Self {
            file,
            errors: Vec::new(),
            exchanges,
        }
    }

    fn error(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(TopologyError::new(path, reason));
    }

    fn run(mut self) -> Result<Topology, Vec<TopologyError>> {
        let file = self.file;

        let defaults = self.check_defaults();
        let dlq_spec = self.check_dead_letter_queues();
        let exchanges = self.check_exchanges();
        let queues = self.check_queues(&defaults);

        // Dead-letter queues are derived from the service queues that dead-letter; without a
        // [dead_letter_queues] section there is nowhere for their dead letters to land (reported
        // by the cross checks).
        let derived = match &dlq_spec {
            Some(spec) => derive_dead_letter_queues(file, &queues, spec),
            None => Vec::new(),
        };

        let bindings = self.check_bindings(&derived);
        let rate_limits = self.check_rate_limits();
        self.cross_checks(&queues, &derived);

        if !self.errors.is_empty() {
            return Err(self.errors);
        }

        // No error means every item resolved; `flatten` only unwraps.
        let mut all_queues: Vec<Queue> = queues.into_iter().filter_map(|q| q.resolved).collect();
        let mut all_bindings: Vec<Binding> = bindings.into_iter().flatten().collect();
        for dlq in derived {
            all_bindings.push(dlq.binding);
            all_queues.push(dlq.queue);
        }
        Ok(Topology {
            exchanges: exchanges.into_iter().flatten().collect(),
            queues: all_queues,
            bindings: all_bindings,
            rate_limits: rate_limits.into_iter().flatten().collect(),
        })
    }

    // -----------------------------------------------------------------------------------------
    // Sections, in file order.

    fn check_defaults(&mut self) -> Defaults {
        let spec = &self.file.queue_defaults;
        let message_ttl = spec
            .message_ttl
            .and_then(|v| self.check_u32("queue_defaults.message_ttl", v));
        let max_length = spec
            .max_length
            .and_then(|v| self.check_u32("queue_defaults.max_length", v));
        let overflow = spec
            .overflow
            .as_deref()
            .and_then(|v| self.check_overflow("queue_defaults.overflow", v));
        let dead_letter_exchange = match spec.dead_letter_exchange.as_deref() {
            None | Some("") => None,
            Some(name) => {
                self.check_dead_letter_exchange("queue_defaults.dead_letter_exchange", name);
                Some(name.to_owned())
            }
        };
        let queue_type = match spec.queue_type.as_deref() {
            Some(v) => self.check_queue_type("queue_defaults.type", v),
            None => Some(QueueType::Classic),
        };

        // Combinations that are wrong in the defaults themselves are reported here, once, rather
        // than on every queue that inherits them.
        if queue_type == Some(QueueType::Quorum) {
            if !spec.durable {
                self.error("queue_defaults.durable", "quorum queues must be durable");
            }
            if spec.auto_delete {
                self.error("queue_defaults.auto_delete", "quorum queues cannot be auto_delete");
            }
            if overflow == Some(Overflow::RejectPublishDlx) {
                self.error("queue_defaults.overflow", QUORUM_REJECT_PUBLISH_DLX);
            }
        }
        if overflow == Some(Overflow::RejectPublishDlx) && dead_letter_exchange.is_none() {
            self.error("queue_defaults.overflow", REJECT_PUBLISH_DLX_WITHOUT_DLX);
        }

        Defaults {
            durable: spec.durable,
            auto_delete: spec.auto_delete,
            message_ttl,
            max_length,
            overflow,
            dead_letter_exchange,
            queue_type,
        }
    }

    fn check_dead_letter_queues(&mut self) -> Option<DeadLetterQueues> {
        let spec = self.file.dead_letter_queues.as_ref()?;
        // Only the suffix decides whether dead-letter queue names can be derived (and so checked
        // against the rest of the file); a bad TTL is reported and resolution fails anyway.
        let mut ok = true;
        if spec.suffix.is_empty() {
            self.error(
                "dead_letter_queues.suffix",
                "must not be empty (a dead-letter queue needs a name of its own)",
            );
            ok = false;
        } else if let Some(reason) = bad_characters(&spec.suffix) {
            self.error("dead_letter_queues.suffix", reason);
            ok = false;
        } else if spec.suffix.len() >= MAX_NAME_BYTES {
            self.error(
                "dead_letter_queues.suffix",
                format!(
                    "is {} bytes long; with the queue's name it must fit in {MAX_NAME_BYTES} bytes",
                    spec.suffix.len()
                ),
            );
            ok = false;
        }
        let message_ttl = spec
            .message_ttl
            .and_then(|v| self.check_u32("dead_letter_queues.message_ttl", v));
        ok.then(|| DeadLetterQueues {
            suffix: spec.suffix.clone(),
            message_ttl,
            durable: spec.durable,
        })
    }

    fn check_exchanges(&mut self) -> Vec<Option<Exchange>> {
        let mut first_seen: HashMap<&str, usize> = HashMap::new();
        let mut resolved = Vec::with_capacity(self.file.exchanges.len());
        for (i, spec) in self.file.exchanges.iter().enumerate() {
            let mut ok = self.check_name(&format!("exchanges[{i}].name"), &spec.name);
            if let Some(first) = first_seen.get(spec.name.as_str()) {
                self.error(
                    format!("exchanges[{i}].name"),
                    format!(
                        "duplicate exchange `{}` (first declared at exchanges[{first}])",
                        spec.name
                    ),
                );
                ok = false;
            } else {
                first_seen.insert(&spec.name, i);
            }
            let kind = parse_exchange_kind(&spec.kind);
            if kind.is_none() {
                self.error(
                    format!("exchanges[{i}].type"),
                    format!(
                        "unknown exchange type `{}` (expected direct, topic, fanout or headers)",
                        spec.kind
                    ),
                );
            }
            resolved.push(match kind {
                Some(kind) if ok => Some(Exchange {
                    name: spec.name.clone(),
                    kind,
                    durable: spec.durable,
                    auto_delete: spec.auto_delete,
                    internal: spec.internal,
                }),
                _ => None,
            });
        }
        resolved
    }

    /// Every `[[queues]]` entry in file order: one outcome each, resolved only when error-free.
    fn check_queues(&mut self, defaults: &Defaults) -> Vec<QueueOutcome> {
        let file = self.file;
        let mut first_seen: HashMap<&str, usize> = HashMap::new();
        let mut resolved = Vec::with_capacity(file.queues.len());
        for (i, spec) in file.queues.iter().enumerate() {
            resolved.push(self.check_queue(i, spec, defaults, &mut first_seen));
        }
        resolved
    }

    /// One queue: its name, then its single fields, then the combinations of fields.
    fn check_queue(
        &mut self,
        i: usize,
        spec: &'a QueueSpec,
        defaults: &Defaults,
        first_seen: &mut HashMap<&'a str, usize>,
    ) -> QueueOutcome {
        let errors_before = self.errors.len();
        let name_ok = self.check_queue_name(i, spec, first_seen);
        let fields = self.check_queue_fields(i, spec, defaults);
        // Combinations. A conflict is reported at the field this queue sets; one that comes
        // entirely from the defaults was reported there already.
        self.check_quorum_combinations(i, spec, &fields);
        self.check_other_combinations(i, spec, &fields);

        let resolved_queue = (self.errors.len() == errors_before).then(|| Queue {
            name: spec.name.clone(),
            durable: fields.durable,
            auto_delete: fields.auto_delete,
            // Only read when the queue has no error, so the type is known.
            queue_type: fields.queue_type.unwrap_or(QueueType::Classic),
            message_ttl: fields.message_ttl,
            max_length: fields.max_length,
            overflow: fields.overflow,
            dead_letter_exchange: fields.dead_letter_exchange.clone(),
            max_priority: fields.max_priority,
            delivery_limit: fields.delivery_limit,
            role: QueueRole::Service,
        });
        QueueOutcome {
            name_ok,
            dead_letter_exchange: fields.dead_letter_exchange,
            resolved: resolved_queue,
        }
    }

    /// The queue's name is valid and not declared before. Returns whether it is.
    fn check_queue_name(&mut self, i: usize, spec: &'a QueueSpec, first_seen: &mut HashMap<&'a str, usize>) -> bool {
        let path = format!("queues[{i}].name");
        let mut name_ok = self.check_name(&path, &spec.name);
        if let Some(first) = first_seen.get(spec.name.as_str()) {
            name_ok = false;
            self.error(
                path,
                format!("duplicate queue `{}` (first declared at queues[{first}])", spec.name),
            );
        } else {
            first_seen.insert(&spec.name, i);
        }
        name_ok
    }

    /// Each single field of a queue, resolved against the defaults; an invalid value is `None`.
    fn check_queue_fields(&mut self, i: usize, spec: &QueueSpec, defaults: &Defaults) -> QueueFields {
        let at = |field: &str| format!("queues[{i}].{field}");
        // Each field: the queue's own value (checked) or the default (checked above).
        let message_ttl = match spec.message_ttl {
            Some(v) => self.check_u32(&at("message_ttl"), v),
            None => defaults.message_ttl,
        };
        let max_length = match spec.max_length {
            Some(v) => self.check_u32(&at("max_length"), v),
            None => defaults.max_length,
        };
        let overflow = match spec.overflow.as_deref() {
            Some(v) => self.check_overflow(&at("overflow"), v),
            None => defaults.overflow,
        };
        let dead_letter_exchange = match spec.dead_letter_exchange.as_deref() {
            Some("") => None,
            Some(name) => {
                self.check_dead_letter_exchange(&at("dead_letter_exchange"), name);
                Some(name.to_owned())
            }
            None => defaults.dead_letter_exchange.clone(),
        };
        let queue_type = match spec.queue_type.as_deref() {
            Some(v) => self.check_queue_type(&at("type"), v),
            None => defaults.queue_type,
        };
        let max_priority = spec
            .max_priority
            .and_then(|v| self.check_max_priority(&at("max_priority"), v));
        let delivery_limit = spec
            .delivery_limit
            .and_then(|v| self.check_u32(&at("delivery_limit"), v));
        QueueFields {
            durable: spec.durable.unwrap_or(defaults.durable),
            auto_delete: spec.auto_delete.unwrap_or(defaults.auto_delete),
            message_ttl,
            max_length,
            overflow,
            dead_letter_exchange,
            queue_type,
            max_priority,
            delivery_limit,
        }
    }

    /// What a quorum queue refuses: not durable, auto_delete, max_priority, `reject-publish-dlx`.
    fn check_quorum_combinations(&mut self, i: usize, spec: &QueueSpec, fields: &QueueFields) {
        if fields.queue_type != Some(QueueType::Quorum) {
            return;
        }
        let at = |field: &str| format!("queues[{i}].{field}");
        if !fields.durable {
            if spec.durable.is_some() {
                self.error(at("durable"), "quorum queues must be durable");
            } else if spec.queue_type.is_some() {
                self.error(
                    at("type"),
                    "quorum queues must be durable (queue_defaults.durable is false; set durable = true)",
                );
            }
        }
        if fields.auto_delete {
            if spec.auto_delete.is_some() {
                self.error(at("auto_delete"), "quorum queues cannot be auto_delete");
            } else if spec.queue_type.is_some() {
                self.error(
                    at("type"),
                    "quorum queues cannot be auto_delete (queue_defaults.auto_delete is true; set auto_delete = false)",
                );
            }
        }
        if spec.max_priority.is_some() {
            self.error(
                at("max_priority"),
                "quorum queues do not support max_priority (use type = \"classic\")",
            );
        }
        if fields.overflow == Some(Overflow::RejectPublishDlx) {
            if spec.overflow.is_some() {
                self.error(at("overflow"), QUORUM_REJECT_PUBLISH_DLX);
            } else if spec.queue_type.is_some() {
                self.error(at("type"), QUORUM_REJECT_PUBLISH_DLX);
            }
        }
    }

    /// The combinations that are not about quorum: delivery_limit on a classic queue,
    /// `reject-publish-dlx` without a dead-letter exchange.
    fn check_other_combinations(&mut self, i: usize, spec: &QueueSpec, fields: &QueueFields) {
        let at = |field: &str| format!("queues[{i}].{field}");
        // A bad type (`None`) was reported already; only a known classic queue is told off here.
        if fields.queue_type == Some(QueueType::Classic) && spec.delivery_limit.is_some() {
            self.error(
                at("delivery_limit"),
                "delivery_limit only applies to quorum queues (set type = \"quorum\")",
            );
        }
        if fields.overflow == Some(Overflow::RejectPublishDlx) && fields.dead_letter_exchange.is_none() {
            if spec.overflow.is_some() {
                self.error(at("overflow"), REJECT_PUBLISH_DLX_WITHOUT_DLX);
            } else if spec.dead_letter_exchange.is_some() {
                self.error(at("dead_letter_exchange"), REJECT_PUBLISH_DLX_WITHOUT_DLX);
            }
        }
    }

    /// Every `[[bindings]]` entry in file order: resolved only when error-free.
    fn check_bindings(&mut self, derived: &[DerivedDlq]) -> Vec<Option<Binding>> {
        let file = self.file;
        // A binding may target any queue that will exist: declared ones and derived dead-letter ones.
        let declared_queues: Vec<&str> = file
            .queues
            .iter()
            .map(|q| q.name.as_str())
            .chain(derived.iter().map(|d| d.queue.name.as_str()))
            .collect();
        let mut first_seen: HashMap<(&str, &str, &str), usize> = HashMap::new();
        let mut resolved = Vec::with_capacity(file.bindings.len());
        for (i, spec) in file.bindings.iter().enumerate() {
            let errors_before = self.errors.len();
            let kind = self.check_binding_exchange(i, spec);
            self.check_binding_queue(i, spec, &declared_queues);
            self.check_routing_key(i, spec, kind);
            self.check_binding_duplicate(i, spec, &mut first_seen);
            resolved.push((self.errors.len() == errors_before).then(|| Binding {
                exchange: spec.exchange.clone(),
                queue: spec.queue.clone(),
                routing_key: spec.routing_key.clone(),
            }));
        }
        resolved
    }

    /// The binding's exchange is named and declared. Returns its type when known.
    fn check_binding_exchange(&mut self, i: usize, spec: &BindingSpec) -> Option<ExchangeKind> {
        let path = format!("bindings[{i}].exchange");
        if spec.exchange.is_empty() {
            self.error(path, "must not be empty (the default exchange cannot be bound)");
            None
        } else if let Some(info) = self.exchanges.get(spec.exchange.as_str()) {
            info.kind
        } else {
            self.error(
                path,
                format!("exchange `{}` is not declared in [[exchanges]]", spec.exchange),
            );
            None
        }
    }

    /// The binding's queue is named and will exist (declared, or a derived dead-letter queue).
    fn check_binding_queue(&mut self, i: usize, spec: &BindingSpec, declared_queues: &[&str]) {
        let path = format!("bindings[{i}].queue");
        if spec.queue.is_empty() {
            self.error(path, "must not be empty");
        } else if !declared_queues.contains(&spec.queue.as_str()) {
            self.error(path, format!("queue `{}` is not declared in [[queues]]", spec.queue));
        }
    }

    /// The routing key fits in a short string and makes sense for the exchange's type.
    fn check_routing_key(&mut self, i: usize, spec: &BindingSpec, kind: Option<ExchangeKind>) {
        let path = format!("bindings[{i}].routing_key");
        let key = &spec.routing_key;
        if key.len() > MAX_NAME_BYTES {
            self.error(
                path.clone(),
                format!(
                    "is {} bytes long; routing keys are limited to {MAX_NAME_BYTES} bytes",
                    key.len()
                ),
            );
        }
        match kind {
            Some(ExchangeKind::Fanout) if !key.is_empty() => self.error(
                path,
                format!(
                    "fanout exchange `{}` ignores routing keys: leave routing_key out",
                    spec.exchange
                ),
            ),
            Some(ExchangeKind::Direct) if key.contains(['*', '#']) => self.error(
                path,
                format!(
                    "direct exchange `{}` matches routing keys exactly: `{key}` is not a pattern there (use a topic exchange)",
                    spec.exchange
                ),
            ),
            _ => {}
        }
    }

    /// No earlier binding has the same exchange, queue and routing key.
    fn check_binding_duplicate(
        &mut self,
        i: usize,
        spec: &'a BindingSpec,
        first_seen: &mut HashMap<(&'a str, &'a str, &'a str), usize>,
    ) {
        let triple = (spec.exchange.as_str(), spec.queue.as_str(), spec.routing_key.as_str());
        if let Some(first) = first_seen.get(&triple) {
            self.error(
                format!("bindings[{i}]"),
                format!("duplicate of bindings[{first}] (same exchange, queue and routing_key)"),
            );
        } else {
            first_seen.insert(triple, i);
        }
    }

    fn check_rate_limits(&mut self) -> Vec<Option<RateLimit>> {
        let file = self.file;
        let mut first_seen: HashMap<(Option<&str>, Option<&str>), usize> = HashMap::new();
        let mut resolved = Vec::with_capacity(file.rate_limits.len());
        for (i, spec) in file.rate_limits.iter().enumerate() {
            let at = |field: &str| format!("rate_limits[{i}].{field}");
            let errors_before = self.errors.len();

            if spec.exchange.is_none() && spec.client.is_none() {
                self.error(
                    format!("rate_limits[{i}]"),
                    "set exchange, client or both: a limit must say what it applies to",
                );
            }
            if let Some(exchange) = spec.exchange.as_deref() {
                match self.exchanges.get(exchange) {
                    None if exchange.is_empty() => self.error(at("exchange"), "must not be empty"),
                    None => self.error(
                        at("exchange"),
                        format!("exchange `{exchange}` is not declared in [[exchanges]]"),
                    ),
                    Some(info) if info.internal => self.error(
                        at("exchange"),
                        format!(
                            "exchange `{exchange}` is internal: the API never publishes to it, so the limit would never apply"
                        ),
                    ),
                    Some(_) => {}
                }
            }
            if let Some(client) = spec.client.as_deref()
                && client.trim().is_empty()
            {
                self.error(at("client"), "must not be empty");
            }
            let per_second = self.check_u32(&at("per_second"), spec.per_second);
            let burst = match spec.burst {
                Some(v) => self.check_u32(&at("burst"), v),
                None => per_second,
            };

            let key = (spec.exchange.as_deref(), spec.client.as_deref());
            if let Some(first) = first_seen.get(&key) {
                self.error(
                    format!("rate_limits[{i}]"),
                    format!("duplicate of rate_limits[{first}] (same exchange and client)"),
                );
            } else {
                first_seen.insert(key, i);
            }

            resolved.push(match (per_second, burst) {
                (Some(per_second), Some(burst)) if self.errors.len() == errors_before => Some(RateLimit {
                    exchange: spec.exchange.clone(),
                    client: spec.client.clone(),
                    per_second,
                    burst,
                }),
                _ => None,
            });
        }
        resolved
    }

    /// Checks that need every section: the derived dead-letter queues and their bindings.
    fn cross_checks(&mut self, queues: &[QueueOutcome], derived: &[DerivedDlq]) {
        let file = self.file;

        let dead_lettering: Vec<usize> = queues
            .iter()
            .enumerate()
            .filter(|(_, q)| q.dead_letter_exchange.is_some())
            .map(|(i, _)| i)
            .collect();
        if file.dead_letter_queues.is_none() && !dead_lettering.is_empty() {
            let first = dead_lettering[0];
            let and_others = match dead_lettering.len() - 1 {
                0 => String::new(),
                1 => " and 1 other queue".to_owned(),
                n => format!(" and {n} other queues"),
            };
            self.error(
                "dead_letter_queues",
                format!(
                    "section missing: queues[{first}] (`{}`){and_others} dead-letter, so [dead_letter_queues] must say how their dead-letter queues are named",
                    file.queues[first].name
                ),
            );
        }

        for dlq in derived {
            let source = dlq.source_index;
            let name = &dlq.queue.name;
            if name.len() > MAX_NAME_BYTES {
                self.error(
                    format!("queues[{source}].name"),
                    format!(
                        "its dead-letter queue name `{name}` would be {} bytes long; names are limited to {MAX_NAME_BYTES} bytes",
                        name.len()
                    ),
                );
            }
            for (j, spec) in file.queues.iter().enumerate() {
                if spec.name == *name {
                    self.error(
                        format!("queues[{j}].name"),
                        format!(
                            "duplicate queue `{name}`: it is also the dead-letter queue derived from queues[{source}] (`{}`)",
                            file.queues[source].name
                        ),
                    );
                }
            }
            for (j, spec) in file.bindings.iter().enumerate() {
                let b = &dlq.binding;
                if spec.exchange == b.exchange && spec.queue == b.queue && spec.routing_key == b.routing_key {
                    self.error(
                        format!("bindings[{j}]"),
                        format!("duplicates the binding derived for dead-letter queue `{name}`: remove it"),
                    );
                }
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Field checks. Each reports its own error and returns the resolved value when it is valid.

    /// Exchange and queue names. Returns whether the name is valid.
    fn check_name(&mut self, path: &str, name: &str) -> bool {
        if name.is_empty() {
            self.error(path, "must not be empty");
            return false;
        }
        let mut ok = true;
        if name.len() > MAX_NAME_BYTES {
            self.error(
                path,
                format!(
                    "is {} bytes long; names are limited to {MAX_NAME_BYTES} bytes",
                    name.len()
                ),
            );
            ok = false;
        }
        if let Some(reason) = bad_characters(name) {
            self.error(path, format!("`{name}` {reason}"));
            ok = false;
        }
        if name.starts_with(RESERVED_PREFIX) {
            self.error(
                path,
                format!("`{name}` starts with `{RESERVED_PREFIX}`, a prefix RabbitMQ reserves for its own objects"),
            );
            ok = false;
        }
        ok
    }

    /// A queue argument that the broker stores as an unsigned 32-bit number, at least 1.
    fn check_u32(&mut self, path: &str, value: i64) -> Option<u32> {
        match u32::try_from(value).ok().filter(|v| *v >= 1) {
            Some(v) => Some(v),
            None => {
                self.error(path, format!("must be between 1 and {}, got {value}", u32::MAX));
                None
            }
        }
    }

    /// `x-max-priority`: 1 to 255.
    fn check_max_priority(&mut self, path: &str, value: i64) -> Option<u8> {
        match u8::try_from(value).ok().filter(|p| *p >= 1) {
            Some(p) => Some(p),
            None => {
                self.error(path, format!("must be between 1 and 255, got {value}"));
                None
            }
        }
    }

    fn check_overflow(&mut self, path: &str, value: &str) -> Option<Overflow> {
        let overflow = match value {
            "drop-head" => Some(Overflow::DropHead),
            "reject-publish" => Some(Overflow::RejectPublish),
            "reject-publish-dlx" => Some(Overflow::RejectPublishDlx),
            _ => None,
        };
        if overflow.is_none() {
            self.error(
                path,
                format!("unknown overflow `{value}` (expected drop-head, reject-publish or reject-publish-dlx)"),
            );
        }
        overflow
    }

    fn check_queue_type(&mut self, path: &str, value: &str) -> Option<QueueType> {
        let queue_type = match value {
            "classic" => Some(QueueType::Classic),
            "quorum" => Some(QueueType::Quorum),
            _ => None,
        };
        if queue_type.is_none() {
            self.error(
                path,
                format!("unknown queue type `{value}` (expected classic or quorum)"),
            );
        }
        queue_type
    }

    /// A dead-letter exchange must be declared, and direct: dead-letter queues are bound by the
    /// source queue's name, which queues send as their dead-letter routing key.
    fn check_dead_letter_exchange(&mut self, path: &str, name: &str) {
        match self.exchanges.get(name) {
            None => self.error(
                path,
                format!(
                    "exchange `{name}` is not declared in [[exchanges]] (missing DLX: declare it with type = \"direct\")"
                ),
            ),
            Some(ExchangeInfo {
                kind: Some(kind), ..
            }) if *kind != ExchangeKind::Direct => self.error(
                path,
                format!(
                    "dead-letter exchange `{name}` is a {} exchange; it must be direct, because dead-letter queues are bound by their source queue's name",
                    kind.as_str()
                ),
            ),
            Some(_) => {}
        }
    }
}

/// The broker accepts it on a quorum queue, logs a warning and silently uses drop-head instead.
const QUORUM_REJECT_PUBLISH_DLX: &str =
    "quorum queues do not support overflow `reject-publish-dlx` (use drop-head or reject-publish)";
const REJECT_PUBLISH_DLX_WITHOUT_DLX: &str =
    "overflow `reject-publish-dlx` dead-letters rejected messages, but this queue has no dead-letter exchange";

/// Whether `name` is spelled like an exchange or queue name of ours: 1 to 255 bytes of ASCII
/// letters, digits, `_ . - :`. For names that come from requests, checked before they reach the
/// broker; the `amq.` prefix is let through since server-named queues (`amq.gen-...`) exist.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_BYTES && bad_characters(name).is_none()
}

/// `None` when every character is allowed; otherwise the reason, naming the offending characters.
fn bad_characters(name: &str) -> Option<String> {
    let mut bad: Vec<char> = Vec::new();
    for c in name.chars() {
        let allowed = c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':');
        if !allowed && !bad.contains(&c) {
            bad.push(c);
        }
    }
    if bad.is_empty() {
        return None;
    }
    let listed: Vec<String> = bad.iter().map(|c| format!("{c:?}")).collect();
    Some(format!(
        "contains {} (allowed: ASCII letters, digits, `_`, `.`, `-`, `:`)",
        listed.join(", ")
    ))
}

fn parse_exchange_kind(value: &str) -> Option<ExchangeKind> {
    match value {
        "direct" => Some(ExchangeKind::Direct),
        "topic" => Some(ExchangeKind::Topic),
        "fanout" => Some(ExchangeKind::Fanout),
        "headers" => Some(ExchangeKind::Headers),
        _ => None,
    }
}

/// `[queue_defaults]` after its own checks; an invalid value is `None` (already reported).
struct Defaults {
    durable: bool,
    auto_delete: bool,
    message_ttl: Option<u32>,
    max_length: Option<u32>,
    overflow: Option<Overflow>,
    dead_letter_exchange: Option<String>,
    /// `Some(Classic)` when absent; `None` only when the written type is invalid.
    queue_type: Option<QueueType>,
}

/// `[dead_letter_queues]` after its checks.
struct DeadLetterQueues {
    suffix: String,
    message_ttl: Option<u32>,
    durable: bool,
}

/// One queue's effective fields (own value or default); an invalid value is `None` (already reported).
struct QueueFields {
    durable: bool,
    auto_delete: bool,
    message_ttl: Option<u32>,
    max_length: Option<u32>,
    overflow: Option<Overflow>,
    dead_letter_exchange: Option<String>,
    queue_type: Option<QueueType>,
    max_priority: Option<u8>,
    delivery_limit: Option<u32>,
}

/// What the rest of the validation needs to know about one `[[queues]]` entry.
struct QueueOutcome {
    /// The name is valid and declared once: a dead-letter queue can be derived from it.
    name_ok: bool,
    /// The effective dead-letter exchange (own value or default), even if the queue has errors.
    dead_letter_exchange: Option<String>,
    /// `Some` only when the queue has no error at all.
    resolved: Option<Queue>,
}

struct DerivedDlq {
    /// Index of the source queue in `[[queues]]`, for error paths.
    source_index: usize,
    queue: Queue,
    binding: Binding,
}

/// One dead-letter queue per service queue with a dead-letter exchange, in file order. Derived even
/// when the source queue has other errors, so that bindings to it are not reported as undeclared.
fn derive_dead_letter_queues(file: &TopologyFile, queues: &[QueueOutcome], spec: &DeadLetterQueues) -> Vec<DerivedDlq> {
    file.queues
        .iter()
        .zip(queues)
        .enumerate()
        .filter(|(_, (_, outcome))| outcome.name_ok)
        .filter_map(|(i, (source, outcome))| {
            let dlx = outcome.dead_letter_exchange.as_ref()?;
            let name = format!("{}{}", source.name, spec.suffix);
            Some(DerivedDlq {
                source_index: i,
                binding: Binding {
                    exchange: dlx.clone(),
                    queue: name.clone(),
                    // What the source queue sends as `x-dead-letter-routing-key`.
                    routing_key: source.name.clone(),
                },
                queue: Queue {
                    name,
                    durable: spec.durable,
                    auto_delete: false,
                    queue_type: QueueType::Classic,
                    message_ttl: spec.message_ttl,
                    max_length: None,
                    overflow: None,
                    dead_letter_exchange: None,
                    max_priority: None,
                    delivery_limit: None,
                    role: QueueRole::DeadLetter {
                        source_queue: source.name.clone(),
                    },
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses then validates; panics on a parse error (these tests are about validation).
    fn check(text: &str) -> Result<Topology, Vec<TopologyError>> {
        validate(&parse(text).expect("test TOML parses"))
    }

    /// The error list as `path: reason` lines, which read well in a failed assertion.
    fn errors(text: &str) -> Vec<String> {
        match check(text) {
            Ok(_) => panic!("expected validation errors"),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    fn valid(text: &str) -> Topology {
        check(text).unwrap_or_else(|errors| panic!("expected a valid topology, got {errors:#?}"))
    }

    const RANGE: &str = "must be between 1 and 4294967295";

    #[test]
    fn bad_inputs_are_all_reported_at_once_in_file_order() {
        let text = r#"
            [queue_defaults]
            message_ttl = 0
            overflow = "drop-tail"
            dead_letter_exchange = "dlx_missing"

            [dead_letter_queues]
            suffix = ""

            [[exchanges]]
            name = "orders_exchange"
            type = "topic"

            [[exchanges]]
            name = "orders_exchange"
            type = "direct"

            [[exchanges]]
            name = "amq.custom"
            type = "fan-out"

            [[exchanges]]
            name = "bad name/with slash"
            type = "topic"

            [[queues]]
            name = "orders_queue"
            max_length = -5
            type = "quorum"
            max_priority = 10

            [[queues]]
            name = "orders_queue"
            delivery_limit = 3

            [[queues]]
            name = ""
            message_ttl = 4294967296

            [[bindings]]
            exchange = "orders_exchange"
            queue = "missing_queue"
            routing_key = "orders.#"

            [[bindings]]
            exchange = "ghost_exchange"
            queue = "orders_queue"
            routing_key = "orders.#"

            [[bindings]]
            exchange = "orders_exchange"
            queue = "orders_queue"
            routing_key = "orders.#"

            [[bindings]]
            exchange = "orders_exchange"
            queue = "orders_queue"
            routing_key = "orders.#"

            [[rate_limits]]
            per_second = 0

            [[rate_limits]]
            exchange = "ghost_exchange"
            client = ""
            per_second = 10
            burst = -1
        "#;
        assert_eq!(
            errors(text),
            vec![
                format!("queue_defaults.message_ttl: {RANGE}, got 0"),
                "queue_defaults.overflow: unknown overflow `drop-tail` (expected drop-head, reject-publish or reject-publish-dlx)".to_owned(),
                "queue_defaults.dead_letter_exchange: exchange `dlx_missing` is not declared in [[exchanges]] (missing DLX: declare it with type = \"direct\")".to_owned(),
                "dead_letter_queues.suffix: must not be empty (a dead-letter queue needs a name of its own)".to_owned(),
                "exchanges[1].name: duplicate exchange `orders_exchange` (first declared at exchanges[0])".to_owned(),
                "exchanges[2].name: `amq.custom` starts with `amq.`, a prefix RabbitMQ reserves for its own objects".to_owned(),
                "exchanges[2].type: unknown exchange type `fan-out` (expected direct, topic, fanout or headers)".to_owned(),
                "exchanges[3].name: `bad name/with slash` contains ' ', '/' (allowed: ASCII letters, digits, `_`, `.`, `-`, `:`)".to_owned(),
                format!("queues[0].max_length: {RANGE}, got -5"),
                "queues[0].max_priority: quorum queues do not support max_priority (use type = \"classic\")".to_owned(),
                "queues[1].name: duplicate queue `orders_queue` (first declared at queues[0])".to_owned(),
                "queues[1].delivery_limit: delivery_limit only applies to quorum queues (set type = \"quorum\")".to_owned(),
                "queues[2].name: must not be empty".to_owned(),
                format!("queues[2].message_ttl: {RANGE}, got 4294967296"),
                "bindings[0].queue: queue `missing_queue` is not declared in [[queues]]".to_owned(),
                "bindings[1].exchange: exchange `ghost_exchange` is not declared in [[exchanges]]".to_owned(),
                "bindings[3]: duplicate of bindings[2] (same exchange, queue and routing_key)".to_owned(),
                "rate_limits[0]: set exchange, client or both: a limit must say what it applies to".to_owned(),
                format!("rate_limits[0].per_second: {RANGE}, got 0"),
                "rate_limits[1].exchange: exchange `ghost_exchange` is not declared in [[exchanges]]".to_owned(),
                "rate_limits[1].client: must not be empty".to_owned(),
                format!("rate_limits[1].burst: {RANGE}, got -1"),
            ]
        );
    }

    #[test]
    fn errors_carry_path_and_reason_and_display_both() {
        let errs = check(
            r#"
            [[exchanges]]
            name = "x"
            type = "fanout "
        "#,
        )
        .unwrap_err();
        assert_eq!(
            errs,
            vec![TopologyError {
                path: "exchanges[0].type".to_owned(),
                reason: "unknown exchange type `fanout ` (expected direct, topic, fanout or headers)".to_owned(),
            }]
        );
        assert_eq!(
            errs[0].to_string(),
            "exchanges[0].type: unknown exchange type `fanout ` (expected direct, topic, fanout or headers)"
        );
    }

    #[test]
    fn names_follow_rabbitmq_rules() {
        let longest = "q".repeat(255);
        let too_long = "q".repeat(256);
        let text = format!(
            r#"
            [[exchanges]]
            name = "ok:name-with.all_chars09"
            type = "direct"

            [[exchanges]]
            name = "amq.direct"
            type = "direct"

            [[exchanges]]
            name = "café"
            type = "topic"

            [[queues]]
            name = "{longest}"

            [[queues]]
            name = "{too_long}"

            [[queues]]
            name = "amq.gen-x y"
        "#
        );
        assert_eq!(
            errors(&text),
            vec![
                "exchanges[1].name: `amq.direct` starts with `amq.`, a prefix RabbitMQ reserves for its own objects",
                "exchanges[2].name: `café` contains 'é' (allowed: ASCII letters, digits, `_`, `.`, `-`, `:`)",
                "queues[1].name: is 256 bytes long; names are limited to 255 bytes",
                "queues[2].name: `amq.gen-x y` contains ' ' (allowed: ASCII letters, digits, `_`, `.`, `-`, `:`)",
                "queues[2].name: `amq.gen-x y` starts with `amq.`, a prefix RabbitMQ reserves for its own objects",
            ]
        );
    }

    #[test]
    fn numeric_limits_accept_their_bounds_and_refuse_beyond() {
        let ok = valid(
            r#"
            [queue_defaults]
            message_ttl = 4294967295
            max_length = 1

            [[queues]]
            name = "a"
            max_priority = 255

            [[queues]]
            name = "b"
            max_priority = 1
            type = "classic"

            [[queues]]
            name = "c"
            type = "quorum"
            delivery_limit = 4294967295
        "#,
        );
        assert_eq!(ok.queues[0].message_ttl, Some(u32::MAX));
        assert_eq!(ok.queues[0].max_length, Some(1));
        assert_eq!(ok.queues[0].max_priority, Some(255));
        assert_eq!(ok.queues[1].max_priority, Some(1));
        assert_eq!(ok.queues[2].delivery_limit, Some(u32::MAX));

        assert_eq!(
            errors(
                r#"
                [queue_defaults]
                max_length = 0

                [[queues]]
                name = "a"
                max_priority = 0

                [[queues]]
                name = "b"
                max_priority = 256
                message_ttl = -1

                [[queues]]
                name = "c"
                type = "quorum"
                delivery_limit = 0
                max_length = 4294967296
            "#
            ),
            vec![
                format!("queue_defaults.max_length: {RANGE}, got 0"),
                "queues[0].max_priority: must be between 1 and 255, got 0".to_owned(),
                format!("queues[1].message_ttl: {RANGE}, got -1"),
                "queues[1].max_priority: must be between 1 and 255, got 256".to_owned(),
                format!("queues[2].max_length: {RANGE}, got 4294967296"),
                format!("queues[2].delivery_limit: {RANGE}, got 0"),
            ]
        );
    }

    #[test]
    fn unknown_queue_type_and_overflow_are_reported() {
        assert_eq!(
            errors(
                r#"
                [queue_defaults]
                type = "stream"

                [[queues]]
                name = "a"
                type = "Quorum"
                overflow = "reject"
            "#
            ),
            vec![
                "queue_defaults.type: unknown queue type `stream` (expected classic or quorum)",
                "queues[0].overflow: unknown overflow `reject` (expected drop-head, reject-publish or reject-publish-dlx)",
                "queues[0].type: unknown queue type `Quorum` (expected classic or quorum)",
            ]
        );
    }

    #[test]
    fn quorum_rules_are_reported_where_the_conflict_is_written() {
        let text = r#"
            [queue_defaults]
            type = "quorum"
            durable = false
            dead_letter_exchange = "dlx"

            [dead_letter_queues]

            [[exchanges]]
            name = "dlx"
            type = "direct"

            # Overrides durable, but sets auto_delete.
            [[queues]]
            name = "a"
            durable = true
            auto_delete = true

            # Quorum queues ignore reject-publish-dlx.
            [[queues]]
            name = "b"
            durable = true
            overflow = "reject-publish-dlx"

            # Classic by choice: no delivery_limit.
            [[queues]]
            name = "c"
            type = "classic"
            delivery_limit = 5

            # Inherits the defaults' conflict, already reported once at queue_defaults.durable.
            [[queues]]
            name = "d"

            # Valid quorum queue.
            [[queues]]
            name = "e"
            durable = true
            delivery_limit = 5
        "#;
        assert_eq!(
            errors(text),
            vec![
                "queue_defaults.durable: quorum queues must be durable",
                "queues[0].auto_delete: quorum queues cannot be auto_delete",
                "queues[1].overflow: quorum queues do not support overflow `reject-publish-dlx` (use drop-head or reject-publish)",
                "queues[2].delivery_limit: delivery_limit only applies to quorum queues (set type = \"quorum\")",
            ]
        );

        // A queue that chooses quorum against classic-only defaults is told at its `type`.
        assert_eq!(
            errors(
                r#"
                [queue_defaults]
                durable = false
                auto_delete = true

                [[queues]]
                name = "a"
                type = "quorum"
            "#
            ),
            vec![
                "queues[0].type: quorum queues must be durable (queue_defaults.durable is false; set durable = true)",
                "queues[0].type: quorum queues cannot be auto_delete (queue_defaults.auto_delete is true; set auto_delete = false)",
            ]
        );
    }

    #[test]
    fn reject_publish_dlx_needs_a_dead_letter_exchange() {
        assert_eq!(
            errors(
                r#"
                [queue_defaults]
                overflow = "reject-publish-dlx"
                dead_letter_exchange = "dlx"

                [dead_letter_queues]

                [[exchanges]]
                name = "dlx"
                type = "direct"

                [[queues]]
                name = "a"

                [[queues]]
                name = "b"
                dead_letter_exchange = ""
            "#
            ),
            vec![
                "queues[1].dead_letter_exchange: overflow `reject-publish-dlx` dead-letters rejected messages, but this queue has no dead-letter exchange",
            ]
        );
        assert_eq!(
            errors(
                r#"
                [queue_defaults]
                overflow = "reject-publish-dlx"
            "#
            ),
            vec![
                "queue_defaults.overflow: overflow `reject-publish-dlx` dead-letters rejected messages, but this queue has no dead-letter exchange",
            ]
        );
    }

    #[test]
    fn dead_letter_exchange_must_be_declared_and_direct() {
        let text = r#"
            [queue_defaults]
            dead_letter_exchange = "events"

            [dead_letter_queues]

            [[exchanges]]
            name = "events"
            type = "topic"

            [[exchanges]]
            name = "dlx"
            type = "direct"

            [[queues]]
            name = "a"

            [[queues]]
            name = "b"
            dead_letter_exchange = "dlx"

            [[queues]]
            name = "c"
            dead_letter_exchange = "nowhere"
        "#;
        assert_eq!(
            errors(text),
            vec![
                "queue_defaults.dead_letter_exchange: dead-letter exchange `events` is a topic exchange; it must be direct, because dead-letter queues are bound by their source queue's name",
                "queues[2].dead_letter_exchange: exchange `nowhere` is not declared in [[exchanges]] (missing DLX: declare it with type = \"direct\")",
            ]
        );
    }

    #[test]
    fn dead_lettering_requires_the_dead_letter_queues_section() {
        let text = r#"
            [queue_defaults]
            dead_letter_exchange = "dlx"

            [[exchanges]]
            name = "dlx"
            type = "direct"

            [[queues]]
            name = "quiet"
            dead_letter_exchange = ""

            [[queues]]
            name = "a"

            [[queues]]
            name = "b"

            [[queues]]
            name = "c"
        "#;
        assert_eq!(
            errors(text),
            vec![
                "dead_letter_queues: section missing: queues[1] (`a`) and 2 other queues dead-letter, so [dead_letter_queues] must say how their dead-letter queues are named",
            ]
        );
        // Nobody dead-letters: the section is not needed.
        valid(
            r#"
            [[queues]]
            name = "a"
        "#,
        );
    }

    #[test]
    fn dead_letter_queues_section_is_checked() {
        assert_eq!(
            errors(
                r#"
                [dead_letter_queues]
                suffix = "/dead"
                message_ttl = 0
            "#
            ),
            vec![
                "dead_letter_queues.suffix: contains '/' (allowed: ASCII letters, digits, `_`, `.`, `-`, `:`)"
                    .to_owned(),
                format!("dead_letter_queues.message_ttl: {RANGE}, got 0"),
            ]
        );
    }

    #[test]
    fn derived_dead_letter_queues_must_not_collide() {
        let long = "q".repeat(252);
        let text = format!(
            r#"
            [queue_defaults]
            dead_letter_exchange = "dlx"

            [dead_letter_queues]
            suffix = ".dlq"

            [[exchanges]]
            name = "dlx"
            type = "direct"
            internal = true

            [[queues]]
            name = "orders"

            [[queues]]
            name = "orders.dlq"
            dead_letter_exchange = ""

            [[queues]]
            name = "{long}"

            # Already derived from `orders`.
            [[bindings]]
            exchange = "dlx"
            queue = "orders.dlq"
            routing_key = "orders"
        "#
        );
        assert_eq!(
            errors(&text),
            vec![
                "queues[1].name: duplicate queue `orders.dlq`: it is also the dead-letter queue derived from queues[0] (`orders`)".to_owned(),
                "bindings[0]: duplicates the binding derived for dead-letter queue `orders.dlq`: remove it".to_owned(),
                format!("queues[2].name: its dead-letter queue name `{long}.dlq` would be 256 bytes long; names are limited to 255 bytes"),
            ]
        );
    }

    #[test]
    fn bindings_are_checked_against_their_exchange_type() {
        let long_key = "k".repeat(256);
        let text = format!(
            r#"
            [[exchanges]]
            name = "fan"
            type = "fanout"

            [[exchanges]]
            name = "exact"
            type = "direct"

            [[exchanges]]
            name = "topics"
            type = "topic"

            [[queues]]
            name = "q"

            [[bindings]]
            exchange = "fan"
            queue = "q"
            routing_key = "orders.#"

            [[bindings]]
            exchange = "exact"
            queue = "q"
            routing_key = "orders.*"

            [[bindings]]
            exchange = "topics"
            queue = "q"
            routing_key = "{long_key}"

            [[bindings]]
            exchange = ""
            queue = ""

            # Valid: same exchange and queue, another key.
            [[bindings]]
            exchange = "topics"
            queue = "q"
            routing_key = "a.*"

            [[bindings]]
            exchange = "topics"
            queue = "q"
            routing_key = "b.#"
        "#
        );
        assert_eq!(
            errors(&text),
            vec![
                "bindings[0].routing_key: fanout exchange `fan` ignores routing keys: leave routing_key out",
                "bindings[1].routing_key: direct exchange `exact` matches routing keys exactly: `orders.*` is not a pattern there (use a topic exchange)",
                "bindings[2].routing_key: is 256 bytes long; routing keys are limited to 255 bytes",
                "bindings[3].exchange: must not be empty (the default exchange cannot be bound)",
                "bindings[3].queue: must not be empty",
            ]
        );
    }

    #[test]
    fn rate_limits_are_checked_and_burst_defaults_to_the_rate() {
        let text = r#"
            [[exchanges]]
            name = "orders_exchange"
            type = "topic"

            [[exchanges]]
            name = "dlx"
            type = "direct"
            internal = true

            [[rate_limits]]
            exchange = "orders_exchange"
            per_second = 100

            [[rate_limits]]
            client = "shop"
            per_second = 5
            burst = 20

            [[rate_limits]]
            exchange = "orders_exchange"
            client = "shop"
            per_second = 1
            burst = 1
        "#;
        assert_eq!(
            valid(text).rate_limits,
            vec![
                RateLimit {
                    exchange: Some("orders_exchange".to_owned()),
                    client: None,
                    per_second: 100,
                    burst: 100,
                },
                RateLimit {
                    exchange: None,
                    client: Some("shop".to_owned()),
                    per_second: 5,
                    burst: 20,
                },
                RateLimit {
                    exchange: Some("orders_exchange".to_owned()),
                    client: Some("shop".to_owned()),
                    per_second: 1,
                    burst: 1,
                },
            ]
        );

        let bad = format!(
            "{text}{}",
            r#"
            [[rate_limits]]
            client = "shop"
            per_second = 7

            [[rate_limits]]
            exchange = "dlx"
            client = "  "
            per_second = 4294967296
            burst = 0

            [[rate_limits]]
            exchange = ""
            per_second = 1
        "#
        );
        assert_eq!(
            errors(&bad),
            vec![
                "rate_limits[3]: duplicate of rate_limits[1] (same exchange and client)".to_owned(),
                "rate_limits[4].exchange: exchange `dlx` is internal: the API never publishes to it, so the limit would never apply".to_owned(),
                "rate_limits[4].client: must not be empty".to_owned(),
                format!("rate_limits[4].per_second: {RANGE}, got 4294967296"),
                format!("rate_limits[4].burst: {RANGE}, got 0"),
                "rate_limits[5].exchange: must not be empty".to_owned(),
            ]
        );
    }

    #[test]
    fn defaults_apply_and_queues_override_them() {
        let topology = valid(
            r#"
            [queue_defaults]
            durable = true
            auto_delete = false
            message_ttl = 1000
            max_length = 10
            overflow = "reject-publish"
            dead_letter_exchange = "dlx"

            [dead_letter_queues]

            [[exchanges]]
            name = "dlx"
            type = "direct"

            [[exchanges]]
            name = "other_dlx"
            type = "direct"

            [[queues]]
            name = "plain"

            [[queues]]
            name = "custom"
            durable = false
            auto_delete = true
            message_ttl = 5
            max_length = 7
            overflow = "drop-head"
            dead_letter_exchange = "other_dlx"
            max_priority = 10

            [[queues]]
            name = "replicated"
            type = "quorum"
            delivery_limit = 3
        "#,
        );
        let service: Vec<&Queue> = topology.queues.iter().filter(|q| !q.is_dead_letter()).collect();
        assert_eq!(
            service,
            vec![
                &Queue {
                    name: "plain".to_owned(),
                    durable: true,
                    auto_delete: false,
                    queue_type: QueueType::Classic,
                    message_ttl: Some(1000),
                    max_length: Some(10),
                    overflow: Some(Overflow::RejectPublish),
                    dead_letter_exchange: Some("dlx".to_owned()),
                    max_priority: None,
                    delivery_limit: None,
                    role: QueueRole::Service,
                },
                &Queue {
                    name: "custom".to_owned(),
                    durable: false,
                    auto_delete: true,
                    queue_type: QueueType::Classic,
                    message_ttl: Some(5),
                    max_length: Some(7),
                    overflow: Some(Overflow::DropHead),
                    dead_letter_exchange: Some("other_dlx".to_owned()),
                    max_priority: Some(10),
                    delivery_limit: None,
                    role: QueueRole::Service,
                },
                &Queue {
                    name: "replicated".to_owned(),
                    durable: true,
                    auto_delete: false,
                    queue_type: QueueType::Quorum,
                    message_ttl: Some(1000),
                    max_length: Some(10),
                    overflow: Some(Overflow::RejectPublish),
                    dead_letter_exchange: Some("dlx".to_owned()),
                    max_priority: None,
                    delivery_limit: Some(3),
                    role: QueueRole::Service,
                },
            ]
        );
    }

    #[test]
    fn dead_letter_queues_are_derived_with_their_bindings() {
        let topology = valid(
            r#"
            [queue_defaults]
            message_ttl = 1000
            max_length = 10
            overflow = "reject-publish"
            dead_letter_exchange = "dlx"

            [dead_letter_queues]
            suffix = "-dead"
            message_ttl = 9000
            durable = false

            [[exchanges]]
            name = "dlx"
            type = "direct"
            internal = true

            [[exchanges]]
            name = "orders_exchange"
            type = "topic"

            [[queues]]
            name = "orders"
            type = "quorum"

            [[queues]]
            name = "audit"
            max_priority = 3

            [[bindings]]
            exchange = "orders_exchange"
            queue = "orders"
            routing_key = "orders.#"
        "#,
        );
        let dlq = |name: &str, source: &str| Queue {
            name: name.to_owned(),
            durable: false,
            auto_delete: false,
            queue_type: QueueType::Classic,
            message_ttl: Some(9000),
            max_length: None,
            overflow: None,
            dead_letter_exchange: None,
            max_priority: None,
            delivery_limit: None,
            role: QueueRole::DeadLetter {
                source_queue: source.to_owned(),
            },
        };
        let names: Vec<&str> = topology.queues.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(names, vec!["orders", "audit", "orders-dead", "audit-dead"]);
        assert_eq!(topology.queues[2], dlq("orders-dead", "orders"));
        assert_eq!(topology.queues[3], dlq("audit-dead", "audit"));
        let binding = |exchange: &str, queue: &str, key: &str| Binding {
            exchange: exchange.to_owned(),
            queue: queue.to_owned(),
            routing_key: key.to_owned(),
        };
        assert_eq!(
            topology.bindings,
            vec![
                binding("orders_exchange", "orders", "orders.#"),
                binding("dlx", "orders-dead", "orders"),
                binding("dlx", "audit-dead", "audit"),
            ]
        );
        // The source queue dead-letters with its own name: the derived binding catches it.
        assert!(
            topology.queues[0]
                .arguments()
                .contains(&("x-dead-letter-routing-key", ArgValue::Str("orders".to_owned())))
        );
        assert_eq!(topology.dead_letter_queues().count(), 2);
    }

    #[test]
    fn empty_dead_letter_exchange_disables_dead_lettering() {
        let topology = valid(
            r#"
            [queue_defaults]
            dead_letter_exchange = "dlx"

            [dead_letter_queues]

            [[exchanges]]
            name = "dlx"
            type = "direct"

            [[queues]]
            name = "kept"

            [[queues]]
            name = "fire_and_forget"
            dead_letter_exchange = ""
        "#,
        );
        let names: Vec<&str> = topology.queues.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(names, vec!["kept", "fire_and_forget", "kept.dlq"]);
        assert_eq!(topology.queue("fire_and_forget").unwrap().dead_letter_exchange, None);
        assert!(
            !topology
                .queue("fire_and_forget")
                .unwrap()
                .arguments()
                .iter()
                .any(|(name, _)| name.starts_with("x-dead-letter"))
        );
        assert_eq!(topology.bindings.len(), 1);

        // `""` in the defaults: nobody dead-letters unless a queue says so, and no section needed.
        let topology = valid(
            r#"
            [queue_defaults]
            dead_letter_exchange = ""

            [[queues]]
            name = "a"
        "#,
        );
        assert_eq!(topology.queues.len(), 1);
        assert_eq!(topology.queues[0].dead_letter_exchange, None);
    }

    #[test]
    fn a_binding_may_target_a_derived_dead_letter_queue() {
        let topology = valid(
            r#"
            [queue_defaults]
            dead_letter_exchange = "dlx"

            [dead_letter_queues]

            [[exchanges]]
            name = "dlx"
            type = "direct"

            [[exchanges]]
            name = "audit"
            type = "fanout"

            [[queues]]
            name = "orders"

            [[bindings]]
            exchange = "audit"
            queue = "orders.dlq"
        "#,
        );
        assert_eq!(topology.bindings.len(), 2);
    }

    #[test]
    fn parse_errors_report_line_and_column() {
        let err = parse("[[exchanges]]\nname = \"x\"\ntype = = \"topic\"\n").unwrap_err();
        assert_eq!(err.path, "line 3, column 8");
        assert_eq!(err.reason, "extra `=`, expected nothing");

        // Wrong value type: still a position, and the reason names the problem.
        let err = parse("[queue_defaults]\nmessage_ttl = \"1 day\"\n").unwrap_err();
        assert_eq!(err.path, "line 2, column 15");
        assert_eq!(err.reason, "invalid type: string \"1 day\", expected i64");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = parse("[[queues]]\nname = \"a\"\nttl = 5\n").unwrap_err();
        assert_eq!(err.path, "line 3, column 1");
        assert!(err.reason.starts_with("unknown field `ttl`"), "{err:?}");

        let err = parse("[queue_default]\ndurable = true\n").unwrap_err();
        assert_eq!(err.path, "line 1, column 2");
        assert!(err.reason.starts_with("unknown field `queue_default`"), "{err:?}");
    }

    #[test]
    fn load_reports_a_missing_file_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.toml");
        let errs = load(&path).unwrap_err();
        assert_eq!(
            errs,
            vec![TopologyError::new(
                path.display().to_string(),
                "cannot read topology file: No such file or directory (set TOPOLOGY_FILE or pass the file path)",
            )]
        );
    }

    #[test]
    fn load_parses_and_validates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("topology.toml");

        std::fs::write(&path, "[[exchanges]]\nname = \"x\"\n").unwrap();
        let errs = load(&path).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "line 1, column 1");
        assert!(errs[0].reason.contains("missing field `type`"), "{errs:?}");

        std::fs::write(&path, "[[exchanges]]\nname = \"x\"\ntype = \"odd\"\n").unwrap();
        assert_eq!(
            load(&path).unwrap_err(),
            vec![TopologyError::new(
                "exchanges[0].type",
                "unknown exchange type `odd` (expected direct, topic, fanout or headers)"
            )]
        );

        std::fs::write(&path, "[[exchanges]]\nname = \"x\"\ntype = \"topic\"\n").unwrap();
        assert_eq!(load(&path).unwrap().exchanges.len(), 1);
    }

    const SERVICES: [&str; 11] = [
        "auth",
        "products",
        "baskets",
        "orders",
        "addresses",
        "deliveries",
        "newsletters",
        "sav",
        "contacts",
        "questions",
        "websites",
    ];

    #[test]
    fn the_repository_topology_is_valid_and_complete() {
        let topology = valid(include_str!("../../topology.toml"));

        // 11 service exchanges, the dead-letter exchange, the broadcast fanout.
        assert_eq!(topology.exchanges.len(), 13);
        for svc in SERVICES {
            let exchange = topology.exchange(&format!("{svc}_exchange")).unwrap();
            assert_eq!(exchange.kind, ExchangeKind::Topic);
            assert!(exchange.durable && !exchange.internal);
        }
        let dlx = topology.exchange("dead_letters_exchange").unwrap();
        assert_eq!((dlx.kind, dlx.internal), (ExchangeKind::Direct, true));
        assert_eq!(topology.exchange("platform_events").unwrap().kind, ExchangeKind::Fanout);

        // 11 service queues with the standard parameters, then their 11 dead-letter queues.
        assert_eq!(topology.queues.len(), 22);
        for (i, svc) in SERVICES.iter().enumerate() {
            let queue = &topology.queues[i];
            assert_eq!(
                queue,
                &Queue {
                    name: format!("{svc}_queue"),
                    durable: true,
                    auto_delete: false,
                    queue_type: QueueType::Classic,
                    message_ttl: Some(86_400_000),
                    max_length: Some(10_000),
                    overflow: Some(Overflow::RejectPublish),
                    dead_letter_exchange: Some("dead_letters_exchange".to_owned()),
                    max_priority: None,
                    delivery_limit: None,
                    role: QueueRole::Service,
                }
            );
            let dlq = &topology.queues[11 + i];
            assert_eq!(dlq.name, format!("{svc}_queue.dlq"));
            assert_eq!(dlq.message_ttl, Some(604_800_000));
            assert!(dlq.durable);
            assert_eq!(
                dlq.role,
                QueueRole::DeadLetter {
                    source_queue: format!("{svc}_queue")
                }
            );
        }

        // Service bindings, broadcast bindings, then one dead-letter binding per queue.
        let has = |exchange: &str, queue: &str, key: &str| {
            topology.bindings.contains(&Binding {
                exchange: exchange.to_owned(),
                queue: queue.to_owned(),
                routing_key: key.to_owned(),
            })
        };
        assert_eq!(topology.bindings.len(), 11 + 3 + 11);
        for svc in SERVICES {
            let queue = format!("{svc}_queue");
            assert!(has(&format!("{svc}_exchange"), &queue, &format!("{svc}.#")));
            assert!(has("dead_letters_exchange", &format!("{queue}.dlq"), &queue));
        }
        for queue in ["newsletters_queue", "websites_queue", "sav_queue"] {
            assert!(has("platform_events", queue, ""));
        }

        assert_eq!(
            topology.rate_limits,
            vec![
                RateLimit {
                    exchange: Some("orders_exchange".to_owned()),
                    client: None,
                    per_second: 2000,
                    burst: 4000,
                },
                RateLimit {
                    exchange: None,
                    client: Some("newsletters-service".to_owned()),
                    per_second: 200,
                    burst: 400,
                },
            ]
        );
    }
}
