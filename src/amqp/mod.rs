//! Everything AMQP: the supervised connection, the confirm pipeline, request-reply and the
//! management API client.

pub mod calls;
pub mod connection;
pub mod headers;
pub mod management;
pub mod publisher;
pub mod replies;
