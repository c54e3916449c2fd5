//! Everything AMQP: the supervised connection and the management API client.

pub mod calls;
pub mod connection;
pub mod headers;
pub mod management;
pub mod publisher;
