//! Publish and batch publish: each message is converted at the edge, handed to the core
//! (a topic's partition log, or the router for an exchange), and answered only once every
//! copy is durable (a confirm).

use bytes::Bytes;

use super::super::connection::Ctx;
use super::super::convert::{self, NativeError};
use crate::broker::routing::{Durable, DEFAULT_VHOST};
use crate::broker::topic_router::partition_for_key;
use crate::proto::v1::{self, ErrorCode};

/// Where a publish goes, checked.
enum Destination<'a> {
    Topic {
        topic: &'a str,
        partition: Option<i32>,
    },
    Exchange(&'a v1::ExchangeDestination),
}

/// A message handed to the core whose copies are not yet durable (a repeat that
/// deduplication dropped is confirmed once its original is: see [`Durable`]).
struct Submitted {
    pending: Vec<Durable>,
    partition: i32,
    id: String,
    duplicate: bool,
    queues: u32,
}

pub(crate) async fn publish(ctx: &Ctx, p: v1::Publish) -> Result<v1::PublishResult, NativeError> {
    let message = p
        .message
        .ok_or_else(|| NativeError::malformed("publish has no message"))?;
    let destination = p
        .destination
        .ok_or_else(|| NativeError::malformed("publish has no destination"))?;
    let dest = destination_of(ctx, &destination)?;
    let submitted = submit(ctx, &dest, message).await?;
    confirm(submitted).await
}

pub(crate) async fn publish_batch(
    ctx: &Ctx,
    b: v1::PublishBatch,
) -> Result<v1::PublishBatchResult, NativeError> {
    let destination: v1::publish::Destination = b
        .destination
        .ok_or_else(|| NativeError::malformed("publish batch has no destination"))?
        .into();
    let dest = destination_of(ctx, &destination)?;
    // Every message is queued for append before any is awaited, so one fsync covers the batch.
    let mut submitted = Vec::with_capacity(b.messages.len());
    for message in b.messages {
        submitted.push(submit(ctx, &dest, message).await?);
    }
    let mut results = Vec::with_capacity(submitted.len());
    for s in submitted {
        results.push(confirm(s).await?);
    }
    Ok(v1::PublishBatchResult { results })
}

fn destination_of<'a>(
    ctx: &Ctx,
    d: &'a v1::publish::Destination,
) -> Result<Destination<'a>, NativeError> {
    let (topic, partition) = match d {
        v1::publish::Destination::Exchange(e) => return exchange_destination(ctx, e),
        v1::publish::Destination::Topic(t) => (&t.topic, t.partition),
    };
    if ctx.core.topic(topic).is_none() {
        return Err(NativeError::new(
            ErrorCode::NotFound,
            format!("unknown topic `{topic}`"),
        ));
    }
    Ok(Destination::Topic { topic, partition })
}

fn exchange_destination<'a>(
    ctx: &Ctx,
    e: &'a v1::ExchangeDestination,
) -> Result<Destination<'a>, NativeError> {
    let vhost = convert::vhost(&e.vhost);
    if !ctx.core.router().vhost_exists(vhost) {
        return Err(NativeError::new(
            ErrorCode::NotFound,
            format!("no vhost '{vhost}'"),
        ));
    }
    Ok(Destination::Exchange(e))
}

/// Same for [`v1::PublishBatch`]'s destination (the same two shapes, another generated type).
impl From<v1::publish_batch::Destination> for v1::publish::Destination {
    fn from(d: v1::publish_batch::Destination) -> Self {
        match d {
            v1::publish_batch::Destination::Topic(t) => v1::publish::Destination::Topic(t),
            v1::publish_batch::Destination::Exchange(e) => v1::publish::Destination::Exchange(e),
        }
    }
}

async fn submit(
    ctx: &Ctx,
    dest: &Destination<'_>,
    message: v1::Message,
) -> Result<Submitted, NativeError> {
    if let Some(reason) = ctx.core.router().subscribe_alarm().borrow().clone() {
        return Err(NativeError::new(
            ErrorCode::Rejected,
            format!("publishing is blocked by a resource alarm: {reason}"),
        ));
    }
    let now = ctx.core.router().now_ms();
    match dest {
        Destination::Topic { topic, partition } => {
            let key = (!message.key.is_empty()).then(|| Bytes::from(message.key.clone()));
            let (record, id) = convert::to_record(message, key.clone(), now)?;
            match partition {
                Some(p) => {
                    // An explicit partition is appended to directly, as a Kafka producer's is.
                    let log = ctx.core.partition(topic, *p)?;
                    let batch = crate::log::try_encode_batch(
                        std::slice::from_ref(&record),
                        &crate::log::EncodeOptions::default(),
                    )?;
                    let pending = log.submit_append(batch).await?;
                    Ok(Submitted {
                        pending: vec![Durable::Append(pending)],
                        partition: *p,
                        id,
                        duplicate: false,
                        queues: 0,
                    })
                }
                None => {
                    // Through the topic's exchange face: the key picks the partition (murmur2)
                    // and the topic's deduplication window (`ferry.dedup.window.ms`) applies.
                    let partitions = ctx.core.topic(topic).map_or(1, |t| t.partition_count());
                    let partition = match &key {
                        Some(k) => partition_for_key(k, partitions),
                        None => -1,
                    };
                    let published = ctx
                        .core
                        .router()
                        .publish_now(DEFAULT_VHOST, topic, record)
                        .await?;
                    let duplicate = is_repeat(&published.pending);
                    Ok(Submitted {
                        pending: published.pending,
                        partition: if duplicate { -1 } else { partition },
                        id,
                        duplicate,
                        queues: 0,
                    })
                }
            }
        }
        Destination::Exchange(e) => {
            let key = Some(Bytes::copy_from_slice(e.routing_key.as_bytes()));
            let (record, id) = convert::to_record(message, key, now)?;
            let published = ctx
                .core
                .router()
                .publish(
                    convert::vhost(&e.vhost),
                    &e.exchange,
                    crate::broker::message::Message::from_record(record),
                )
                .await?;
            if published.rejected {
                return Err(NativeError::new(
                    ErrorCode::Rejected,
                    "a queue the message was routed to is full and rejects publishes",
                ));
            }
            if e.mandatory && !published.routed {
                return Err(NativeError::new(
                    ErrorCode::Unroutable,
                    format!(
                        "no queue matched exchange '{}' with routing key '{}'",
                        e.exchange, e.routing_key
                    ),
                ));
            }
            let queues = u32::try_from(published.pending.len()).unwrap_or(u32::MAX);
            let duplicate = is_repeat(&published.pending);
            Ok(Submitted {
                duplicate,
                pending: published.pending,
                partition: -1,
                id,
                queues,
            })
        }
    }
}

/// Whether every copy of a publish was a repeat deduplication dropped.
fn is_repeat(copies: &[Durable]) -> bool {
    !copies.is_empty() && copies.iter().all(Durable::is_repeat)
}

async fn confirm(s: Submitted) -> Result<v1::PublishResult, NativeError> {
    let mut offset = -1;
    for p in s.pending {
        if let Some(info) = p.wait().await? {
            offset = info.base_offset;
        }
    }
    Ok(v1::PublishResult {
        partition: s.partition,
        offset,
        queues: s.queues,
        id: s.id,
        duplicate: s.duplicate,
    })
}
