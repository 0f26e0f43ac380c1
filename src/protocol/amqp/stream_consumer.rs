//! Streams over AMQP 0-9-1, as RabbitMQ's stream queues: `queue.declare` with
//! `x-queue-type=stream`, `basic.consume` with `x-stream-offset`, and the stream-specific
//! refusals. The core does the reading ([`crate::broker::stream`]); this module parses the
//! arguments, maps errors to reply codes and runs one delivery task per stream consumer.
//!
//! Following RabbitMQ: a stream is durable, never exclusive or auto-delete (406 otherwise); a
//! consumer needs a per-consumer prefetch (406 without one) and manual acks (540 with
//! `no-ack`); `basic.get` and `basic.nack`/`basic.reject` answer 540. Acks only return
//! credit: nothing is removed. `x-stream-offset` takes `first`, `last`, `next` (the default),
//! an integer offset, an AMQP timestamp (seconds) or an interval string such as `"1h"` (the
//! units of `x-max-age`: `Y M D h m s`); anything else is 406. Each delivery carries an
//! `x-stream-offset` header (long) with its partition offset; on topics of more than one
//! partition it also carries `x-stream-partition` (int), since offsets are per partition.
//!
//! Any topic of the default vhost that is not shadowed by a classic queue of the same name
//! can be consumed as a stream; streams are topics, so their names follow Kafka's rules.

use std::collections::BTreeMap;
use std::sync::Arc;

use amq_protocol::protocol::{basic, queue, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable};
use bytes::BytesMut;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::channel::Out;
use super::codec::{encode_content, encode_method};
use super::convert::{self, AmqpError};
use super::handlers::{Ctx, Reply};
use crate::broker::routing::{Published, DEFAULT_VHOST, EXCHANGE_HEADER};
use crate::broker::stream::{parse_age, StreamError, StreamReader, StreamSettings, StreamStart};
use crate::broker::{BrokerCore, BrokerError};
use crate::log::SimpleRecord;

/// How often an idle stream consumer re-checks that its topic still exists (the core has no
/// deletion notification); a deleted stream's consumers get basic.cancel within this time.
const REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether `name` in `vhost` is read as a stream: a topic, not shadowed by a classic queue.
pub fn is_stream(core: &BrokerCore, vhost: &str, name: &str) -> bool {
    vhost == DEFAULT_VHOST
        && core.router().queue(vhost, name).is_none()
        && core.topic(name).is_some()
}

fn rs(name: &str, vhost: &str) -> String {
    format!("queue '{name}' in vhost '{vhost}'")
}

/// Maps core stream errors to AMQP replies.
fn amqp_error(e: StreamError, vhost: &str) -> AmqpError {
    match e {
        StreamError::NotFound(name) => AmqpError::channel(404, format!("no {}", rs(&name, vhost))),
        StreamError::Inequivalent { .. } => AmqpError::channel(406, e.to_string()),
        StreamError::Broker(BrokerError::InvalidTopicName { name, reason }) => {
            AmqpError::channel(406, format!("invalid stream name '{name}': {reason}"))
        }
        StreamError::Broker(BrokerError::InvalidConfig { key, message }) => {
            AmqpError::channel(406, format!("invalid stream argument ({key}): {message}"))
        }
        other => AmqpError::connection(541, other.to_string()),
    }
}

/// An integer argument of any AMQP integer type.
fn integer(v: &AMQPValue) -> Option<i64> {
    Some(match v {
        AMQPValue::ShortShortInt(n) => i64::from(*n),
        AMQPValue::ShortShortUInt(n) => i64::from(*n),
        AMQPValue::ShortInt(n) => i64::from(*n),
        AMQPValue::ShortUInt(n) => i64::from(*n),
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        AMQPValue::LongLongInt(n) => *n,
        _ => return None,
    })
}

