//! The frame loop of one connection: reads and decodes frames, dispatches them, pauses reading
//! for a client that does not read its socket, holds publishers under a resource alarm, and
//! turns channel errors into channel.close and connection errors into connection.close.

use std::collections::HashMap;
use std::time::Duration;

use amq_protocol::protocol::{channel, connection, AMQPClass};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

use super::{Conn, Phase};
use crate::protocol::amqp::channel::{Channel, ContentState, WRITE_BUDGET};
use crate::protocol::amqp::codec::{self, Incoming};
use crate::protocol::amqp::convert::AmqpError;

/// How long a reader paused for a non-reading client waits before giving up on it when
/// heartbeats are off (with heartbeats, two intervals).
const STALLED_WRITER_TIMEOUT: Duration = Duration::from_secs(120);
/// Free write budget below which the reader pauses, and what it waits for before resuming.
const PAUSE_BELOW: usize = WRITE_BUDGET / 4;
const RESUME_AT: usize = WRITE_BUDGET / 2;
/// How long we wait for close-ok after sending connection.close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

impl Conn {
    /// Reads and handles frames until the client closes (`None`) or a connection error.
    pub(super) async fn run<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        buf: &mut BytesMut,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<AmqpError> {
        let mut last_read = tokio::time::Instant::now();
        let mut alarm = self.core.router().subscribe_alarm();
        let mut close_requests = self.registration.close_requests();
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
                    Ok(n) => {
                        crate::observe::metrics::bytes_received("amqp", n);
                        self.registration.add_received(n);
                        last_read = tokio::time::Instant::now();
                    }
                },
                _ = sleep => {
                    tracing::info!(peer = %self.peer, "AMQP client missed heartbeats or the handshake deadline; closing");
                    return None;
                }
                _ = crate::util::stopped(shutdown) => {
                    return Some(AmqpError::connection(320, "broker shutdown"));
                }
                // Closed through the management API: connection.close 320 with its reason, as
                // RabbitMQ answers `DELETE /api/connections/{name}`.
                reason = crate::broker::connections::close_requested(&mut close_requests) => {
                    tracing::info!(peer = %self.peer, reason, "AMQP connection closed by an administrator");
                    self.current = (0, 0);
                    return Some(AmqpError::connection(320, reason));
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
    pub(super) async fn close_connection<R: AsyncRead + Unpin>(
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
                let metrics = self.out.metrics.clone();
                let _timer = metrics.method_timer(self.current.0);
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
                    Some(c) => {
                        let state = c.content_header(h.body_size, h.properties);
                        content_arrived(c, state, &self.core, &self.vhost, &self.out).await
                    }
                    None => Ok(()),
                };
                self.channel_result(ch, result).await
            }
            Incoming::Body(ch, body) => {
                let result = match Self::open_channel(&self.phase, &mut self.channels, ch)? {
                    Some(c) => {
                        let state = c.content_body(&body);
                        content_arrived(c, state, &self.core, &self.vhost, &self.out).await
                    }
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
}

/// After a content frame: publishes the message once its content is complete.
async fn content_arrived(
    c: &mut Channel,
    state: Result<ContentState, AmqpError>,
    core: &crate::broker::BrokerCore,
    vhost: &str,
    out: &crate::protocol::amqp::channel::Out,
) -> Result<(), AmqpError> {
    match state? {
        ContentState::Done => c.finish_publish(core, vhost, out).await,
        ContentState::Incomplete => Ok(()),
    }
}
