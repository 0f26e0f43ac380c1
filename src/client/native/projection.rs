//! CQRS projections: a [`Projection`] turns the events of an event store into a read model,
//! and a [`ProjectionRunner`] feeds it from a catch-up subscription to `$all` (one partition
//! of the store, optionally filtered on the server) in batches.
//!
//! Design: the checkpoint (the log position after the last event applied) must be committed
//! together with the read model, or a crash between the two either loses events (checkpoint
//! first) or applies them twice (read model first). Two storages, chosen by
//! [`CheckpointStorage`]:
//!
//! - [`CheckpointStorage::Application`]: the hook for a read model in the application's own
//!   database. The runner hands `apply` the checkpoint that follows the batch, and the
//!   projection writes it in the same transaction as the read-model rows; at start the runner
//!   asks the projection for it ([`Projection::load_checkpoint`]). Exactly once.
//! - [`CheckpointStorage::Ferry`]: the checkpoint is an event in stream `projection-<name>` of
//!   an event-store topic, appended after each batch with the `Exact` revision last seen, so
//!   two runners of one projection cannot both advance it (the second is fenced with
//!   [`ProjectionError::Fenced`]). The read model and the checkpoint are then two writes: a
//!   crash between them replays the last batch, so `apply` must be idempotent (each event
//!   carries its `position`; keep the highest applied and skip below it).
//!
//! The checkpoint topic is not the projected store itself, so a projection never sees its own
//! checkpoints in `$all`. A rebuild ([`ProjectionRunner::rebuild`]) resets the read model and
//! the checkpoint, then replays from the start of the log.

use std::future::Future;
use std::time::Duration;

use super::connection::NativeClientError;
use super::es::{
    AppendError, CatchUpEvent, EventData, EventStoreClient, ExpectedRevision, ReadFrom,
    RecordedEvent, SubscriptionFilter,
};
use crate::proto::v1::ErrorCode;

/// An application error crossing the SDK (a projection's, an aggregate's, a saga's).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Event type of a checkpoint event in a [`FerryCheckpoints`] stream.
pub const CHECKPOINT_EVENT_TYPE: &str = "ferry.projection.checkpoint";

/// Why a projection stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The projection's own code failed; nothing of the batch was committed by the runner.
    #[error("projection failed: {0}")]
    Apply(BoxError),
    /// Another runner advanced the checkpoint stream: this one must stop.
    #[error("checkpoint stream `{stream}` was advanced by another runner")]
    Fenced { stream: String },
    #[error(transparent)]
    Client(#[from] NativeClientError),
    /// The broker ended the subscription.
    #[error("the subscription ended")]
    SubscriptionEnded,
}

/// A read model built from events.
pub trait Projection: Send {
    /// Applies `events` (log order, possibly empty when only the checkpoint moved) to the read
    /// model. `checkpoint` is where the projection resumes after them; with
    /// [`CheckpointStorage::Application`] it must be stored in the same transaction as the
    /// read-model changes. An error stops the runner with nothing of the batch committed.
    fn apply(
        &mut self,
        events: &[RecordedEvent],
        checkpoint: i64,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// The checkpoint committed with the read model, `None` for the start
    /// ([`CheckpointStorage::Application`] only).
    fn load_checkpoint(&mut self) -> impl Future<Output = Result<Option<i64>, BoxError>> + Send {
        async { Ok(None) }
    }

    /// Empties the read model (and its own checkpoint, if it keeps one) before a rebuild.
    fn reset(&mut self) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// Where a runner commits its checkpoint (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointStorage {
    /// Stream `projection-<name>` of event-store topic `topic` (created on first use).
    Ferry { topic: String },
    /// The projection stores it with its read model ([`Projection::load_checkpoint`]).
    Application,
}

/// A projection checkpoint kept in Ferry: the last event of stream `projection-<name>`,
/// appended with the `Exact` revision this instance last read or wrote.
pub struct FerryCheckpoints {
    client: EventStoreClient,
    topic: String,
    stream: String,
    /// Revision of the checkpoint event last read or written; `None`: the stream is empty.
    revision: Option<u64>,
    position: Option<i64>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CheckpointBody {
    position: Option<i64>,
}

impl FerryCheckpoints {
    /// Opens (creating the topic if needed) the checkpoint of projection `name`.
    pub async fn open(
        client: EventStoreClient,
        topic: &str,
        name: &str,
    ) -> Result<Self, ProjectionError> {
        client.create_store(topic, 1).await?;
        let stream = format!("projection-{name}");
        let last = match client
            .read_stream(topic, &stream, ReadFrom::End, true, 1)
            .await
        {
            Ok(events) => events.into_iter().next(),
            Err(e) if e.code() == Some(ErrorCode::StreamNotFound) => None,
            Err(e) => return Err(e.into()),
        };
        let (revision, position) = match last {
            Some(e) => {
                let body: CheckpointBody = e.event.json()?;
                (Some(e.revision), body.position)
            }
            None => (None, None),
        };
        Ok(Self {
            client,
            topic: topic.into(),
            stream,
            revision,
            position,
        })
    }

