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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::protocol::{basic, channel, connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::channel::{Channel, ContentState, Out, Outbound, WRITE_BUDGET};
use super::codec::{self, Incoming};
use super::convert::AmqpError;
use super::handlers::{self, Ctx};
use crate::broker::BrokerCore;
use crate::config::AmqpSettings;
use crate::tls::{ConnSecurity, Transport};

/// How long a reader paused for a non-reading client waits before giving up on it when
/// heartbeats are off (with heartbeats, two intervals).
const STALLED_WRITER_TIMEOUT: Duration = Duration::from_secs(120);
/// Free write budget below which the reader pauses, and what it waits for before resuming.
const PAUSE_BELOW: usize = WRITE_BUDGET / 4;
const RESUME_AT: usize = WRITE_BUDGET / 2;
/// How long we wait for close-ok after sending connection.close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the writer may take to flush its queue after the connection is done.
const WRITER_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// The smallest frame_max a client may negotiate (AMQP's frame-min-size is 4096 in 0-9-1).
const MIN_FRAME_MAX: u32 = 4096;

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
    permissions: super::auth::PermissionCache,
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
/// handshake and `security` says what it established.
pub async fn serve<S: Transport>(
    stream: S,
    peer: SocketAddr,
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

    let (tx, rx) = mpsc::channel::<Outbound>(1024);
    let (heartbeat_tx, heartbeat_rx) = watch::channel(0u16);
    let mut writer = tokio::spawn(write_loop(wr, rx, heartbeat_rx));
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
        },
        heartbeat_tx,
        phase: Phase::AwaitStartOk,
        vhost: String::new(),
        user: String::new(),
        permissions: super::auth::PermissionCache::default(),
        channels: HashMap::new(),
        current: (0, 0),
        wants_blocked: false,
        published: false,
        handshake_deadline,
        security,
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

    async fn send_start(&self) {
        let mut caps = FieldTable::default();
        for cap in [
            "publisher_confirms",
            "exchange_exchange_bindings",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
            "consumer_priorities",
            "authentication_failure_close",
            "per_consumer_qos",
            "direct_reply_to",
        ] {
            caps.insert(cap.into(), AMQPValue::Boolean(true));
        }
        let mut props = FieldTable::default();
        let s = |v: &str| AMQPValue::LongString(LongString::from(v.as_bytes().to_vec()));
        props.insert("product".into(), s("Ferry"));
        props.insert("version".into(), s(env!("CARGO_PKG_VERSION")));
        props.insert(
            "platform".into(),
            s(&format!("Rust / {}", std::env::consts::OS)),
        );
        props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: props,
                mechanisms: super::auth::mechanisms(&self.security).into(),
                locales: "en_US".into(),
            })),
        )
        .await;
    }

    /// Reads and handles frames until the client closes (`None`) or a connection error.
    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        buf: &mut BytesMut,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<AmqpError> {
        let mut last_read = tokio::time::Instant::now();
        let mut alarm = self.core.router().subscribe_alarm();
        loop {
            loop {
                if self.published && alarm.borrow_and_update().is_some() {
                    if !self.stay_blocked(&mut alarm, shutdown).await {
                        return Some(AmqpError::connection(320, "broker shutdown"));
                    }
                    // Nothing was read while blocked: the client's silence is ours.
                    last_read = tokio::time::Instant::now();
                }
                let frame = match codec::decode_frame(buf, self.frame_max) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => return Some(AmqpError::connection(e.reply_code(), e.to_string())),
                };
                match self.handle(frame).await {
                    Ok(true) => {}
                    Ok(false) => return None,
                    Err(e) if e.connection => return Some(e),
                    Err(_) => {}
                }
            }
            if self.out.budget.available_permits() < PAUSE_BELOW {
                match self.wait_for_writer(shutdown).await {
                    // Nothing was read while paused: the client's silence is ours.
                    Ok(()) => last_read = tokio::time::Instant::now(),
                    Err(e) => return e,
                }
            }
            // Before the handshake is done the deadline is the handshake timeout; after it,
            // two heartbeat intervals of silence.
            let deadline = match self.phase {
                Phase::Open if self.heartbeat > 0 => {
                    Some(last_read + Duration::from_secs(2 * u64::from(self.heartbeat)))
                }
                Phase::Open => None,
                _ => Some(self.handshake_deadline),
            };
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = rd.read_buf(buf) => match r {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => { crate::observe::metrics::bytes_received("amqp", n); last_read = tokio::time::Instant::now() }
                },
                _ = sleep => {
                    tracing::info!(peer = %self.peer, "AMQP client missed heartbeats or the handshake deadline; closing");
                    return None;
                }
                _ = crate::util::stopped(shutdown) => {
                    return Some(AmqpError::connection(320, "broker shutdown"));
                }
            }
        }
    }

    /// Stops reading while the writer holds most of its budget: the client is not reading
    /// what we already owe it, so reading more of its requests (publishes whose confirms,
    /// gets whose messages) would only queue more for it. Resumes once half the budget is
    /// free. `Err(None)` drops a client stuck like this for two heartbeat intervals (it cannot
    /// be sent connection.close, since it reads nothing); `Err(Some)` on shutdown.
    async fn wait_for_writer(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), Option<AmqpError>> {
        metrics::counter!("ferry_amqp_reader_paused_total").increment(1);
        let limit = match self.heartbeat {
            0 => STALLED_WRITER_TIMEOUT,
            hb => Duration::from_secs(2 * u64::from(hb)),
        };
        let budget = self.out.budget.clone();
        tokio::select! {
            r = tokio::time::timeout(limit, budget.acquire_many(RESUME_AT as u32)) => match r {
                Ok(Ok(_permits)) => Ok(()),
                Ok(Err(_)) => Err(None),
                Err(_) => {
                    tracing::info!(peer = %self.peer, "AMQP client has not read its socket for {limit:?}; closing");
                    Err(None)
                }
            },
            _ = crate::util::stopped(shutdown) => Err(Some(AmqpError::connection(320, "broker shutdown"))),
        }
    }

    /// Holds a publishing connection while the resource alarm is raised: tells the client
    /// (connection.blocked, if it understands it), reads nothing until the alarm clears, then
    /// sends connection.unblocked. Consumers' deliveries and heartbeats keep flowing meanwhile
    /// through the writer. `false` if the broker shuts down first.
    async fn stay_blocked(
        &mut self,
        alarm: &mut watch::Receiver<Option<String>>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let reason = alarm.borrow().clone().unwrap_or_default();
        tracing::info!(peer = %self.peer, reason, "AMQP publisher blocked by a resource alarm");
        if self.wants_blocked {
            self.send(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Blocked(connection::Blocked {
                    reason: reason.into(),
                })),
            )
            .await;
        }
        loop {
            if alarm.borrow_and_update().is_none() {
                break;
            }
            tokio::select! {
                r = alarm.changed() => if r.is_err() { break },
                _ = crate::util::stopped(shutdown) => return false,
            }
        }
        self.published = false;
        if self.wants_blocked {
            self.send(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Unblocked(connection::Unblocked {})),
            )
            .await;
        }
        true
    }

    /// Sends connection.close and waits (briefly) for close-ok.
    async fn close_connection<R: AsyncRead + Unpin>(
        &mut self,
        err: AmqpError,
        rd: &mut R,
        buf: &mut BytesMut,
    ) {
        tracing::debug!(peer = %self.peer, code = err.code, text = %err.text, "closing AMQP connection");
        // Bounded: the write budget may be full of frames for a client that reads nothing.
        let close = self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: err.code,
                reply_text: err.reply_text().into(),
                class_id: self.current.0,
                method_id: self.current.1,
            })),
        );
        if tokio::time::timeout(CLOSE_TIMEOUT, close).await.is_err() {
            return;
        }
        let wait = async {
            loop {
                // Only close-ok matters now; anything else (even garbage) is skipped.
                match codec::decode_frame(buf, self.frame_max) {
                    Ok(Some(Incoming::Method(0, m)))
                        if matches!(
                            *m,
                            AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))
                        ) =>
                    {
                        return
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) => {}
                    Err(_) => return,
                }
                match rd.read_buf(buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, wait).await;
    }

    async fn cleanup(&mut self) {
        let channels: Vec<_> = self.channels.drain().collect();
        for (_, mut ch) in channels {
            ch.shutdown(&self.core).await;
        }
        self.core.router().connection_closed(self.id).await;
    }

    /// Handles one frame. `Ok(false)`: the connection is done.
    async fn handle(&mut self, frame: Incoming) -> Result<bool, AmqpError> {
        match frame {
            Incoming::Heartbeat(0) => Ok(true),
            Incoming::Heartbeat(_) => Err(AmqpError::connection(
                501,
                "heartbeat on a non-zero channel",
            )),
            Incoming::Method(ch, m) => {
                self.current = (m.get_amqp_class_id(), m.get_amqp_method_id());
                let _timer = crate::observe::metrics::AmqpMethodTimer::start(self.current.0);
                match self.phase {
                    Phase::Open => {}
                    _ => return self.handshake(ch, *m).await,
                }
                if ch == 0 {
                    return self.connection_method(*m).await;
                }
                let result = self.channel_method(ch, *m).await;
                self.channel_result(ch, result).await
            }
            Incoming::Header(ch, h) => {
                let forged = h
                    .properties
                    .user_id()
                    .as_ref()
                    .filter(|uid| uid.as_str() != self.user)
                    .map(|uid| uid.as_str().to_string());
                let result = match Self::open_channel(&self.phase, &mut self.channels, ch)? {
                    Some(_) if forged.is_some() => Err(AmqpError::channel(
                        406,
                        format!(
                            "user_id property set to '{}' but authenticated user was '{}'",
                            forged.unwrap_or_default(),
                            self.user
                        ),
                    )),
                    Some(c) => match c.content_header(h.body_size, h.properties) {
                        Ok(ContentState::Done) => {
                            c.finish_publish(&self.core, &self.vhost, &self.out).await
                        }
                        Ok(ContentState::Incomplete) => Ok(()),
                        Err(e) => Err(e),
                    },
                    None => Ok(()),
                };
                self.channel_result(ch, result).await
            }
            Incoming::Body(ch, body) => {
                let result = match Self::open_channel(&self.phase, &mut self.channels, ch)? {
                    Some(c) => match c.content_body(&body) {
                        Ok(ContentState::Done) => {
                            c.finish_publish(&self.core, &self.vhost, &self.out).await
                        }
                        Ok(ContentState::Incomplete) => Ok(()),
                        Err(e) => Err(e),
                    },
                    None => Ok(()),
                };
                self.channel_result(ch, result).await
            }
        }
    }

    /// The channel a content frame is for; `None` if it is closing (frames are dropped).
    fn open_channel<'a>(
        phase: &Phase,
        channels: &'a mut HashMap<u16, Channel>,
        ch: u16,
    ) -> Result<Option<&'a mut Channel>, AmqpError> {
        if !matches!(phase, Phase::Open) {
            return Err(AmqpError::connection(
                505,
                "content before the connection is open",
            ));
        }
        match channels.get_mut(&ch) {
            Some(c) if c.closing => Ok(None),
            Some(c) => Ok(Some(c)),
            None => Err(AmqpError::connection(
                504,
                format!("channel {ch} is not open"),
            )),
        }
    }

    /// Turns a channel error into channel.close (the connection carries on).
    async fn channel_result(
        &mut self,
        ch: u16,
        result: Result<(), AmqpError>,
    ) -> Result<bool, AmqpError> {
        match result {
            Ok(()) => Ok(true),
            Err(e) if e.connection => Err(e),
            Err(e) => {
                if let Some(c) = self.channels.get_mut(&ch) {
                    c.shutdown(&self.core).await;
                    c.closing = true;
                }
                self.send(
                    ch,
                    AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                        reply_code: e.code,
                        reply_text: e.reply_text().into(),
                        class_id: self.current.0,
                        method_id: self.current.1,
                    })),
                )
                .await;
                Ok(true)
            }
        }
    }

    async fn handshake(&mut self, ch: u16, m: AMQPClass) -> Result<bool, AmqpError> {
        if ch != 0 {
            return Err(AmqpError::connection(
                504,
                "channel used before the connection is open",
            ));
        }
        match (&self.phase, m) {
            (Phase::AwaitStartOk, AMQPClass::Connection(connection::AMQPMethod::StartOk(s))) => {
                self.user =
                    super::auth::authenticate(&self.core, self.peer, &self.security, &s).await?;
                self.wants_blocked = matches!(
                    s.client_properties.inner().get("capabilities"),
                    Some(AMQPValue::FieldTable(caps))
                        if matches!(caps.inner().get("connection.blocked"), Some(AMQPValue::Boolean(true)))
                );
                self.phase = Phase::AwaitTuneOk;
                self.send(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
                        channel_max: self.channel_max,
                        frame_max: self.settings.frame_max,
                        heartbeat: self.heartbeat,
                    })),
                )
                .await;
                Ok(true)
            }
            (Phase::AwaitTuneOk, AMQPClass::Connection(connection::AMQPMethod::TuneOk(t))) => {
                let ours = self.settings.frame_max;
                let fm = if t.frame_max == 0 {
                    ours
                } else {
                    t.frame_max.min(ours)
                };
                if fm < MIN_FRAME_MAX {
                    return Err(AmqpError::connection(
                        530,
                        format!("frame_max {fm} is below the minimum {MIN_FRAME_MAX}"),
                    ));
                }
                self.frame_max = fm as usize;
                self.out.frame_max = self.frame_max;
                self.channel_max = match t.channel_max {
                    0 => self.settings.channel_max,
                    n => n.min(self.settings.channel_max),
                };
                self.heartbeat = t.heartbeat;
                let _ = self.heartbeat_tx.send(self.heartbeat);
                self.phase = Phase::AwaitOpen;
                Ok(true)
            }
            (Phase::AwaitOpen, AMQPClass::Connection(connection::AMQPMethod::Open(o))) => {
                let vhost = o.virtual_host.as_str().to_string();
                if !self.core.router().vhost_exists(&vhost) {
                    return Err(AmqpError::connection(
                        530,
                        format!("vhost '{vhost}' not found"),
                    ));
                }
                if !self.may_open(&vhost) {
                    return Err(AmqpError::connection(
                        530,
                        format!("access to vhost '{vhost}' refused for user '{}'", self.user),
                    ));
                }
                self.vhost = vhost;
                self.phase = Phase::Open;
                self.send(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
                )
                .await;
                Ok(true)
            }
            (_, AMQPClass::Connection(connection::AMQPMethod::Close(_))) => {
                self.send(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                )
                .await;
                Ok(false)
            }
            _ => Err(AmqpError::connection(
                503,
                "unexpected method during the handshake",
            )),
        }
    }

    /// Whether the authenticated user may open `vhost`: RabbitMQ's rule, a permission entry
    /// for the user there (configured users get one on every configured vhost).
    fn may_open(&self, vhost: &str) -> bool {
        self.core.users().may_open_vhost(vhost, &self.user)
    }

    async fn connection_method(&mut self, m: AMQPClass) -> Result<bool, AmqpError> {
        match m {
            AMQPClass::Connection(connection::AMQPMethod::Close(_)) => {
                self.cleanup().await;
                self.send(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                )
                .await;
                Ok(false)
            }
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => Ok(false),
            AMQPClass::Connection(connection::AMQPMethod::UpdateSecret(_)) => {
                self.send(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::UpdateSecretOk(
                        connection::UpdateSecretOk {},
                    )),
                )
                .await;
                Ok(true)
            }
            _ => Err(AmqpError::connection(503, "unexpected method on channel 0")),
        }
    }

    async fn channel_method(&mut self, ch: u16, m: AMQPClass) -> Result<(), AmqpError> {
        // channel.open / close / close-ok manage the map itself.
        match &m {
            AMQPClass::Channel(channel::AMQPMethod::Open(_)) => {
                if self.channels.contains_key(&ch) {
                    return Err(AmqpError::connection(
                        504,
                        format!("channel {ch} is already open"),
                    ));
                }
                if ch > self.channel_max {
                    return Err(AmqpError::connection(
                        530,
                        format!("channel {ch} exceeds channel_max {}", self.channel_max),
                    ));
                }
                self.channels.insert(ch, Channel::new(ch));
                self.send(
                    ch,
                    AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
                )
                .await;
                return Ok(());
            }
            AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                if let Some(mut c) = self.channels.remove(&ch) {
                    c.shutdown(&self.core).await;
                }
                self.send(
                    ch,
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                )
                .await;
                return Ok(());
            }
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => {
                if self.channels.get(&ch).is_some_and(|c| c.closing) {
                    self.channels.remove(&ch);
                }
                return Ok(());
            }
            _ => {}
        }
        let Some(c) = self.channels.get_mut(&ch) else {
            return Err(AmqpError::connection(
                504,
                format!("channel {ch} is not open"),
            ));
        };
        if c.closing {
            return Ok(());
        }
        if c.expects_content() {
            return Err(AmqpError::connection(
                505,
                "method frame while content was expected",
            ));
        }
        super::auth::authorize(
            &self.core,
            self.peer.ip(),
            &self.vhost,
            &self.user,
            &mut self.permissions,
            &m,
        )?;
        let ctx = Ctx {
            core: &self.core,
            vhost: &self.vhost,
            connection_id: self.id,
        };
        // Queue and exchange methods may cancel consumers of this connection (queue.delete):
        // their reply goes out before any basic.cancel they cause (see `Out::replies_first`).
        // Never held across a wait for a consumer task, which may be waiting for it.
        let _replies_first = match &m {
            AMQPClass::Queue(_) | AMQPClass::Exchange(_) => {
                Some(self.out.replies_first.clone().write_owned().await)
            }
            _ => None,
        };
        let reply = match m {
            AMQPClass::Channel(channel::AMQPMethod::Flow(f)) => Some(AMQPClass::Channel(
                channel::AMQPMethod::FlowOk(channel::FlowOk { active: f.active }),
            )),
            AMQPClass::Exchange(e) => {
                use amq_protocol::protocol::exchange::AMQPMethod as E;
                match e {
                    E::Declare(m) => handlers::exchange::declare(&ctx, m).await?,
                    E::Delete(m) => handlers::exchange::delete(&ctx, m).await?,
                    E::Bind(m) => handlers::exchange::bind(&ctx, m).await?,
                    E::Unbind(m) => handlers::exchange::unbind(&ctx, m).await?,
                    _ => return Err(AmqpError::connection(503, "unexpected exchange method")),
                }
            }
            AMQPClass::Queue(q) => {
                use amq_protocol::protocol::queue::AMQPMethod as Q;
                match q {
                    Q::Declare(m) => handlers::queue::declare(&ctx, m).await?,
                    Q::Bind(m) => handlers::queue::bind(&ctx, m).await?,
                    Q::Unbind(m) => handlers::queue::unbind(&ctx, m).await?,
                    Q::Purge(m) => handlers::queue::purge(&ctx, m).await?,
                    Q::Delete(m) => handlers::queue::delete(&ctx, m).await?,
                    _ => return Err(AmqpError::connection(503, "unexpected queue method")),
                }
            }
            AMQPClass::Basic(b) => {
                use basic::AMQPMethod as B;
                match b {
                    B::Publish(m) => {
                        self.published = true;
                        c.start_publish(m);
                        None
                    }
                    B::Qos(m) => {
                        c.qos(&m);
                        Some(AMQPClass::Basic(B::QosOk(basic::QosOk {})))
                    }
                    B::Consume(m) => {
                        c.consume(&self.core, &self.vhost, self.id, m, &self.out)
                            .await?;
                        None
                    }
                    B::Cancel(m) => {
                        c.cancel(&self.core, m.consumer_tag.as_str()).await;
                        (!m.nowait).then(|| {
                            AMQPClass::Basic(B::CancelOk(basic::CancelOk {
                                consumer_tag: m.consumer_tag.clone(),
                            }))
                        })
                    }
                    B::Get(m) => {
                        c.get(&self.core, &self.vhost, self.id, m, &self.out)
                            .await?;
                        None
                    }
                    B::Ack(m) => {
                        c.settle(&self.core, m.delivery_tag, m.multiple, None)?;
                        None
                    }
                    B::Nack(m) => {
                        c.settle(&self.core, m.delivery_tag, m.multiple, Some(m.requeue))?;
                        None
                    }
                    B::Reject(m) => {
                        c.settle(&self.core, m.delivery_tag, false, Some(m.requeue))?;
                        None
                    }
                    B::Recover(_) => {
                        c.recover();
                        Some(AMQPClass::Basic(B::RecoverOk(basic::RecoverOk {})))
                    }
                    B::RecoverAsync(_) => {
                        c.recover();
                        None
                    }
                    _ => return Err(AmqpError::connection(503, "unexpected basic method")),
                }
            }
            AMQPClass::Confirm(amq_protocol::protocol::confirm::AMQPMethod::Select(m)) => {
                c.select_confirms(&self.out)?;
                Channel::confirm_select_ok(&m)
            }
            AMQPClass::Tx(t) => {
                use amq_protocol::protocol::tx;
                match t {
                    tx::AMQPMethod::Select(_) => {
                        c.tx_select()?;
                        Some(AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})))
                    }
                    tx::AMQPMethod::Commit(_) => {
                        c.tx_commit(&self.core, &self.vhost, &self.out).await?;
                        Some(AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})))
                    }
                    tx::AMQPMethod::Rollback(_) => {
                        c.tx_rollback()?;
                        Some(AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})))
                    }
                    _ => return Err(AmqpError::connection(503, "unexpected tx method")),
                }
            }
            _ => return Err(AmqpError::connection(503, "unexpected method")),
        };
        if let Some(r) = reply {
            self.send(ch, r).await;
        }
        Ok(())
    }
}

