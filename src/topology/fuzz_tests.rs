//! Property test of the topology parser and validator (issue 6, hostile input): whatever the text,
//! `parse` then `validate` return instead of panicking, a refusal always says where and what (a
//! non-empty error list, each entry with a path and a reason), and a topology they accept is one
//! the broker can be given (plain names, every reference declared, every limit at least 1).
//!
//! No fuzzing crate: `fastrand` with fixed seeds, so any failure replays exactly. Every case has
//! its own seed, printed on failure; replay one with `TOPOLOGY_FUZZ_CASE=<seed>`. Explore beyond
//! the fixed run with `TOPOLOGY_FUZZ_SEED=<base seed>` and `TOPOLOGY_FUZZ_CASES=<count>`.
//!
//! The inputs come from four generators, drawn per case: random bytes (lossy UTF-8), a soup of
//! TOML tokens, mutations of the shipped `topology.toml`, and topologies built at random from a
//! pool of good and bad names and numbers (the one that reaches the validator's cross checks).

use std::fmt::Write as _;
use std::panic::{self, AssertUnwindSafe};

use fastrand::Rng;

use super::validate::is_plain_name;
use super::{ExchangeKind, QueueRole, Topology, TopologyError, parse, validate};

/// The real file: mutating it keeps most inputs close to valid, where the validator does its work.
const REAL: &str = include_str!("../../topology.toml");

/// Base seed of the fixed run; any value works, this one only has to stay put.
const BASE_SEED: u64 = 0x6d62_746f_706f_6675;

/// Enough to cover every generator many times and stay within ~2 s in a debug build.
const CASES: u64 = 2_000;

/// How many failures the report spells out (the count covers them all).
const REPORTED: usize = 5;

#[derive(Debug, Clone, Copy)]
enum Generator {
    Bytes,
    TokenSoup,
    MutatedReal,
    Built,
}