    /// The stored checkpoint; `None` for the start.
    pub fn position(&self) -> Option<i64> {
        self.position
    }

    /// Stores `position` (`None` resets to the start), if no other runner wrote since.
    pub async fn save(&mut self, position: Option<i64>) -> Result<(), ProjectionError> {
        let expected = match self.revision {
            Some(r) => ExpectedRevision::Exact(r),
            None => ExpectedRevision::NoStream,
        };
        let event = EventData::json(CHECKPOINT_EVENT_TYPE, &CheckpointBody { position })
            .map_err(ProjectionError::Client)?;
        match self
            .client
            .append(&self.topic, &self.stream, expected, vec![event])
            .await
        {
            Ok(r) => {
                self.revision = Some(r.next_expected_revision);
                self.position = position;
                Ok(())
            }
            Err(AppendError::WrongExpectedVersion { .. }) => Err(ProjectionError::Fenced {
                stream: self.stream.clone(),
            }),
            Err(AppendError::Client(e)) => Err(e.into()),
        }
    }
}

/// Feeds a [`Projection`] from a catch-up subscription and commits its checkpoint.
#[derive(Clone)]
pub struct ProjectionRunner {
    client: EventStoreClient,
    name: String,
    topic: String,
    partition: i32,
    filter: Option<SubscriptionFilter>,
    storage: CheckpointStorage,
    batch_size: usize,
    max_wait: Duration,
}

enum Checkpoints {
    Ferry(FerryCheckpoints),
    Application,
}

impl ProjectionRunner {
    /// Projection `name` of partition 0 of event store `topic`, checkpointed in Ferry (topic
    /// `<topic>.projections`), in batches of up to 100 events.
    pub fn new(client: EventStoreClient, name: &str, topic: &str) -> Self {
        Self {
            client,
            name: name.into(),
            topic: topic.into(),
            partition: 0,
            filter: None,
            storage: CheckpointStorage::Ferry {
                topic: format!("{topic}.projections"),
            },
            batch_size: 100,
            max_wait: Duration::from_millis(50),
        }
    }

    pub fn with_partition(mut self, partition: i32) -> Self {
        self.partition = partition;
        self
    }

    /// Only events matching `filter` reach the projection (filtered on the server).
    pub fn with_filter(mut self, filter: SubscriptionFilter) -> Self {
        self.filter = Some(filter);
        self
    }

    pub fn with_storage(mut self, storage: CheckpointStorage) -> Self {
        self.storage = storage;
        self
    }

    /// Most events per `apply` (at least 1).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// How long a partial batch waits for more events before it is applied.
    pub fn with_max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// Projects from the stored checkpoint until the subscription reaches the log's end;
    /// returns the checkpoint committed last.
    pub async fn run_until_caught_up<P: Projection>(
        &self,
        projection: &mut P,
    ) -> Result<i64, ProjectionError> {
        let mut checkpoints = self.open().await?;
        self.drive(projection, &mut checkpoints, true, std::future::pending())
            .await
    }

