//! The event-store face of the SDK: [`EventStoreClient`] appends to streams with an expected
//! revision, deletes streams, reads streams and `$all`, and opens catch-up subscriptions
//! ([`CatchUpSubscription`]; the application keeps the checkpoint) (see `crate::es` and
//! docs/event-store.md).
//!
//! An append whose answer is lost (the connection dropped) is resent with the same event ids,
//! after a reconnect, up to [`APPEND_ATTEMPTS`] times: the broker recognises the ids and returns
//! the original result without writing again, so a resend can never write an event twice.

use std::collections::BTreeMap;

use super::connection::{NativeClientError, NativeConnection};
use super::event::{EventMetadata, ReceivedEvent};
use crate::proto::v1::{self, expected_revision::Kind, request::Op, response, stream_appended};

/// The topic config that makes a topic an event store (the broker's `ferry.event.store`).
pub const EVENT_STORE_CONFIG: &str = "ferry.event.store";
/// Times an append is sent before its connection error is returned.
pub const APPEND_ATTEMPTS: u32 = 5;

/// What the writer expects the stream's last revision to be (KurrentDB's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedRevision {
    Any,
    NoStream,
    StreamExists,
    Exact(u64),
}

impl ExpectedRevision {
    fn to_wire(self) -> v1::ExpectedRevision {
        let kind = match self {
            Self::Any => Kind::Any(true),
            Self::NoStream => Kind::NoStream(true),
            Self::StreamExists => Kind::StreamExists(true),
            Self::Exact(n) => Kind::Exact(n),
        };
        v1::ExpectedRevision { kind: Some(kind) }
    }

    fn from_wire(wire: Option<v1::ExpectedRevision>) -> Self {
        match wire.and_then(|e| e.kind) {
            None | Some(Kind::Any(_)) => Self::Any,
            Some(Kind::NoStream(_)) => Self::NoStream,
            Some(Kind::StreamExists(_)) => Self::StreamExists,
            Some(Kind::Exact(n)) => Self::Exact(n),
        }
    }
}

/// One event to append.
#[derive(Debug, Clone)]
pub struct EventData {
    /// Id, type, source, correlation...; an empty id becomes a UUIDv7 before the first send.
    pub metadata: EventMetadata,
    pub content_type: String,
    pub payload: Vec<u8>,
}

impl EventData {
    /// A JSON event of `event_type`.
    pub fn json<T: serde::Serialize>(
        event_type: &str,
        value: &T,
    ) -> Result<Self, NativeClientError> {
        Ok(Self {
            metadata: EventMetadata::new(event_type, ""),
            content_type: "application/json".into(),
            payload: serde_json::to_vec(value)
                .map_err(|e| NativeClientError::Codec(e.to_string()))?,
        })
    }

    pub fn with_id(mut self, id: &str) -> Self {
        self.metadata.id = id.into();
        self
    }

    fn to_wire(&self) -> v1::Message {
        v1::Message {
            metadata: Some(self.metadata.to_wire(&self.content_type, "")),
            key: Vec::new(),
            payload: self.payload.clone(),
            headers: self
                .metadata
                .attributes
                .iter()
                .map(|(k, v)| v1::Header {
                    key: k.clone(),
                    value: v.clone().into_bytes(),
                })
                .collect(),
        }
    }
}

/// A successful append or deletion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    /// The stream's last revision: the `Exact` of the next append.
    pub next_expected_revision: u64,
    pub partition: i32,
    /// Log offset of the last record written.
    pub position: i64,
    /// The ids had been written before: this is the original result.
    pub duplicate: bool,
}

/// Why an append failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    #[error("wrong expected version: expected {expected:?}, stream is at {current:?}")]
    WrongExpectedVersion {
        /// None: the stream does not exist (or is soft-deleted).
        current: Option<u64>,
        expected: ExpectedRevision,
    },
    #[error(transparent)]
    Client(#[from] NativeClientError),
}

