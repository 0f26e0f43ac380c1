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

use super::codec::{encode_content, encode_method};
use super::convert::{self, AmqpError};
use super::reply_to;
use super::stream_consumer;
use crate::broker::queue::{DeathReason, Queue};
use crate::broker::routing::{Published, MAX_MESSAGE_BYTES};
use crate::broker::BrokerCore;
use crate::log::PendingAppend;

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
    tx: mpsc::UnboundedSender<(u64, Vec<PendingAppend>, bool, PublishPermit)>,
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

    /// basic.publish: remember it until its content arrives.
    pub fn start_publish(&mut self, m: basic::Publish) {
        self.publishing = Some(Publishing {
            exchange: m.exchange.as_str().to_string(),
            routing_key: m.routing_key.as_str().to_string(),
            mandatory: m.mandatory,
            header: None,
            body: BytesMut::new(),
        });
    }

    /// A content header frame for the pending publish.
    pub fn content_header(
        &mut self,
        size: u64,
        props: AMQPProperties,
    ) -> Result<ContentState, AmqpError> {
        let Some(p) = self.publishing.as_mut() else {
            return Err(AmqpError::connection(
                505,
                "content header without basic.publish",
            ));
        };
        if p.header.is_some() {
            return Err(AmqpError::connection(505, "second content header"));
        }
        if size > MAX_MESSAGE_BYTES as u64 {
            self.publishing = None;
            return Err(AmqpError::channel(
                406,
                format!(
                    "message size {size} is larger than configured max size {MAX_MESSAGE_BYTES}"
                ),
            ));
        }
        // Grow with what arrives rather than trusting the announced size up front.
        p.body.reserve((size as usize).min(1 << 20));
        p.header = Some((size, props));
        Ok(if size == 0 {
            ContentState::Done
        } else {
            ContentState::Incomplete
        })
    }

    /// A body frame for the pending publish.
    pub fn content_body(&mut self, chunk: &[u8]) -> Result<ContentState, AmqpError> {
        let Some(p) = self.publishing.as_mut() else {
            return Err(AmqpError::connection(
                505,
                "content body without basic.publish",
            ));
        };
        let Some((size, _)) = &p.header else {
            return Err(AmqpError::connection(505, "content body before its header"));
        };
        let size = *size;
        if p.body.len() as u64 + chunk.len() as u64 > size {
            return Err(AmqpError::connection(
                501,
                format!("content body longer than the announced {size} bytes"),
            ));
        }
        p.body.extend_from_slice(chunk);
        Ok(if p.body.len() as u64 == size {
            ContentState::Done
        } else {
            ContentState::Incomplete
        })
    }

    /// Routes and appends the completed message; returns it with basic.return if mandatory and
    /// unroutable; hands the appends to the confirm task in confirm mode.
    pub async fn finish_publish(
        &mut self,
        core: &BrokerCore,
        vhost: &str,
        out: &Out,
    ) -> Result<(), AmqpError> {
        let Some(p) = self.publishing.take() else {
            return Ok(());
        };
        let Some((_, props)) = p.header else {
            return Ok(());
        };
        let msg = Staged {
            exchange: p.exchange,
            routing_key: p.routing_key,
            mandatory: p.mandatory,
            props,
            body: p.body.freeze(),
        };
        if let Some(tx) = self.tx.as_mut() {
            // In a transaction the exchange must exist now; routing happens at commit.
            if !msg.exchange.is_empty() && core.router().exchange(vhost, &msg.exchange).is_none() {
                return Err(AmqpError::channel(
                    404,
                    format!("no exchange '{}' in vhost '{vhost}'", msg.exchange),
                ));
            }
            tx.publishes.push(msg);
            return Ok(());
        }
        // Waiting here holds up the connection's read loop: backpressure on a flood.
        let want = msg.body.len().clamp(1, PUBLISH_BUDGET) as u32;
        let permit = out
            .publish_budget
            .clone()
            .acquire_many_owned(want)
            .await
            .ok();
        let span = publish_span(&msg);
        let published = self.route(core, vhost, out, msg).instrument(span).await?;
        if let Some(c) = self.confirms.as_mut() {
            c.next += 1;
            let _ =
                c.tx.send((c.next, published.pending, published.rejected, permit));
        } else if !published.pending.is_empty() {
            tokio::spawn(async move {
                for p in published.pending {
                    let _ = p.wait().await;
                }
                drop(permit);
            });
        }
        Ok(())
    }

    /// Routes one message into its queues (basic.return if mandatory and unroutable); the
    /// returned appends resolve once durable.
    async fn route(
        &self,
        core: &BrokerCore,
        vhost: &str,
        out: &Out,
        msg: Staged,
    ) -> Result<Published, AmqpError> {
        let mut msg = msg;
        convert::check_expiration(&msg.props)?;
        if msg.props.reply_to().as_ref().map(|r| r.as_str()) == Some(reply_to::PSEUDO_QUEUE) {
            let Some((token, _)) = &self.reply else {
                return Err(AmqpError::channel(
                    406,
                    "fast reply consumer does not exist",
                ));
            };
            msg.props = msg
                .props
                .with_reply_to(format!("{}{token}", reply_to::ADDRESS_PREFIX).into());
        }
        if msg.exchange.is_empty() && msg.routing_key.starts_with(reply_to::ADDRESS_PREFIX) {
            return Ok(self.reply_directly(out, msg).await);
        }
        let record = convert::to_record(
            &msg.routing_key,
            &msg.props,
            msg.body.clone(),
            core.clock().now_ms(),
        );
        record_event_fields(&tracing::Span::current(), &record, false);
        if msg.exchange.is_empty() && stream_consumer::is_stream(core, vhost, &msg.routing_key) {
            let published = stream_consumer::publish(core, &msg.routing_key, record).await?;
            crate::observe::metrics::record_publish(true, msg.mandatory);
            return Ok(published);
        }
        let headers = convert::headers_json(&msg.props);
        if let Some(ex) = (!msg.exchange.is_empty())
            .then(|| core.router().exchange(vhost, &msg.exchange))
            .flatten()
        {
            if ex.def().internal {
                return Err(AmqpError::channel(
                    403,
                    format!("cannot publish to internal exchange '{}'", msg.exchange),
                ));
            }
        }
        let route_span = tracing::debug_span!(
            "route",
            exchange = %msg.exchange,
            routed = tracing::field::Empty
        );
        let published = core
            .router()
            .publish(vhost, &msg.exchange, headers.as_ref(), record)
            .instrument(route_span.clone())
            .await?;
        route_span.record("routed", published.routed);
        crate::observe::metrics::record_publish(published.routed, msg.mandatory);
        if !published.routed && msg.mandatory {
            let mut b = BytesMut::new();
            encode_method(
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                    reply_code: 312,
                    reply_text: "NO_ROUTE".into(),
                    exchange: msg.exchange.clone().into(),
                    routing_key: msg.routing_key.clone().into(),
                })),
                &mut b,
            );
            encode_content(self.id, msg.props, &msg.body, out.frame_max, &mut b);
            let _ = out.send(b.freeze()).await;
        }
        Ok(published)
    }

    /// Delivers a reply published to `amq.rabbitmq.reply-to.<token>` straight to that
    /// requester's consumer; unroutable (returned if mandatory) once the requester is gone.
    async fn reply_directly(&self, out: &Out, msg: Staged) -> Published {
        let Some(r) = reply_to::lookup(&msg.routing_key) else {
            if msg.mandatory {
                let mut b = BytesMut::new();
                encode_method(
                    self.id,
                    AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                        reply_code: 312,
                        reply_text: "NO_ROUTE".into(),
                        exchange: "".into(),
                        routing_key: msg.routing_key.clone().into(),
                    })),
                    &mut b,
                );
                encode_content(self.id, msg.props, &msg.body, out.frame_max, &mut b);
                let _ = out.send(b.freeze()).await;
            }
            return Published::default();
        };
        let mut b = BytesMut::new();
        encode_method(
            r.channel,
            AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: r.consumer_tag.clone().into(),
                delivery_tag: (r.next_tag)(),
                redelivered: false,
                exchange: "".into(),
                routing_key: msg.routing_key.clone().into(),
            })),
            &mut b,
        );
        encode_content(r.channel, msg.props, &msg.body, r.out.frame_max, &mut b);
        let _ = r.out.send(b.freeze()).await;
        Published {
            pending: Vec::new(),
            routed: true,
            rejected: false,
        }
    }

    /// basic.consume on `amq.rabbitmq.reply-to`: registers this channel for direct replies.
    async fn consume_replies(&mut self, m: basic::Consume, out: &Out) -> Result<(), AmqpError> {
        if !m.no_ack {
            return Err(AmqpError::channel(406, "reply consumer cannot acknowledge"));
        }
        if self.reply.is_some() {
            return Err(AmqpError::channel(406, "reply consumer already set"));
        }
        let tag = if m.consumer_tag.as_str().is_empty() {
            format!("amq.ctag-{}", random_tag())
        } else {
            m.consumer_tag.as_str().to_string()
        };
        let shared = self.shared.clone();
        let token = reply_to::register(reply_to::Requester {
            out: out.clone(),
            channel: self.id,
            consumer_tag: tag.clone(),
            next_tag: Arc::new(move || {
                let mut book = shared.book.lock();
                book.next_tag += 1;
                book.next_tag
            }),
        });
        self.reply = Some((token, tag.clone()));
        if !m.nowait {
            out.method(
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: tag.into(),
                })),
            )
            .await;
        }
        Ok(())
    }

    /// tx.select.
    pub fn tx_select(&mut self) -> Result<(), AmqpError> {
        if self.confirms.is_some() {
            return Err(AmqpError::channel(
                406,
                "cannot switch from confirm to tx mode",
            ));
        }
        self.tx.get_or_insert_with(TxBuffer::default);
        Ok(())
    }

    /// tx.commit: routes the staged publishes, waits until they are durable, then applies the
    /// staged acks, nacks and rejects.
    pub async fn tx_commit(
        &mut self,
        core: &BrokerCore,
        vhost: &str,
        out: &Out,
    ) -> Result<(), AmqpError> {
        let Some(tx) = self.tx.as_mut() else {
            return Err(AmqpError::channel(406, "channel is not transactional"));
        };
        let TxBuffer { publishes, settles } = std::mem::take(tx);
        let mut pending = Vec::new();
        for msg in publishes {
            let span = publish_span(&msg);
            pending.extend(
                self.route(core, vhost, out, msg)
                    .instrument(span)
                    .await?
                    .pending,
            );
        }
        for p in pending {
            p.wait()
                .await
                .map_err(|e| AmqpError::connection(541, e.to_string()))?;
        }
        for (tag, multiple, requeue) in settles {
            self.settle_now(core, tag, multiple, requeue)?;
        }
        Ok(())
    }

    /// tx.rollback: drops what was staged (deliveries acked in the transaction stay unacked).
    pub fn tx_rollback(&mut self) -> Result<(), AmqpError> {
        let Some(tx) = self.tx.as_mut() else {
            return Err(AmqpError::channel(406, "channel is not transactional"));
        };
        *tx = TxBuffer::default();
        Ok(())
    }

    /// confirm.select.
    pub fn select_confirms(&mut self, out: &Out) -> Result<(), AmqpError> {
        if self.tx.is_some() {
            return Err(AmqpError::channel(
                406,
                "cannot switch from tx to confirm mode",
            ));
        }
        if self.confirms.is_some() {
            return Ok(());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(confirm_task(self.id, rx, out.clone()));
        self.confirms = Some(Confirms { next: 0, tx, task });
        Ok(())
    }

    pub fn confirm_select_ok(m: &confirm::Select) -> Option<AMQPClass> {
        (!m.nowait).then_some(AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(
            confirm::SelectOk {},
        )))
    }

    /// basic.qos.
    pub fn qos(&mut self, m: &basic::Qos) {
        let mut book = self.shared.book.lock();
        if m.global {
            book.global_prefetch = m.prefetch_count;
        } else {
            book.consumer_prefetch = m.prefetch_count;
        }
        drop(book);
        self.shared.bump();
    }

    /// basic.consume: registers a consumer task. Returns the consumer tag.
    pub async fn consume(
        &mut self,
        core: &BrokerCore,
        vhost: &str,
        connection_id: u64,
        m: basic::Consume,
        out: &Out,
    ) -> Result<(), AmqpError> {
        if m.queue.as_str() == reply_to::PSEUDO_QUEUE {
            return self.consume_replies(m, out).await;
        }
        if stream_consumer::is_stream(core, vhost, m.queue.as_str()) {
            return self.consume_stream(core, vhost, m, out).await;
        }
        let queue = accessible_queue(core, vhost, m.queue.as_str(), connection_id)?;
        if m.exclusive && queue.consumer_count() > 0 {
            return Err(AmqpError::channel(
                403,
                format!("queue '{}' in vhost '{vhost}' in exclusive use", m.queue),
            ));
        }
        let tag = if m.consumer_tag.as_str().is_empty() {
            format!("amq.ctag-{}", random_tag())
        } else {
            m.consumer_tag.as_str().to_string()
        };
        let consumer_args = convert::table_to_json(&m.arguments);
        // A consumer's own circuit breaker (x-circuit-breaker-*), overriding the queue's.
        let breaker = consumer_args
            .as_object()
            .map(crate::broker::breaker::BreakerPolicy::from_arguments)
            .transpose()
            .map_err(|e| AmqpError::channel(406, e))?
            .flatten();
        // Consumer priorities: any integer, higher first (RabbitMQ refuses other types).
        let priority = match consumer_args.get("x-priority") {
            None => 0,
            Some(v) => v
                .as_i64()
                .map(|p| p.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32)
                .ok_or_else(|| AmqpError::channel(406, format!("invalid arg 'x-priority': {v}")))?,
        };
        if self.consumers.contains_key(&tag) || self.streams.contains_key(&tag) {
            return Err(AmqpError::connection(
                530,
                format!("attempt to reuse consumer tag '{tag}'"),
            ));
        }
        if !m.nowait {
            out.method(
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: tag.clone().into(),
                })),
            )
            .await;
        }
        let id = queue.add_consumer_with(priority, breaker);
        let prefetch = self.shared.book.lock().consumer_prefetch;
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run_consumer(ConsumerTask {
            channel: self.id,
            out: out.clone(),
            shared: self.shared.clone(),
            queue: queue.clone(),
            tag: tag.clone(),
            id,
            no_ack: m.no_ack,
            prefetch,
            stop: stop_rx,
        }));
        self.consumers.insert(
            tag,
            Consumer {
                queue,
                id,
                stop,
                task,
            },
        );
        Ok(())
    }

    /// basic.consume on a stream (see [`stream_consumer`]).
    async fn consume_stream(
        &mut self,
        core: &BrokerCore,
        vhost: &str,
        m: basic::Consume,
        out: &Out,
    ) -> Result<(), AmqpError> {
        let tag = if m.consumer_tag.as_str().is_empty() {
            format!("amq.ctag-{}", random_tag())
        } else {
            m.consumer_tag.as_str().to_string()
        };
        if self.consumers.contains_key(&tag) || self.streams.contains_key(&tag) {
            return Err(AmqpError::connection(
                530,
                format!("attempt to reuse consumer tag '{tag}'"),
            ));
        }
        let prefetch = self.shared.book.lock().consumer_prefetch;
        let request = stream_consumer::ConsumeRequest {
            vhost,
            name: m.queue.as_str(),
            tag: tag.clone(),
            no_ack: m.no_ack,
            nowait: m.nowait,
            arguments: &m.arguments,
            prefetch,
        };
        let consumer =
            stream_consumer::start(core, self.id, out, self.shared.clone(), request).await?;
        self.streams.insert(tag, consumer);
        Ok(())
    }

    /// basic.cancel: stops the consumer; its unacked deliveries stay unacked.
    pub async fn cancel(&mut self, core: &BrokerCore, tag: &str) {
        if let Some(s) = self.streams.remove(tag) {
            s.stop().await;
        }
        if self.reply.as_ref().is_some_and(|(_, t)| t == tag) {
            if let Some((token, _)) = self.reply.take() {
                reply_to::unregister(&token);
            }
        }
        if let Some(c) = self.consumers.remove(tag) {
            let _ = c.stop.send(true);
            let _ = c.task.await;
            core.router().consumer_removed(&c.queue, c.id).await;
        }
    }

    /// basic.get.
    pub async fn get(
        &mut self,
        core: &BrokerCore,
        vhost: &str,
        connection_id: u64,
        m: basic::Get,
        out: &Out,
    ) -> Result<(), AmqpError> {
        if stream_consumer::is_stream(core, vhost, m.queue.as_str()) {
            return Err(stream_consumer::refuse_get(vhost, m.queue.as_str()));
        }
        let queue = accessible_queue(core, vhost, m.queue.as_str(), connection_id)?;
        queue.touch();
        // Methods on a channel take effect in order: a publish this channel just made to the
        // queue must be visible to this get, so wait for the queue's pending appends.
        queue.log().barrier().await;
        let msgs = queue
            .take(1, m.no_ack)
            .map_err(|e| AmqpError::connection(541, e.to_string()))?;
        let mut b = BytesMut::new();
        match msgs.into_iter().next() {
            None => encode_method(
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
                &mut b,
            ),
            Some(msg) => {
                crate::observe::metrics::record_delivered(1, usize::from(msg.redelivered));
                let tag = self.shared.record(&queue, msg.offset, None, m.no_ack);
                let span = deliver_span(queue.name(), "", tag, msg.redelivered, &msg.record);
                let _in = span.enter();
                let mut o = convert::from_record(&msg.record);
                if queue.limits().quorum {
                    o.properties = convert::with_delivery_count(o.properties, msg.delivery_count);
                }
                encode_method(
                    self.id,
                    AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                        delivery_tag: tag,
                        redelivered: msg.redelivered,
                        exchange: o.exchange,
                        routing_key: o.routing_key,
                        message_count: queue.message_count().min(u64::from(u32::MAX)) as u32,
                    })),
                    &mut b,
                );
                encode_content(self.id, o.properties, &o.body, out.frame_max, &mut b);
            }
        }
        let _ = out.send(b.freeze()).await;
        Ok(())
    }

    /// basic.ack / nack / reject. `requeue: None` means ack.
    pub fn settle(
        &mut self,
        core: &BrokerCore,
        tag: u64,
        multiple: bool,
        requeue: Option<bool>,
    ) -> Result<(), AmqpError> {
        if let Some(tx) = self.tx.as_mut() {
            tx.settles.push((tag, multiple, requeue));
            return Ok(());
        }
        self.settle_now(core, tag, multiple, requeue)
    }

    fn settle_now(
        &mut self,
        core: &BrokerCore,
        tag: u64,
        multiple: bool,
        requeue: Option<bool>,
    ) -> Result<(), AmqpError> {
        let _span = tracing::debug_span!(
            "ack",
            channel = self.id,
            delivery_tag = tag,
            multiple,
            requeue = ?requeue
        )
        .entered();
        let taken: Vec<Unacked> = {
            let mut book = self.shared.book.lock();
            if requeue.is_some() && stream_consumer::has_tags(&book.stream_unacked, tag, multiple) {
                return Err(stream_consumer::refuse_requeue());
            }
            let taken: Vec<Unacked> = if multiple {
                let rest = if tag == 0 {
                    BTreeMap::new()
                } else {
                    book.unacked.split_off(&(tag + 1))
                };
                let upto = std::mem::replace(&mut book.unacked, rest);
                upto.into_values().collect()
            } else {
                book.unacked.remove(&tag).into_iter().collect()
            };
            let streamed = stream_consumer::take_tags(&mut book.stream_unacked, tag, multiple);
            if taken.is_empty() && streamed.is_empty() && !(multiple && tag == 0) {
                return Err(AmqpError::channel(
                    406,
                    format!("unknown delivery tag {tag}"),
                ));
            }
            for c in &streamed {
                if let Some(n) = book.per_consumer.get_mut(c) {
                    *n = n.saturating_sub(1);
                }
            }
            for u in &taken {
                if let Some(c) = &u.consumer {
                    if let Some(n) = book.per_consumer.get_mut(c) {
                        *n = n.saturating_sub(1);
                    }
                }
            }
            taken
        };
        crate::observe::metrics::record_settled(requeue, taken.len());
        // Each consumer's circuit breaker learns how its deliveries went.
        for u in &taken {
            if let Some(c) = u.consumer.as_deref().and_then(|t| self.consumers.get(t)) {
                if Arc::ptr_eq(&c.queue, &u.queue) {
                    c.queue.record_outcome(c.id, requeue.is_none(), 1);
                }
            }
        }
        settle_all(core, taken, requeue);
        self.shared.bump();
        Ok(())
    }

    /// basic.recover: every unacked delivery goes back to its queue.
    pub fn recover(&mut self) {
        self.requeue_all();
    }

    fn requeue_all(&self) {
        let taken: Vec<Unacked> = {
            let mut book = self.shared.book.lock();
            book.per_consumer.values_mut().for_each(|n| *n = 0);
            book.stream_unacked.clear();
            std::mem::take(&mut book.unacked).into_values().collect()
        };
        settle_all_requeue(taken);
        self.shared.bump();
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

/// Groups deliveries by queue.
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

fn by_queue(taken: Vec<Unacked>) -> Vec<(Arc<Queue>, Vec<i64>)> {
    let mut out: Vec<(Arc<Queue>, Vec<i64>)> = Vec::new();
    for u in taken {
        match out.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &u.queue)) {
            Some((_, offs)) => offs.push(u.offset),
            None => out.push((u.queue, vec![u.offset])),
        }
    }
    out
}