/// The single writer of the socket. Batches whatever is queued into one write, and sends a
/// heartbeat after `heartbeat` seconds without writing anything.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Outbound>,
    mut heartbeat: watch::Receiver<u16>,
) {
    let mut batch = BytesMut::new();
    let mut tuning = true;
    loop {
        let interval = *heartbeat.borrow_and_update();
        let idle = async {
            if interval == 0 {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_secs(u64::from(interval))).await;
        };
        tokio::select! {
            m = rx.recv() => {
                let Some(first) = m else { break };
                // Small frames are coalesced into one write; big messages are written from
                // their own buffer. Budget permits are released once their bytes are written.
                let mut permits = Vec::new();
                let mut next = Some(first);
                let mut failed = false;
                while let Some((bytes, permit)) = next.take() {
                    permits.push(permit);
                    crate::observe::metrics::bytes_sent("amqp", bytes.len());
                    if bytes.len() >= 64 * 1024 {
                        failed |= wr.write_all(&batch).await.is_err();
                        batch.clear();
                        failed |= wr.write_all(&bytes).await.is_err();
                    } else {
                        batch.extend_from_slice(&bytes);
                    }
                    if failed || batch.len() >= 256 * 1024 {
                        break;
                    }
                    next = rx.try_recv().ok();
                }
                failed |= wr.write_all(&batch).await.is_err();
                // A TLS stream may hold the tail of a record until flushed (TCP: a no-op).
                failed |= wr.flush().await.is_err();
                batch.clear();
                drop(permits);
                if failed {
                    break;
                }
            }
            _ = idle => {
                let mut hb = BytesMut::new();
                codec::encode_heartbeat(&mut hb);
                if wr.write_all(&hb).await.is_err() || wr.flush().await.is_err() {
                    break;
                }
            }
            // Once the connection drops its sender, only the frame channel matters.
            r = heartbeat.changed(), if tuning => tuning = r.is_ok(),
        }
    }
    // Drain so senders blocked on a full channel are released.
    rx.close();
    let _ = wr.shutdown().await;
}
