//! Aggregate snapshots: [`SnapshotStore`] saves the state of an aggregate at a revision of
//! its stream and loads it back, so loading an [`Aggregate`] reads the latest snapshot plus
//! only the events after its revision.
//!
//! Design (compacted storage, one snapshot per stream): snapshots live in their own topic,
//! `<store>.snapshots`, which is both an event store (`ferry.event.store=true`) and compacted
//! (`cleanup.policy=compact`). Each aggregate stream `order-42` of the store has a stream of
//! the same name there, whose events are its snapshots; the record key is the stream name, so
//! the log cleaner keeps only the latest snapshot of each stream, and the event-store index
//! finds that latest one without a scan (a backwards read of one event). The alternative, a
//! `$snapshot-<stream>` stream with `$maxCount=1` in the store itself, was rejected: `$maxCount`
//! only hides old events from reads (the records stay until the topic's retention removes
//! them, docs/event-store.md), so snapshots would grow the store for ever; and they would
//! show up in every `$all` subscription and projection of the store.
//!
//! A snapshot is an optimisation, never the truth: it is written with `Any` (the latest
//! writer wins), and a lost or stale one only makes the next load replay more events.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::connection::NativeClientError;
use super::es::{
    AppendError, EventData, EventStoreClient, ExpectedRevision, ReadFrom, RecordedEvent,
};
use super::projection::BoxError;
use crate::proto::v1::ErrorCode;

/// Event type of a snapshot event.
pub const SNAPSHOT_EVENT_TYPE: &str = "ferry.snapshot";
/// Events read per request while replaying a stream after its snapshot.
const REPLAY_PAGE: u32 = 1_000;

/// State rebuilt from a stream's events.
pub trait Aggregate: Default + Serialize + DeserializeOwned + Send {
    /// Applies one event of the stream, in revision order.
    fn apply(&mut self, event: &RecordedEvent) -> Result<(), BoxError>;
}

/// A stored snapshot: the state after the stream's event `revision`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot<T> {
    pub revision: u64,
    pub state: T,
}

/// An aggregate as loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedAggregate<A> {
    pub state: A,
    /// The stream's last revision applied (`Exact` of the next append); `None`: no events.
    pub revision: Option<u64>,
    /// The snapshot it started from, if any.
    pub snapshot_revision: Option<u64>,
    /// Events applied after the snapshot.
    pub replayed: usize,
}

/// Why an aggregate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    #[error("aggregate failed to apply an event: {0}")]
    Apply(BoxError),
    #[error(transparent)]
    Client(#[from] NativeClientError),
}

/// Snapshots of the streams of one event store (see the module docs).
#[derive(Clone)]
pub struct SnapshotStore {
    client: EventStoreClient,
    store: String,
    topic: String,
}

impl SnapshotStore {
    /// Snapshots of event store `store`, kept in topic `<store>.snapshots`.
    pub fn new(client: EventStoreClient, store: &str) -> Self {
        Self {
            client,
            store: store.into(),
            topic: format!("{store}.snapshots"),
        }
    }

    /// The snapshot topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Creates the compacted snapshot topic (idempotent for the same partition count).
    pub async fn create(&self, partitions: u32) -> Result<(), NativeClientError> {
        self.create_with(partitions, &[]).await
    }

    /// As [`create`](Self::create), with more topic configs (`segment.bytes`,
    /// `min.cleanable.dirty.ratio`, ... to tune the compaction).
    pub async fn create_with(
        &self,
        partitions: u32,
        extra_configs: &[(&str, &str)],
    ) -> Result<(), NativeClientError> {
        let mut configs = vec![("cleanup.policy", "compact")];
        configs.extend_from_slice(extra_configs);
        self.client
            .create_store_with(&self.topic, partitions, &configs)
            .await
    }

    /// Stores `state` as `stream`'s state after its event `revision`.
    pub async fn save<T: Serialize>(
        &self,
        stream: &str,
        revision: u64,
        state: &T,
    ) -> Result<(), NativeClientError> {
        let event = EventData::json(SNAPSHOT_EVENT_TYPE, &Snapshot { revision, state })?;
        match self
            .client
            .append(&self.topic, stream, ExpectedRevision::Any, vec![event])
            .await
        {
            Ok(_) => Ok(()),
            Err(AppendError::Client(e)) => Err(e),
            // `Any` cannot be wrong; a broker that says so anyway is answering nonsense.
            Err(e @ AppendError::WrongExpectedVersion { .. }) => {
                Err(NativeClientError::Codec(e.to_string()))
            }
        }
    }

    /// `stream`'s latest snapshot, if one was saved.
    pub async fn load<T: DeserializeOwned>(
        &self,
        stream: &str,
    ) -> Result<Option<Snapshot<T>>, NativeClientError> {
        match self
            .client
            .read_stream(&self.topic, stream, ReadFrom::End, true, 1)
            .await
        {
            Ok(events) => events
                .into_iter()
                .next()
                .map(|e| e.event.json())
                .transpose(),
            Err(e) if e.code() == Some(ErrorCode::StreamNotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Loads aggregate `stream` of the store: its latest snapshot (or the default state) plus
    /// every event after the snapshot's revision.
    pub async fn load_aggregate<A: Aggregate>(
        &self,
        stream: &str,
    ) -> Result<LoadedAggregate<A>, AggregateError> {
        let snapshot = self.load::<A>(stream).await?;
        let snapshot_revision = snapshot.as_ref().map(|s| s.revision);
        let mut loaded = LoadedAggregate {
            revision: snapshot_revision,
            snapshot_revision,
            state: snapshot.map(|s| s.state).unwrap_or_default(),
            replayed: 0,
        };
        let mut from = snapshot_revision.map_or(0, |r| r + 1);
        loop {
            let page = match self
                .client
                .read_stream(
                    &self.store,
                    stream,
                    ReadFrom::Revision(from),
                    false,
                    REPLAY_PAGE,
                )
                .await
            {
                Ok(page) => page,
                Err(e) if e.code() == Some(ErrorCode::StreamNotFound) => Vec::new(),
                Err(e) => return Err(e.into()),
            };
            let full = page.len() == REPLAY_PAGE as usize;
            for event in &page {
                loaded.state.apply(event).map_err(AggregateError::Apply)?;
                loaded.revision = Some(event.revision);
                loaded.replayed += 1;
                from = event.revision + 1;
            }
            if !full {
                return Ok(loaded);
            }
        }
    }
}