fn settle_all_requeue(taken: Vec<Unacked>) {
    for (q, offs) in by_queue(taken) {
        q.requeue_returned(&offs);
    }
}

/// Acks (`requeue: None`), requeues, or rejects a set of deliveries, one call per queue.
/// Rejected messages of a queue with a dead-letter exchange are forwarded there by a task (the
/// copy must be durable before the original is settled; the connection does not wait on it).
fn settle_all(core: &BrokerCore, taken: Vec<Unacked>, requeue: Option<bool>) {
    for (q, offs) in by_queue(taken) {
        match requeue {
            None => q.ack(&offs),
            Some(true) => q.requeue(&offs),
            Some(false) if q.limits().dead_letter_exchange.is_some() => {
                let router = core.router().clone();
                let dead = offs.iter().map(|o| (*o, DeathReason::Rejected)).collect();
                tokio::spawn(async move { router.dead_letter(&q, dead).await });
            }
            // Without a dead-letter exchange a rejected message is discarded (RabbitMQ).
            Some(false) => q.ack(&offs),
        }
    }
}

struct ConsumerTask {
    channel: u16,
    out: Out,
    shared: Arc<Shared>,
    queue: Arc<Queue>,
    tag: String,
    /// The queue's id for this consumer (priorities, single active consumer).
    id: u64,
    no_ack: bool,
    prefetch: u16,
    stop: watch::Receiver<bool>,
}

