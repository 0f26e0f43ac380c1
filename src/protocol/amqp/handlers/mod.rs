//! Stateless method handlers: each turns one AMQP method into a call on the core's router and
//! answers with the reply method, or an [`AmqpError`] the connection turns into a close.
//!
//! Stateful methods (basic.*, confirm.*: prefetch, deliveries, acks) live on the channel in
//! [`super::channel`], because they need its delivery book.

pub mod exchange;
pub mod queue;

use amq_protocol::protocol::AMQPClass;

use super::convert::AmqpError;
use crate::broker::BrokerCore;

/// What a handler needs to know about the connection it runs on.
pub struct Ctx<'a> {
    pub core: &'a BrokerCore,
    pub vhost: &'a str,
    pub connection_id: u64,
}

/// A reply to send, if any (`nowait` methods have none).
pub type Reply = Result<Option<AMQPClass>, AmqpError>;

/// Rejects names longer than a short string allows, which amq-protocol would parse but that
/// RabbitMQ refuses: the core's rule ([`crate::broker::names`]), shared with the admin API.
pub fn check_name(kind: &str, name: &str) -> Result<(), AmqpError> {
    crate::broker::names::check_name(kind, name).map_err(|e| AmqpError::channel(406, e.to_string()))
}
