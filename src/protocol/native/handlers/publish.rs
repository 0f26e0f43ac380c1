//! Publish and batch publish: each message is converted at the edge, checked against the
//! destination's schema validation (a refusal is `SCHEMA_REJECTED`; a batch is checked whole
//! before any of it is stored), handed to the core (a topic's partition log, or the router for
//! an exchange), and answered only once every copy is durable (a confirm). Publishes are
//! counted in the event catalog with the producer `native:<client name>` (or
//! `native-user:<user>`).

use bytes::Bytes;

use super::super::connection::Ctx;
use super::super::convert::{self, NativeError};
use crate::broker::catalog::{record_event, FlowKind};
use crate::broker::message::Message;
use crate::broker::routing::{Durable, DEFAULT_VHOST};
use crate::broker::schema_check::{schema_dead_letter_target, MessageRejection, MessageView};
use crate::broker::topic_router::partition_for_key;
use crate::log::SimpleRecord;
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
pub(super) struct Submitted {
    pending: Vec<Durable>,
    partition: i32,
    id: String,
    duplicate: bool,
    queues: u32,
}

/// Converts, checks and hands one publish to the core; its answer waits on [`confirm`]
/// (see `publish_stream`, which answers every publish).
pub(super) async fn submit_one(ctx: &Ctx, p: v1::Publish) -> Result<Submitted, NativeError> {
    let message = p
        .message
        .ok_or_else(|| NativeError::malformed("publish has no message"))?;
    let destination = p
        .destination
        .ok_or_else(|| NativeError::malformed("publish has no destination"))?;
    let dest = destination_of(ctx, &destination)?;
    let prepared = prepare(ctx, &dest, message, 0)?;
    observe_in_catalog(ctx, &dest, std::slice::from_ref(&prepared));
    submit(ctx, &dest, prepared, 0).await
}

/// The same for a batch; the answer waits on [`confirm_batch`].
pub(super) async fn submit_batch(
    ctx: &Ctx,
    b: v1::PublishBatch,
) -> Result<Vec<Submitted>, NativeError> {
    let destination: v1::publish::Destination = b
        .destination
        .ok_or_else(|| NativeError::malformed("publish batch has no destination"))?
        .into();
    let dest = destination_of(ctx, &destination)?;
    // Every message is converted and checked before any is stored, so a refused one refuses
    // the batch whole (as Kafka refuses a batch with an invalid record).
    let mut prepared = Vec::with_capacity(b.messages.len());
    for (index, message) in b.messages.into_iter().enumerate() {
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        prepared.push(prepare(ctx, &dest, message, index)?);
    }
    observe_in_catalog(ctx, &dest, &prepared);
    // Every message is queued for append before any is awaited, so one fsync covers the batch.
    let mut submitted = Vec::with_capacity(prepared.len());
    for (index, p) in prepared.into_iter().enumerate() {
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        submitted.push(submit(ctx, &dest, p, index).await?);
    }
    Ok(submitted)
}

pub(super) async fn confirm_batch(
    submitted: Vec<Submitted>,
) -> Result<v1::PublishBatchResult, NativeError> {
    let mut results = Vec::with_capacity(submitted.len());
    for s in submitted {
        results.push(confirm(s).await?);
    }
    Ok(v1::PublishBatchResult { results })
}

/// A message converted to its record and checked against the destination's validation.
struct Prepared {
    record: SimpleRecord,
    id: String,
    key: Option<Bytes>,
    /// Refused by an exchange declared with `x-schema-validation: dead-letter`: the record
    /// goes to its dead-letter exchange instead.
    dead_letter: Option<MessageRejection>,
}

