//! queue.declare / bind / unbind / purge / delete, on the core's router.
//!
//! The connection id is passed as the owner of exclusive queues, so the core can refuse other
//! connections (405) and delete the queue when its connection ends. Message counts come from
//! the queue's cursor state, clamped to the 32 bits AMQP has for them.

use amq_protocol::protocol::{queue, AMQPClass};

use super::{check_name, Ctx, Reply};
use crate::broker::routing::QueueSpec;
use crate::meta::{BindingDef, DestinationKind};
use crate::protocol::amqp::convert::table_to_json;
use crate::protocol::amqp::stream_consumer;

/// `server_named`: the client sent an empty name and the connection named the queue with
/// [`crate::broker::routing::server_queue_name`] (so permissions could be checked on it).
pub async fn declare(ctx: &Ctx<'_>, m: queue::Declare, server_named: bool) -> Reply {
    if m.queue.as_str() == crate::protocol::amqp::reply_to::PSEUDO_QUEUE {
        // The direct reply-to pseudo-queue always "exists" (RabbitMQ answers declare-ok,
        // passive or not): kombu and Celery declare every queue they consume from.
        return Ok((!m.nowait).then(|| {
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                queue: m.queue.clone(),
                message_count: 0,
                consumer_count: 0,
            }))
        }));
    }
    check_name("queue", m.queue.as_str())?;
    // Streams are topics: declared (and checked passively) before the classic queue path,
    // which does not know x-queue-type=stream.
    let stream_view = if server_named {
        // Streams are never server-named: let the stream path see the empty name it refuses.
        let mut unnamed = m.clone();
        unnamed.queue = "".into();
        std::borrow::Cow::Owned(unnamed)
    } else {
        std::borrow::Cow::Borrowed(&m)
    };
    if let Some(reply) = stream_consumer::declare(ctx, &stream_view).await {
        return reply;
    }
    let spec = QueueSpec {
        vhost: ctx.vhost.to_string(),
        name: m.queue.as_str().to_string(),
        passive: m.passive,
        durable: m.durable,
        exclusive_owner: m.exclusive.then_some(ctx.connection_id),
        auto_delete: m.auto_delete,
        arguments: table_to_json(&m.arguments),
        connection: ctx.connection_id,
        server_named,
    };
    let d = ctx.core.router().declare_queue(spec).await?;
    Ok((!m.nowait).then(|| {
        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
            queue: d.queue.name().to_string().into(),
            message_count: d.message_count.min(u64::from(u32::MAX)) as u32,
            consumer_count: d.consumer_count,
        }))
    }))
}

fn binding(
    ctx: &Ctx<'_>,
    q: &str,
    ex: &str,
    key: &str,
    args: &amq_protocol::types::FieldTable,
) -> BindingDef {
    BindingDef {
        vhost: ctx.vhost.to_string(),
        source: ex.to_string(),
        destination_kind: DestinationKind::Queue,
        destination: q.to_string(),
        routing_key: key.to_string(),
        arguments: table_to_json(args),
    }
}

pub async fn bind(ctx: &Ctx<'_>, m: queue::Bind) -> Reply {
    let b = binding(
        ctx,
        m.queue.as_str(),
        m.exchange.as_str(),
        m.routing_key.as_str(),
        &m.arguments,
    );
    ctx.core.router().bind(b).await?;
    Ok(
        (!m.nowait).then_some(AMQPClass::Queue(queue::AMQPMethod::BindOk(
            queue::BindOk {},
        ))),
    )
}

pub async fn unbind(ctx: &Ctx<'_>, m: queue::Unbind) -> Reply {
    let b = binding(
        ctx,
        m.queue.as_str(),
        m.exchange.as_str(),
        m.routing_key.as_str(),
        &m.arguments,
    );
    ctx.core.router().unbind(b).await?;
    Ok(Some(AMQPClass::Queue(queue::AMQPMethod::UnbindOk(
        queue::UnbindOk {},
    ))))
}

pub async fn purge(ctx: &Ctx<'_>, m: queue::Purge) -> Reply {
    let n = ctx.core.router().purge_queue(ctx.vhost, m.queue.as_str())?;
    Ok((!m.nowait).then(|| {
        AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
            message_count: n.min(u64::from(u32::MAX)) as u32,
        }))
    }))
}

pub async fn delete(ctx: &Ctx<'_>, m: queue::Delete) -> Reply {
    if let Some(reply) = stream_consumer::delete(ctx, &m).await {
        return reply;
    }
    // Deleting a queue that does not exist answers delete-ok with 0 (RabbitMQ is idempotent).
    let n = match ctx
        .core
        .router()
        .delete_queue(
            ctx.vhost,
            m.queue.as_str(),
            m.if_unused,
            m.if_empty,
            Some(ctx.connection_id),
        )
        .await
    {
        Err(crate::broker::routing::RoutingError::NotFound { .. }) => 0,
        other => other?,
    };
    Ok((!m.nowait).then(|| {
        AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
            message_count: n.min(u64::from(u32::MAX)) as u32,
        }))
    }))
}
