//! The AMQP 0-9-1 adapter: RabbitMQ clients talk to the core through it, unchanged.
//!
//! Layers, bottom up: [`codec`] (pure framing over bytes, `amq-protocol` for method and header
//! encoding), [`convert`] (the boundary with the core: message <-> record mapping, field tables
//! <-> JSON, core errors -> reply codes), [`handlers`] (exchange and queue methods as calls on
//! the core's router), [`channel`] (publish assembly, consumers, acks, prefetch, confirms) and
//! [`connection`] (handshake, authentication, tuning, heartbeats, the frame loop and the single
//! socket writer, connection.blocked under a resource alarm), plus [`reply_to`] (direct
//! reply-to, which bypasses queues) and [`bounded`] (records whose fields exceed AMQP's short
//! strings or frame_max are delivered with the excess moved to documented headers). Exchanges, queues and bindings live in the core (`broker::routing`,
//! `broker::queue`); this module never stores a message itself.

pub mod bounded;
pub mod channel;
pub mod codec;
pub mod connection;
pub mod convert;
pub mod handlers;
pub mod reply_to;
pub mod stream_consumer;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::broker::BrokerCore;
use crate::config::AmqpSettings;

/// Accepts AMQP connections until shutdown.
pub async fn serve(
    listener: TcpListener,
    core: BrokerCore,
    settings: AmqpSettings,
    shutdown: watch::Receiver<bool>,
) {
    let settings = Arc::new(settings);
    // The memory and disk alarms that block publishers run in `observe::alarms`.
    core.router().set_vhosts(&settings.vhosts);
    // Dead letters are routed by their headers, which only this adapter can decode.
    core.router()
        .set_headers_reader(convert::record_headers_json);
    let max_connections = settings.max_connections;
    super::accept_loop_limited(
        "amqp",
        listener,
        shutdown,
        max_connections,
        move |stream, peer, shutdown| {
            connection::serve(stream, peer, core.clone(), settings.clone(), shutdown)
        },
        move |stream| connection::refuse(stream, max_connections),
    )
    .await
}