fn text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// Parses `x-stream-offset` (RabbitMQ's `parse_offset_arg`); absent means `next`.
pub fn parse_offset(args: &FieldTable, now_ms: i64) -> Result<StreamStart, AmqpError> {
    let Some(v) = args.inner().get("x-stream-offset") else {
        return Ok(StreamStart::Next);
    };
    let invalid = || AmqpError::channel(406, format!("invalid arg 'x-stream-offset': {v:?}"));
    if let AMQPValue::Timestamp(secs) = v {
        let ms = i64::try_from(*secs).ok().and_then(|s| s.checked_mul(1000));
        return ms.map(StreamStart::Timestamp).ok_or_else(invalid);
    }
    if let Some(n) = integer(v) {
        return Ok(StreamStart::Offset(n.max(0)));
    }
    match text(v).as_deref() {
        Some("first") => Ok(StreamStart::First),
        Some("last") => Ok(StreamStart::Last),
        Some("next") => Ok(StreamStart::Next),
        Some(s) => parse_age(s)
            .map(|age| StreamStart::Timestamp(now_ms.saturating_sub(age)))
            .ok_or_else(invalid),
        None => Err(invalid()),
    }
}

/// The stream retention arguments of a declaration; 406 names a bad one.
pub fn parse_settings(args: &FieldTable) -> Result<StreamSettings, AmqpError> {
    let mut s = StreamSettings::default();
    for (key, v) in args.inner() {
        let bad = || AmqpError::channel(406, format!("invalid arg '{}': {v:?}", key.as_str()));
        match key.as_str() {
            "x-max-length-bytes" => {
                s.max_length_bytes = Some(
                    integer(v)
                        .and_then(|n| u64::try_from(n).ok())
                        .ok_or_else(bad)?,
                )
            }
            "x-max-age" => {
                s.max_age_ms = Some(text(v).as_deref().and_then(parse_age).ok_or_else(bad)?)
            }
            "x-stream-max-segment-size-bytes" => {
                s.max_segment_size_bytes = Some(
                    integer(v)
                        .filter(|n| *n > 0)
                        .and_then(|n| u64::try_from(n).ok())
                        .ok_or_else(bad)?,
                )
            }
            _ => {}
        }
    }
    Ok(s)
}

fn declare_ok(m: &queue::Declare, message_count: u64, consumer_count: u32) -> Reply {
    Ok((!m.nowait).then(|| {
        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
            queue: m.queue.clone(),
            message_count: message_count.min(u64::from(u32::MAX)) as u32,
            consumer_count,
        }))
    }))
}

/// queue.declare of a stream (`x-queue-type=stream`, or passive on a stream's name); `None`
/// when the declaration is not about a stream.
pub async fn declare(ctx: &Ctx<'_>, m: &queue::Declare) -> Option<Reply> {
    let name = m.queue.as_str();
    let wants_stream = m
        .arguments
        .inner()
        .get("x-queue-type")
        .and_then(text)
        .is_some_and(|t| t == "stream");
    if m.passive {
        // A passive declare checks existence only (RabbitMQ ignores its arguments).
        if !is_stream(ctx.core, ctx.vhost, name) {
            return None;
        }
        let info = ctx.core.stream_info(name)?;
        return Some(declare_ok(m, info.message_count, info.consumer_count));
    }
    if !wants_stream {
        return None;
    }
    Some(declare_new(ctx, m).await)
}

