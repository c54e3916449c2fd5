//! messages-broker: coordinates RabbitMQ for the e-commerce platform.
//!
//! `topology.toml` and the settings are data; [`app::App`] turns them into a supervised fleet of
//! roles (applier, api, ingester, retrier, stats, scheduler) joined by tokio channels, behind a small API.

pub mod amqp;
pub mod app;
pub mod backoff;
pub mod console;
pub mod edit;
pub mod fingerprint;
pub mod http;
pub mod metrics;
pub mod retry;
pub mod roles;
pub mod settings;
pub mod shared;
pub mod store;
pub mod telemetry;
pub mod topology;
pub mod trace;
pub mod workers;

#[cfg(test)]
mod enum_names_tests;
