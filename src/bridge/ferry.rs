//! The Ferry side of a bridge, through the core (no network hop, no login).
//!
//! A queue source is an ordinary consumer of the queue (it counts in `consumers`, takes at
//! most `src-prefetch-count` unacked messages, and acks per the ack mode), so while the
//! destination is down the messages simply stay in the queue: that is the store-and-forward.
//! Messages it holds unacked when it stops go back to the queue in their place, so the next
//! run forwards them first. A destination publishes through the router like any client and,
//! for `on-confirm`, waits until every copy is durable before the source settles.
//!
//! An exchange source is a queue source on a queue the bridge owns: `amq.ferry.bridge.{name}`,
//! durable, bound to the exchange with `src-exchange-key`. RabbitMQ's shovel binds an
//! exclusive server-named queue instead, so what is published while the shovel is down is
//! lost; here the queue outlives connections, destination outages and broker restarts and
//! goes only with the bridge definition ([`delete_exchange_queue`]), so store-and-forward
//! holds for exchanges as for queues. Messages published before the bridge first started are
//! not in it (nothing was bound yet), as with RabbitMQ.
//!
//! A topic source reads the topic's log with the core's [`StreamReader`] (every partition,
//! offset order within each, new partitions picked up from their start) and keeps its position
//! as the committed offsets of a Ferry consumer group (`src-group`): it starts at the group's
//! offsets (or the log start) and commits, per partition, only the records the destination
//! confirmed. The group is an ordinary one, so `ferry group list` and Kafka's OffsetFetch show
//! it, and a Kafka consumer joining it is refused the bridge's commits (they are "simple"
//! commits, allowed only while the group has no members), which stops the bridge with a reason
//! rather than letting two readers split the position.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use super::definition::DestSpec;
use super::runner::{BridgeError, Confirms, Incoming, Token};
use crate::broker::message::Message;
use crate::broker::queue::Queue;
use crate::broker::routing::{Durable, QueueSpec, DEFAULT_VHOST, INTERNAL_CONNECTION};
use crate::broker::stream::{StreamReader, StreamStart};
use crate::broker::BrokerCore;
use crate::meta::{BindingDef, CommittedOffset, DestinationKind};

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

/// The queue an exchange source of bridge `bridge` consumes (in the bridge's vhost). The
/// reserved `amq.` prefix keeps clients from declaring one of the same name by accident.
pub fn exchange_queue_name(bridge: &str) -> String {
    format!("amq.ferry.bridge.{bridge}")
}

/// Declares the bridge's exchange queue, binds it to `exchange` with `key`, and drops any
/// other binding it has (left by an earlier definition of the bridge). Returns its name.
pub async fn bind_exchange_queue(
    core: &BrokerCore,
    vhost: &str,
    bridge: &str,
    exchange: &str,
    key: &str,
) -> Result<String, BridgeError> {
    core.router()
        .existing_exchange(vhost, exchange)
        .map_err(|e| BridgeError::Source(e.to_string()))?;
    let name = exchange_queue_name(bridge);
    declare(core, vhost, &name).await?;
    let wanted = BindingDef {
        vhost: vhost.to_string(),
        source: exchange.to_string(),
        destination_kind: DestinationKind::Queue,
        destination: name.clone(),
        routing_key: key.to_string(),
        arguments: Value::Object(Map::new()),
    };
    for ex in core.router().exchanges() {
        for b in ex.bindings() {
            let ours = b.vhost == vhost
                && b.destination_kind == DestinationKind::Queue
                && b.destination == name;
            if ours && !(b.source == exchange && b.routing_key == key) {
                core.router()
                    .unbind(b)
                    .await
                    .map_err(|e| BridgeError::Local(e.to_string()))?;
            }
        }
    }
    core.router()
        .bind(wanted)
        .await
        .map_err(|e| BridgeError::Source(e.to_string()))?;
    Ok(name)
}