/// A case's seed: spread so that neighbouring cases share nothing.
fn case_seed(base: u64, index: u64) -> u64 {
    let mut z = base.wrapping_add(index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Everything about a case comes from its seed, the generator included, so the seed replays it.
fn generate(seed: u64) -> (Generator, String) {
    let mut rng = Rng::with_seed(seed);
    let generator = match rng.u8(0..10) {
        0 | 1 => Generator::Bytes,
        2 | 3 => Generator::TokenSoup,
        4..=6 => Generator::MutatedReal,
        _ => Generator::Built,
    };
    let text = match generator {
        Generator::Bytes => random_bytes(&mut rng),
        Generator::TokenSoup => token_soup(&mut rng),
        Generator::MutatedReal => mutated_real(&mut rng),
        Generator::Built => built(&mut rng),
    };
    (generator, text)
}

// ---------------------------------------------------------------------------------------------
// Generators.

fn random_bytes(rng: &mut Rng) -> String {
    let len = match rng.u8(0..4) {
        0 => rng.usize(0..8),
        1 | 2 => rng.usize(0..256),
        _ => rng.usize(256..4096),
    };
    let mut bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
    // Half of them start like the real file: the parser then fails deeper than on byte one.
    if rng.bool() {
        let cut = char_boundary(REAL, rng.usize(0..=REAL.len()));
        let mut prefixed = REAL.as_bytes()[..cut].to_vec();
        prefixed.append(&mut bytes);
        bytes = prefixed;
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

const TOKENS: &[&str] = &[
    "[",
    "]",
    "[[",
    "]]",
    "{",
    "}",
    "=",
    ",",
    ".",
    "\"",
    "'",
    "\"\"\"",
    "'''",
    "\n",
    "\r\n",
    "\r",
    " ",
    "\t",
    "#",
    "\\",
    "\\u0000",
    "\\uD800",
    "\\U0010FFFF",
    "\\x",
    "\u{0}",
    "\u{feff}",
    "\u{202e}",
    "é",
    "🦀",
    "name",
    "type",
    "queues",
    "exchanges",
    "bindings",
    "rate_limits",
    "queue_defaults",
    "dead_letter_queues",
    "message_ttl",
    "max_length",
    "overflow",
    "suffix",
    "per_second",
    "burst",
    "true",
    "false",
    "inf",
    "-inf",
    "nan",
    "+nan",
    "0",
    "-1",
    "1_000",
    "0x7f",
    "0o17",
    "0b1",
    "1e400",
    "9223372036854775808",
    "1979-05-27T07:32:00Z",
    "07:32:00",
    "1979-05-27",
    "\"orders_queue\"",
    "\"amq.x\"",
    "\"\"",
];

fn token_soup(rng: &mut Rng) -> String {
    let count = rng.usize(0..200);
    let mut text = String::new();
    for _ in 0..count {
        text.push_str(TOKENS[rng.usize(..TOKENS.len())]);
    }
    text
}

fn mutated_real(rng: &mut Rng) -> String {
    let mut lines: Vec<String> = REAL.lines().map(str::to_owned).collect();
    for _ in 0..rng.usize(1..=6) {
        if lines.is_empty() {
            lines.push(String::new());
        }
        let at = rng.usize(..lines.len());
        match rng.u8(0..9) {
            0 => {
                lines.remove(at);
            }
            1 => {
                let line = lines[at].clone();
                lines.insert(at, line);
            }
            2 => {
                let other = rng.usize(..lines.len());
                lines.swap(at, other);
            }
            3 => lines[at] = flip_char(rng, &lines[at]),
            4 => {
                let line = format!("{} = {}", key(rng), value(rng));
                lines.insert(at, line);
            }
            5 => {
                // Another value for an existing key: most lines of the file are `key = value`.
                if let Some(eq) = lines[at].find(" = ") {
                    lines[at] = format!("{} = {}", &lines[at][..eq], value(rng));
                }
            }
            6 => lines.insert(at, section_header(rng).to_owned()),
            7 => {
                let block = random_block(rng);
                lines.insert(at, block);
            }
            _ => {
                let joined = lines.join("\n");
                let cut = char_boundary(&joined, rng.usize(0..=joined.len()));
                lines = joined[..cut].lines().map(str::to_owned).collect();
            }
        }
    }
    lines.join("\n")
}

/// A topology of the right shape with random names, references and numbers.
fn built(rng: &mut Rng) -> String {
    let mut text = String::new();
    if rng.u8(0..4) != 0 {
        text.push_str("[queue_defaults]\n");
        for field in ["durable", "auto_delete"] {
            if rng.bool() {
                let _ = writeln!(text, "{field} = {}", rng.bool());
            }
        }
        for field in ["message_ttl", "max_length"] {
            if rng.bool() {
                let _ = writeln!(text, "{field} = {}", number(rng));
            }
        }
        if rng.bool() {
            let _ = writeln!(text, "overflow = {}", quoted(overflow(rng)));
        }
        if rng.bool() {
            let _ = writeln!(text, "dead_letter_exchange = {}", quoted(&name(rng)));
        }
        if rng.bool() {
            let _ = writeln!(text, "type = {}", quoted(queue_type(rng)));
        }
    }
    if rng.u8(0..4) != 0 {
        text.push_str("[dead_letter_queues]\n");
        if rng.bool() {
            let suffix = match rng.u8(0..6) {
                0 => String::new(),
                1 => "/dlq".to_owned(),
                2 => "x".repeat(rng.usize(250..300)),
                _ => ".dlq".to_owned(),
            };
            let _ = writeln!(text, "suffix = {}", quoted(&suffix));
        }
        if rng.bool() {
            let _ = writeln!(text, "message_ttl = {}", number(rng));
        }
        if rng.bool() {
            let _ = writeln!(text, "durable = {}", rng.bool());
        }
    }
    for _ in 0..rng.usize(0..6) {
        text.push_str("[[exchanges]]\n");
        let _ = writeln!(text, "name = {}", quoted(&name(rng)));
        let _ = writeln!(text, "type = {}", quoted(exchange_type(rng)));
        for field in ["durable", "auto_delete", "internal"] {
            if rng.u8(0..3) == 0 {
                let _ = writeln!(text, "{field} = {}", rng.bool());
            }
        }
    }
    for _ in 0..rng.usize(0..6) {
        text.push_str("[[queues]]\n");
        let _ = writeln!(text, "name = {}", quoted(&name(rng)));
        for field in ["durable", "auto_delete"] {
            if rng.u8(0..3) == 0 {
                let _ = writeln!(text, "{field} = {}", rng.bool());
            }
        }
        for field in ["message_ttl", "max_length", "max_priority", "delivery_limit"] {
            if rng.u8(0..3) == 0 {
                let _ = writeln!(text, "{field} = {}", number(rng));
            }
        }
        if rng.u8(0..3) == 0 {
            let _ = writeln!(text, "overflow = {}", quoted(overflow(rng)));
        }
        if rng.u8(0..3) == 0 {
            let _ = writeln!(text, "type = {}", quoted(queue_type(rng)));
        }
        if rng.u8(0..3) == 0 {
            let dlx = if rng.bool() { String::new() } else { name(rng) };
            let _ = writeln!(text, "dead_letter_exchange = {}", quoted(&dlx));
        }
    }
    for _ in 0..rng.usize(0..6) {
        text.push_str("[[bindings]]\n");
        let _ = writeln!(text, "exchange = {}", quoted(&name(rng)));
        let _ = writeln!(text, "queue = {}", quoted(&name(rng)));
        if rng.bool() {
            let _ = writeln!(text, "routing_key = {}", quoted(&routing_key(rng)));
        }
    }
    for _ in 0..rng.usize(0..4) {
        text.push_str("[[rate_limits]]\n");
        if rng.bool() {
            let _ = writeln!(text, "exchange = {}", quoted(&name(rng)));
        }
        if rng.bool() {
            let client = if rng.bool() { " ".to_owned() } else { name(rng) };
            let _ = writeln!(text, "client = {}", quoted(&client));
        }
        let _ = writeln!(text, "per_second = {}", number(rng));
        if rng.bool() {
            let _ = writeln!(text, "burst = {}", number(rng));
        }
    }
    text
}

// ---------------------------------------------------------------------------------------------
// Pieces.

/// A small pool, so that references hit declarations (and collide) often; plus bad ones.
fn name(rng: &mut Rng) -> String {
    const GOOD: &[&str] = &[
        "orders_exchange",
        "orders_queue",
        "orders_queue.dlq",
        "dlx",
        "events",
        "a",
        "a:b-c.d",
    ];
    match rng.u8(0..40) {
        0..=2 => String::new(),
        3..=5 => "amq.gen-x".to_owned(),
        6..=8 => "bad name/with ../slash".to_owned(),
        9..=11 => "é🦀\u{0}".to_owned(),
        12..=14 => "q".repeat(rng.usize(250..260)),
        // Rare: long strings are what a debug build parses slowest.
        15 => "q".repeat(10_000),
        _ => GOOD[rng.usize(..GOOD.len())].to_owned(),
    }
}

fn routing_key(rng: &mut Rng) -> String {
    match rng.u8(0..6) {
        0 => String::new(),
        1 => "orders.#".to_owned(),
        2 => "*.created".to_owned(),
        3 => "k".repeat(rng.usize(250..300)),
        4 => "ünïcødé.#".to_owned(),
        _ => "orders.created".to_owned(),
    }
}

fn exchange_type(rng: &mut Rng) -> &'static str {
    [
        "direct",
        "topic",
        "fanout",
        "headers",
        "",
        "Direct",
        "x-delayed-message",
    ][rng.usize(..7)]
}

fn queue_type(rng: &mut Rng) -> &'static str {
    ["classic", "quorum", "stream", ""][rng.usize(..4)]
}

fn overflow(rng: &mut Rng) -> &'static str {
    ["drop-head", "reject-publish", "reject-publish-dlx", "drop-tail", ""][rng.usize(..5)]
}

/// An integer literal at and around every bound the validator knows.
fn number(rng: &mut Rng) -> String {
    match rng.u8(0..12) {
        0 => "0".to_owned(),
        1 => "-1".to_owned(),
        2 => "255".to_owned(),
        3 => "256".to_owned(),
        4 => u32::MAX.to_string(),
        5 => (u64::from(u32::MAX) + 1).to_string(),
        6 => i64::MAX.to_string(),
        7 => i64::MIN.to_string(),
        8 => rng.i64(..).to_string(),
        _ => rng.u32(1..100_000).to_string(),
    }
}

/// A TOML basic string holding exactly `s` (every control character escaped).
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn key(rng: &mut Rng) -> String {
    const KEYS: &[&str] = &[
        "name",
        "type",
        "durable",
        "auto_delete",
        "internal",
        "message_ttl",
        "max_length",
        "overflow",
        "dead_letter_exchange",
        "max_priority",
        "delivery_limit",
        "suffix",
        "exchange",
        "queue",
        "routing_key",
        "client",
        "per_second",
        "burst",
        "unknown_key",
        "\"quoted key\"",
        "a.b.c",
        "\"\"",
    ];
    match rng.u8(0..10) {
        0 => "k".repeat(rng.usize(200..2_000)),
        // Dotted keys deep enough to meet the parser's recursion limit.
        1 => vec!["k"; rng.usize(1..300)].join("."),
        _ => KEYS[rng.usize(..KEYS.len())].to_owned(),
    }
}

/// Any TOML value, valid or not: bounds, huge numbers, odd strings, deep arrays and tables.
fn value(rng: &mut Rng) -> String {
    match rng.u8(0..16) {
        0 => number(rng),
        1 => [
            "18446744073709551616",
            "99999999999999999999999999",
            "-9223372036854775809",
            "1e400",
            "-0",
            "+0",
            "0x7fffffff",
            "0o777",
            "0b101",
            "1_000",
            "1__0",
            "inf",
            "-inf",
            "nan",
            "3.14",
            "01",
        ][rng.usize(..16)]
        .to_owned(),
        2 => quoted(&name(rng)),
        3 => quoted(&"n".repeat(rng.usize(256..4_000))),
        4 => quoted(&random_unicode(rng)),
        5 => [
            "\"\"",
            "''",
            "\"\"\"\nmulti\nline\"\"\"",
            "'''raw\\n'''",
            "\"bad \\q escape\"",
            "\"unterminated",
        ][rng.usize(..6)]
        .to_owned(),
        6 => rng.bool().to_string(),
        7 => ["1979-05-27T07:32:00Z", "1979-05-27", "07:32:00", "1979-13-45T99:99:99Z"][rng.usize(..4)].to_owned(),
        8 => {
            let depth = rng.usize(1..400);
            format!("{}{}", "[".repeat(depth), "]".repeat(depth))
        }
        9 => {
            let depth = rng.usize(1..400);
            format!("{}1{}", "{ a = ".repeat(depth), " }".repeat(depth))
        }
        10 => format!("[{}, {}]", number(rng), quoted(&name(rng))),
        11 => format!(
            "{{ name = {}, type = {} }}",
            quoted(&name(rng)),
            quoted(exchange_type(rng))
        ),
        12 => String::new(),
        _ => quoted(exchange_type(rng)),
    }
}

fn section_header(rng: &mut Rng) -> &'static str {
    [
        "[queue_defaults]",
        "[dead_letter_queues]",
        "[[exchanges]]",
        "[[queues]]",
        "[[bindings]]",
        "[[rate_limits]]",
        "[[queue_defaults]]",
        "[exchanges]",
        "[unknown_section]",
        "[queues.extra]",
        "[",
        "[[]]",
    ][rng.usize(..12)]
}