fn prepare(
    ctx: &Ctx,
    dest: &Destination<'_>,
    message: v1::Message,
    index: u32,
) -> Result<Prepared, NativeError> {
    let now = ctx.core.router().now_ms();
    let refused = |r| NativeError::schema_rejected(r, index);
    match dest {
        Destination::Topic { topic, .. } => {
            let key = (!message.key.is_empty()).then(|| Bytes::from(message.key.clone()));
            let (record, id) = convert::to_record(message, key.clone(), now)?;
            if let Some(t) = ctx.core.topic(topic) {
                ctx.core
                    .check_topic_message(&t, MessageView::Record(&record))
                    .map_err(refused)?;
            }
            Ok(Prepared {
                record,
                id,
                key,
                dead_letter: None,
            })
        }
        Destination::Exchange(e) => {
            let key = Some(Bytes::copy_from_slice(e.routing_key.as_bytes()));
            let (record, id) = convert::to_record(message, key.clone(), now)?;
            let vhost = convert::vhost(&e.vhost);
            let mut dead_letter = None;
            if let Some(ex) = (!e.exchange.is_empty())
                .then(|| ctx.core.router().exchange(vhost, &e.exchange))
                .flatten()
            {
                if let Err(r) = ctx
                    .core
                    .check_published(vhost, &ex, MessageView::Record(&record))
                {
                    // The exchange's argument decides, as for an AMQP publisher.
                    if schema_dead_letter_target(&ex.def().arguments).is_none() {
                        return Err(refused(r));
                    }
                    dead_letter = Some(r);
                }
            }
            Ok(Prepared {
                record,
                id,
                key,
                dead_letter,
            })
        }
    }
}

/// Counts the publish in the event catalog, reading its messages only when the topic or
/// exchange is due a sample (see `broker::catalog`).
fn observe_in_catalog(ctx: &Ctx, dest: &Destination<'_>, prepared: &[Prepared]) {
    let (kind, name) = match dest {
        Destination::Topic { topic, .. } => (FlowKind::Topic, *topic),
        Destination::Exchange(e) if e.exchange.is_empty() => (FlowKind::Exchange, "amq.default"),
        Destination::Exchange(e) => (FlowKind::Exchange, e.exchange.as_str()),
    };
    let count = u64::try_from(prepared.len()).unwrap_or(u64::MAX);
    ctx.core
        .catalog()
        .observe(kind, name, ctx.core.clock().now_ms(), count, || {
            let producer = match (ctx.listed.client_name(), ctx.user.get()) {
                (Some(name), _) => Some(format!("native:{name}")),
                (None, Some(user)) => Some(format!("native-user:{user}")),
                (None, None) => None,
            };
            prepared
                .iter()
                .filter_map(|p| record_event(&p.record, producer.as_deref()))
                .collect()
        });
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
    prepared: Prepared,
    index: u32,
) -> Result<Submitted, NativeError> {
    if let Some(reason) = ctx.core.router().subscribe_alarm().borrow().clone() {
        return Err(NativeError::new(
            ErrorCode::Rejected,
            format!("publishing is blocked by a resource alarm: {reason}"),
        ));
    }
    let Prepared {
        record,
        id,
        key,
        dead_letter,
    } = prepared;
    match dest {
        Destination::Topic { topic, partition } => {
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
            let vhost = convert::vhost(&e.vhost);
            let message = Message::from_record(record);
            if let Some(refused) = dead_letter {
                return dead_letter_refused(ctx, e, message, refused, id, index).await;
            }
            let published = ctx
                .core
                .router()
                .publish(vhost, &e.exchange, message)
                .await?;
            if let Some(refused) = published.schema_refused {
                return Err(NativeError::schema_rejected(refused, index));
            }
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

/// Sends a message an exchange with `x-schema-validation: dead-letter` refused to its
/// dead-letter exchange; the publish is confirmed once the dead letter is durable, as an
/// AMQP publisher's is.
async fn dead_letter_refused(
    ctx: &Ctx,
    e: &v1::ExchangeDestination,
    message: Message,
    refused: MessageRejection,
    id: String,
    index: u32,
) -> Result<Submitted, NativeError> {
    let vhost = convert::vhost(&e.vhost);
    let arguments = ctx
        .core
        .router()
        .exchange(vhost, &e.exchange)
        .map(|ex| ex.def().arguments.clone())
        .unwrap_or_default();
    match ctx
        .core
        .dead_letter_refused(vhost, &e.exchange, &arguments, message, &refused)
        .await
    {
        Some(published) => Ok(Submitted {
            pending: published.pending,
            partition: -1,
            id,
            duplicate: false,
            queues: 0,
        }),
        // The exchange was redeclared without dead-lettering since the check.
        None => Err(NativeError::schema_rejected(refused, index)),
    }
}

/// Whether every copy of a publish was a repeat deduplication dropped.
fn is_repeat(copies: &[Durable]) -> bool {
    !copies.is_empty() && copies.iter().all(Durable::is_repeat)
}

pub(super) async fn confirm(s: Submitted) -> Result<v1::PublishResult, NativeError> {
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
