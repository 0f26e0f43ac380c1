//! [`EventConsumer`]: run a handler for every event of a queue, with broker-side retries.
//!
//! Retries are the queue's (`x-delayed-retry-*`, see `broker::retry`): a handler error nacks
//! the delivery, the broker holds it for the backoff delay and delivers it again with a higher
//! `retry_count`. The last allowed attempt's failure rejects it instead, with the error text,
//! so it reaches the queue's dead-letter exchange with the reason in its death record. The
//! delivery is acked only after the handler returned `Ok`. [`EventConsumer::declare_queue`]
//! declares a queue with the arguments a [`ConsumerConfig`] implies.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use super::connection::{read_result, unexpected, NativeClientError, NativeConnection};
use super::event::{EventMetadata, ReceivedEvent};
use super::publisher::{EventPublisher, PublishConfig, PublishReceipt};
use crate::proto::framed;
use crate::proto::v1::{self, request, response, settle::Outcome};

/// The shape of the delay between retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackoffKind {
    /// `delay x n` for retry `n`.
    Linear,
    /// `delay x 2^(n-1)` for retry `n`.
    Exponential,
}

#[derive(Debug, Clone, Copy)]
pub struct RetryConfig {
    /// Handler runs in all (1 = no retry).
    pub attempts: u32,
    pub delay: Duration,
    pub backoff: BackoffKind,
    pub max_delay: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: 5,
            delay: Duration::from_secs(1),
            backoff: BackoffKind::Exponential,
            max_delay: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub queue: String,
    /// Deliveries in flight (handed to the client, not yet settled). Default 100.
    pub prefetch: u32,
    pub retry: RetryConfig,
    /// Handlers running at once. Default 1 (in order).
    pub concurrency: usize,
    /// Where events go after the last attempt (declared queues only). Default none.
    pub dead_letter_exchange: Option<String>,
}

impl ConsumerConfig {
    pub fn new(queue: &str) -> Self {
        Self {
            queue: queue.into(),
            prefetch: 100,
            retry: RetryConfig::default(),
            concurrency: 1,
            dead_letter_exchange: None,
        }
    }

    /// The queue arguments that make the broker retry and dead-letter as configured.
    pub fn queue_arguments(&self) -> serde_json::Value {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut args = serde_json::json!({
            "x-delayed-retry-type": "failed",
            "x-delayed-retry-min": ms(self.retry.delay),
            "x-delayed-retry-max": ms(self.retry.max_delay.max(self.retry.delay)),
            // A safety net: the consumer rejects on its last attempt itself.
            "x-delivery-limit": self.retry.attempts.max(1),
        });
        if self.retry.backoff == BackoffKind::Exponential {
            args["x-delayed-retry-multiplier"] = 2.into();
        }
        if let Some(dlx) = &self.dead_letter_exchange {
            args["x-dead-letter-exchange"] = dlx.clone().into();
        }
        args
    }
}

/// Why a handler failed; its text becomes the dead letter's `error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError(pub String);

impl<E: std::fmt::Display> From<E> for HandlerError {
    fn from(e: E) -> Self {
        HandlerError(e.to_string())
    }
}

/// Handles events. Implemented for closures `Fn(ReceivedEvent, EventContext) -> Future`.
pub trait EventHandler: Send + Sync + 'static {
    fn handle(
        &self,
        event: ReceivedEvent,
        ctx: EventContext,
    ) -> BoxFuture<'static, Result<(), HandlerError>>;
}

impl<F, Fut> EventHandler for F
where
    F: Fn(ReceivedEvent, EventContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    fn handle(
        &self,
        event: ReceivedEvent,
        ctx: EventContext,
    ) -> BoxFuture<'static, Result<(), HandlerError>> {
        Box::pin(self(event, ctx))
    }
}

