//! Event sourcing on the log (issue 15): streams with expected-revision appends in event-store
//! topics, KurrentDB's model in Ferry's storage.
//!
//! An event-store topic is an ordinary topic with `ferry.event.store=true`. A stream (one per
//! aggregate, `order-42`) is the set of its records whose key is the stream name; the partition
//! is the murmur2 hash of the name, as a Kafka producer would pick it, so a stream is totally
//! ordered, and with one partition (the default) so is the whole topic (`$all`). An append is
//! one record batch (all or nothing) whose records carry the CloudEvents headers and their
//! revision (`records.rs`), so Kafka and AMQP consumers read the store as ordinary data, while
//! plain Kafka produce into it is refused unless `ferry.event.store.allow.produce=true` (it
//! would bypass the revision checks).
//!
//! Layout: `records` (the record format), `index` (the pure in-memory stream index and the
//! expected-revision check), `partition` (one partition's ordered check-and-queue, rebuilds),
//! `follower` (the stored index in `meta::es`, written after durability). This module is a
//! layer beside the protocol adapters: it calls the broker and log, and nothing below imports
//! it. Its state lives once per broker core (`BrokerCore::layered`), so every adapter that
//! opens an [`EventStore`] shares one index per partition.

pub mod catchup;
mod follower;
mod index;
mod partition;
pub mod persistent;
pub mod read;
pub mod records;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::OnceCell;

use crate::broker::topic_router::partition_for_key;
use crate::broker::{BrokerCore, BrokerError};
use crate::log::LogError;
use crate::meta::MetaError;
pub use catchup::{CatchUp, CatchUpMessage, EventFilter, Selection};
use partition::EsPartition;
pub use read::{ReadFrom, RecordedEvent};
pub use records::{NewEvent, StreamLimits};

/// The topic config that makes a topic an event store.
pub const EVENT_STORE_CONFIG: &str = "ferry.event.store";
/// The topic config that lets plain Kafka producers write into an event store anyway.
pub const ALLOW_PRODUCE_CONFIG: &str = "ferry.event.store.allow.produce";
/// Longest stream name, in bytes.
pub const MAX_STREAM_NAME_BYTES: usize = 1024;
/// Most events in one append.
pub const MAX_EVENTS_PER_APPEND: usize = 10_000;

/// What the writer expects the stream's last revision to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedRevision {
    Any,
    /// The stream does not exist (or was soft-deleted).
    NoStream,
    /// The stream exists (and is not soft-deleted).
    StreamExists,
    /// The stream's last revision is this one.
    Exact(u64),
}

/// A successful append (or deletion).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendSuccess {
    /// The stream's last revision afterwards.
    pub next_expected_revision: u64,
    pub partition: i32,
    /// Log offset of the last record written.
    pub position: i64,
    /// The event ids were written before; this is the original result and nothing was
    /// written now.
    pub duplicate: bool,
}

/// What an append ends in, short of an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    Success(AppendSuccess),
    WrongExpectedVersion {
        /// None: the stream does not exist or is soft-deleted.
        current: Option<u64>,
        expected: ExpectedRevision,
    },
}

/// A stream's state in the index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamState {
    /// The last revision taken, durable or not (what the expected-revision check sees).
    pub last_revision: Option<u64>,
    /// The last revision that is durable (below the high watermark): what reads may return.
    /// It trails `last_revision` while an append waits for its fsync.
    pub durable_revision: Option<u64>,
    /// Log offset of the stream's last durable record, -1 for none.
    pub last_offset: i64,
    /// The stream's latest durable revision that is a multiple of
    /// `follower::REVISION_INDEX_INTERVAL`, with its offset: where a read may start scanning
    /// before the stored index (`meta::es`, written a step behind the log) has that entry.
    pub recent_floor: Option<(u64, i64)>,
    pub soft_deleted: bool,
    pub tombstoned: bool,
    /// Revisions below this one were soft-deleted: reads skip them.
    pub truncate_before: u64,
    pub limits: records::StreamLimits,
}

#[derive(Debug, thiserror::Error)]
pub enum EsError {
    #[error("unknown topic `{0}`")]
    UnknownTopic(String),
    #[error("topic `{0}` is not an event store (create it with {EVENT_STORE_CONFIG}=true)")]
    NotEventStore(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("stream `{0}` is deleted (tombstoned)")]
    StreamDeleted(String),
    #[error("stream `{0}` not found")]
    StreamNotFound(String),
    #[error("{0}")]
    Unavailable(String),
    /// A persistent subscription group that does not exist.
    #[error("{0}")]
    GroupNotFound(String),
    /// A persistent subscription group that exists already.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl EsError {
    /// The text a client may see (storage errors without paths).
    pub fn client_message(&self) -> String {
        match self {
            EsError::Log(e) => e.client_message(),
            EsError::Meta(e) => e.client_message(),
            EsError::Broker(e) => e.client_message(),
            other => other.to_string(),
        }
    }
}

