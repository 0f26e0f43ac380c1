//! exchange.declare / delete / bind / unbind, on the core's router.
//!
//! Each handler converts the method's fields (field tables to JSON via `convert`) into the
//! core's definitions and lets [`crate::broker::routing::Router`] apply RabbitMQ's rules
//! (reserved `amq.` names, equivalence on re-declare, durable bindings only between durable
//! ends). Errors come back as `RoutingError` and become reply codes through `AmqpError::from`.

use amq_protocol::protocol::{exchange, AMQPClass};

use super::{check_name, Ctx, Reply};
use crate::meta::{BindingDef, DestinationKind, ExchangeDef};
use crate::protocol::amqp::convert::table_to_json;

pub async fn declare(ctx: &Ctx<'_>, m: exchange::Declare) -> Reply {
    check_name("exchange", m.exchange.as_str())?;
    let def = ExchangeDef {
        vhost: ctx.vhost.to_string(),
        name: m.exchange.as_str().to_string(),
        kind: m.kind.as_str().to_string(),
        durable: m.durable,
        auto_delete: m.auto_delete,
        internal: m.internal,
        arguments: table_to_json(&m.arguments),
    };
    ctx.core.router().declare_exchange(def, m.passive).await?;
    Ok(
        (!m.nowait).then_some(AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(
            exchange::DeclareOk {},
        ))),
    )
}

pub async fn delete(ctx: &Ctx<'_>, m: exchange::Delete) -> Reply {
    ctx.core
        .router()
        .delete_exchange(ctx.vhost, m.exchange.as_str(), m.if_unused)
        .await?;
    Ok(
        (!m.nowait).then_some(AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(
            exchange::DeleteOk {},
        ))),
    )
}

fn e2e(
    ctx: &Ctx<'_>,
    destination: &str,
    source: &str,
    key: &str,
    args: &amq_protocol::types::FieldTable,
) -> BindingDef {
    BindingDef {
        vhost: ctx.vhost.to_string(),
        source: source.to_string(),
        destination_kind: DestinationKind::Exchange,
        destination: destination.to_string(),
        routing_key: key.to_string(),
        arguments: table_to_json(args),
    }
}

pub async fn bind(ctx: &Ctx<'_>, m: exchange::Bind) -> Reply {
    let b = e2e(
        ctx,
        m.destination.as_str(),
        m.source.as_str(),
        m.routing_key.as_str(),
        &m.arguments,
    );
    ctx.core.router().bind(b).await?;
    Ok(
        (!m.nowait).then_some(AMQPClass::Exchange(exchange::AMQPMethod::BindOk(
            exchange::BindOk {},
        ))),
    )
}

pub async fn unbind(ctx: &Ctx<'_>, m: exchange::Unbind) -> Reply {
    let b = e2e(
        ctx,
        m.destination.as_str(),
        m.source.as_str(),
        m.routing_key.as_str(),
        &m.arguments,
    );
    ctx.core.router().unbind(b).await?;
    Ok(
        (!m.nowait).then_some(AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(
            exchange::UnbindOk {},
        ))),
    )
}
