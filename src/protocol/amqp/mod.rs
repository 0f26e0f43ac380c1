//! The AMQP 0-9-1 adapter: RabbitMQ clients talk to the core through it, unchanged.
//!
//! Layers, bottom up: [`codec`] (pure framing over bytes, `amq-protocol` for method and header
//! encoding), [`convert`] (the boundary with the core: message <-> record mapping, field tables
//! <-> JSON, core errors -> reply codes), [`handlers`] (exchange and queue methods as calls on
//! the core's router), [`channel`] (publish assembly, consumers, acks, prefetch, confirms) and
//! [`connection`] (handshake, authentication, tuning, heartbeats, the frame loop and the single
//! socket writer). Exchanges, queues and bindings live in the core (`broker::routing`,
//! `broker::queue`); this module never stores a message itself.

pub mod channel;
pub mod codec;
pub mod connection;
pub mod convert;
pub mod handlers;

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
    super::accept_loop("amqp", listener, shutdown, move |stream, peer, shutdown| {
        connection::serve(stream, peer, core.clone(), settings.clone(), shutdown)
    })
    .await
}