/// Deletes the exchange queue of a bridge that is gone (with what it still held: the bridge
/// that would have forwarded it no longer exists). Absent is fine.
pub async fn delete_exchange_queue(core: &BrokerCore, vhost: &str, bridge: &str) {
    let name = exchange_queue_name(bridge);
    if core.router().queue(vhost, &name).is_none() {
        return;
    }
    if let Err(e) = core
        .router()
        .delete_queue(vhost, &name, false, false, None)
        .await
    {
        tracing::warn!(bridge, vhost, error = %e, "could not delete the bridge's exchange queue");
    }
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
        let mut offsets: Vec<i64> = tokens
            .iter()
            .filter_map(|t| match t {
                Token::Offset(o) => Some(*o),
                _ => None,
            })
            .collect();
        if offsets.is_empty() || self.auto_settle {
            return;
        }
        self.queue.ack(&offsets);
        // A batch is up to half the prefetch and `unacked` up to all of it: a linear
        // `contains` per kept offset cost thousands of comparisons per message.
        offsets.sort_unstable();
        self.unacked.retain(|o| offsets.binary_search(o).is_err());
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

/// How often a topic source looks at the topic registry while idle: the core sends no
/// notification when a topic is deleted or gains partitions.
const TOPIC_TICK: Duration = Duration::from_secs(1);

/// A Ferry topic read as consumer group `group`; see the module docs.
pub struct TopicSource {
    core: BrokerCore,
    reader: StreamReader,
    topic: String,
    group: String,
}

impl TopicSource {
    pub async fn open(core: &BrokerCore, topic: &str, group: &str) -> Result<Self, BridgeError> {
        let src = |e: String| BridgeError::Source(e);
        let Some(t) = core.topic(topic) else {
            return Err(src(format!("topic '{topic}' does not exist")));
        };
        let committed: HashMap<i32, i64> = core
            .groups()
            .fetch_offsets(group, None)
            .map_err(|e| src(e.to_string()))?
            .into_iter()
            .filter(|o| o.topic == topic && o.offset >= 0)
            .map(|o| (o.partition, o.offset))
            .collect();
        let starts: Vec<(i32, StreamStart)> = (0..t.partition_count() as i32)
            .map(|p| {
                let start = committed
                    .get(&p)
                    .map_or(StreamStart::First, |o| StreamStart::Offset(*o));
                (p, start)
            })
            .collect();
        let reader = StreamReader::open_partitions(core, topic, &starts)
            .map_err(|e| src(e.to_string()))?
            .follow_new_partitions();
        Ok(Self {
            core: core.clone(),
            reader,
            topic: topic.to_string(),
            group: group.to_string(),
        })
    }

    /// Records of the topic not yet handed to the destination.
    pub fn pending(&self) -> u64 {
        let Some(t) = self.core.topic(&self.topic) else {
            return 0;
        };
        self.reader
            .positions()
            .into_iter()
            .filter_map(|(p, next)| {
                let log = t.partition(p)?;
                u64::try_from(log.high_watermark() - next).ok()
            })
            .sum()
    }

    /// Waits for at least one readable record, then takes up to `max`.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<Incoming>, BridgeError> {
        loop {
            let records = self
                .reader
                .poll(max)
                .map_err(|e| BridgeError::Source(e.to_string()))?;
            if !records.is_empty() {
                return Ok(records
                    .into_iter()
                    .map(|r| Incoming {
                        message: Message::from_record(r.record),
                        exchange: self.topic.clone(),
                        token: Token::Kafka {
                            partition: r.partition,
                            offset: r.offset,
                        },
                    })
                    .collect());
            }
            tokio::select! {
                _ = self.reader.wait() => {}
                _ = tokio::time::sleep(TOPIC_TICK) => {}
            }
        }
    }

    /// Commits, per partition, the offset after the last confirmed record (a simple commit:
    /// generation -1, no member). The commit flushes the metadata store, so it runs on the
    /// blocking pool.
    pub async fn settle(&mut self, tokens: &[Token]) -> Result<(), BridgeError> {
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        for t in tokens {
            if let Token::Kafka { partition, offset } = t {
                let e = next.entry(*partition).or_insert(offset + 1);
                *e = (*e).max(offset + 1);
            }
        }
        if next.is_empty() {
            return Ok(());
        }
        let offsets = next
            .into_iter()
            .map(|(partition, offset)| CommittedOffset {
                topic: self.topic.clone(),
                partition,
                offset,
                leader_epoch: -1,
                metadata: None,
                commit_ms: 0,
            })
            .collect();
        let groups = self.core.groups().clone();
        let group = self.group.clone();
        tokio::task::spawn_blocking(move || groups.commit_offsets(&group, -1, "", None, offsets))
            .await
            .map_err(|e| BridgeError::Local(e.to_string()))?
            .map_err(|e| {
                BridgeError::Source(format!(
                    "committing group '{}': {e} (is a Kafka consumer using the bridge's group?)",
                    self.group
                ))
            })
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
