//! Sagas (process managers): a [`Saga`] is a state machine keyed by correlation id that turns
//! the events of a business process into commands for other services; a [`SagaManager`]
//! runs it over an event store and the queues.
//!
//! Design. Each instance (one correlation id) keeps its whole [`SagaRecord`] (state, status,
//! the ids of the events it handled, the registered compensations, the pending timeout and
//! the last transition's outgoing commands) in the last event of its own stream
//! `saga-<name>-<correlation id>` of an event-store topic. Handling an event is
//! read-decide-append: read the last record and its revision, let the saga decide, append the
//! next record with `Exact(revision)`. Two events of one saga handled at once (two consumers,
//! two managers) cannot both win: the loser gets `WrongExpectedVersion`, reads the winner's
//! record and decides again on the new state. So the stream is the saga's serial history.
//!
//! - **Duplicates** (same event id) are ignored: the record lists the ids it handled.
//! - **Timeouts** are delayed messages (`x-delay`, kept durably by the broker) sent to the
//!   saga's input queue, each carrying a fresh token that the record keeps as the pending
//!   timeout; a timeout whose token is not the pending one (cancelled, replaced, or arriving
//!   after the saga ended) is stale and ignored.
//! - **Compensations** are commands the saga registers as steps succeed. When a decision
//!   fails the saga, the one transition that wins the append to the terminal `Compensated`
//!   status emits them in reverse order of registration; every later event finds the saga
//!   ended. So they are decided exactly once.
//! - **Commands are sent after the append** (an outbox in the record). Each has the id
//!   `<saga stream>/<command name>`, fixed by the record, so re-sending is harmless where the
//!   destination drops repeats: [`SagaManager::declare_command_queue`] declares queues with
//!   the broker's deduplication, and idempotent handlers
//!   ([`HandlerConfig::idempotent_as`](super::HandlerConfig::idempotent_as)) skip repeats
//!   too. A crash after the append but before the sends loses nothing: the input event was
//!   not acked, comes again, is seen as the duplicate that caused the last record, and that
//!   record's outbox is sent again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::connection::{unexpected, NativeClientError, NativeConnection};
use super::consumer::{ConsumerConfig, EventConsumer, EventContext, HandlerError, Subscription};
use super::es::{
    AppendError, EventData, EventStoreClient, ExpectedRevision, ReadFrom, RecordedEvent,
};
use super::event::{EventMetadata, ReceivedEvent};
use super::projection::BoxError;
use super::publisher::{EventPublisher, PublishConfig};
use crate::proto::v1::{self, request, response, ErrorCode};

/// Event type of a saga's record events.
pub const SAGA_EVENT_TYPE: &str = "ferry.saga.transition";
/// Event type of a timeout message.
pub const TIMEOUT_EVENT_TYPE: &str = "ferry.saga.timeout";
/// Attribute of a timeout message: its token.
pub const TOKEN_ATTRIBUTE: &str = "ferry-saga-token";
/// Attribute of a timeout message: the timeout's name.
pub const TIMEOUT_ATTRIBUTE: &str = "ferry-saga-timeout";
/// Times a contended event is decided again before [`SagaError::Contended`].
pub const CONFLICT_ATTEMPTS: u32 = 64;

/// An event as a saga sees it.
#[derive(Debug, Clone, Default)]
pub struct SagaEvent {
    /// `id` (duplicates are ignored by it) and `correlation_id` (the saga instance) matter.
    pub metadata: EventMetadata,
    pub payload: Bytes,
}

impl SagaEvent {
    /// A JSON event (tests and in-process callers; consumers use `From<ReceivedEvent>`).
    pub fn json<T: Serialize>(
        id: &str,
        event_type: &str,
        correlation_id: &str,
        value: &T,
    ) -> Result<Self, NativeClientError> {
        Ok(Self {
            metadata: EventMetadata::new(event_type, "")
                .with_id(id)
                .with_correlation_id(correlation_id),
            payload: serde_json::to_vec(value)
                .map_err(|e| NativeClientError::Codec(e.to_string()))?
                .into(),
        })
    }

    /// The payload decoded from JSON.
    pub fn payload_json<T: DeserializeOwned>(&self) -> Result<T, NativeClientError> {
        serde_json::from_slice(&self.payload).map_err(|e| NativeClientError::Codec(e.to_string()))
    }

