//! The AMQP 0-9-1 adapter: RabbitMQ clients talk to the core through it, unchanged.
//!
//! Layers, bottom up: [`codec`] (pure framing over bytes, `amq-protocol` for method and header
//! encoding), [`convert`] (the boundary with the core: message <-> record mapping, field tables
//! <-> JSON, core errors -> reply codes), [`handlers`] (exchange and queue methods as calls on
//! the core's router), [`channel`] (publish assembly, consumers, acks, prefetch, confirms) and
//! [`connection`] (handshake, tuning, heartbeats, the frame loop and the single
//! socket writer, connection.blocked under a resource alarm), [`auth`] (PLAIN, AMQPLAIN and
//! EXTERNAL with a TLS client certificate), plus [`reply_to`] (direct
//! reply-to, which bypasses queues) and [`bounded`] (records whose fields exceed AMQP's short
//! strings or frame_max are delivered with the excess moved to documented headers). Exchanges, queues and bindings live in the core (`broker::routing`,
//! `broker::queue`); this module never stores a message itself.

pub mod auth;
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
use crate::tls::{ConnSecurity, TlsAcceptor};

/// Accepts AMQP connections, and AMQPS ones if `tls` is given, until shutdown. Each listener
/// has its own `amqp.max_connections` cap.
pub async fn serve(
    listener: TcpListener,
    tls: Option<(TcpListener, Arc<TlsAcceptor>)>,
    core: BrokerCore,
    settings: AmqpSettings,
    shutdown: watch::Receiver<bool>,
) {
    let settings = Arc::new(settings);
    // The memory and disk alarms that block publishers run in `observe::alarms`; the vhosts
    // (configured and created at run time) are set by the server from the user store.
    let max_connections = settings.max_connections;
    let plain = {
        let (core, settings) = (core.clone(), settings.clone());
        super::accept_loop_limited(
            "amqp",
            listener,
            shutdown.clone(),
            max_connections,
            move |stream, peer, shutdown| {
                let local = stream.local_addr().ok();
                connection::serve(
                    stream,
                    (peer, local),
                    ConnSecurity::default(),
                    core.clone(),
                    settings.clone(),
                    shutdown,
                )
            },
            move |stream| connection::refuse(stream, max_connections),
        )
    };
    let Some((tls_listener, acceptor)) = tls else {
        return plain.await;
    };
    let refusing = acceptor.clone();
    let secure = super::accept_loop_limited(
        "amqps",
        tls_listener,
        shutdown,
        max_connections,
        move |stream, peer, shutdown| {
            let (core, settings, acceptor) = (core.clone(), settings.clone(), acceptor.clone());
            async move {
                let local = stream.local_addr().ok();
                if let Some((stream, security)) = acceptor.accept(stream, peer, "amqp").await {
                    let addrs = (peer, local);
                    connection::serve(stream, addrs, security, core, settings, shutdown).await;
                }
            }
        },
        // The refusal is an AMQP frame, so it needs the handshake first; the accept loop
        // bounds the whole of it to a second.
        move |stream| {
            let acceptor = refusing.clone();
            async move {
                let Ok(peer) = stream.peer_addr() else { return };
                if let Some((stream, _)) = acceptor.accept(stream, peer, "amqp").await {
                    connection::refuse(stream, max_connections).await;
                }
            }
        },
    );
    tokio::join!(plain, secure);
}