/// Which events a registered handler takes and how it runs.
#[derive(Debug, Clone)]
pub struct HandlerConfig {
    pub event_type: String,
    /// The schema version it handles; empty = any.
    pub version: String,
    /// Skip an event whose id this handler already completed: before running it the consumer
    /// asks the broker's processed-id store (kept per handler [`name`](Self::name), bounded by
    /// count and age, durable across restarts); after it returns `Ok` the id is recorded, then
    /// the delivery acked. A skipped repeat is acked without running the handler.
    pub idempotent: bool,
    /// The handler's stable name, the key of its processed ids: give each service's handler
    /// its own (e.g. `billing.charge-card`), or two services handling one event type would skip
    /// each other's events. Empty = `<event_type>@<version>`.
    pub name: String,
    /// A run longer than this counts as a failure. `None` = no limit.
    pub timeout: Option<Duration>,
}

impl HandlerConfig {
    pub fn new(event_type: &str, version: &str) -> Self {
        Self {
            event_type: event_type.into(),
            version: version.into(),
            idempotent: false,
            name: String::new(),
            timeout: None,
        }
    }

    /// Makes the handler idempotent under `name` (see [`HandlerConfig::idempotent`]).
    pub fn idempotent_as(mut self, name: &str) -> Self {
        self.idempotent = true;
        self.name = name.into();
        self
    }

    /// The key of the handler's processed ids in the broker.
    fn processed_key(&self) -> String {
        if self.name.is_empty() {
            format!("{}@{}", self.event_type, self.version)
        } else {
            self.name.clone()
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// Turns an event of an older schema version into the next one (it must change
/// `metadata.schema_version`).
pub type Upcaster = Arc<dyn Fn(ReceivedEvent) -> Result<ReceivedEvent, HandlerError> + Send + Sync>;

/// Upcasts applied to one event at most, so a cycle of upcasters cannot spin.
const MAX_UPCASTS: usize = 16;

/// Handlers registered by event type and version; itself an [`EventHandler`]. An event whose
/// version has an upcaster is upcast first (repeatedly, v1 -> v2 -> v3) so a handler sees only
/// the version it registered for. An event no handler takes fails with "no handler" (and so
/// ends dead-lettered).
#[derive(Default)]
pub struct Handlers {
    routes: Vec<(HandlerConfig, Arc<dyn EventHandler>)>,
    upcasters: Vec<(String, String, Upcaster)>,
}

impl Handlers {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn on(mut self, config: HandlerConfig, handler: impl EventHandler) -> Self {
        self.routes.push((config, Arc::new(handler)));
        self
    }

    /// Registers `upcast` for events of `event_type` at schema version `from_version`.
    pub fn upcast(
        mut self,
        event_type: &str,
        from_version: &str,
        upcast: impl Fn(ReceivedEvent) -> Result<ReceivedEvent, HandlerError> + Send + Sync + 'static,
    ) -> Self {
        self.upcasters
            .push((event_type.into(), from_version.into(), Arc::new(upcast)));
        self
    }

    /// Applies the upcasters that match, until none does.
    fn upcast_all(&self, mut event: ReceivedEvent) -> Result<ReceivedEvent, HandlerError> {
        for _ in 0..MAX_UPCASTS {
            let m = &event.metadata;
            let Some((_, from, upcast)) = self
                .upcasters
                .iter()
                .find(|(t, v, _)| *t == m.event_type && *v == m.schema_version)
            else {
                return Ok(event);
            };
            let from = from.clone();
            event = upcast(event)?;
            if event.metadata.schema_version == from {
                return Err(HandlerError(format!(
                    "the upcaster of `{}` version `{from}` did not change the version",
                    event.metadata.event_type
                )));
            }
        }
        Err(HandlerError(format!(
            "more than {MAX_UPCASTS} upcasts for one event (a cycle?)"
        )))
    }
}

impl EventHandler for Handlers {
    fn handle(
        &self,
        event: ReceivedEvent,
        ctx: EventContext,
    ) -> BoxFuture<'static, Result<(), HandlerError>> {
        let event = match self.upcast_all(event) {
            Ok(e) => e,
            Err(err) => return Box::pin(async move { Err(err) }),
        };
        let m = &event.metadata;
        let found = self.routes.iter().find(|(c, _)| {
            c.event_type == m.event_type && (c.version.is_empty() || c.version == m.schema_version)
        });
        let Some((config, handler)) = found else {
            let err = HandlerError(format!(
                "no handler for event type `{}` version `{}`",
                m.event_type, m.schema_version
            ));
            return Box::pin(async move { Err(err) });
        };
        let event_id = event.metadata.id.clone();
        if !config.idempotent || event_id.is_empty() {
            return run_with_timeout(handler.handle(event, ctx), config.timeout);
        }
        let (handler, timeout) = (handler.clone(), config.timeout);
        let (conn, name) = (ctx.publisher.connection().clone(), config.processed_key());
        Box::pin(async move {
            if processed::check(&conn, &name, &event_id).await? {
                tracing::debug!(
                    handler = name,
                    event_id,
                    "skipping an event already handled"
                );
                return Ok(());
            }
            run_with_timeout(handler.handle(event, ctx), timeout).await?;
            // Recorded before the ack: if recording fails the delivery is retried, and the
            // handler (declared safe to repeat) may run again.
            processed::record(&conn, &name, &event_id).await?;
            Ok(())
        })
    }
}

fn run_with_timeout(
    run: BoxFuture<'static, Result<(), HandlerError>>,
    timeout: Option<Duration>,
) -> BoxFuture<'static, Result<(), HandlerError>> {
    match timeout {
        None => run,
        Some(limit) => Box::pin(async move {
            match tokio::time::timeout(limit, run).await {
                Ok(r) => r,
                Err(_) => Err(HandlerError(format!("handler timed out after {limit:?}"))),
            }
        }),
    }
}

/// The broker's processed-id store, as an idempotent handler uses it.
mod processed {
    use super::{unexpected, HandlerError, NativeConnection};
    use crate::proto::v1::{self, request, response};