async fn declare_new(ctx: &Ctx<'_>, m: &queue::Declare) -> Reply {
    let name = m.queue.as_str();
    if name.is_empty() {
        return Err(AmqpError::channel(
            406,
            "a stream needs a name (server-named streams are not supported)",
        ));
    }
    if ctx.vhost != DEFAULT_VHOST {
        return Err(AmqpError::channel(
            406,
            format!(
                "streams live in the default vhost only; cannot declare {}",
                rs(name, ctx.vhost)
            ),
        ));
    }
    let refuse = |property: &str| {
        Err(AmqpError::channel(
            406,
            format!("invalid property '{property}' for {}", rs(name, ctx.vhost)),
        ))
    };
    if !m.durable {
        return refuse("non-durable");
    }
    if m.exclusive {
        return refuse("exclusive-owner");
    }
    if m.auto_delete {
        return refuse("auto-delete");
    }
    if ctx.core.router().queue(ctx.vhost, name).is_some() {
        return Err(AmqpError::channel(
            406,
            format!(
                "inequivalent arg 'x-queue-type' for {}: received 'stream' but current is 'classic'",
                rs(name, ctx.vhost)
            ),
        ));
    }
    let settings = parse_settings(&m.arguments)?;
    let info = ctx
        .core
        .declare_stream(name, &settings)
        .await
        .map_err(|e| amqp_error(e, ctx.vhost))?;
    declare_ok(m, info.message_count, info.consumer_count)
}

/// queue.delete of a stream: deletes the topic (RabbitMQ ignores if-unused and if-empty for
/// streams). `None` when `name` is not a stream.
pub async fn delete(ctx: &Ctx<'_>, m: &queue::Delete) -> Option<Reply> {
    let name = m.queue.as_str();
    if !is_stream(ctx.core, ctx.vhost, name) {
        return None;
    }
    let count = ctx.core.stream_info(name).map_or(0, |i| i.message_count);
    let result = match ctx.core.delete_topic(name).await {
        Ok(()) | Err(BrokerError::UnknownTopic(_)) => Ok((!m.nowait).then(|| {
            AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                message_count: count.min(u64::from(u32::MAX)) as u32,
            }))
        })),
        Err(e) => Err(amqp_error(e.into(), ctx.vhost)),
    };
    Some(result)
}

/// basic.get on a stream: RabbitMQ refuses it with 540.
pub fn refuse_get(vhost: &str, name: &str) -> AmqpError {
    AmqpError::connection(
        540,
        format!(
            "basic.get not supported by stream queues {}",
            rs(name, vhost)
        ),
    )
}

/// basic.nack / basic.reject of a stream delivery: RabbitMQ refuses them with 540.
pub fn refuse_requeue() -> AmqpError {
    AmqpError::connection(
        540,
        "basic.nack and basic.reject not supported by stream queues",
    )
}

/// Whether a settle of `tag` (with `multiple`) covers any unacked stream delivery.
pub fn has_tags(unacked: &BTreeMap<u64, String>, tag: u64, multiple: bool) -> bool {
    if multiple {
        (tag == 0 && !unacked.is_empty()) || unacked.range(..=tag).next().is_some()
    } else {
        unacked.contains_key(&tag)
    }
}

/// Removes the stream deliveries a settle of `tag` (with `multiple`; tag 0 means all)
/// covers; returns their consumer tags, whose credit comes back.
pub fn take_tags(unacked: &mut BTreeMap<u64, String>, tag: u64, multiple: bool) -> Vec<String> {
    if !multiple {
        return unacked.remove(&tag).into_iter().collect();
    }
    let rest = if tag == 0 {
        BTreeMap::new()
    } else {
        unacked.split_off(&(tag + 1))
    };
    std::mem::replace(unacked, rest).into_values().collect()
}

/// A publish to the default exchange whose routing key names a stream: appended to it, with
/// an empty `ferry.exchange` header so stream consumers see exchange "" (RabbitMQ does).
pub async fn publish(
    core: &BrokerCore,
    name: &str,
    record: SimpleRecord,
) -> Result<Published, AmqpError> {
    let mut record = record;
    record.headers.retain(|(k, _)| k != EXCHANGE_HEADER);
    record
        .headers
        .insert(0, (EXCHANGE_HEADER.to_string(), Some(bytes::Bytes::new())));
    let pending = core
        .stream_append(name, record)
        .await
        .map_err(|e| amqp_error(e, DEFAULT_VHOST))?;
    Ok(Published {
        pending: vec![crate::broker::routing::Durable::Append(pending)],
        routed: true,
        ..Published::default()
    })
}

