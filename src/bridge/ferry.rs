//! The Ferry side of a bridge, through the core (no network hop, no login).
//!
//! A queue source is an ordinary consumer of the queue (it counts in `consumers`, takes at
//! most `src-prefetch-count` unacked messages, and acks per the ack mode), so while the
//! destination is down the messages simply stay in the queue: that is the store-and-forward.
//! Messages it holds unacked when it stops go back to the queue in their place, so the next
//! run forwards them first. A destination publishes through the router like any client and,
//! for `on-confirm`, waits until every copy is durable before the source settles.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::definition::DestSpec;
use super::runner::{BridgeError, Confirms, Incoming, Token};
use crate::broker::message::Message;
use crate::broker::queue::Queue;
use crate::broker::routing::{Durable, QueueSpec, DEFAULT_VHOST, INTERNAL_CONNECTION};
use crate::broker::BrokerCore;

/// A Ferry queue read by the bridge as one consumer.
pub struct QueueSource {
    core: BrokerCore,
    queue: Arc<Queue>,
    consumer: u64,
    unacked: Vec<i64>,
    /// Most messages unsettled at once (`src-prefetch-count`), over every batch in flight.
    prefetch: usize,
    auto_settle: bool,
    appends: tokio::sync::watch::Receiver<i64>,
    ready: tokio::sync::watch::Receiver<u64>,
    closed: bool,
}

/// Declares `name` durable when it does not exist (RabbitMQ's dynamic shovels declare their
/// queues too), and returns it.
async fn declare(core: &BrokerCore, vhost: &str, name: &str) -> Result<Arc<Queue>, BridgeError> {
    if let Ok(q) = core.router().existing_queue(vhost, name) {
        return Ok(q);
    }
    let declared = core
        .router()
        .declare_queue(QueueSpec {
            vhost: vhost.to_string(),
            name: name.to_string(),
            passive: false,
            durable: true,
            exclusive_owner: None,
            auto_delete: false,
            arguments: Value::Object(Map::new()),
            connection: INTERNAL_CONNECTION,
            server_named: false,
        })
        .await
        .map_err(|e| BridgeError::Local(e.to_string()))?;
    Ok(declared.queue)
}

impl QueueSource {
    pub async fn open(
        core: &BrokerCore,
        vhost: &str,
        name: &str,
        prefetch: usize,
        auto_settle: bool,
    ) -> Result<Self, BridgeError> {
        let queue = declare(core, vhost, name).await?;
        let consumer = queue.add_consumer_with(0, None);
        Ok(Self {
            core: core.clone(),
            appends: queue.subscribe_appends(),
            ready: queue.subscribe_ready(),
            queue,
            consumer,
            unacked: Vec::new(),
            prefetch,
            auto_settle,
            closed: false,
        })
    }

    pub fn pending(&self) -> u64 {
        self.queue.message_count()
    }

    /// Waits for at least one message, then takes up to `max`, within the prefetch limit.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<Incoming>, BridgeError> {
        loop {
            self.appends.borrow_and_update();
            self.ready.borrow_and_update();
            if self.queue.is_deleted() {
                return Err(BridgeError::Source(format!(
                    "queue '{}' was deleted",
                    self.queue.name()
                )));
            }
            let credit = self.prefetch.saturating_sub(self.unacked.len()).min(max);
            self.queue.set_credit(self.consumer, credit > 0);
            if credit > 0 && self.queue.may_take(self.consumer) {
                let msgs = self
                    .queue
                    .take_for(self.consumer, credit, self.auto_settle)
                    .map_err(|e| BridgeError::Local(e.to_string()))?;
                if !msgs.is_empty() {
                    return Ok(msgs
                        .into_iter()
                        .map(|m| {
                            if !self.auto_settle {
                                self.unacked.push(m.offset);
                            }
                            let exchange = m
                                .record
                                .headers
                                .iter()
                                .find(|(k, _)| k == crate::broker::routing::EXCHANGE_HEADER)
                                .and_then(|(_, v)| v.as_ref())
                                .map(|v| String::from_utf8_lossy(v).into_owned())
                                .unwrap_or_default();
                            Incoming {
                                message: Message::from_record(m.record),
                                exchange,
                                token: Token::Offset(m.offset),
                            }
                        })
                        .collect());
                }
            }
            tokio::select! {
                _ = self.appends.changed() => {}
                _ = self.ready.changed() => {}
            }
        }
    }

    pub fn settle(&mut self, tokens: &[Token]) {
        let offsets: Vec<i64> = tokens
            .iter()
            .filter_map(|t| match t {
                Token::Offset(o) => Some(*o),
                _ => None,
            })
            .collect();
        if offsets.is_empty() || self.auto_settle {
            return;
        }
        self.unacked.retain(|o| !offsets.contains(o));
        self.queue.ack(&offsets);
    }

    /// Returns what is unacked to the queue, in place, and leaves as a consumer.
    pub async fn close(mut self) {
        self.release();
        self.core
            .router()
            .consumer_removed(&self.queue, self.consumer)
            .await;
    }

    fn release(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        if !self.unacked.is_empty() {
            self.queue
                .requeue_returned(&std::mem::take(&mut self.unacked));
        }
    }
}

impl Drop for QueueSource {
    fn drop(&mut self) {
        if !self.closed {
            self.release();
            self.queue.remove_consumer(self.consumer);
        }
    }
}

/// Publishes into this broker.
pub struct Sink {
    core: BrokerCore,
    vhost: String,
    exchange: String,
    key: Option<String>,
}

impl Sink {
    pub async fn open(
        core: &BrokerCore,
        vhost: &str,
        dest: &DestSpec,
    ) -> Result<Self, BridgeError> {
        let (vhost, exchange, key) = match dest {
            DestSpec::Queue(q) => {
                declare(core, vhost, q).await?;
                (vhost.to_string(), String::new(), Some(q.clone()))
            }
            DestSpec::Exchange { exchange, key } => {
                (vhost.to_string(), exchange.clone(), key.clone())
            }
            DestSpec::Topic(topic) => {
                if core.topic(topic).is_none() {
                    core.create_topic(topic, 1, BTreeMap::new())
                        .await
                        .map_err(|e| BridgeError::Local(e.to_string()))?;
                }
                (DEFAULT_VHOST.to_string(), topic.clone(), None)
            }
        };
        Ok(Self {
            core: core.clone(),
            vhost,
            exchange,
            key,
        })
    }

    /// Publishes the batch in order; with `confirm`, what lands once every copy is durable.
    pub async fn publish(
        &mut self,
        batch: Vec<Message>,
        confirm: bool,
    ) -> Result<Confirms, BridgeError> {
        let mut pending: Vec<Durable> = Vec::new();
        for mut message in batch {
            if let Some(k) = &self.key {
                message.key = Some(bytes::Bytes::copy_from_slice(k.as_bytes()));
            }
            let published = self
                .core
                .router()
                .publish(&self.vhost, &self.exchange, message)
                .await
                .map_err(|e| BridgeError::Destination(e.to_string()))?;
            if published.rejected {
                return Err(BridgeError::Destination(
                    "a destination queue is full and rejects publishes".into(),
                ));
            }
            pending.extend(published.pending);
        }
        Ok(if confirm {
            Confirms::Ferry(pending)
        } else {
            Confirms::None
        })
    }
}
