//! Declaring and deleting topics, exchanges, queues and bindings.

use std::collections::BTreeMap;

use super::super::connection::Ctx;
use super::super::convert::{self, NativeError};
use crate::broker::BrokerError;
use crate::meta::{BindingDef, DestinationKind, ExchangeDef};
use crate::proto::v1::{self, ErrorCode};

/// Creates a topic; declaring one that exists with the same partition count succeeds, as
/// declarations do in AMQP.
pub(crate) async fn declare_topic(ctx: &Ctx, d: v1::DeclareTopic) -> Result<(), NativeError> {
    let partitions = d.partitions.max(1);
    let configs: BTreeMap<String, String> = d.configs.into_iter().collect();
    match ctx.core.create_topic(&d.name, partitions, configs).await {
        Ok(_) => Ok(()),
        Err(BrokerError::TopicExists(_)) => {
            let existing = ctx.core.topic(&d.name).map_or(0, |t| t.partition_count());
            if existing == partitions as usize {
                Ok(())
            } else {
                Err(NativeError::new(
                    ErrorCode::Conflict,
                    format!(
                        "topic `{}` exists with {existing} partitions, not {partitions}",
                        d.name
                    ),
                ))
            }
        }
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn delete_topic(ctx: &Ctx, d: v1::DeleteTopic) -> Result<(), NativeError> {
    Ok(ctx.core.delete_topic(&d.name).await?)
}

pub(crate) async fn declare_exchange(ctx: &Ctx, d: v1::DeclareExchange) -> Result<(), NativeError> {
    let def = ExchangeDef {
        vhost: convert::vhost(&d.vhost).to_string(),
        name: d.name,
        kind: if d.kind.is_empty() {
            "direct".into()
        } else {
            d.kind
        },
        durable: d.durable,
        auto_delete: d.auto_delete,
        internal: false,
        arguments: convert::arguments("arguments_json", &d.arguments_json)?,
    };
    ctx.core.router().declare_exchange(def, false).await?;
    Ok(())
}

pub(crate) async fn delete_exchange(ctx: &Ctx, d: v1::DeleteExchange) -> Result<(), NativeError> {
    Ok(ctx
        .core
        .router()
        .delete_exchange(convert::vhost(&d.vhost), &d.name, false)
        .await?)
}

pub(crate) async fn declare_queue(
    ctx: &Ctx,
    d: v1::DeclareQueue,
) -> Result<v1::QueueDeclared, NativeError> {
    let spec = crate::broker::routing::QueueSpec {
        vhost: convert::vhost(&d.vhost).to_string(),
        name: d.name,
        passive: d.passive,
        durable: d.durable,
        exclusive_owner: d.exclusive.then_some(ctx.id),
        auto_delete: d.auto_delete,
        arguments: convert::arguments("arguments_json", &d.arguments_json)?,
        connection: ctx.id,
        server_named: false,
    };
    let declared = ctx.core.router().declare_queue(spec).await?;
    Ok(v1::QueueDeclared {
        name: declared.queue.name().to_string(),
        message_count: declared.message_count,
        consumer_count: declared.consumer_count,
    })
}

pub(crate) async fn delete_queue(ctx: &Ctx, d: v1::DeleteQueue) -> Result<(), NativeError> {
    ctx.core
        .router()
        .delete_queue(
            convert::vhost(&d.vhost),
            &d.name,
            false,
            false,
            Some(ctx.id),
        )
        .await?;
    Ok(())
}

fn binding(
    vhost: &str,
    queue: String,
    exchange: String,
    routing_key: String,
    arguments_json: &str,
) -> Result<BindingDef, NativeError> {
    Ok(BindingDef {
        vhost: convert::vhost(vhost).to_string(),
        source: exchange,
        destination_kind: DestinationKind::Queue,
        destination: queue,
        routing_key,
        arguments: convert::arguments("arguments_json", arguments_json)?,
    })
}

pub(crate) async fn bind(ctx: &Ctx, b: v1::Bind) -> Result<(), NativeError> {
    let def = binding(
        &b.vhost,
        b.queue,
        b.exchange,
        b.routing_key,
        &b.arguments_json,
    )?;
    Ok(ctx.core.router().bind(def).await?)
}

pub(crate) async fn unbind(ctx: &Ctx, b: v1::Unbind) -> Result<(), NativeError> {
    let def = binding(
        &b.vhost,
        b.queue,
        b.exchange,
        b.routing_key,
        &b.arguments_json,
    )?;
    Ok(ctx.core.router().unbind(def).await?)
}
