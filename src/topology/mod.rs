//! The platform's RabbitMQ topology: `model` (the file and its resolved form), `validate` (every
//! error at once, defaults applied, dead-letter queues derived), `declare` and `users` (to the
//! broker), `diff` (against it), `schemas` (the event schemas of `[[schemas]]`, compiled).

pub mod declare;
pub mod diff;
#[cfg(test)]
mod fuzz_tests;
pub mod model;
pub mod schemas;
pub mod users;
pub mod validate;

pub use model::*;
pub use validate::{TopologyError, load, parse, read, validate};
