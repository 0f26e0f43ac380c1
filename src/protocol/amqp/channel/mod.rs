//! One AMQP channel: content assembly for basic.publish, consumers, the delivery book
//! (delivery tag -> queue offset), prefetch, acks, and publisher confirms.
//!
//! Each consumer is a task that pulls from its queue's log (via [`Queue::take`]) whenever it
//! has credit and the queue has ready messages, waking on the log's high watermark, on requeues
//! and on acks. The delivery book is shared between the channel (which handles acks) and its
//! consumer tasks under one mutex; credit changes are broadcast with a `watch` counter so a
//! waiting consumer can never miss one. Deliveries go to the connection's writer as whole
//! encoded messages (method, header, bodies), so frames of one message are never interleaved.
//!
//! Publisher confirms: every routed append is queued on its queue's writer with
//! `submit_append` (keeping publish order and letting group commit batch them), and a per-channel
//! confirm task awaits them in publish order, sending `basic.ack` only once the appends are
//! durable per the fsync policy, coalescing consecutive ones with `multiple`.
//!
//! This file holds the channel's state and its lifecycle; the jobs live beside it: [`publish`]
//! (content assembly, routing, transactions, confirms), [`consume`] (consumers, basic.get,
//! direct reply-to) and [`ack`] (ack, nack, reject, recover).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use amq_protocol::protocol::basic::{self, AMQPProperties};
use amq_protocol::protocol::{confirm, AMQPClass};
use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

mod ack;
mod consume;
mod publish;

use self::publish::*;
use crate::broker::queue::{DeathReason, Queue};
use crate::broker::routing::Durable;
use crate::broker::routing::{Published, MAX_MESSAGE_BYTES};
use crate::broker::BrokerCore;
use crate::protocol::amqp::codec::{encode_content, encode_method};
use crate::protocol::amqp::convert::{self, AmqpError};
use crate::protocol::amqp::reply_to;
use crate::protocol::amqp::stream_consumer;

/// Most messages one consumer claims at a time when its prefetch is unlimited.
const BATCH: usize = 64;

/// Bytes of encoded frames a connection may have queued for its writer. Senders wait for
/// budget, so a client that reads slowly holds back its consumers instead of growing memory.
pub const WRITE_BUDGET: usize = 4 * 1024 * 1024;

/// Body bytes a connection may have published and not yet durable. The connection's read
/// loop waits for budget before routing a publish, so a publisher that floods faster than
/// the disk stops being read (TCP pushes back) instead of growing the queues' writer backlog:
/// without it the only bound was 4096 queued appends per queue, i.e. 4096 x message size.
pub const PUBLISH_BUDGET: usize = 8 * 1024 * 1024;

/// A publish's share of [`PUBLISH_BUDGET`], held until its appends are durable.
type PublishPermit = Option<tokio::sync::OwnedSemaphorePermit>;

/// Encoded frames and the write budget they hold until written.
pub type Outbound = (Bytes, Option<tokio::sync::OwnedSemaphorePermit>);

/// Where a channel's frames go: the connection's writer.
#[derive(Clone)]
pub struct Out {
    pub tx: mpsc::Sender<Outbound>,
    pub budget: Arc<tokio::sync::Semaphore>,
    /// [`PUBLISH_BUDGET`], shared by the connection's channels.
    pub publish_budget: Arc<tokio::sync::Semaphore>,
    pub frame_max: usize,
    /// Orders notifications the client did not ask for after the replies it waits for: the
    /// connection holds it exclusively while it handles a queue or exchange method (through
    /// its reply), and [`Out::notify`] takes it shared. So a consumer cancelled because
    /// queue.delete removed its queue sends basic.cancel after queue.delete-ok, on its own
    /// channel and on the connection's others, as RabbitMQ does; py-amqp (kombu, Celery)
    /// raises `ConsumerCancelled` from `queue_delete()` when the cancel comes first.
    pub replies_first: Arc<tokio::sync::RwLock<()>>,
    /// The connection's registry entry, where consumers are listed for the management API.
    pub connection: Arc<crate::broker::connections::Connection>,
    /// This connection's per-message metric handles.
    pub metrics: crate::observe::metrics::AmqpMetrics,
}

