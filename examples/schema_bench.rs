//! The CPU cost of checking one event against its schema, without HTTP or the broker (section
//! `schemas` of `scripts/bench.sh`): the bench topology's `[[schemas]]` (the shipped order.created
//! 2.0 schema), the 1 KiB event of `scripts/bench/order.created.v2.json`, checked `--iterations`
//! times on one thread as the publish handler does it (which schema, then the validation).
//! Next to it, for scale, the parse of the same request body, which every publish pays already.
//!
//! ```sh
//! cargo run --release --example schema_bench -- --iterations 100000
//! ```

use std::{hint::black_box, path::PathBuf, time::Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use messages_broker::topology::{self, schemas::Resolution};
use serde_json::{Value, json};

/// The same event as the bench's (b-schema).
const ORDER_DATA: &str = include_str!("../scripts/bench/order.created.v2.json");

#[derive(Parser)]
#[command(name = "schema_bench", about = "CPU cost of one event schema check")]
struct Args {
    /// Topology whose `[[schemas]]` hold order.created 2.0.
    #[arg(long, default_value = "scripts/bench/topology.toml")]
    topology: PathBuf,
    #[arg(long, default_value_t = 100_000)]
    iterations: u32,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let topology = topology::load(&args.topology).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("{}: {}", args.topology.display(), lines.join("; "))
    })?;
    let data: Value = serde_json::from_str(ORDER_DATA).context("scripts/bench/order.created.v2.json")?;
    let mut invalid = data.clone();
    invalid["items"][3]["quantity"] = json!(0);
    invalid["currency"] = json!("euro");
    let body = serde_json::to_vec(&json!({
        "exchange": "bench_exchange",
        "routing_key": "bench.tick",
        "message": {"event": "order.created", "data": data, "metadata": {"version": "2.0"}},
    }))?;
    let data_bytes = serde_json::to_vec(&data)?.len();

    let check = |data: &Value| -> usize {
        match topology.schemas.resolve("bench_exchange", "order.created", Some("2.0")) {
            Resolution::Found { schema, .. } => schema.compiled.violations(data, 51).len(),
            other => panic!("order.created 2.0 is not in the topology's [[schemas]]: {other:?}"),
        }
    };
    if check(&data) != 0 || check(&invalid) != 2 {
        bail!("the sample event is not valid (or the invalid one not invalid) against order.created 2.0");
    }

    let n = args.iterations.max(1);
    let time = |what: &dyn Fn()| {
        for _ in 0..n / 10 {
            what(); // warm-up
        }
        let started = Instant::now();
        for _ in 0..n {
            what();
        }
        started.elapsed().as_nanos() as f64 / f64::from(n)
    };
    let valid_ns = time(&|| {
        black_box(check(black_box(&data)));
    });
    let invalid_ns = time(&|| {
        black_box(check(black_box(&invalid)));
    });
    let parse_ns = time(&|| {
        black_box(serde_json::from_slice::<Value>(black_box(&body)).expect("JSON"));
    });

    println!("schema check of a {data_bytes}-byte data (order.created 2.0), {n} iterations, one thread:");
    println!("  valid event:                 {:>8.2} us per event", valid_ns / 1000.0);
    println!(
        "  invalid event (2 problems):  {:>8.2} us per event",
        invalid_ns / 1000.0
    );
    println!(
        "  for scale, parsing the {}-byte request body: {:.2} us",
        body.len(),
        parse_ns / 1000.0
    );
    Ok(())
}