/// A stream's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamInfo {
    pub last_revision: Option<u64>,
    pub soft_deleted: bool,
    pub tombstoned: bool,
    pub partition: i32,
    /// Log offset of the stream's last record, -1 for none.
    pub last_position: i64,
    /// `$maxCount` and `$maxAge` (ms), if set.
    pub max_count: Option<u64>,
    pub max_age_ms: Option<u64>,
    /// Reads start here (revisions below were soft-deleted).
    pub truncate_before: u64,
}

/// Where a stream read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    Start,
    End,
    Revision(u64),
}

/// An event read from a stream or from `$all`.
#[derive(Debug, Clone)]
pub struct RecordedEvent {
    pub stream: String,
    pub revision: u64,
    pub partition: i32,
    /// Log offset of its record.
    pub position: i64,
    /// Metadata, content type and payload (`event.partition`/`offset` say where it is).
    pub event: ReceivedEvent,
}

impl RecordedEvent {
    pub(super) fn from_wire(r: v1::RecordedEvent) -> Self {
        let event = ReceivedEvent::from_wire(v1::Delivery {
            message: r.message,
            partition: r.partition,
            offset: r.position,
            ..Default::default()
        });
        Self {
            stream: r.stream,
            revision: r.revision,
            partition: r.partition,
            position: r.position,
            event,
        }
    }
}

/// Event-store calls over a [`NativeConnection`].
#[derive(Clone)]
pub struct EventStoreClient {
    pub(super) conn: NativeConnection,
}

impl EventStoreClient {
    pub fn new(conn: NativeConnection) -> Self {
        Self { conn }
    }

    /// Creates event-store topic `topic` with `partitions` partitions (one gives a totally
    /// ordered `$all`).
    pub async fn create_store(
        &self,
        topic: &str,
        partitions: u32,
    ) -> Result<(), NativeClientError> {
        self.create_store_with(topic, partitions, &[]).await
    }

    /// As [`create_store`](Self::create_store), with more topic configs (e.g.
    /// `cleanup.policy=compact`).
    pub async fn create_store_with(
        &self,
        topic: &str,
        partitions: u32,
        extra_configs: &[(&str, &str)],
    ) -> Result<(), NativeClientError> {
        let mut configs = BTreeMap::from([(EVENT_STORE_CONFIG.to_string(), "true".to_string())]);
        for (k, v) in extra_configs {
            configs.insert((*k).to_string(), (*v).to_string());
        }
        self.conn
            .call(&v1::Request {
                op: Some(Op::DeclareTopic(v1::DeclareTopic {
                    name: topic.into(),
                    partitions,
                    configs: configs.into_iter().collect(),
                })),
            })
            .await
            .map(|_| ())
    }

    /// Appends `events` to `stream` of `topic`, all or nothing, if `expected` holds. Resent
    /// with the same ids after a lost answer (see the module docs).
    pub async fn append(
        &self,
        topic: &str,
        stream: &str,
        expected: ExpectedRevision,
        mut events: Vec<EventData>,
    ) -> Result<AppendResult, AppendError> {
        for event in &mut events {
            event.metadata.ensure_id();
        }
        let request = v1::Request {
            op: Some(Op::AppendToStream(v1::AppendToStream {
                topic: topic.into(),
                stream: stream.into(),
                expected: Some(expected.to_wire()),
                events: events.iter().map(EventData::to_wire).collect(),
            })),
        };
        self.call_appended(&request).await
    }

    /// Deletes `stream` of `topic`: soft (a later append continues at the next revision) or
    /// hard (a tombstone: refused for good).
    pub async fn delete_stream(
        &self,
        topic: &str,
        stream: &str,
        expected: ExpectedRevision,
        hard: bool,
    ) -> Result<AppendResult, AppendError> {
        let request = v1::Request {
            op: Some(Op::DeleteStream(v1::DeleteStream {
                topic: topic.into(),
                stream: stream.into(),
                expected: Some(expected.to_wire()),
                hard,
            })),
        };
        self.call_appended(&request).await
    }

