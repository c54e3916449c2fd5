//! Dead letters ingested per second into MariaDB, next to the plain batched INSERT rate of the
//! same rows measured in the same run (the database's own ceiling for this table).
//!
//!   cargo run --release --example ingest_bench -- [MESSAGES]     (default 20000)
//!
//! Needs the local RabbitMQ and MariaDB of scripts/setup.sh; uses its own database
//! `messages_broker_test_bench_ingest` and queue `bench_ingest.dlq`, removed afterwards.

use std::{sync::Arc, time::Instant};

use chrono::Utc;
use lapin::{
    BasicProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldArray, FieldTable},
};
use messages_broker::{
    amqp::connection::{self, Link},
    metrics::Metrics,
    settings::Settings,
    store::{self, failed_messages},
    topology::{Queue, QueueRole, QueueType, Topology},
    workers::{
        Worker,
        applier::TopologyState,
        ingester::{Ingester, dead_letter_row_from},
    },
};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

const SOURCE: &str = "bench_ingest";
const DLQ: &str = "bench_ingest.dlq";

fn dead_letter_headers() -> FieldTable {
    let mut death = FieldTable::default();
    death.insert("queue".into(), AMQPValue::LongString(SOURCE.into()));
    death.insert("exchange".into(), AMQPValue::LongString("orders_exchange".into()));
    death.insert("reason".into(), AMQPValue::LongString("rejected".into()));
    death.insert("count".into(), AMQPValue::LongLongInt(1));
    death.insert("time".into(), AMQPValue::Timestamp(Utc::now().timestamp() as u64));
    death.insert(
        "routing-keys".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString("orders.created".into())])),
    );
    let mut headers = FieldTable::default();
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
    );
    headers
}

fn payload(i: usize) -> Vec<u8> {
    format!(r#"{{"event":"order.created","data":{{"order_id":{i},"lines":[{{"sku":"A-1","qty":2}}]}},"metadata":{{"service":"orders","version":"1.0"}}}}"#).into_bytes()
}

async fn count(pool: &sqlx::MySqlPool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM failed_messages")
        .fetch_one(pool)
        .await
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let total: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(20_000);
    let mut settings = Settings::default();
    settings.database.database = "messages_broker_test_bench_ingest".into();
    let mut admin = sqlx::MySqlConnection::connect_with(&settings.database.connect_options().database("")).await?;
    sqlx::raw_sql(
        "DROP DATABASE IF EXISTS messages_broker_test_bench_ingest; CREATE DATABASE messages_broker_test_bench_ingest",
    )
    .execute(&mut admin)
    .await?;
    let pool = store::pool(&settings.database);
    store::migrate(&pool).await?;

    // Fill the dead-letter queue.
    let conn = Arc::new(connection::connect(&settings.rabbitmq, "ingest bench").await?);
    let channel = conn.create_channel().await?;
    channel
        .queue_delete(DLQ.into(), QueueDeleteOptions::default())
        .await
        .ok();
    let channel = conn.create_channel().await?;
    channel
        .queue_declare(
            DLQ.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let headers = dead_letter_headers();
    let mut confirms = Vec::with_capacity(total);
    for i in 0..total {
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(format!("bench-{i}").as_str().into())
            .with_headers(headers.clone());
        confirms.push(
            channel
                .basic_publish(
                    "".into(),
                    DLQ.into(),
                    BasicPublishOptions::default(),
                    &payload(i),
                    properties,
                )
                .await?,
        );
    }
    for confirm in confirms {
        confirm.await?;
    }
    println!("{DLQ} filled with {total} dead letters");

    // (1) The ingester draining the queue into rows.
    let topology = Topology {
        exchanges: vec![],
        queues: vec![Queue {
            name: DLQ.into(),
            durable: true,
            auto_delete: false,
            queue_type: QueueType::Classic,
            message_ttl: None,
            max_length: None,
            overflow: None,
            dead_letter_exchange: None,
            max_priority: None,
            delivery_limit: None,
            role: QueueRole::DeadLetter {
                source_queue: SOURCE.into(),
            },
        }],
        bindings: vec![],
        rate_limits: vec![],
        users: vec![],
        schemas: Default::default(),
    };
    let (_link_tx, link) = tokio::sync::watch::channel(Some(Link {
        connection: conn.clone(),
        generation: 1,
    }));
    let (_state_tx, topology_state) = tokio::sync::watch::channel(TopologyState::Applied { generation: 1 });
    let (_migrated_tx, db_migrated) = tokio::sync::watch::channel(true);
    let ingester = Ingester {
        settings: Arc::new(settings.clone()),
        topology: Arc::new(topology),
        pool: pool.clone(),
        metrics: Arc::new(Metrics::new()),
        link,
        topology_state,
        db_migrated,
    };
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(ingester.run(cancel.clone()));
    while count(&pool).await < total as i64 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let ingest_secs = started.elapsed().as_secs_f64();
    cancel.cancel();
    task.await??;

    // (2) The same rows with plain batched INSERTs, no broker in the way.
    let rows: Vec<_> = (0..total)
        .map(|i| {
            let properties = BasicProperties::default()
                .with_message_id(format!("plain-{i}").as_str().into())
                .with_headers(headers.clone());
            dead_letter_row_from(&properties, &payload(i), "", DLQ, SOURCE, &settings, Utc::now())
        })
        .collect();
    sqlx::query("DELETE FROM failed_messages").execute(&pool).await?;
    let started = Instant::now();
    for chunk in rows.chunks(usize::from(settings.ingest.prefetch)) {
        failed_messages::upsert_batch(&pool, chunk).await?;
    }
    let insert_secs = started.elapsed().as_secs_f64();

    let ingest_rate = total as f64 / ingest_secs;
    let insert_rate = total as f64 / insert_secs;
    let ratio = ingest_rate / insert_rate;
    let mark = |ok: bool| if ok { "ok" } else { "MISSED" };
    println!("scenario                                   rows/s    seconds");
    println!("(e) ingester: DLQ -> failed_messages   {ingest_rate:>10.0} {ingest_secs:>10.2}");
    println!(
        "(f) plain batched INSERT ({} rows)    {insert_rate:>10.0} {insert_secs:>10.2}",
        settings.ingest.prefetch
    );
    println!(
        "ingest: {ingest_rate:.0} dead letters/s (goal >= 2000: {})   (e)/(f) = {ratio:.2} (goal >= 0.50: {})",
        mark(ingest_rate >= 2000.0),
        mark(ratio >= 0.5)
    );

    let channel = conn.create_channel().await?;
    channel.queue_delete(DLQ.into(), QueueDeleteOptions::default()).await?;
    sqlx::raw_sql("DROP DATABASE messages_broker_test_bench_ingest")
        .execute(&mut admin)
        .await?;
    Ok(())
}