    pub(super) async fn check(
        conn: &NativeConnection,
        handler: &str,
        event_id: &str,
    ) -> Result<bool, HandlerError> {
        let req = v1::Request {
            op: Some(request::Op::CheckProcessed(v1::CheckProcessed {
                handler: handler.into(),
                event_id: event_id.into(),
            })),
        };
        match conn.call(&req).await? {
            response::Result::ProcessedStatus(s) => Ok(s.processed),
            other => Err(unexpected(&other).into()),
        }
    }

    pub(super) async fn record(
        conn: &NativeConnection,
        handler: &str,
        event_id: &str,
    ) -> Result<(), HandlerError> {
        let req = v1::Request {
            op: Some(request::Op::RecordProcessed(v1::RecordProcessed {
                handler: handler.into(),
                event_id: event_id.into(),
            })),
        };
        match conn.call(&req).await? {
            response::Result::Done(_) => Ok(()),
            other => Err(unexpected(&other).into()),
        }
    }
}

/// Given to a handler: publishes follow-up events caused by the one handled.
#[derive(Clone)]
pub struct EventContext {
    publisher: EventPublisher,
    handled_id: String,
    correlation_id: String,
    traceparent: String,
    tracestate: String,
    reply_to: String,
}

impl EventContext {
    /// Publishes a follow-up: causation id = the handled event's id; the correlation id and
    /// trace context are the handled event's unless `metadata` sets its own.
    pub async fn publish(
        &self,
        event: &impl serde::Serialize,
        metadata: EventMetadata,
        config: &PublishConfig,
    ) -> Result<PublishReceipt, NativeClientError> {
        self.publisher
            .publish(event, self.follow_up(metadata), config)
            .await
    }