/// Partition key: topic name, topic id (a deleted and re-created topic is another store) and
/// partition.
type PartitionKey = (String, [u8; 16], i32);

/// The per-core state: one lazily opened [`EsPartition`] per partition in use.
#[derive(Default)]
struct EsState {
    partitions: parking_lot::Mutex<HashMap<PartitionKey, Arc<OnceCell<Arc<EsPartition>>>>>,
}

/// The event store of a broker core; cheap to create and clone (the state is shared per core).
#[derive(Clone)]
pub struct EventStore {
    core: BrokerCore,
    state: Arc<EsState>,
}

impl EventStore {
    pub fn new(core: &BrokerCore) -> Self {
        Self {
            core: core.clone(),
            state: core.layered(EsState::default),
        }
    }

    fn event_store_topic(&self, topic: &str) -> Result<Arc<crate::broker::Topic>, EsError> {
        let t = self
            .core
            .topic(topic)
            .ok_or_else(|| EsError::UnknownTopic(topic.to_string()))?;
        if !t.log_config().event_store {
            return Err(EsError::NotEventStore(topic.to_string()));
        }
        Ok(t)
    }

    async fn partition_of(&self, topic: &str, stream: &str) -> Result<Arc<EsPartition>, EsError> {
        check_stream_name(stream)?;
        self.partition_for(topic, stream).await
    }

    /// The partition of `stream`, a reserved (`$`) name included.
    async fn partition_for(&self, topic: &str, stream: &str) -> Result<Arc<EsPartition>, EsError> {
        let t = self.event_store_topic(topic)?;
        let p = partition_for_key(stream.as_bytes(), t.partition_count());
        let handle = t
            .partition(p)
            .cloned()
            .ok_or_else(|| EsError::UnknownTopic(topic.to_string()))?;
        let cell = {
            let mut partitions = self.state.partitions.lock();
            // Entries of a deleted topic (another id) go with it.
            partitions.retain(|(name, id, _), _| name != topic || *id == t.topic_id());
            partitions
                .entry((topic.to_string(), t.topic_id(), p))
                .or_default()
                .clone()
        };
        let meta = self.core.meta().clone();
        let clock = self.core.clock().clone();
        cell.get_or_try_init(|| EsPartition::open(topic, p, handle, meta, clock))
            .await
            .cloned()
    }