/// The channel's delivery book as a stream consumer needs it: credit from prefetch, a
/// delivery tag per delivery (whose ack only returns credit), and a signal when credit may
/// have come back.
pub trait StreamBook: Send + Sync + 'static {
    /// Deliveries consumer `tag` may send now.
    fn credit(&self, tag: &str, prefetch: u16) -> usize;
    /// Records an unacked stream delivery of consumer `tag`; returns its delivery tag.
    fn record_delivery(&self, tag: &str) -> u64;
    /// Changes whenever acks or qos may have returned credit.
    fn subscribe_credit(&self) -> watch::Receiver<u64>;
}

/// A running stream consumer.
pub struct StreamConsumer {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl StreamConsumer {
    /// Stops the delivery task and waits for it (its unacked deliveries stay with the book).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// What basic.consume on a stream asked for.
pub struct ConsumeRequest<'a> {
    pub vhost: &'a str,
    pub name: &'a str,
    pub tag: String,
    pub no_ack: bool,
    pub nowait: bool,
    pub arguments: &'a FieldTable,
    /// The channel's per-consumer prefetch (basic.qos global=false).
    pub prefetch: u16,
}

/// basic.consume on a stream: checks RabbitMQ's preconditions, positions a reader, answers
/// consume-ok and starts delivering.
pub async fn start(
    core: &BrokerCore,
    channel: u16,
    out: &Out,
    book: Arc<dyn StreamBook>,
    req: ConsumeRequest<'_>,
) -> Result<StreamConsumer, AmqpError> {
    if req.prefetch == 0 {
        return Err(AmqpError::channel(
            406,
            format!(
                "consumer prefetch count is not set for {}",
                rs(req.name, req.vhost)
            ),
        ));
    }
    if req.no_ack {
        return Err(AmqpError::connection(
            540,
            format!(
                "automatic acknowledgement not supported by stream queues {}",
                rs(req.name, req.vhost)
            ),
        ));
    }
    let start = parse_offset(req.arguments, core.clock().now_ms())?;
    let reader = StreamReader::open(core, req.name, start).map_err(|e| amqp_error(e, req.vhost))?;
    if !req.nowait {
        out.method(
            channel,
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                consumer_tag: req.tag.clone().into(),
            })),
        )
        .await;
    }
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run(Task {
        channel,
        out: out.clone(),
        book,
        reader,
        tag: req.tag,
        prefetch: req.prefetch,
        stop: stop_rx,
    }));
    Ok(StreamConsumer { stop, task })
}

struct Task {
    channel: u16,
    out: Out,
    book: Arc<dyn StreamBook>,
    reader: StreamReader,
    tag: String,
    prefetch: u16,
    stop: watch::Receiver<bool>,
}