    /// The stream's last revision and deletion state.
    pub async fn stream_info(
        &self,
        topic: &str,
        stream: &str,
    ) -> Result<StreamInfo, NativeClientError> {
        let request = v1::Request {
            op: Some(Op::GetStreamInfo(v1::GetStreamInfo {
                topic: topic.into(),
                stream: stream.into(),
            })),
        };
        match self.conn.call(&request).await? {
            response::Result::StreamInfo(i) => Ok(StreamInfo {
                last_revision: i.last_revision,
                soft_deleted: i.soft_deleted,
                tombstoned: i.tombstoned,
                partition: i.partition,
                last_position: i.last_position,
                max_count: i.max_count,
                max_age_ms: i.max_age_ms,
                truncate_before: i.truncate_before,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// Reads up to `max_count` events of `stream` from `from`, forwards or backwards. A stream
    /// never written or soft-deleted is `STREAM_NOT_FOUND`, a tombstoned one `STREAM_DELETED`.
    pub async fn read_stream(
        &self,
        topic: &str,
        stream: &str,
        from: ReadFrom,
        backwards: bool,
        max_count: u32,
    ) -> Result<Vec<RecordedEvent>, NativeClientError> {
        use v1::read_stream::From;
        let from = match from {
            ReadFrom::Start => From::Start(true),
            ReadFrom::End => From::End(true),
            ReadFrom::Revision(n) => From::Revision(n),
        };
        let request = v1::Request {
            op: Some(Op::ReadStream(v1::ReadStream {
                topic: topic.into(),
                stream: stream.into(),
                from: Some(from),
                backwards,
                max_count,
            })),
        };
        Ok(self.call_read(&request).await?.0)
    }

    /// Reads up to `max_count` events of one partition of `topic` from `from_position` (`$all`
    /// of a one-partition store); returns them and the position the next read starts at.
    pub async fn read_all(
        &self,
        topic: &str,
        partition: i32,
        from_position: i64,
        max_count: u32,
    ) -> Result<(Vec<RecordedEvent>, i64), NativeClientError> {
        let request = v1::Request {
            op: Some(Op::ReadAll(v1::ReadAll {
                topic: topic.into(),
                partition,
                from_position,
                max_count,
            })),
        };
        self.call_read(&request).await
    }

    /// Sets `stream`'s `$maxCount` / `$maxAge` (ms): reads then leave older events out.
    pub async fn set_stream_metadata(
        &self,
        topic: &str,
        stream: &str,
        max_count: Option<u64>,
        max_age_ms: Option<u64>,
    ) -> Result<AppendResult, AppendError> {
        let request = v1::Request {
            op: Some(Op::SetStreamMetadata(v1::SetStreamMetadata {
                topic: topic.into(),
                stream: stream.into(),
                max_count,
                max_age_ms,
            })),
        };
        self.call_appended(&request).await
    }

    async fn call_read(
        &self,
        request: &v1::Request,
    ) -> Result<(Vec<RecordedEvent>, i64), NativeClientError> {
        match self.conn.call(request).await? {
            response::Result::EventsRead(read) => Ok((
                read.events
                    .into_iter()
                    .map(RecordedEvent::from_wire)
                    .collect(),
                read.next_position,
            )),
            other => Err(unexpected(&other)),
        }
    }

    async fn call_appended(&self, request: &v1::Request) -> Result<AppendResult, AppendError> {
        let mut attempt = 0;
        let answer = loop {
            attempt += 1;
            match self.conn.call(request).await {
                Err(NativeClientError::Connection(_)) if attempt < APPEND_ATTEMPTS => {
                    tokio::time::sleep(self.conn.options().backoff.delay(attempt)).await;
                }
                other => break other?,
            }
        };
        match answer {
            response::Result::StreamAppended(v1::StreamAppended {
                outcome: Some(stream_appended::Outcome::Success(s)),
            }) => Ok(AppendResult {
                next_expected_revision: s.next_expected_revision,
                partition: s.partition,
                position: s.position,
                duplicate: s.duplicate,
            }),
            response::Result::StreamAppended(v1::StreamAppended {
                outcome: Some(stream_appended::Outcome::WrongExpectedVersion(w)),
            }) => Err(AppendError::WrongExpectedVersion {
                current: w.current_revision,
                expected: ExpectedRevision::from_wire(w.expected),
            }),
            other => Err(unexpected(&other).into()),
        }
    }
}

pub(super) fn unexpected(answer: &response::Result) -> NativeClientError {
    NativeClientError::Codec(format!("unexpected answer {answer:?}"))
}

/// A server-side filter of an `$all` subscription (regexes in Rust `regex` syntax).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionFilter {
    /// Streams whose name starts with this: a category such as `order-`.
    StreamPrefix(String),
    StreamRegex(String),
    /// Events whose type starts with this.
    TypePrefix(String),
    TypeRegex(String),
}

/// What a catch-up subscription delivers.
#[derive(Debug, Clone)]
pub enum CatchUpEvent {
    /// Boxed: an event is much larger than the signals.
    Event(Box<RecordedEvent>),
    /// Everything before this position was looked at: a place to resume from.
    Checkpoint(i64),
    /// Reached the log's end at this position; what follows is live.
    CaughtUp(i64),
    /// Far behind again at this position.
    FellBehind(i64),
}

/// A catch-up subscription; read it with [`next`](Self::next), end it with
/// [`close`](Self::close) (or by dropping it).
pub struct CatchUpSubscription {
    send: crate::proto::stream::SendStream,
    reader: crate::proto::framed::FrameReader<crate::proto::stream::RecvStream>,
}

impl CatchUpSubscription {
    /// The next message; `None` once the broker ended the subscription.
    pub async fn next(&mut self) -> Result<Option<CatchUpEvent>, NativeClientError> {
        use v1::catch_up::Message as M;
        match super::connection::read_result(&mut self.reader).await {
            Ok(response::Result::CatchUp(v1::CatchUp { message: Some(m) })) => Ok(Some(match m {
                M::Event(e) => CatchUpEvent::Event(Box::new(RecordedEvent::from_wire(e))),
                M::Checkpoint(p) => CatchUpEvent::Checkpoint(p),
                M::CaughtUp(p) => CatchUpEvent::CaughtUp(p),
                M::FellBehind(p) => CatchUpEvent::FellBehind(p),
            })),
            Ok(response::Result::Done(_)) => Ok(None),
            Ok(other) => Err(unexpected(&other)),
            Err(e) => Err(e),
        }
    }

    /// Ends the subscription.
    pub fn close(mut self) {
        let _ = self.send.finish();
    }
}

impl EventStoreClient {
    /// A catch-up subscription to `stream` from `from_revision` (0 = the start).
    pub async fn subscribe_to_stream(
        &self,
        topic: &str,
        stream: &str,
        from_revision: u64,
    ) -> Result<CatchUpSubscription, NativeClientError> {
        let request = v1::Request {
            op: Some(Op::SubscribeToStream(v1::SubscribeToStream {
                topic: topic.into(),
                stream: stream.into(),
                from_revision,
            })),
        };
        let (send, reader) = self.conn.open_subscription(&request).await?;
        Ok(CatchUpSubscription { send, reader })
    }

    /// A catch-up subscription to partition `partition` of `topic` (`$all`) from
    /// `from_position`, optionally filtered, with a checkpoint every `checkpoint_interval`
    /// records the filter skips (0 = 1000).
    pub async fn subscribe_to_all(
        &self,
        topic: &str,
        partition: i32,
        from_position: i64,
        filter: Option<SubscriptionFilter>,
        checkpoint_interval: u32,
    ) -> Result<CatchUpSubscription, NativeClientError> {
        use v1::event_filter::Kind as F;
        let filter = filter.map(|f| v1::EventFilter {
            kind: Some(match f {
                SubscriptionFilter::StreamPrefix(p) => F::StreamPrefix(p),
                SubscriptionFilter::StreamRegex(r) => F::StreamRegex(r),
                SubscriptionFilter::TypePrefix(p) => F::TypePrefix(p),
                SubscriptionFilter::TypeRegex(r) => F::TypeRegex(r),
            }),
        });
        let request = v1::Request {
            op: Some(Op::SubscribeToAll(v1::SubscribeToAll {
                topic: topic.into(),
                partition,
                from_position,
                filter,
                checkpoint_interval,
            })),
        };
        let (send, reader) = self.conn.open_subscription(&request).await?;
        Ok(CatchUpSubscription { send, reader })
    }
}