fn random_block(rng: &mut Rng) -> String {
    let mut block = section_header(rng).to_owned();
    for _ in 0..rng.usize(0..5) {
        let _ = write!(block, "\n{} = {}", key(rng), value(rng));
    }
    block
}

fn random_unicode(rng: &mut Rng) -> String {
    (0..rng.usize(0..64))
        .map(|_| match rng.u8(0..4) {
            0 => rng.char(..),
            1 => rng.char('\u{0}'..'\u{20}'),
            _ => rng.alphanumeric(),
        })
        .collect()
}

fn flip_char(rng: &mut Rng, line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    if chars.is_empty() {
        return rng.char(..).to_string();
    }
    let at = rng.usize(..chars.len());
    let replacement = match rng.u8(0..4) {
        0 => rng.char(..),
        1 => ['"', '\'', '[', ']', '{', '}', '=', '#', '\\', '.', ',', '\n'][rng.usize(..12)],
        _ => rng.alphanumeric(),
    };
    chars
        .iter()
        .enumerate()
        .map(|(i, c)| if i == at { replacement } else { *c })
        .collect()
}

fn char_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

// ---------------------------------------------------------------------------------------------
// The properties.

/// `Ok(true)` when the topology is accepted, `Ok(false)` when refused as it should be; `Err` says
/// which property this input broke.
fn check(text: &str) -> Result<bool, String> {
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        parse(text).map_err(|err| vec![err]).and_then(|file| validate(&file))
    }));
    match outcome {
        Err(payload) => Err(format!("panicked: {}", panic_message(payload.as_ref()))),
        Ok(Err(errors)) => check_refusal(&errors).map(|()| false),
        Ok(Ok(topology)) => check_declarable(&topology).map(|()| true),
    }
}

