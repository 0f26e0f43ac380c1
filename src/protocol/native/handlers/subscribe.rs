//! Subscriptions: one stream carries the deliveries (server to client) and the settles
//! (client to server). A reader task turns the client's side into a channel so the delivery
//! loop can wait on the queue, the settles and the stream's end at once.
//!
//! A queue subscription is a consumer of the queue like an AMQP one (priorities, single active
//! consumer and circuit breakers apply), with `prefetch` unsettled deliveries at most. When the
//! stream ends, however it ends, its unsettled deliveries go back to the queue as returned
//! (not failed) messages, as when an AMQP channel closes. A topic subscription reads the
//! topic's partitions as a stream (non-destructive); its settles only return credit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::proto::stream::{RecvStream, SendStream};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::super::connection::Ctx;
use super::super::convert::{self, NativeError};
use crate::broker::event::RecordLocation;
use crate::broker::queue::Queue;
use crate::broker::stream::{StreamError, StreamReader, StreamRecord, StreamStart};
use crate::proto::framed::{self, FrameReader};
use crate::proto::v1::{self, request, response, settle::Outcome, ErrorCode};

/// How often a topic subscription looks for a deleted topic or new partitions even without
/// appends (the core does not notify those).
const TOPIC_RECHECK: Duration = Duration::from_secs(1);

/// Most settles applied in one go.
pub(super) const SETTLE_BATCH: usize = 1024;

pub(super) type Settles = mpsc::Receiver<Result<v1::Settle, NativeError>>;

/// Reads the client's settles off the stream until it ends; a malformed frame or any other
/// request is passed on as an error, which ends the subscription.
pub(super) fn settle_reader(mut reader: FrameReader<RecvStream>) -> Settles {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        loop {
            let item = match reader.next::<v1::Request>().await {
                Ok(Some(v1::Request {
                    op: Some(request::Op::Settle(s)),
                })) => Ok(s),
                Ok(Some(_)) => Err(NativeError::malformed(
                    "only settle requests may follow a subscribe on its stream",
                )),
                Ok(None) => return,
                Err(crate::proto::framed::ReadError::Frame(e)) => Err(e.into()),
                Err(_) => return,
            };
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                return;
            }
        }
    });
    rx
}

pub(super) fn subscribed(name: &str) -> v1::Response {
    v1::Response {
        result: Some(response::Result::Subscribed(v1::Subscribed {
            name: name.to_string(),
        })),
    }
}

pub(super) fn prefetch(ctx: &Ctx, asked: u32) -> usize {
    let p = if asked == 0 {
        ctx.settings.default_prefetch
    } else {
        asked
    };
    p.clamp(1, super::super::settings::MAX_PREFETCH) as usize
}

/// The queue consumer's registration and unsettled deliveries; dropping it returns them to
/// the queue, so a subscription that ends in any way (client gone, task aborted) loses nothing.
struct QueueConsumer {
    queue: Arc<Queue>,
    id: u64,
    unacked: HashMap<u64, i64>,
    /// Set once the router was told the consumer left (it unregisters it then).
    removed: bool,
}

impl QueueConsumer {
    fn return_unacked(&mut self) {
        let offsets: Vec<i64> = self.unacked.drain().map(|(_, o)| o).collect();
        if !offsets.is_empty() {
            self.queue.requeue_returned(&offsets);
        }
    }
}

impl Drop for QueueConsumer {
    fn drop(&mut self) {
        self.return_unacked();
        if !self.removed {
            self.queue.remove_consumer(self.id);
        }
    }
}