    fn attribute(&self, key: &str) -> Option<&str> {
        self.metadata
            .attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl From<ReceivedEvent> for SagaEvent {
    fn from(e: ReceivedEvent) -> Self {
        Self {
            metadata: e.metadata,
            payload: e.payload,
        }
    }
}

/// A message a saga sends: a command to a service, a compensation, or its own timeout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Unique within the saga instance: the message id is `<saga stream>/<name>`.
    pub name: String,
    pub event_type: String,
    /// Exchange (empty: the default one, routing key = queue) and routing key.
    pub exchange: String,
    pub routing_key: String,
    pub payload: serde_json::Value,
    /// Delivered after this many ms (a delayed message); 0 = now.
    pub delay_ms: u64,
    pub attributes: Vec<(String, String)>,
}

impl Command {
    /// A JSON command `name` of type `event_type` to `queue`.
    pub fn to_queue<T: Serialize>(
        name: &str,
        event_type: &str,
        queue: &str,
        payload: &T,
    ) -> Result<Self, BoxError> {
        Ok(Self {
            name: name.into(),
            event_type: event_type.into(),
            exchange: String::new(),
            routing_key: queue.into(),
            payload: serde_json::to_value(payload)?,
            delay_ms: 0,
            attributes: Vec::new(),
        })
    }
}

/// How a decision leaves the saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Continue,
    /// Done: later events are ignored.
    Complete,
    /// Failed: the registered compensations are sent in reverse order; later events ignored.
    Fail(String),
}

/// What a saga decided on one event.
#[derive(Debug, Clone)]
pub struct Decision<S> {
    pub state: S,
    pub commands: Vec<Command>,
    pub compensations: Vec<Command>,
    /// Schedule timeout `(name, after)`, replacing the pending one.
    pub timeout: Option<(String, Duration)>,
    pub cancel_timeout: bool,
    pub outcome: Outcome,
}

impl<S> Decision<S> {
    /// Move to `state`, sending nothing yet.
    pub fn to(state: S) -> Self {
        Self {
            state,
            commands: Vec::new(),
            compensations: Vec::new(),
            timeout: None,
            cancel_timeout: false,
            outcome: Outcome::Continue,
        }
    }

    pub fn send(mut self, command: Command) -> Self {
        self.commands.push(command);
        self
    }

    /// Registers `command` as the compensation of a step that succeeded.
    pub fn compensate_with(mut self, command: Command) -> Self {
        self.compensations.push(command);
        self
    }

    pub fn timeout(mut self, name: &str, after: Duration) -> Self {
        self.timeout = Some((name.into(), after));
        self
    }

    pub fn cancel_timeout(mut self) -> Self {
        self.cancel_timeout = true;
        self
    }

    pub fn complete(mut self) -> Self {
        self.outcome = Outcome::Complete;
        self
    }

    pub fn fail(mut self, reason: &str) -> Self {
        self.outcome = Outcome::Fail(reason.into());
        self
    }
}

/// A process manager's logic; pure (no I/O): the [`SagaManager`] does the rest.
pub trait Saga: Send + Sync + 'static {
    type State: Default + Clone + Serialize + DeserializeOwned + Send + Sync;

    /// Names the saga's streams (`saga-<name>-<correlation id>`).
    fn name(&self) -> &str;

    /// Decides on `event` in `state`.
    fn handle(
        &self,
        state: &Self::State,
        event: &SagaEvent,
    ) -> Result<Decision<Self::State>, BoxError>;

    /// Decides on timeout `timeout` (its token was the pending one).
    fn on_timeout(
        &self,
        state: &Self::State,
        timeout: &str,
    ) -> Result<Decision<Self::State>, BoxError>;
}

/// Where a saga instance is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SagaStatus {
    Running,
    Completed,
    /// Failed; its compensations were sent.
    Compensated,
}

/// A timeout the saga waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingTimeout {
    pub name: String,
    pub token: String,
}

/// A saga instance's stored record (the last event of its stream).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SagaRecord<S> {
    pub state: S,
    pub status: SagaStatus,
    pub failure: Option<String>,
    /// Ids of the events handled, in order.
    pub processed: Vec<String>,
    /// Compensations registered so far, in order of registration.
    pub compensations: Vec<Command>,
    pub timeout: Option<PendingTimeout>,
    /// The event that made this record, and what it sent.
    pub caused_by: String,
    pub outbox: Vec<Command>,
}

impl<S: Default> Default for SagaRecord<S> {
    fn default() -> Self {
        Self {
            state: S::default(),
            status: SagaStatus::Running,
            failure: None,
            processed: Vec::new(),
            compensations: Vec::new(),
            timeout: None,
            caused_by: String::new(),
            outbox: Vec::new(),
        }
    }
}