    /// Replies to a request (see [`EventPublisher::request`]); an error if it asked for none.
    pub async fn reply(
        &self,
        event: &impl serde::Serialize,
        metadata: EventMetadata,
    ) -> Result<PublishReceipt, NativeClientError> {
        if self.reply_to.is_empty() {
            return Err(NativeClientError::Config(
                "the handled event asked for no reply".into(),
            ));
        }
        let config = PublishConfig::queue(&self.reply_to);
        self.publisher
            .publish(event, self.follow_up(metadata), &config)
            .await
    }

    fn follow_up(&self, mut m: EventMetadata) -> EventMetadata {
        m.causation_id = self.handled_id.clone();
        if m.correlation_id.is_empty() {
            m.correlation_id = self.correlation_id.clone();
        }
        if m.traceparent.is_empty() {
            m.traceparent = self.traceparent.clone();
            m.tracestate = self.tracestate.clone();
        }
        m
    }
}

/// Runs handlers for a queue's events.
#[derive(Clone)]
pub struct EventConsumer {
    conn: NativeConnection,
}

impl EventConsumer {
    pub fn new(conn: NativeConnection) -> Self {
        Self { conn }
    }

    /// Declares `config.queue` (durable) with the retry and dead-letter arguments it implies.
    pub async fn declare_queue(&self, config: &ConsumerConfig) -> Result<(), NativeClientError> {
        let req = v1::Request {
            op: Some(request::Op::DeclareQueue(v1::DeclareQueue {
                name: config.queue.clone(),
                durable: true,
                arguments_json: config.queue_arguments().to_string(),
                ..Default::default()
            })),
        };
        match self.conn.call(&req).await? {
            response::Result::QueueDeclared(_) => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Subscribes `handler` to `config.queue`. The subscription runs until closed or dropped;
    /// a dropped connection is re-established and the queue subscribed again.
    pub async fn subscribe(
        &self,
        handler: impl EventHandler,
        config: ConsumerConfig,
    ) -> Result<Subscription, NativeClientError> {
        let req = subscribe_request(&config);
        // The first subscribe is awaited so a missing queue is the caller's error at once.
        let first = self.conn.open_subscription(&req).await?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(
            self.conn.clone(),
            Arc::new(handler),
            config,
            req,
            first,
            stop_rx,
        ));
        Ok(Subscription {
            stop: stop_tx,
            task: Some(task),
        })
    }
}

fn subscribe_request(config: &ConsumerConfig) -> v1::Request {
    v1::Request {
        op: Some(request::Op::SubscribeQueue(v1::SubscribeQueue {
            vhost: String::new(),
            queue: config.queue.clone(),
            prefetch: config.prefetch,
        })),
    }
}

/// A running subscription. `close` (or drop) stops taking deliveries, lets the handlers
/// already running finish and settle, then ends the stream (unstarted deliveries return to
/// the queue).
pub struct Subscription {
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Subscription {
    pub async fn close(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // The task drains on its own once told to stop.
        let _ = self.stop.send(true);
    }
}

type Stream = (
    crate::proto::stream::SendStream,
    framed::FrameReader<crate::proto::stream::RecvStream>,
);

async fn run(
    conn: NativeConnection,
    handler: Arc<dyn EventHandler>,
    config: ConsumerConfig,
    req: v1::Request,
    first: Stream,
    mut stop: watch::Receiver<bool>,
) {
    let mut stream = Some(first);
    let mut failures = 0;
    loop {
        let (send, reader) = match stream.take() {
            Some(s) => s,
            None => match conn.open_subscription(&req).await {
                Ok(s) => {
                    failures = 0;
                    s
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(queue = config.queue, error = %e, "resubscribing failed");
                    let wait = conn.options().backoff.delay(failures);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => continue,
                        _ = crate::util::stopped(&mut stop) => return,
                    }
                }
            },
        };
        let ended = serve(&conn, &handler, &config, send, reader, &mut stop).await;
        if ended == Ended::Stopped {
            return;
        }
        // Resubscribe: on the same connection if only the stream broke, else on a new one.
        failures += 1;
        tokio::select! {
            _ = tokio::time::sleep(conn.options().backoff.delay(failures)) => {}
            _ = crate::util::stopped(&mut stop) => return,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Stopped,
    Broken,
}

/// Delivers events to handlers until stopped or the stream breaks.
async fn serve(
    conn: &NativeConnection,
    handler: &Arc<dyn EventHandler>,
    config: &ConsumerConfig,
    mut send: crate::proto::stream::SendStream,
    mut reader: framed::FrameReader<crate::proto::stream::RecvStream>,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    let (settle_tx, mut settle_rx) = mpsc::unbounded_channel::<v1::Settle>();
    let limit = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let publisher = EventPublisher::new(conn.clone());
    let mut running = JoinSet::new();
    let attempts = config.retry.attempts.max(1);
    let ended = loop {
        tokio::select! {
            _ = crate::util::stopped(stop) => break Ended::Stopped,
            Some(settle) = settle_rx.recv() => {
                // Settles that are ready together go out in one write.
                let mut out = bytes::BytesMut::new();
                let mut next = Some(settle);
                while let Some(settle) = next {
                    let frame = v1::Request { op: Some(request::Op::Settle(settle)) };
                    crate::proto::codec::encode_into(&frame, &mut out);
                    next = settle_rx.try_recv().ok();
                }
                if send.write_all(&out).await.is_err() {
                    break Ended::Broken;
                }
            }
            Some(_) = running.join_next(), if !running.is_empty() => {}
            result = read_result(&mut reader) => {
                let delivery = match result {
                    Ok(response::Result::Delivery(d)) => d,
                    Ok(response::Result::Done(_)) => break Ended::Broken,
                    Ok(other) => {
                        tracing::warn!(response = ?other, "unexpected frame on a subscription");
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!(queue = config.queue, error = %e, "subscription stream ended");
                        break Ended::Broken;
                    }
                };
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    break Ended::Stopped;
                };
                let event = ReceivedEvent::from_wire(delivery);
                let ctx = EventContext {
                    publisher: publisher.clone(),
                    handled_id: event.metadata.id.clone(),
                    correlation_id: event.metadata.correlation_id.clone(),
                    traceparent: event.metadata.traceparent.clone(),
                    tracestate: event.metadata.tracestate.clone(),
                    reply_to: event.reply_to.clone(),
                };
                let tag = event.delivery_tag;
                let last_attempt = event.retry_count + 1 >= attempts;
                let run = handler.handle(event, ctx);
                let settle_tx = settle_tx.clone();
                running.spawn(async move {
                    // A panicking handler fails its attempt like an error would, rather than
                    // leaving the delivery unsettled until the subscription ends.
                    let outcome = std::panic::AssertUnwindSafe(run)
                        .catch_unwind()
                        .await
                        .unwrap_or_else(|_| Err(HandlerError("the handler panicked".into())));
                    drop(permit);
                    let settle = match outcome {
                        Ok(()) => v1::Settle { delivery_tag: tag, outcome: Outcome::Ack as i32, reason: String::new() },
                        Err(e) if last_attempt => v1::Settle { delivery_tag: tag, outcome: Outcome::Reject as i32, reason: e.0 },
                        Err(_) => v1::Settle { delivery_tag: tag, outcome: Outcome::NackRequeue as i32, reason: String::new() },
                    };
                    let _ = settle_tx.send(settle);
                });
            }
        }
    };
    // Drain: handlers already running finish and their settles go out before the stream ends.
    drop(settle_tx);
    while running.join_next().await.is_some() {}
    if ended == Ended::Stopped {
        while let Some(settle) = settle_rx.recv().await {
            let frame = v1::Request {
                op: Some(request::Op::Settle(settle)),
            };
            if framed::write(&mut send, &frame).await.is_err() {
                break;
            }
        }
        let _ = send.finish();
        // Wait for the server's end of the stream, so the settles are applied before close
        // returns.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Ok(response::Result::Delivery(_)) = read_result(&mut reader).await {}
        })
        .await;
    }
    ended
}