    /// Appends `events` to `stream` of `topic` if `expected` holds; see [`EsPartition`].
    pub async fn append(
        &self,
        topic: &str,
        stream: &str,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, EsError> {
        check_events(&events)?;
        let partition = self.partition_of(topic, stream).await?;
        partition.append(stream, expected, events).await
    }

    /// Soft- or hard-deletes `stream` of `topic` if `expected` holds.
    pub async fn delete_stream(
        &self,
        topic: &str,
        stream: &str,
        expected: ExpectedRevision,
        hard: bool,
    ) -> Result<AppendOutcome, EsError> {
        let partition = self.partition_of(topic, stream).await?;
        partition.delete(stream, expected, hard).await
    }

    /// Sets `stream`'s `$maxCount` / `$maxAge`.
    pub async fn set_stream_metadata(
        &self,
        topic: &str,
        stream: &str,
        limits: StreamLimits,
    ) -> Result<AppendSuccess, EsError> {
        let partition = self.partition_of(topic, stream).await?;
        partition.set_metadata(stream, limits).await
    }

    /// Reads up to `max_count` events of `stream` from `from`, forwards or backwards.
    pub async fn read_stream(
        &self,
        topic: &str,
        stream: &str,
        from: ReadFrom,
        backwards: bool,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, EsError> {
        // Reserved (`$`) names may be read, not written: a persistent subscription's parked
        // stream is one (`persistent::parked_stream_name`).
        if stream.is_empty() || stream.len() > MAX_STREAM_NAME_BYTES {
            check_stream_name(stream)?;
        }
        self.read_stream_unchecked(topic, stream, from, backwards, max_count)
            .await
    }

    /// [`read_stream`](Self::read_stream) of any stream, a reserved (`$`) name included.
    async fn read_stream_unchecked(
        &self,
        topic: &str,
        stream: &str,
        from: ReadFrom,
        backwards: bool,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, EsError> {
        let partition = self.partition_for(topic, stream).await?;
        let state = partition.info(stream).await?;
        if state.tombstoned {
            return Err(EsError::StreamDeleted(stream.to_string()));
        }
        if state.soft_deleted || state.durable_revision.is_none() {
            return Err(EsError::StreamNotFound(stream.to_string()));
        }
        let (handle, meta) = (partition.handle().clone(), self.core.meta().clone());
        let (topic, stream, p) = (topic.to_string(), stream.to_string(), partition.partition());
        let now = self.core.clock().now_ms();
        tokio::task::spawn_blocking(move || {
            read::read_stream(
                &handle, &meta, &topic, p, &stream, &state, from, backwards, max_count, now,
            )
        })
        .await
        .map_err(|_| EsError::Unavailable("the read failed".into()))?
    }

    /// Reads up to `max_count` events of partition `partition` of `topic` from
    /// `from_position`; returns them and the position to continue at.
    pub async fn read_all(
        &self,
        topic: &str,
        partition: i32,
        from_position: i64,
        max_count: usize,
    ) -> Result<(Vec<RecordedEvent>, i64), EsError> {
        let t = self.event_store_topic(topic)?;
        let handle = t
            .partition(partition)
            .cloned()
            .ok_or_else(|| EsError::InvalidArgument(format!("no partition {partition}")))?;
        tokio::task::spawn_blocking(move || {
            read::read_all(&handle, partition, from_position, max_count)
        })
        .await
        .map_err(|_| EsError::Unavailable("the read failed".into()))?
    }

    /// A catch-up subscription to `stream` from `from_revision`.
    pub async fn subscribe_to_stream(
        &self,
        topic: &str,
        stream: &str,
        from_revision: u64,
    ) -> Result<CatchUp, EsError> {
        let partition = self.partition_of(topic, stream).await?;
        let state = partition.info(stream).await?;
        let (t, s, p) = (topic.to_string(), stream.to_string(), partition.partition());
        let meta = self.core.meta().clone();
        let start = tokio::task::spawn_blocking(move || {
            read::scan_start(&meta, &t, p, &s, &state, from_revision)
        })
        .await
        .map_err(|_| EsError::Unavailable("opening the subscription failed".into()))??;
        Ok(CatchUp::new(
            partition.handle().clone(),
            p,
            start,
            Selection::Stream {
                stream: stream.to_string(),
                from_revision,
            },
            catchup::DEFAULT_CHECKPOINT_INTERVAL,
        ))
    }

    /// A catch-up subscription to partition `partition` of `topic` (`$all`) from
    /// `from_position`, optionally filtered, with a checkpoint every `checkpoint_interval`
    /// skipped records (0 = the default).
    pub fn subscribe_to_all(
        &self,
        topic: &str,
        partition: i32,
        from_position: i64,
        filter: Option<EventFilter>,
        checkpoint_interval: u64,
    ) -> Result<CatchUp, EsError> {
        let t = self.event_store_topic(topic)?;
        let handle = t
            .partition(partition)
            .cloned()
            .ok_or_else(|| EsError::InvalidArgument(format!("no partition {partition}")))?;
        let interval = match checkpoint_interval {
            0 => catchup::DEFAULT_CHECKPOINT_INTERVAL,
            n => n,
        };
        Ok(CatchUp::new(
            handle,
            partition,
            from_position,
            Selection::All(filter),
            interval,
        ))
    }

    /// The state of `stream` and its partition.
    pub async fn stream_info(
        &self,
        topic: &str,
        stream: &str,
    ) -> Result<(i32, StreamState), EsError> {
        let partition = self.partition_of(topic, stream).await?;
        Ok((partition.partition(), partition.info(stream).await?))
    }
}

fn check_stream_name(stream: &str) -> Result<(), EsError> {
    if stream.is_empty() || stream.len() > MAX_STREAM_NAME_BYTES {
        return Err(EsError::InvalidArgument(format!(
            "a stream name must be 1 to {MAX_STREAM_NAME_BYTES} bytes"
        )));
    }
    if stream.starts_with('$') {
        return Err(EsError::InvalidArgument(format!(
            "stream names starting with `$` are reserved (`{stream}`)"
        )));
    }
    Ok(())
}

fn check_events(events: &[NewEvent]) -> Result<(), EsError> {
    if events.is_empty() || events.len() > MAX_EVENTS_PER_APPEND {
        return Err(EsError::InvalidArgument(format!(
            "an append takes 1 to {MAX_EVENTS_PER_APPEND} events"
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(events.len());
    for event in events {
        if event.id.is_empty() {
            return Err(EsError::InvalidArgument("an event id is empty".into()));
        }
        if !seen.insert(event.id.as_str()) {
            return Err(EsError::InvalidArgument(format!(
                "event id `{}` appears twice in one append",
                event.id
            )));
        }
    }
    Ok(())
}