pub(crate) async fn queue(
    ctx: &Ctx,
    s: v1::SubscribeQueue,
    send: &mut SendStream,
    reader: FrameReader<RecvStream>,
) -> Result<(), NativeError> {
    let vhost = convert::vhost(&s.vhost);
    let queue = ctx.core.router().existing_queue(vhost, &s.queue)?;
    if queue.exclusive_owner().is_some_and(|owner| owner != ctx.id) {
        return Err(NativeError::new(
            ErrorCode::Conflict,
            format!(
                "queue '{}' in vhost '{vhost}' is exclusive to another connection",
                s.queue
            ),
        ));
    }
    let prefetch = prefetch(ctx, s.prefetch);
    let mut settles = settle_reader(reader);
    write(send, &subscribed(queue.name())).await?;
    let mut consumer = QueueConsumer {
        id: queue.add_consumer_with(0, None),
        queue: queue.clone(),
        unacked: HashMap::new(),
        removed: false,
    };
    let mut appends = queue.subscribe_appends();
    let mut ready = queue.subscribe_ready();
    let mut next_tag: u64 = 0;
    let result = loop {
        appends.borrow_and_update();
        ready.borrow_and_update();
        if queue.is_deleted() {
            break Err(NativeError::new(
                ErrorCode::NotFound,
                format!("queue '{}' was deleted", queue.name()),
            ));
        }
        let credit = prefetch.saturating_sub(consumer.unacked.len());
        queue.set_credit(consumer.id, credit > 0);
        if credit > 0 && queue.may_take(consumer.id) {
            match queue.take_for(consumer.id, credit, false) {
                Ok(msgs) if !msgs.is_empty() => {
                    crate::observe::metrics::record_delivered(
                        msgs.len(),
                        msgs.iter().filter(|m| m.redelivered).count(),
                    );
                    // All deliveries of one take go out in one write.
                    let mut out = bytes::BytesMut::new();
                    for msg in msgs {
                        next_tag += 1;
                        consumer.unacked.insert(next_tag, msg.offset);
                        let delivery = v1::Delivery {
                            delivery_tag: next_tag,
                            exchange: convert::exchange_of(&msg.record),
                            routing_key: msg
                                .record
                                .key
                                .as_ref()
                                .map(|k| String::from_utf8_lossy(k).into_owned())
                                .unwrap_or_default(),
                            message: Some(convert::from_record(&msg.record, None)),
                            redelivered: msg.redelivered,
                            delivery_count: msg.delivery_count,
                            partition: -1,
                            offset: -1,
                        };
                        crate::proto::codec::encode_into(&deliver(delivery), &mut out);
                    }
                    write_bytes(send, &out).await?;
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(queue = queue.name(), error = %e, "reading a queue for a native delivery failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let breaker_wait = queue.breaker_wait(consumer.id);
        tokio::select! {
            _ = appends.changed() => {}
            _ = ready.changed() => {}
            settle = settles.recv() => match settle {
                Some(Ok(s)) => {
                    // Settles that arrived together are applied together: one state write
                    // per queue call, as an AMQP `multiple` ack gets.
                    let mut batch = vec![s];
                    let mut failed = None;
                    while batch.len() < SETTLE_BATCH {
                        match settles.try_recv() {
                            Ok(Ok(s)) => batch.push(s),
                            Ok(Err(e)) => {
                                failed = Some(e);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = settle_queue(ctx, &mut consumer, batch).await {
                        break Err(e);
                    }
                    if let Some(e) = failed {
                        break Err(e);
                    }
                }
                Some(Err(e)) => break Err(e),
                None => break Ok(()),
            },
            _ = async {
                match breaker_wait {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    };
    consumer.return_unacked();
    consumer.removed = true;
    let id = consumer.id;
    drop(consumer);
    // Also deletes an auto-delete queue whose last consumer this was.
    ctx.core.router().consumer_removed(&queue, id).await;
    result
}

/// Applies a batch of settles: acks and requeues in one queue call each, rejects one by one.
/// An unknown tag or outcome ends the batch (what came before it is applied) with an error.
async fn settle_queue(
    ctx: &Ctx,
    consumer: &mut QueueConsumer,
    batch: Vec<v1::Settle>,
) -> Result<(), NativeError> {
    let mut acks = Vec::new();
    let mut requeues = Vec::new();
    let mut result = Ok(());
    for s in batch {
        let outcome = match Outcome::try_from(s.outcome) {
            Ok(o) => o,
            Err(_) => {
                result = Err(NativeError::malformed(format!(
                    "unknown settle outcome {}",
                    s.outcome
                )));
                break;
            }
        };
        let Some(offset) = consumer.unacked.remove(&s.delivery_tag) else {
            result = Err(NativeError::new(
                ErrorCode::UnknownDelivery,
                format!("unknown delivery tag {}", s.delivery_tag),
            ));
            break;
        };
        match outcome {
            Outcome::Ack => acks.push(offset),
            Outcome::NackRequeue => requeues.push(offset),
            Outcome::Reject => {
                crate::observe::metrics::record_settled(Some(false), 1);
                consumer.queue.record_outcome(consumer.id, false, 1);
                let reason = (!s.reason.is_empty()).then_some(s.reason);
                ctx.core
                    .router()
                    .dead_letter_rejected(&consumer.queue, offset, reason)
                    .await
            }
        }
    }
    let q = &consumer.queue;
    if !acks.is_empty() {
        crate::observe::metrics::record_settled(None, acks.len());
        q.record_outcome(consumer.id, true, acks.len());
        q.ack(&acks);
    }
    if !requeues.is_empty() {
        crate::observe::metrics::record_settled(Some(true), requeues.len());
        q.record_outcome(consumer.id, false, requeues.len());
        q.requeue(&requeues);
    }
    result
}

pub(super) fn deliver(d: v1::Delivery) -> v1::Response {
    v1::Response {
        result: Some(response::Result::Delivery(d)),
    }
}

pub(super) async fn write_bytes(send: &mut SendStream, bytes: &[u8]) -> Result<(), NativeError> {
    send.write_all(bytes)
        .await
        .map_err(|e| NativeError::new(ErrorCode::Unavailable, format!("stream closed: {e}")))
}

pub(super) async fn write(send: &mut SendStream, r: &v1::Response) -> Result<(), NativeError> {
    framed::write(send, r)
        .await
        .map_err(|e| NativeError::new(ErrorCode::Unavailable, format!("stream closed: {e}")))
}

pub(crate) async fn topic(
    ctx: &Ctx,
    s: v1::SubscribeTopic,
    send: &mut SendStream,
    reader: FrameReader<RecvStream>,
) -> Result<(), NativeError> {
    if !s.group.is_empty() {
        return super::group::topic(ctx, s, send, reader).await;
    }
    let start = start_of(&s);
    let mut stream = StreamReader::open(&ctx.core, &s.topic, start).map_err(stream_error)?;
    let prefetch = prefetch(ctx, s.prefetch);
    let mut settles = settle_reader(reader);
    write(send, &subscribed(&s.topic)).await?;
    let mut outstanding = std::collections::HashSet::new();
    let mut next_tag: u64 = 0;
    loop {
        let credit = prefetch.saturating_sub(outstanding.len());
        if credit > 0 {
            let records = stream.poll(credit).map_err(stream_error)?;
            if !records.is_empty() {
                for r in records {
                    next_tag += 1;
                    outstanding.insert(next_tag);
                    let delivery = topic_delivery(&s.topic, next_tag, r);
                    write(send, &deliver(delivery)).await?;
                }
                continue;
            }
        }
        tokio::select! {
            _ = stream.wait(), if credit > 0 => {}
            _ = tokio::time::sleep(TOPIC_RECHECK) => {}
            settle = settles.recv() => match settle {
                Some(Ok(settle)) => {
                    if !outstanding.remove(&settle.delivery_tag) {
                        return Err(NativeError::new(
                            ErrorCode::UnknownDelivery,
                            format!("unknown delivery tag {}", settle.delivery_tag),
                        ));
                    }
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            },
        }
    }
}

/// Where a topic subscription starts (a group member: where a partition without a committed
/// offset starts).
pub(super) fn start_of(s: &v1::SubscribeTopic) -> StreamStart {
    use v1::subscribe_topic::Start;
    match s.start {
        None | Some(Start::Latest(_)) => StreamStart::Next,
        Some(Start::Earliest(_)) => StreamStart::First,
        Some(Start::Offset(o)) => StreamStart::Offset(o),
        Some(Start::TimestampMs(t)) => StreamStart::Timestamp(t),
    }
}

/// The delivery of a record read from `topic`.
pub(super) fn topic_delivery(topic: &str, tag: u64, r: StreamRecord) -> v1::Delivery {
    let at = RecordLocation {
        topic,
        partition: r.partition,
        offset: r.offset,
    };
    v1::Delivery {
        delivery_tag: tag,
        exchange: topic.to_string(),
        routing_key: r
            .record
            .key
            .as_ref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default(),
        message: Some(convert::from_record(&r.record, Some(at))),
        redelivered: false,
        delivery_count: 0,
        partition: r.partition,
        offset: r.offset,
    }
}

pub(super) fn stream_error(e: StreamError) -> NativeError {
    match e {
        StreamError::NotFound(name) => {
            NativeError::new(ErrorCode::NotFound, format!("unknown topic `{name}`"))
        }
        StreamError::Broker(b) => b.into(),
        StreamError::Log(l) => l.into(),
        other => NativeError::new(ErrorCode::InvalidArgument, other.to_string()),
    }
}