async fn run(mut t: Task) {
    let mut credit = t.book.subscribe_credit();
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if *t.stop.borrow_and_update() {
            return;
        }
        credit.borrow_and_update();
        let n = t.book.credit(&t.tag, t.prefetch);
        // Polled even without credit, so a deleted stream is noticed.
        match t.reader.poll(n) {
            Ok(records) if !records.is_empty() => {
                let partitioned = t.reader.partition_count() > 1;
                crate::observe::metrics::record_delivered(records.len(), 0);
                let mut b = BytesMut::new();
                for r in records {
                    let delivery_tag = t.book.record_delivery(&t.tag);
                    // A record without an id of its own is identified by its place in the
                    // topic, as Kafka consumers see it.
                    let o = convert::from_record_at(
                        &r.record,
                        Some(crate::broker::event::RecordLocation {
                            topic: t.reader.name(),
                            partition: r.partition,
                            offset: r.offset,
                        }),
                    );
                    let mut headers = o.properties.headers().clone().unwrap_or_default();
                    headers.insert("x-stream-offset".into(), AMQPValue::LongLongInt(r.offset));
                    if partitioned {
                        headers
                            .insert("x-stream-partition".into(), AMQPValue::LongInt(r.partition));
                    }
                    let properties = o.properties.with_headers(headers);
                    encode_method(
                        t.channel,
                        AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                            consumer_tag: t.tag.clone().into(),
                            delivery_tag,
                            redelivered: false,
                            exchange: o.exchange,
                            routing_key: o.routing_key,
                        })),
                        &mut b,
                    );
                    encode_content(t.channel, properties, &o.body, t.out.frame_max, &mut b);
                }
                if !t.out.send(b.freeze()).await {
                    return;
                }
                continue;
            }
            Ok(_) => {}
            Err(StreamError::NotFound(_)) => {
                // consumer_cancel_notify: the stream was deleted under the consumer.
                t.out.cancel_consumer(t.channel, &t.tag, &mut t.stop).await;
                return;
            }
            Err(e) => {
                tracing::warn!(stream = t.reader.name(), error = %e, "reading a stream for delivery failed");
            }
        }
        tokio::select! {
            _ = t.reader.wait(), if n > 0 => {}
            r = credit.changed() => if r.is_err() { return },
            r = t.stop.changed() => if r.is_err() { return },
            _ = tick.tick() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::LongString;

    fn table(v: AMQPValue) -> FieldTable {
        let mut t = FieldTable::default();
        t.insert("x-stream-offset".into(), v);
        t
    }

    fn long(s: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
    }

    #[test]
    fn offsets_parse_like_rabbitmq() {
        let now = 10_000_000;
        let p = |v| parse_offset(&table(v), now).map_err(|e| e.reply_text());
        assert_eq!(
            parse_offset(&FieldTable::default(), now).ok(),
            Some(StreamStart::Next)
        );
        assert_eq!(p(long("first")), Ok(StreamStart::First));
        assert_eq!(p(long("last")), Ok(StreamStart::Last));
        assert_eq!(p(long("next")), Ok(StreamStart::Next));
        assert_eq!(p(AMQPValue::LongLongInt(42)), Ok(StreamStart::Offset(42)));
        assert_eq!(p(AMQPValue::ShortShortUInt(7)), Ok(StreamStart::Offset(7)));
        assert_eq!(
            p(AMQPValue::Timestamp(1_000)),
            Ok(StreamStart::Timestamp(1_000_000))
        );
        assert_eq!(p(long("1h")), Ok(StreamStart::Timestamp(now - 3_600_000)));
        for bad in [
            long("firstt"),
            long("0h"),
            long(""),
            AMQPValue::Boolean(true),
        ] {
            let e = parse_offset(&table(bad.clone()), now).err();
            assert_eq!(e.map(|e| e.code), Some(406), "{bad:?}");
        }
    }

    #[test]
    fn retention_arguments_are_checked() {
        let mut t = FieldTable::default();
        t.insert("x-max-age".into(), long("7D"));
        t.insert(
            "x-max-length-bytes".into(),
            AMQPValue::LongLongInt(1_000_000),
        );
        t.insert(
            "x-stream-max-segment-size-bytes".into(),
            AMQPValue::LongInt(500_000),
        );
        let s = parse_settings(&t).map_err(|e| e.reply_text());
        assert_eq!(
            s,
            Ok(StreamSettings {
                max_length_bytes: Some(1_000_000),
                max_age_ms: Some(7 * 86_400_000),
                max_segment_size_bytes: Some(500_000),
            })
        );
        let mut bad = FieldTable::default();
        bad.insert("x-max-age".into(), long("7 days"));
        assert!(parse_settings(&bad).is_err());
        let mut bad = FieldTable::default();
        bad.insert("x-max-length-bytes".into(), AMQPValue::LongLongInt(-1));
        assert!(parse_settings(&bad).is_err());
    }
}
