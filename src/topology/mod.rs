//! The platform's RabbitMQ topology: `model` (the file and its resolved form), `validate` (every
//! error at once, defaults applied, dead-letter queues derived).

pub mod declare;
pub mod diff;
pub mod model;
pub mod validate;
#[cfg(test)]
mod fuzz_tests;

pub use model::*;
pub use validate::{TopologyError, load, parse, validate};