impl<S: Clone> SagaRecord<S> {
    /// The record after `decision` on event `event_id` (`timed_out`: it was the pending
    /// timeout, now spent).
    fn advance(
        &self,
        decision: Decision<S>,
        event_id: &str,
        timed_out: bool,
        input_queue: &str,
    ) -> Self {
        let mut next = self.clone();
        next.state = decision.state;
        next.processed.push(event_id.into());
        next.caused_by = event_id.into();
        next.outbox = decision.commands;
        next.compensations.extend(decision.compensations);
        if timed_out || decision.cancel_timeout {
            next.timeout = None;
        }
        match decision.outcome {
            Outcome::Continue => {
                if let Some((name, after)) = decision.timeout {
                    let token = uuid::Uuid::now_v7().to_string();
                    next.outbox.push(Command {
                        name: format!("timeout/{token}"),
                        event_type: TIMEOUT_EVENT_TYPE.into(),
                        exchange: String::new(),
                        routing_key: input_queue.into(),
                        payload: serde_json::Value::Null,
                        delay_ms: u64::try_from(after.as_millis()).unwrap_or(u64::MAX).max(1),
                        attributes: vec![
                            (TOKEN_ATTRIBUTE.into(), token.clone()),
                            (TIMEOUT_ATTRIBUTE.into(), name.clone()),
                        ],
                    });
                    next.timeout = Some(PendingTimeout { name, token });
                }
            }
            Outcome::Complete => {
                next.status = SagaStatus::Completed;
                next.timeout = None;
            }
            Outcome::Fail(reason) => {
                next.status = SagaStatus::Compensated;
                next.failure = Some(reason);
                next.timeout = None;
                next.outbox.extend(next.compensations.iter().rev().cloned());
            }
        }
        next
    }
}

/// A saga instance as loaded.
#[derive(Debug, Clone)]
pub struct SagaInstance<S> {
    /// Revision of its record in its stream.
    pub revision: u64,
    pub record: SagaRecord<S>,
}

/// What handling one event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// A new record was appended at `revision`.
    Applied { revision: u64, status: SagaStatus },
    /// The event id was handled before (its commands were sent again if it made the last
    /// record).
    Duplicate,
    /// A timeout whose token is not the pending one.
    StaleTimeout,
    /// The saga had already ended.
    Ended(SagaStatus),
    /// The event has no correlation id.
    Uncorrelated,
}

/// Why an event could not be handled (the delivery is then retried by the consumer).
#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    #[error("saga decision failed: {0}")]
    Saga(BoxError),
    #[error("saga `{0}` stayed contended for {CONFLICT_ATTEMPTS} attempts")]
    Contended(String),
    #[error(transparent)]
    Client(#[from] NativeClientError),
}

/// Runs a [`Saga`] over event-store topic `topic` (its records) and queue `input_queue`
/// (the events it reacts to, its timeouts). Cheap to clone.
pub struct SagaManager<S: Saga> {
    saga: Arc<S>,
    store: EventStoreClient,
    publisher: EventPublisher,
    conn: NativeConnection,
    topic: String,
    input_queue: String,
    conflicts: Arc<AtomicU64>,
}

impl<S: Saga> Clone for SagaManager<S> {
    fn clone(&self) -> Self {
        Self {
            saga: self.saga.clone(),
            store: self.store.clone(),
            publisher: self.publisher.clone(),
            conn: self.conn.clone(),
            topic: self.topic.clone(),
            input_queue: self.input_queue.clone(),
            conflicts: self.conflicts.clone(),
        }
    }
}