fn check_refusal(errors: &[TopologyError]) -> Result<(), String> {
    if errors.is_empty() {
        return Err("refused with an empty error list".to_owned());
    }
    match errors
        .iter()
        .find(|e| e.path.trim().is_empty() || e.reason.trim().is_empty())
    {
        Some(bad) => Err(format!("an error without path or reason: {bad:?}")),
        None => Ok(()),
    }
}

/// What the declare step and the API rely on once validation said yes.
fn check_declarable(topology: &Topology) -> Result<(), String> {
    let mut problems = Vec::new();
    let plain = |name: &str| is_plain_name(name) && !name.starts_with("amq.");
    for (i, exchange) in topology.exchanges.iter().enumerate() {
        if !plain(&exchange.name) {
            problems.push(format!("exchange name `{}` is not declarable", exchange.name));
        }
        if topology.exchanges[..i].iter().any(|e| e.name == exchange.name) {
            problems.push(format!("exchange `{}` twice", exchange.name));
        }
    }
    for (i, queue) in topology.queues.iter().enumerate() {
        if !plain(&queue.name) {
            problems.push(format!("queue name `{}` is not declarable", queue.name));
        }
        if topology.queues[..i].iter().any(|q| q.name == queue.name) {
            problems.push(format!("queue `{}` twice", queue.name));
        }
        let limits = [queue.message_ttl, queue.max_length, queue.delivery_limit];
        if limits.iter().flatten().any(|v| *v == 0) || queue.max_priority == Some(0) {
            problems.push(format!("queue `{}` has a zero limit", queue.name));
        }
        if let Some(dlx) = &queue.dead_letter_exchange {
            match topology.exchange(dlx) {
                Some(e) if e.kind == ExchangeKind::Direct => {}
                _ => problems.push(format!(
                    "queue `{}`: dead-letter exchange `{dlx}` not a declared direct one",
                    queue.name
                )),
            }
            let has_dlq = topology.queues.iter().any(|q| {
                matches!(&q.role, QueueRole::DeadLetter { source_queue } if *source_queue == queue.name)
                    && topology
                        .bindings
                        .iter()
                        .any(|b| b.exchange == *dlx && b.queue == q.name && b.routing_key == queue.name)
            });
            if !has_dlq {
                problems.push(format!(
                    "queue `{}` dead-letters to no bound dead-letter queue",
                    queue.name
                ));
            }
        }
    }
    for binding in &topology.bindings {
        let exchange = topology.exchange(&binding.exchange);
        if exchange.is_none() || topology.queue(&binding.queue).is_none() {
            problems.push(format!("binding to something undeclared: {binding:?}"));
        }
        if binding.routing_key.len() > 255 {
            problems.push(format!("routing key of {} bytes", binding.routing_key.len()));
        }
        if exchange.is_some_and(|e| e.kind == ExchangeKind::Fanout) && !binding.routing_key.is_empty() {
            problems.push(format!("fanout binding with a routing key: {binding:?}"));
        }
    }
    for limit in &topology.rate_limits {
        if limit.per_second == 0 || limit.burst == 0 {
            problems.push(format!("zero rate limit: {limit:?}"));
        }
        if limit.exchange.is_none() && limit.client.is_none() {
            problems.push(format!("rate limit on nothing: {limit:?}"));
        }
        if let Some(name) = &limit.exchange
            && topology.exchange(name).is_none_or(|e| e.internal)
        {
            problems.push(format!("rate limit on undeclared or internal exchange `{name}`"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("accepted, but: {}", problems.join("; ")))
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic payload)".to_owned())
}

fn env_u64(name: &str) -> Option<u64> {
    let raw = std::env::var(name).ok()?;
    let raw = raw.trim();
    match raw.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => raw.parse().ok(),
    }
}

/// The input, short enough for a test report.
fn excerpt(text: &str) -> String {
    const SHOWN: usize = 1_500;
    if text.len() <= SHOWN {
        format!("{text:?}")
    } else {
        let cut = char_boundary(text, SHOWN);
        format!("{:?}... ({} bytes in all)", &text[..cut], text.len())
    }
}

#[test]
fn parse_then_validate_never_panics_and_always_explains() {
    let replay = env_u64("TOPOLOGY_FUZZ_CASE");
    let seeds: Vec<u64> = match replay {
        Some(seed) => vec![seed],
        None => {
            let base = env_u64("TOPOLOGY_FUZZ_SEED").unwrap_or(BASE_SEED);
            let cases = env_u64("TOPOLOGY_FUZZ_CASES").unwrap_or(CASES);
            (0..cases).map(|i| case_seed(base, i)).collect()
        }
    };
    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    let mut accepted = 0usize;
    // Cases and time per generator, for the summary: says where the time goes.
    let mut per_generator = [(0usize, std::time::Duration::ZERO); 4];
    for &seed in &seeds {
        let case_started = std::time::Instant::now();
        let (generator, text) = generate(seed);
        let outcome = check(&text);
        let slot = &mut per_generator[generator as usize];
        slot.0 += 1;
        slot.1 += case_started.elapsed();
        match outcome {
            Ok(valid) => accepted += usize::from(valid),
            Err(problem) => failures.push((seed, generator, problem, text)),
        }
    }
    let report: Vec<String> = failures
        .iter()
        .take(REPORTED)
        .map(|(seed, generator, problem, text)| {
            format!(
                "- case seed {seed:#018x} ({generator:?}): {problem}\n  replay: TOPOLOGY_FUZZ_CASE={seed:#x} cargo test --lib fuzz_tests\n  input: {}",
                excerpt(text)
            )
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} topology inputs broke a property (base seed {:#x}):\n{}",
        failures.len(),
        seeds.len(),
        env_u64("TOPOLOGY_FUZZ_SEED").unwrap_or(BASE_SEED),
        report.join("\n")
    );
    // The run must also reach the validator's happy path, or the Ok-side property says nothing.
    if replay.is_none() {
        assert!(accepted > 0, "no generated topology was valid: the generators drifted");
    }
    eprintln!(
        "{} topology inputs, {accepted} accepted, no property broken, in {:?} (bytes, token soup, mutated, built: {:?})",
        seeds.len(),
        started.elapsed(),
        per_generator
    );
}

/// The generators themselves: every one of them is drawn, and they are deterministic.
#[test]
fn the_fuzz_inputs_replay_from_their_seed() {
    let mut seen = [false; 4];
    for i in 0..200 {
        let seed = case_seed(BASE_SEED, i);
        let (generator, text) = generate(seed);
        assert_eq!(generate(seed).1, text, "case {seed:#x} is not deterministic");
        seen[generator as usize] = true;
    }
    assert_eq!(seen, [true; 4], "some generator is never drawn");
    // The real file passes untouched: the mutations start from a valid topology.
    assert_eq!(check(REAL), Ok(true));
    // And the properties can fail: a refusal without detail, an accepted topology that is not.
    assert!(check_refusal(&[]).is_err());
    assert!(check_refusal(&[TopologyError::new("", "bad")]).is_err());
    let mut topology = validate(&parse(REAL).unwrap()).unwrap();
    topology.exchanges[0].name = "amq.forged".to_owned();
    topology.rate_limits[0].burst = 0;
    let problem = check_declarable(&topology).unwrap_err();
    assert!(
        problem.contains("amq.forged") && problem.contains("zero rate limit"),
        "{problem}"
    );
}
