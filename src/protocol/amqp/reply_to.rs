//! Direct reply-to (RabbitMQ's `amq.rabbitmq.reply-to` pseudo-queue): RPC replies that go
//! straight from the replier's channel to the requester's consumer, never through a queue or
//! the log.
//!
//! A requester consumes from `amq.rabbitmq.reply-to` in no-ack mode; its channel gets a random
//! token and is registered here. When it publishes with `reply_to = amq.rabbitmq.reply-to`,
//! the property is rewritten to `amq.rabbitmq.reply-to.<token>`; a reply published to the
//! default exchange with that routing key is encoded as a basic.deliver and handed to the
//! requester's connection writer. Nothing is stored, so replies are at-most-once, exactly as
//! in RabbitMQ (a requester that is gone makes the reply unroutable).
//!
//! The registry is process-wide: tokens are 128 random bits, so brokers sharing a process (tests)
//! cannot reach each other's requesters by accident, and one map avoids threading per-broker
//! adapter state through every connection.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use super::channel::Out;

/// The pseudo-queue a requester consumes from and names in `reply_to`.
pub const PSEUDO_QUEUE: &str = "amq.rabbitmq.reply-to";
/// Prefix of the generated reply addresses (`amq.rabbitmq.reply-to.<token>`).
pub const ADDRESS_PREFIX: &str = "amq.rabbitmq.reply-to.";

/// Where replies for one token go.
#[derive(Clone)]
pub struct Requester {
    pub out: Out,
    pub channel: u16,
    pub consumer_tag: String,
    /// Hands out the requester channel's next delivery tag.
    pub next_tag: Arc<dyn Fn() -> u64 + Send + Sync>,
}

fn registry() -> &'static Mutex<HashMap<String, Requester>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, Requester>>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Registers a requester; returns its token.
pub fn register(requester: Requester) -> String {
    let token: String = crate::util::random_bytes16()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    registry().lock().insert(token.clone(), requester);
    token
}

pub fn unregister(token: &str) {
    registry().lock().remove(token);
}

/// The requester a reply address names, if it is still there.
pub fn lookup(address: &str) -> Option<Requester> {
    let token = address.strip_prefix(ADDRESS_PREFIX)?;
    registry().lock().get(token).cloned()
}
