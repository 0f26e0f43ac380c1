//! One AMQP connection: handshake, the frame loop, channel dispatch, heartbeats and closing.
//!
//! The read side runs in the connection task: it decodes whole frames from the buffer
//! ([`codec::decode_frame`] checks sizes before waiting for payloads) and dispatches them. All
//! writing goes through one writer task fed by a bounded channel of encoded frames; handlers,
//! consumer tasks and confirm tasks only ever send to it, so the socket has one writer and a
//! slow client pushes back on the consumers that feed it. The writer also sends a heartbeat
//! whenever it has been idle for the negotiated interval, and the reader closes the connection
//! after two intervals without a byte from the client.
//!
//! Hostile and careless peers are bounded here: the whole handshake (protocol header to
//! connection.open) must finish within `amqp.handshake_timeout_ms` however slowly the bytes
//! trickle in; frames larger than `frame_max` are refused from their header; and while the
//! writer holds most of its byte budget (a client that does not read its socket), the reader
//! stops reading too, so neither deliveries nor confirms for a non-reading client pile up. A
//! client that stays like that for two heartbeat intervals is dropped. Connections beyond
//! `amqp.max_connections` never get here: [`refuse`] answers them.
//!
//! Errors follow AMQP's split: a channel error closes the channel with channel.close and the
//! connection carries on; a connection error sends connection.close, waits briefly for
//! close-ok, and drops the socket. Nothing the peer sends can panic this code.
//!
//! Rooms: this file accepts the socket and owns the connection state; [`handshake`] negotiates
//! it, [`frames`] is the read loop, [`dispatch`] routes methods to channels and handlers, and
//! [`writer`] is the socket's single writer.

mod dispatch;
mod frames;
mod handshake;
mod writer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::protocol::{connection, AMQPClass};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::channel::{Channel, Out, Outbound, WRITE_BUDGET};
use super::codec;
use crate::broker::connections::{NewConnection, Protocol, Registration};
use crate::broker::BrokerCore;
use crate::config::AmqpSettings;
use crate::tls::{ConnSecurity, Transport};

/// How long the writer may take to flush its queue after the connection is done.
const WRITER_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

enum Phase {
    AwaitStartOk,
    AwaitTuneOk,
    AwaitOpen,
    Open,
}

struct Conn {
    id: u64,
    peer: SocketAddr,
    core: BrokerCore,
    settings: Arc<AmqpSettings>,
    out: Out,
    heartbeat_tx: watch::Sender<u16>,
    phase: Phase,
    frame_max: usize,
    channel_max: u16,
    heartbeat: u16,
    vhost: String,
    /// The authenticated user: a published `user_id` property must match it (RabbitMQ's
    /// validated user-id), so consumers can trust it.
    user: String,
    /// Permission decisions of this connection, dropped when the user store changes.
    permissions: crate::protocol::amqp::auth::PermissionCache,
    channels: HashMap<u16, Channel>,
    /// Class and method of the method being handled, for close replies.
    current: (u16, u16),
    /// The client announced the `connection.blocked` capability.
    wants_blocked: bool,
    /// A basic.publish arrived since the connection was last unblocked: under a resource
    /// alarm such a connection stops being read (RabbitMQ blocks publishers, not consumers).
    published: bool,
    /// When the handshake must be done: accept time plus `handshake_timeout_ms`.
    handshake_deadline: tokio::time::Instant,
    /// TLS or not, and the client certificate (which makes EXTERNAL available).
    security: ConnSecurity,
    /// This connection's entry in the core's connection registry (listed while it lives).
    registration: Registration,
}

/// Answers a connection beyond `amqp.max_connections` as RabbitMQ answers one beyond its node
/// connection limit: connection.close 530 (not-allowed) with the reason, then hang up. Sent
/// right after the protocol header, so no resources are spent on authentication. The caller
/// bounds the time this may take.
pub async fn refuse<S: Transport>(stream: S, limit: usize) {
    let (mut rd, mut wr) = stream.split_halves();
    let mut header = [0u8; 8];
    if rd.read_exact(&mut header).await.is_err() {
        return;
    }
    let mut out = BytesMut::new();
    if header != *codec::PROTOCOL_HEADER {
        out.extend_from_slice(codec::PROTOCOL_HEADER);
    } else {
        codec::encode_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 530,
                reply_text: format!(
                    "NOT_ALLOWED - connection refused: connection limit ({limit}) is reached"
                )
                .into(),
                class_id: 0,
                method_id: 0,
            })),
            &mut out,
        );
    }
    let _ = wr.write_all(&out).await;
    let _ = wr.flush().await;
    let _ = wr.shutdown().await;
}