impl Out {
    /// Queues encoded frames for the writer; false once the connection is gone.
    pub async fn send(&self, bytes: Bytes) -> bool {
        // One oversized message takes the whole budget rather than never fitting.
        let want = bytes.len().clamp(1, WRITE_BUDGET) as u32;
        let Ok(permit) = self.budget.clone().acquire_many_owned(want).await else {
            return false;
        };
        self.tx.send((bytes, Some(permit))).await.is_ok()
    }

    pub async fn method(&self, channel: u16, m: AMQPClass) -> bool {
        let mut b = BytesMut::new();
        encode_method(channel, m, &mut b);
        self.send(b.freeze()).await
    }

    /// Sends a server-initiated method (basic.cancel of a consumer whose queue went away) once
    /// the connection is not in the middle of a method that may have caused it (see
    /// [`Out::replies_first`]). Gives up, sending nothing, if `stop` fires first: a consumer
    /// the client cancels itself needs no notification, and the connection may be waiting for
    /// this task to end.
    pub async fn notify(
        &self,
        channel: u16,
        m: AMQPClass,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let turn = tokio::select! {
            turn = self.replies_first.read() => turn,
            _ = stop.wait_for(|stopped| *stopped) => return false,
        };
        let sent = self.method(channel, m).await;
        drop(turn);
        sent
    }

    /// consumer_cancel_notify: tells the client its consumer `tag` is gone (its queue or
    /// stream was deleted under it), by the rules of [`Out::notify`].
    pub async fn cancel_consumer(
        &self,
        channel: u16,
        tag: &str,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let cancel = basic::Cancel {
            consumer_tag: tag.into(),
            nowait: true,
        };
        let m = AMQPClass::Basic(basic::AMQPMethod::Cancel(cancel));
        self.notify(channel, m, stop).await
    }
}

struct Unacked {
    queue: Arc<Queue>,
    offset: i64,
    consumer: Option<String>,
}

#[derive(Default)]
struct Book {
    next_tag: u64,
    unacked: BTreeMap<u64, Unacked>,
    /// Unacked stream deliveries (delivery tag -> consumer tag): nothing to settle, an ack
    /// only returns credit.
    stream_unacked: BTreeMap<u64, String>,
    /// Unacked deliveries per consumer tag (for per-consumer prefetch).
    per_consumer: HashMap<String, u32>,
    /// basic.qos global=false: the limit new consumers get.
    consumer_prefetch: u16,
    /// basic.qos global=true: the limit across the channel's consumers.
    global_prefetch: u16,
}

struct Shared {
    book: Mutex<Book>,
    credit: watch::Sender<u64>,
}

impl Shared {
    fn bump(&self) {
        self.credit.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// How many messages a consumer may claim now.
    fn credit_for(&self, tag: &str, prefetch: u16, no_ack: bool) -> usize {
        if no_ack {
            return BATCH;
        }
        let book = self.book.lock();
        let mine = book.per_consumer.get(tag).copied().unwrap_or(0) as usize;
        let consumer = if prefetch == 0 {
            BATCH
        } else {
            usize::from(prefetch).saturating_sub(mine)
        };
        let global = if book.global_prefetch == 0 {
            BATCH
        } else {
            let all: u32 = book.per_consumer.values().sum();
            usize::from(book.global_prefetch).saturating_sub(all as usize)
        };
        consumer.min(global).min(BATCH)
    }

    fn record(&self, queue: &Arc<Queue>, offset: i64, consumer: Option<&str>, no_ack: bool) -> u64 {
        let mut book = self.book.lock();
        book.next_tag += 1;
        let tag = book.next_tag;
        if !no_ack {
            if let Some(c) = consumer {
                *book.per_consumer.entry(c.to_string()).or_default() += 1;
            }
            book.unacked.insert(
                tag,
                Unacked {
                    queue: queue.clone(),
                    offset,
                    consumer: consumer.map(str::to_string),
                },
            );
        }
        tag
    }
}

impl stream_consumer::StreamBook for Shared {
    fn credit(&self, tag: &str, prefetch: u16) -> usize {
        self.credit_for(tag, prefetch, false)
    }

    fn record_delivery(&self, tag: &str) -> u64 {
        let mut book = self.book.lock();
        book.next_tag += 1;
        let delivery_tag = book.next_tag;
        *book.per_consumer.entry(tag.to_string()).or_default() += 1;
        book.stream_unacked.insert(delivery_tag, tag.to_string());
        delivery_tag
    }

