//! The validator's unit tests: each bad input with the exact list of errors it must produce.

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
            "dead_letter_queues.suffix: contains '/' (allowed: ASCII letters, digits, `_`, `.`, `-`, `:`)".to_owned(),
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
    let topology = valid(include_str!("../../../topology.toml"));

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

/// Two exchanges (topic and fanout) and one dead-lettering queue, then `users`.
fn with_users(users: &str) -> String {
    format!(
        r#"
            [queue_defaults]
            dead_letter_exchange = "dlx"

            [dead_letter_queues]

            [[exchanges]]
            name = "orders_exchange"
            type = "topic"

            [[exchanges]]
            name = "events"
            type = "fanout"

            [[exchanges]]
            name = "dlx"
            type = "direct"

            [[queues]]
            name = "orders_queue"
            {users}
        "#
    )
}

#[test]
fn users_resolve_with_their_password_source_and_sorted_topic_permissions() {
    let topology = valid(&with_users(
        r#"
            [[users]]
            name = "orders-service"
            password_env = "RABBITMQ_PASSWORD_ORDERS"
            tags = ["monitoring"]
            write = "^(orders_exchange|events)$"
            read = '^orders_queue(\.dlq)?$'

            [[users.topic_permissions]]
            exchange = "orders_exchange"
            write = '^orders\..*'

            [[users]]
            name = "reader"
            password_file = "/run/secrets/reader"
            configure = ""
            read = ".*"

            [[users]]
            name = "hashed"
            password_hash = "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXo="
            hashing_algorithm = "rabbit_password_hashing_sha512"
        "#,
    ));
    let names: Vec<&str> = topology.users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["orders-service", "reader", "hashed"]);
    let orders = &topology.users[0];
    assert_eq!(orders.password, PasswordSource::Env("RABBITMQ_PASSWORD_ORDERS".into()));
    assert_eq!(orders.tags, ["monitoring"]);
    assert_eq!(orders.permissions.configure, "");
    assert_eq!(
        orders.topic_permissions,
        [TopicPermission {
            exchange: "orders_exchange".into(),
            write: r"^orders\..*".into(),
            read: ".*".into(),
        }]
    );
    assert_eq!(
        topology.users[1].password,
        PasswordSource::File("/run/secrets/reader".into())
    );
    assert_eq!(
        topology.users[2].password,
        PasswordSource::Hash {
            hash: "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXo=".into(),
            algorithm: "rabbit_password_hashing_sha512".into(),
        }
    );
}

#[test]
fn bad_users_are_all_reported_with_their_paths() {
    let errors = errors(&with_users(
        r#"
            [[users]]
            name = "orders-service"
            password_env = "1BAD-NAME"
            hashing_algorithm = "rabbit_password_hashing_sha256"
            tags = ["", "a,b"]
            configure = "(unclosed"
            write = "^order_exchange$"
            read = "^orders_queue.dlq$"

            [[users.topic_permissions]]
            exchange = "events"
            write = "["

            [[users.topic_permissions]]
            exchange = "ghost"
            write = ""

            [[users.topic_permissions]]
            exchange = "events"
            write = ".*"

            [[users]]
            name = "orders-service"

            [[users]]
            name = ""
            password_env = "A"
            password_file = "/x"
            password_hash = "not base64!"
            hashing_algorithm = "md5"
        "#,
    ));
    assert_eq!(
        errors,
        vec![
            "users[0].hashing_algorithm: only applies with password_hash",
            "users[0].password_env: `1BAD-NAME` is not an environment variable name (ASCII letters, digits, `_`, not starting with a digit)",
            "users[0].tags[0]: `` must be one non-empty tag without `,`",
            "users[0].tags[1]: `a,b` must be one non-empty tag without `,`",
            "users[0].configure: `(unclosed` is not a valid regex: unclosed group",
            "users[0].write: `^order_exchange$` matches no exchange or queue of this topology (`\"\"` grants nothing)",
            "users[0].topic_permissions[0].exchange: `events` is a fanout exchange; RabbitMQ checks topic permissions on topic exchanges only",
            "users[0].topic_permissions[0].write: `[` is not a valid regex: unclosed character class",
            "users[0].topic_permissions[1].exchange: exchange `ghost` is not declared in [[exchanges]]",
            "users[0].topic_permissions[1].write: must not be empty: write `^$` to allow no routing key, `.*` to allow any",
            "users[0].topic_permissions[2].exchange: `events` is a fanout exchange; RabbitMQ checks topic permissions on topic exchanges only",
            "users[0].topic_permissions[2].exchange: duplicate topic permission on `events` (first at users[0].topic_permissions[0])",
            "users[1].name: duplicate user `orders-service` (first declared at users[0])",
            "users[1]: set exactly one of password_env, password_file or password_hash (none is set); the password itself never goes in this file",
            "users[2].name: must not be empty",
            "users[2]: set exactly one of password_env, password_file or password_hash (password_env and password_file and password_hash are set); the password itself never goes in this file",
            "users[2].hashing_algorithm: unknown algorithm `md5` (expected rabbit_password_hashing_sha256, rabbit_password_hashing_sha512, rabbit_password_hashing_md5)",
            "users[2].password_hash: is not a RabbitMQ password hash (base64 of a 4-byte salt and the digest, as `rabbitmqctl hash_password` prints it)",
        ]
    );
}

#[test]
fn empty_and_catch_all_permissions_are_valid() {
    let topology = valid(&with_users(
        r#"
            [[users]]
            name = "nobody"
            password_env = "P"
            configure = ""
            write = ""
            read = ""

            [[users]]
            name = "everything"
            password_env = "P"
            configure = ".*"
            write = ".*"
            read = ".*"
        "#,
    ));
    assert_eq!(topology.users.len(), 2);
    assert_eq!(topology.users[0].permissions, Permissions::default());
}