/// Serves one accepted connection until it closes. For TLS, `stream` has finished its
/// handshake and `security` says what it established. `addrs` are the peer's address and the
/// listener's (when known), which name the connection in the management API.
pub async fn serve<S: Transport>(
    stream: S,
    (peer, local): (SocketAddr, Option<SocketAddr>),
    security: ConnSecurity,
    core: BrokerCore,
    settings: Arc<AmqpSettings>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Clamped (to ~49 days) so that adding it to an instant can never overflow.
    let handshake_deadline = tokio::time::Instant::now()
        + Duration::from_millis(settings.handshake_timeout_ms.min(u64::from(u32::MAX)));
    let (mut rd, mut wr) = stream.split_halves();
    let mut buf = BytesMut::with_capacity(8192);
    // The protocol header: exactly `AMQP 0 0 9 1`; anything else gets the right one back.
    loop {
        match codec::check_protocol_header(&buf) {
            Some(true) => break,
            Some(false) => {
                let _ = wr.write_all(codec::PROTOCOL_HEADER).await;
                let _ = wr.flush().await;
                let _ = wr.shutdown().await;
                return;
            }
            None => {
                match tokio::time::timeout_at(handshake_deadline, rd.read_buf(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => {
                        // A short garbage prefix is refused without waiting for 8 bytes.
                        let n = buf.len().min(8);
                        if buf[..n] != codec::PROTOCOL_HEADER[..n] {
                            let _ = wr.write_all(codec::PROTOCOL_HEADER).await;
                            let _ = wr.flush().await;
                            let _ = wr.shutdown().await;
                            return;
                        }
                    }
                    Ok(_) => return,
                    Err(_) => {
                        tracing::info!(%peer, "AMQP client did not send its protocol header in time; closing");
                        return;
                    }
                }
            }
        }
    }
    codec::consume(&mut buf, 8);
    let _connection_gauge = crate::observe::metrics::ConnectionGauge::new("amqp");
    let registration = core.connections().register(NewConnection {
        protocol: Protocol::Amqp,
        peer,
        local,
        tls: security.tls,
    });
    registration.add_received(8);

    let (tx, rx) = mpsc::channel::<Outbound>(1024);
    let (heartbeat_tx, heartbeat_rx) = watch::channel(0u16);
    let mut writer = tokio::spawn(writer::write_loop(
        wr,
        rx,
        heartbeat_rx,
        registration.handle(),
    ));
    let mut conn = Conn {
        id: NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed),
        peer,
        core,
        frame_max: settings.frame_max as usize,
        channel_max: settings.channel_max,
        heartbeat: settings.heartbeat,
        settings,
        out: Out {
            tx,
            budget: Arc::new(tokio::sync::Semaphore::new(WRITE_BUDGET)),
            publish_budget: Arc::new(tokio::sync::Semaphore::new(super::channel::PUBLISH_BUDGET)),
            frame_max: 0,
            replies_first: Arc::new(tokio::sync::RwLock::new(())),
            metrics: crate::observe::metrics::AmqpMetrics::new(),
            connection: registration.handle(),
        },
        heartbeat_tx,
        phase: Phase::AwaitStartOk,
        vhost: String::new(),
        user: String::new(),
        permissions: crate::protocol::amqp::auth::PermissionCache::default(),
        channels: HashMap::new(),
        current: (0, 0),
        wants_blocked: false,
        published: false,
        handshake_deadline,
        security,
        registration,
    };
    conn.out.frame_max = conn.frame_max;
    conn.send_start().await;
    let reason = conn.run(&mut rd, &mut buf, &mut shutdown).await;
    if let Some(err) = reason {
        conn.close_connection(err, &mut rd, &mut buf).await;
    }
    // Frames already queued stay queued, but nothing new is: consumer and confirm tasks
    // waiting for the budget of a client that stopped reading are released, so the cleanup
    // below cannot hang on them.
    conn.out.budget.close();
    conn.cleanup().await;
    drop(conn);
    // The writer flushes what is queued; a client that does not read gets a few seconds.
    if tokio::time::timeout(WRITER_FLUSH_TIMEOUT, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

impl Conn {
    async fn send(&self, channel: u16, m: AMQPClass) {
        self.out.method(channel, m).await;
    }

    async fn cleanup(&mut self) {
        let channels: Vec<_> = self.channels.drain().collect();
        for (_, mut ch) in channels {
            ch.shutdown(&self.core).await;
        }
        self.core.router().connection_closed(self.id).await;
    }
}