async fn run_consumer(mut t: ConsumerTask) {
    let mut appends = t.queue.subscribe_appends();
    let mut ready = t.queue.subscribe_ready();
    let mut credit = t.shared.credit.subscribe();
    loop {
        if *t.stop.borrow_and_update() {
            return;
        }
        appends.borrow_and_update();
        ready.borrow_and_update();
        credit.borrow_and_update();
        if t.queue.is_deleted() {
            // consumer_cancel_notify: tell the client its consumer is gone.
            t.out
                .notify(
                    t.channel,
                    AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                        consumer_tag: t.tag.clone().into(),
                        nowait: true,
                    })),
                    &mut t.stop,
                )
                .await;
            return;
        }
        let n = t.shared.credit_for(&t.tag, t.prefetch, t.no_ack);
        t.queue.set_credit(t.id, n > 0);
        if n > 0 && t.queue.may_take(t.id) {
            match t.queue.take_for(t.id, n, t.no_ack) {
                Ok(msgs) if !msgs.is_empty() => {
                    crate::observe::metrics::record_deliveries(&msgs);
                    let mut b = BytesMut::new();
                    for msg in msgs {
                        let tag = t
                            .shared
                            .record(&t.queue, msg.offset, Some(&t.tag), t.no_ack);
                        let span =
                            deliver_span(t.queue.name(), &t.tag, tag, msg.redelivered, &msg.record);
                        let _in = span.enter();
                        let mut o = convert::from_record(&msg.record);
                        if t.queue.limits().quorum {
                            o.properties =
                                convert::with_delivery_count(o.properties, msg.delivery_count);
                        }
                        encode_method(
                            t.channel,
                            AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                                consumer_tag: t.tag.clone().into(),
                                delivery_tag: tag,
                                redelivered: msg.redelivered,
                                exchange: o.exchange,
                                routing_key: o.routing_key,
                            })),
                            &mut b,
                        );
                        encode_content(t.channel, o.properties, &o.body, t.out.frame_max, &mut b);
                    }
                    if !t.out.send(b.freeze()).await {
                        return;
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(queue = t.queue.name(), error = %e, "reading a queue for delivery failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        // An open circuit breaker ends by time, not by any event below.
        let breaker_wait = t.queue.breaker_wait(t.id);
        tokio::select! {
            r = appends.changed() => if r.is_err() && !t.queue.is_deleted() { return },
            r = ready.changed() => if r.is_err() { return },
            r = credit.changed() => if r.is_err() { return },
            r = t.stop.changed() => if r.is_err() { return },
            _ = async {
                match breaker_wait {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
}

/// Whether every append of a publish became durable; a publish a full queue refused is
/// nacked after the other queues' appends settle (RabbitMQ nacks if any queue rejected it).
/// The publish's share of the connection's publish budget is released once its appends
/// settle.
async fn wait_all(pending: Vec<PendingAppend>, rejected: bool, permit: PublishPermit) -> bool {
    let mut ok = !rejected;
    for p in pending {
        if let Err(e) = p.wait().await {
            tracing::warn!(error = %e, "append for a confirmed publish failed");
            ok = false;
        }
    }
    drop(permit);
    ok
}

async fn confirm_task(
    channel: u16,
    mut rx: mpsc::UnboundedReceiver<(u64, Vec<PendingAppend>, bool, PublishPermit)>,
    out: Out,
) {
    type Fut = std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>;
    let mut carried: Option<(u64, Fut)> = None;
    loop {
        let (seq, fut) = match carried.take() {
            Some(x) => x,
            None => match rx.recv().await {
                Some((s, p, rejected, permit)) => {
                    (s, Box::pin(wait_all(p, rejected, permit)) as Fut)
                }
                None => return,
            },
        };
        if !fut.await {
            let nack = AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag: seq,
                multiple: false,
                requeue: false,
            }));
            if !out.method(channel, nack).await {
                return;
            }
            continue;
        }
        // Coalesce the confirms whose appends are already durable into one multiple ack.
        let mut last = seq;
        while let Ok((s, p, rejected, permit)) = rx.try_recv() {
            let mut f: Fut = Box::pin(wait_all(p, rejected, permit));
            match (&mut f).now_or_never() {
                Some(true) => last = s,
                Some(false) => {
                    carried = Some((s, Box::pin(async { false })));
                    break;
                }
                None => {
                    carried = Some((s, f));
                    break;
                }
            }
        }
        metrics::counter!("ferry_messages_confirmed_total").increment(last - seq + 1);
        let ack = AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: last,
            multiple: last > seq,
        }));
        if !out.method(channel, ack).await {
            return;
        }
    }
}