impl<S: Saga> SagaManager<S> {
    pub fn new(conn: NativeConnection, saga: S, topic: &str, input_queue: &str) -> Self {
        Self {
            saga: Arc::new(saga),
            store: EventStoreClient::new(conn.clone()),
            publisher: EventPublisher::new(conn.clone()),
            conn,
            topic: topic.into(),
            input_queue: input_queue.into(),
            conflicts: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Creates the record topic and the input queue (with deduplication).
    pub async fn declare(&self, input: &ConsumerConfig) -> Result<(), NativeClientError> {
        self.store.create_store(&self.topic, 1).await?;
        self.declare_command_queue(input).await
    }

    /// Declares `config.queue` as [`EventConsumer::declare_queue`] does, plus the broker's
    /// deduplication by message id (`x-message-deduplication`, one hour), so a command sent
    /// again is delivered once.
    pub async fn declare_command_queue(
        &self,
        config: &ConsumerConfig,
    ) -> Result<(), NativeClientError> {
        let mut args = config.queue_arguments();
        args["x-message-deduplication"] = true.into();
        args["x-cache-ttl"] = 3_600_000.into();
        let req = v1::Request {
            op: Some(request::Op::DeclareQueue(v1::DeclareQueue {
                name: config.queue.clone(),
                durable: true,
                arguments_json: args.to_string(),
                ..Default::default()
            })),
        };
        match self.conn.call(&req).await? {
            response::Result::QueueDeclared(_) => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Times an append lost to a concurrent one and the event was decided again.
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }

    /// The stream of the instance `correlation_id`.
    pub fn stream(&self, correlation_id: &str) -> String {
        format!("saga-{}-{correlation_id}", self.saga.name())
    }

    /// The instance `correlation_id`, if it handled any event.
    pub async fn load(
        &self,
        correlation_id: &str,
    ) -> Result<Option<SagaInstance<S::State>>, NativeClientError> {
        let stream = self.stream(correlation_id);
        let last: Option<RecordedEvent> = match self
            .store
            .read_stream(&self.topic, &stream, ReadFrom::End, true, 1)
            .await
        {
            Ok(events) => events.into_iter().next(),
            Err(e) if e.code() == Some(ErrorCode::StreamNotFound) => None,
            Err(e) => return Err(e),
        };
        last.map(|e| {
            Ok(SagaInstance {
                revision: e.revision,
                record: e.event.json()?,
            })
        })
        .transpose()
    }

    /// Handles one event (see the module docs).
    pub async fn handle(&self, event: &SagaEvent) -> Result<Handled, SagaError> {
        let correlation = event.metadata.correlation_id.as_str();
        if correlation.is_empty() {
            return Ok(Handled::Uncorrelated);
        }
        let stream = self.stream(correlation);
        let id = event.metadata.id.as_str();
        for _ in 0..CONFLICT_ATTEMPTS {
            let (expected, record) = match self.load(correlation).await? {
                Some(i) => (ExpectedRevision::Exact(i.revision), i.record),
                None => (ExpectedRevision::NoStream, SagaRecord::default()),
            };
            if !id.is_empty() && record.processed.iter().any(|p| p == id) {
                if record.caused_by == id {
                    self.send(&stream, correlation, &record).await?;
                }
                return Ok(Handled::Duplicate);
            }
            if record.status != SagaStatus::Running {
                return Ok(Handled::Ended(record.status));
            }
            let timed_out = event.metadata.event_type == TIMEOUT_EVENT_TYPE;
            let decision = if timed_out {
                match (&record.timeout, event.attribute(TOKEN_ATTRIBUTE)) {
                    (Some(pending), Some(token)) if pending.token == token => {
                        self.saga.on_timeout(&record.state, &pending.name)
                    }
                    _ => return Ok(Handled::StaleTimeout),
                }
            } else {
                self.saga.handle(&record.state, event)
            }
            .map_err(SagaError::Saga)?;
            let next = record.advance(decision, id, timed_out, &self.input_queue);
            let mut data = EventData::json(SAGA_EVENT_TYPE, &next)?;
            data.metadata.correlation_id = correlation.into();
            data.metadata.causation_id = id.into();
            match self
                .store
                .append(&self.topic, &stream, expected, vec![data])
                .await
            {
                Ok(appended) => {
                    self.send(&stream, correlation, &next).await?;
                    return Ok(Handled::Applied {
                        revision: appended.next_expected_revision,
                        status: next.status,
                    });
                }
                Err(AppendError::WrongExpectedVersion { .. }) => {
                    // Another event of this saga won: decide again on its record.
                    self.conflicts.fetch_add(1, Ordering::Relaxed);
                }
                Err(AppendError::Client(e)) => return Err(e.into()),
            }
        }
        Err(SagaError::Contended(stream))
    }

    /// Sends `record`'s outbox, in order, with ids fixed by the record.
    async fn send(
        &self,
        stream: &str,
        correlation: &str,
        record: &SagaRecord<S::State>,
    ) -> Result<(), NativeClientError> {
        for command in &record.outbox {
            let mut metadata =
                EventMetadata::new(&command.event_type, &format!("/saga/{}", self.saga.name()))
                    .with_id(&format!("{stream}/{}", command.name))
                    .with_correlation_id(correlation);
            metadata.causation_id = record.caused_by.clone();
            metadata.attributes = command.attributes.clone();
            let mut config = PublishConfig::exchange(&command.exchange, &command.routing_key);
            if command.delay_ms > 0 {
                config
                    .headers
                    .push(("x-delay".into(), command.delay_ms.to_string().into_bytes()));
            }
            self.publisher
                .publish(&command.payload, metadata, &config)
                .await?;
        }
        Ok(())
    }

    /// Subscribes the saga to its input queue: each delivery is handled, and acked once its
    /// record is appended and its commands sent (an error leaves it to the queue's retry).
    pub async fn subscribe(
        &self,
        consumer: &EventConsumer,
        config: ConsumerConfig,
    ) -> Result<Subscription, NativeClientError> {
        let manager = self.clone();
        consumer
            .subscribe(
                move |event: ReceivedEvent, _ctx: EventContext| {
                    let manager = manager.clone();
                    async move {
                        manager
                            .handle(&SagaEvent::from(event))
                            .await
                            .map(|_| ())
                            .map_err(HandlerError::from)
                    }
                },
                config,
            )
            .await
    }
}