    fn subscribe_credit(&self) -> watch::Receiver<u64> {
        self.credit.subscribe()
    }
}

struct Publishing {
    exchange: String,
    routing_key: String,
    mandatory: bool,
    /// Announced body size and properties, once the content header arrived.
    header: Option<(u64, AMQPProperties)>,
    body: BytesMut,
}

/// A whole published message, before routing.
struct Staged {
    exchange: String,
    routing_key: String,
    mandatory: bool,
    props: AMQPProperties,
    body: Bytes,
}

/// What a transaction has staged since its last commit or rollback.
#[derive(Default)]
struct TxBuffer {
    publishes: Vec<Staged>,
    /// (delivery tag, multiple, requeue: `None` for ack).
    settles: Vec<(u64, bool, Option<bool>)>,
}

struct Consumer {
    queue: Arc<Queue>,
    /// The queue's id for this consumer.
    id: u64,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

struct Confirms {
    next: u64,
    /// (sequence number, appends, refused by a full queue).
    tx: mpsc::UnboundedSender<(u64, Vec<Durable>, bool, PublishPermit)>,
    task: JoinHandle<()>,
}

/// What the connection should do with a frame's outcome.
pub enum ContentState {
    /// More frames of this message are expected.
    Incomplete,
    /// The message is whole and was handled.
    Done,
}

pub struct Channel {
    pub id: u16,
    /// A channel.close was sent; everything but close/close-ok is ignored until close-ok.
    pub closing: bool,
    shared: Arc<Shared>,
    publishing: Option<Publishing>,
    confirms: Option<Confirms>,
    /// tx.select mode: publishes and acks are staged until tx.commit.
    tx: Option<TxBuffer>,
    consumers: HashMap<String, Consumer>,
    /// Stream consumers (basic.consume on a topic), by consumer tag.
    streams: HashMap<String, stream_consumer::StreamConsumer>,
    /// Direct reply-to: (token, consumer tag) while this channel consumes from
    /// `amq.rabbitmq.reply-to`.
    reply: Option<(String, String)>,
    _gauge: crate::observe::metrics::ChannelGauge,
}

impl Channel {
    pub fn new(id: u16) -> Channel {
        let (credit, _) = watch::channel(0);
        Channel {
            id,
            closing: false,
            shared: Arc::new(Shared {
                book: Mutex::new(Book::default()),
                credit,
            }),
            publishing: None,
            confirms: None,
            tx: None,
            consumers: HashMap::new(),
            streams: HashMap::new(),
            reply: None,
            _gauge: crate::observe::metrics::ChannelGauge::new(),
        }
    }

    /// Whether a publish is waiting for its header or body frames.
    pub fn expects_content(&self) -> bool {
        self.publishing.is_some()
    }

    /// Channel close (by either side) or connection end: stop consumers, flush confirms,
    /// return unacked deliveries to their queues.
    pub async fn shutdown(&mut self, core: &BrokerCore) {
        if let Some((token, _)) = self.reply.take() {
            reply_to::unregister(&token);
        }
        for (_, s) in self.streams.drain() {
            s.stop().await;
        }
        let consumers: Vec<_> = self.consumers.drain().collect();
        for (_, c) in &consumers {
            let _ = c.stop.send(true);
        }
        for (_, c) in consumers {
            let _ = c.task.await;
            core.router().consumer_removed(&c.queue, c.id).await;
        }
        if let Some(c) = self.confirms.take() {
            drop(c.tx);
            let _ = c.task.await;
        }
        self.publishing = None;
        self.tx = None;
        self.requeue_all();
    }
}

/// The queue a consume or get names: 404 if it does not exist, 405 if another connection holds
/// it exclusively.
fn accessible_queue(
    core: &BrokerCore,
    vhost: &str,
    name: &str,
    connection_id: u64,
) -> Result<Arc<Queue>, AmqpError> {
    let queue = core
        .router()
        .queue(vhost, name)
        .ok_or_else(|| AmqpError::channel(404, format!("no queue '{name}' in vhost '{vhost}'")))?;
    match queue.exclusive_owner() {
        Some(owner) if owner != connection_id => Err(AmqpError::channel(
            405,
            format!("cannot obtain exclusive access to locked queue '{name}'"),
        )),
        _ => Ok(queue),
    }
}

fn random_tag() -> String {
    crate::util::random_bytes16()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