fn random_tag() -> String {
    crate::util::random_bytes16()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// --- event tracing -------------------------------------------------------------------------
//
// Spans are DEBUG so a broker at the default INFO level pays one callsite check per message;
// the event fields are computed only when the span is enabled.

/// The `publish` span of one AMQP message; its event fields are filled in by
/// [`record_event_fields`] once the stored record (with any broker-assigned id) exists.
fn publish_span(msg: &Staged) -> tracing::Span {
    let span = tracing::debug_span!(
        "publish",
        protocol = "amqp",
        exchange = %msg.exchange,
        routing_key = %msg.routing_key,
        message_id = tracing::field::Empty,
        correlation_id = tracing::field::Empty,
        causation_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    // The parent must be set before the span is first entered (OTLP export only).
    if !span.is_disabled() {
        if let Some(headers) = msg.props.headers() {
            let text = |k: &str| match headers.inner().get(k) {
                Some(amq_protocol::types::AMQPValue::LongString(s)) => {
                    std::str::from_utf8(s.as_bytes()).ok()
                }
                Some(amq_protocol::types::AMQPValue::ShortString(s)) => Some(s.as_str()),
                _ => None,
            };
            if let Some(tp) = text(crate::broker::event::TRACEPARENT_HEADER) {
                let ts = text(crate::broker::event::TRACESTATE_HEADER);
                crate::observe::otlp::set_remote_parent(&span, tp, ts);
            }
        }
    }
    span
}

/// Records a record's event metadata on `span`; a no-op (nothing computed) for a disabled
/// span or one without these fields. `link_parent` makes the span a child of the message's
/// `traceparent` (only before the span is first entered).
fn record_event_fields(span: &tracing::Span, record: &crate::log::SimpleRecord, link_parent: bool) {
    if span.is_disabled() || !span.has_field("message_id") {
        return;
    }
    let m = crate::broker::event::EventMetadata::from_record(record);
    span.record("message_id", m.id.as_str());
    if let Some(c) = m.correlation_id.as_deref() {
        span.record("correlation_id", c);
    }
    if let Some(c) = m.causation_id.as_deref() {
        span.record("causation_id", c);
    }
    if let Some(t) = m.trace_id() {
        span.record("trace_id", t);
        if let Some(tp) = m.traceparent.as_deref().filter(|_| link_parent) {
            crate::observe::otlp::set_remote_parent(span, tp, m.tracestate.as_deref());
        }
    }
}

/// The `deliver` span of one delivery (basic.deliver or basic.get-ok).
fn deliver_span(
    queue: &str,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    record: &crate::log::SimpleRecord,
) -> tracing::Span {
    let span = tracing::debug_span!(
        "deliver",
        protocol = "amqp",
        queue,
        consumer_tag,
        delivery_tag,
        redelivered,
        message_id = tracing::field::Empty,
        correlation_id = tracing::field::Empty,
        causation_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    record_event_fields(&span, record, true);
    span
}