    /// Projects from the stored checkpoint, live, until `stop` resolves (the batch in hand is
    /// applied first); returns the checkpoint committed last.
    pub async fn run<P: Projection>(
        &self,
        projection: &mut P,
        stop: impl Future<Output = ()> + Send,
    ) -> Result<i64, ProjectionError> {
        let mut checkpoints = self.open().await?;
        self.drive(projection, &mut checkpoints, false, stop).await
    }

    /// Rebuild: empties the read model, resets the checkpoint and replays the log from the
    /// start until caught up.
    pub async fn rebuild<P: Projection>(&self, projection: &mut P) -> Result<i64, ProjectionError> {
        let mut checkpoints = self.open().await?;
        projection.reset().await.map_err(ProjectionError::Apply)?;
        if let Checkpoints::Ferry(f) = &mut checkpoints {
            f.save(None).await?;
        }
        self.drive(projection, &mut checkpoints, true, std::future::pending())
            .await
    }

    async fn open(&self) -> Result<Checkpoints, ProjectionError> {
        Ok(match &self.storage {
            CheckpointStorage::Ferry { topic } => Checkpoints::Ferry(
                FerryCheckpoints::open(self.client.clone(), topic, &self.name).await?,
            ),
            CheckpointStorage::Application => Checkpoints::Application,
        })
    }

    async fn drive<P: Projection>(
        &self,
        projection: &mut P,
        checkpoints: &mut Checkpoints,
        until_caught_up: bool,
        stop: impl Future<Output = ()> + Send,
    ) -> Result<i64, ProjectionError> {
        let start = match checkpoints {
            Checkpoints::Ferry(f) => f.position(),
            Checkpoints::Application => projection
                .load_checkpoint()
                .await
                .map_err(ProjectionError::Apply)?,
        }
        .unwrap_or(0);
        let mut sub = self
            .client
            .subscribe_to_all(&self.topic, self.partition, start, self.filter.clone(), 0)
            .await?;
        let mut committed = start;
        let mut position = start;
        let mut batch: Vec<RecordedEvent> = Vec::new();
        tokio::pin!(stop);
        loop {
            // A partial batch waits at most `max_wait` for more; an empty one waits for an
            // event or for `stop`.
            let message = if batch.is_empty() {
                tokio::select! {
                    m = sub.next() => Some(m?),
                    () = &mut stop => {
                        sub.close();
                        return Ok(committed);
                    }
                }
            } else {
                match tokio::time::timeout(self.max_wait, sub.next()).await {
                    Ok(m) => Some(m?),
                    Err(_) => None,
                }
            };
            let mut flush = message.is_none();
            let mut caught_up = false;
            match message {
                None => {}
                Some(None) => return Err(ProjectionError::SubscriptionEnded),
                Some(Some(CatchUpEvent::Event(e))) => {
                    position = e.position + 1;
                    batch.push(*e);
                    flush = batch.len() >= self.batch_size;
                }
                Some(Some(CatchUpEvent::Checkpoint(p))) => {
                    position = position.max(p);
                    flush = true;
                }
                Some(Some(CatchUpEvent::CaughtUp(p))) => {
                    position = position.max(p);
                    flush = true;
                    caught_up = true;
                }
                Some(Some(CatchUpEvent::FellBehind(_))) => {}
            }
            if flush && (!batch.is_empty() || position > committed) {
                projection
                    .apply(&batch, position)
                    .await
                    .map_err(ProjectionError::Apply)?;
                if let Checkpoints::Ferry(f) = checkpoints {
                    f.save(Some(position)).await?;
                }
                committed = position;
                batch.clear();
            }
            if caught_up && until_caught_up {
                sub.close();
                return Ok(committed);
            }
        }
    }
}
