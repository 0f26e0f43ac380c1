//! One event-store partition: the single place its appends are checked and queued, in order.
//!
//! An append takes the partition's index lock (a synchronous one, never held across an await:
//! the writer's queue is tried without waiting, and a full queue means "try again in a
//! millisecond"), checks the expected revision against the reserved index, encodes the batch,
//! queues it on the partition's writer and reserves the new revisions, then releases the lock
//! and waits for durability outside it. So appends are
//! checked one at a time in the order they are written, but none waits for the fsync of the one
//! before: the writer's group commit batches them. If a write fails, the reserved state may
//! claim revisions the log does not hold, so the index is marked stale and the next append
//! first waits for the writer to drain (a barrier) and rebuilds the index from the log.
//!
//! The index is rebuilt the same way when the partition is first used after a start: from the
//! stored index (`meta::es`, written by `follower.rs` only for durable records) plus the log
//! after it, and the last [`RECENT_SCAN_RECORDS`] records for the idempotency map. It can
//! therefore never disagree with the log after a crash. A remaining edge, documented in
//! docs/event-store.md: when a write fails with a full disk (the partition is not fail-stopped)
//! and an append of the same stream queued behind it succeeds, that stream has a gap in its
//! revisions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{oneshot, watch, Mutex};

use super::index::{CheckFailure, PartitionIndex, RecentAppend, RECENT_APPENDS};
use super::records::{self, EsRecord, NewEvent};
use super::{AppendOutcome, AppendSuccess, EsError, ExpectedRevision, StreamState};
use crate::clock::Clock;
use crate::log::batch::decode_next_batch;
use crate::log::{PartitionHandle, PendingAppend, TrySubmit};
use crate::meta::Meta;

/// Records at the log's end scanned at a rebuild to refill the idempotency map.
pub const RECENT_SCAN_RECORDS: i64 = RECENT_APPENDS as i64;
/// Bytes read from the log per step of a scan.
pub(super) const SCAN_CHUNK_BYTES: usize = 1 << 20;

/// How long an append waits before trying again when the writer's queue is full.
const BUSY_RETRY: std::time::Duration = std::time::Duration::from_millis(1);

pub(crate) struct EsPartition {
    topic: String,
    partition: i32,
    handle: PartitionHandle,
    meta: Meta,
    clock: Clock,
    /// The reserved index. A synchronous lock held only to check, encode and queue (never
    /// across an await): with an async lock every append queued behind the one before and
    /// each hand-over waited for the next task to be scheduled, a convoy that left the broker
    /// short of CPU it had.
    index: parking_lot::Mutex<PartitionIndex>,
    /// A write failed since the index was built: rebuild it before the next check. Set and
    /// read under `index`, so no append is queued on a stale index.
    stale: AtomicBool,
    /// Held while rebuilding, so one rebuild runs at a time.
    rebuilding: Mutex<()>,
    /// Dropped with the partition: stops its follower task.
    _stop_follower: oneshot::Sender<()>,
}

/// What an append's check-and-queue ended in.
enum Step {
    /// The same events were appended before: their outcome.
    Earlier(super::index::SharedOutcome),
    Refused(Result<AppendOutcome, EsError>),
    Queued {
        pending: PendingAppend,
        first: u64,
        count: u64,
        settle: watch::Sender<Option<Result<AppendSuccess, String>>>,
        outcome: super::index::SharedOutcome,
    },
}

impl EsPartition {
    /// Builds the index from the stored index and the log, and starts the follower that keeps
    /// the stored index up to date.
    pub async fn open(
        topic: &str,
        partition: i32,
        handle: PartitionHandle,
        meta: Meta,
        clock: Clock,
    ) -> Result<Arc<Self>, EsError> {
        let index = rebuild(topic, partition, &handle, &meta).await?;
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(super::follower::run(
            topic.to_string(),
            partition,
            handle.clone(),
            meta.clone(),
            stopped,
        ));
        Ok(Arc::new(Self {
            topic: topic.to_string(),
            partition,
            handle,
            meta,
            clock,
            index: parking_lot::Mutex::new(index),
            stale: AtomicBool::new(false),
            rebuilding: Mutex::new(()),
            _stop_follower: stop,
        }))
    }

    /// Rebuilds the index if a write failed since it was built. Every append queued on the
    /// old index was queued before `stale` was set, so the barrier waits for all of them and
    /// the rebuild sees every one that was written.
    async fn fresh(&self) -> Result<(), EsError> {
        if !self.stale.load(Ordering::Acquire) {
            return Ok(());
        }
        let _one = self.rebuilding.lock().await;
        if self.stale.load(Ordering::Acquire) {
            self.handle.barrier().await;
            let index = rebuild(&self.topic, self.partition, &self.handle, &self.meta).await?;
            let mut current = self.index.lock();
            *current = index;
            self.stale.store(false, Ordering::Release);
        }
        Ok(())
    }

    fn mark_stale(&self) {
        let _index = self.index.lock();
        self.stale.store(true, Ordering::Release);
    }

    /// Calls `step` under the index lock until it has queued its batch (`Some`): on a fresh
    /// index (a stale one is rebuilt first), and again a millisecond later while the writer's
    /// queue is full (`None`: `step` queued and reserved nothing).
    async fn queue_under_index<T>(
        &self,
        mut step: impl FnMut(&mut PartitionIndex) -> Result<Option<T>, EsError>,
    ) -> Result<T, EsError> {
        loop {
            self.fresh().await?;
            let done = {
                let mut index = self.index.lock();
                if self.stale.load(Ordering::Acquire) {
                    continue;
                }
                step(&mut index)?
            };
            match done {
                Some(done) => return Ok(done),
                None => tokio::time::sleep(BUSY_RETRY).await,
            }
        }
    }

    /// Waits for a stream record queued by [`delete`](Self::delete) or
    /// [`set_metadata`](Self::set_metadata); a failed write makes the index stale.
    async fn written(&self, pending: PendingAppend) -> Result<crate::log::AppendInfo, EsError> {
        pending.wait().await.map_err(|e| {
            self.mark_stale();
            e.into()
        })
    }

    /// Queues `batch` on the writer: `None` when its queue is full (nothing queued).
    fn try_queue(
        &self,
        batch: bytes::BytesMut,
    ) -> Result<Option<crate::log::PendingAppend>, EsError> {
        match self.handle.try_submit_append(batch)? {
            TrySubmit::Queued(pending) => Ok(Some(pending)),
            TrySubmit::Busy(_) => Ok(None),
        }
    }

    /// Appends `events` to `stream` if `expected` holds (see the module docs).
    pub async fn append(
        self: &Arc<Self>,
        stream: &str,
        expected: ExpectedRevision,
        mut events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, EsError> {
        let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        // A resend whose original failed is written anew; a second failure is final.
        for attempt in 0..2 {
            let step = self
                .queue_under_index(|index| {
                    self.check_and_queue(index, stream, expected, &mut events, &ids, attempt == 0)
                })
                .await?;
            let (pending, first, count, settle, mut outcome) = match step {
                Step::Earlier(mut outcome) => match settled(&mut outcome).await {
                    Ok(mut original) => {
                        original.duplicate = true;
                        return Ok(AppendOutcome::Success(original));
                    }
                    // The original failed: write it again.
                    Err(_) => continue,
                },
                Step::Refused(refused) => return refused,
                Step::Queued {
                    pending,
                    first,
                    count,
                    settle,
                    outcome,
                } => (pending, first, count, settle, outcome),
            };
            // Completed by its own task, so a caller that goes away (its connection closed)
            // cannot leave a resend waiting on an outcome nobody will set.
            let this = Arc::clone(self);
            let stream = stream.to_string();
            tokio::spawn(async move {
                let result = match pending.wait().await {
                    Ok(info) => {
                        this.index.lock().record_durable(
                            &stream,
                            info.last_offset,
                            first,
                            first + count - 1,
                        );
                        Ok(AppendSuccess {
                            next_expected_revision: first + count - 1,
                            partition: this.partition,
                            position: info.last_offset,
                            duplicate: false,
                        })
                    }
                    Err(e) => {
                        this.mark_stale();
                        Err(e.client_message())
                    }
                };
                settle.send_replace(Some(result));
            });
            return settled(&mut outcome).await.map(AppendOutcome::Success);
        }
        Err(EsError::Unavailable(
            "an earlier attempt of this append failed; retry".into(),
        ))
    }

    /// One pass of an append under the index lock: the idempotency lookup, the expected
    /// revision check, encoding, queueing and the reservation, in the order appends are
    /// written. `None`: the writer's queue was full and nothing was reserved.
    fn check_and_queue(
        &self,
        index: &mut PartitionIndex,
        stream: &str,
        expected: ExpectedRevision,
        events: &mut [NewEvent],
        ids: &[String],
        look_for_earlier: bool,
    ) -> Result<Option<Step>, EsError> {
        if let Some(earlier) = index.recent(&ids[0]).filter(|_| look_for_earlier) {
            if earlier.stream != stream || earlier.ids != ids {
                return Err(EsError::InvalidArgument(format!(
                    "event id `{}` was already appended with other events or to another stream",
                    ids[0]
                )));
            }
            return Ok(Some(Step::Earlier(earlier.outcome.clone())));
        }
        let first = match index.check(stream, expected) {
            Ok(first) => first,
            Err(failure) => return Ok(Some(Step::Refused(refusal(stream, failure, expected)))),
        };
        let batch = records::encode_events(stream, first, events)?;
        let Some(pending) = self.try_queue(batch)? else {
            return Ok(None);
        };
        let count = events.len() as u64;
        index.reserve(stream, first, count);
        let (settle, outcome) = watch::channel(None);
        index.remember(RecentAppend {
            stream: stream.to_string(),
            ids: ids.to_vec(),
            outcome: outcome.clone(),
        });
        Ok(Some(Step::Queued {
            pending,
            first,
            count,
            settle,
            outcome,
        }))
    }

    /// Deletes `stream` (soft: a later append continues; hard: a tombstone) if `expected`
    /// holds.
    pub async fn delete(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        hard: bool,
    ) -> Result<AppendOutcome, EsError> {
        // A refusal (wrong expected revision) ends the loop as `Err` of the inner result.
        let queued = self
            .queue_under_index(|index| {
                let next = match index.check(stream, expected) {
                    Ok(next) => next,
                    Err(failure) => {
                        return refusal(stream, failure, expected).map(|r| Some(Err(r)))
                    }
                };
                let now = self.clock.now_ms();
                let id = crate::broker::event::new_message_id(now);
                let batch = records::encode_deletion(stream, hard, &id, now)?;
                let queued = self.try_queue(batch)?;
                if queued.is_some() {
                    index.reserve_deletion(stream, hard);
                }
                Ok(queued.map(|pending| Ok((pending, next))))
            })
            .await?;
        let (pending, next) = match queued {
            Ok(queued) => queued,
            Err(refused) => return Ok(refused),
        };
        let info = self.written(pending).await?;
        Ok(AppendOutcome::Success(AppendSuccess {
            next_expected_revision: next.saturating_sub(1),
            partition: self.partition,
            position: info.last_offset,
            duplicate: false,
        }))
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn handle(&self) -> &PartitionHandle {
        &self.handle
    }

    /// Sets the stream's metadata (a record of the stream; no revision check).
    pub async fn set_metadata(
        &self,
        stream: &str,
        limits: records::StreamLimits,
    ) -> Result<AppendSuccess, EsError> {
        let (pending, last) = self
            .queue_under_index(|index| {
                if index.streams.get(stream).is_some_and(|s| s.tombstoned) {
                    return Err(EsError::StreamDeleted(stream.to_string()));
                }
                let now = self.clock.now_ms();
                let id = crate::broker::event::new_message_id(now);
                let batch = records::encode_metadata(stream, limits, &id, now)?;
                let queued = self.try_queue(batch)?;
                if queued.is_some() {
                    index.reserve_metadata(stream, limits);
                }
                let last = index.streams.get(stream).and_then(|s| s.last_revision);
                Ok(queued.map(|pending| (pending, last)))
            })
            .await?;
        let info = self.written(pending).await?;
        Ok(AppendSuccess {
            next_expected_revision: last.unwrap_or(0),
            partition: self.partition,
            position: info.last_offset,
            duplicate: false,
        })
    }

    /// The stream's state as the index has it (reserved appends included).
    pub async fn info(&self, stream: &str) -> Result<StreamState, EsError> {
        self.fresh().await?;
        Ok(self
            .index
            .lock()
            .streams
            .get(stream)
            .cloned()
            .unwrap_or_default())
    }
}

/// Waits for an append's outcome.
async fn settled(outcome: &mut super::index::SharedOutcome) -> Result<AppendSuccess, EsError> {
    match outcome.wait_for(Option::is_some).await {
        Ok(done) => match done.clone() {
            Some(Ok(success)) => Ok(success),
            Some(Err(message)) => Err(EsError::Unavailable(message)),
            None => Err(EsError::Unavailable("the append was abandoned".into())),
        },
        Err(_) => Err(EsError::Unavailable("the append was abandoned".into())),
    }
}

fn refusal(
    stream: &str,
    failure: CheckFailure,
    expected: ExpectedRevision,
) -> Result<AppendOutcome, EsError> {
    match failure {
        CheckFailure::StreamDeleted => Err(EsError::StreamDeleted(stream.to_string())),
        CheckFailure::WrongExpectedVersion { current } => {
            Ok(AppendOutcome::WrongExpectedVersion { current, expected })
        }
    }
}

/// Every stream record in the log from `from` to at least `upto` (all durable: a read may
/// return records past `upto` and they are taken, see `read::scan`), batch by batch: each
/// batch's stream records with their offsets (an append is one batch). Returns the offset
/// after the last record read.
pub(super) fn scan_batches(
    handle: &PartitionHandle,
    from: i64,
    upto: i64,
    mut each: impl FnMut(Vec<(EsRecord, i64)>),
) -> Result<i64, EsError> {
    let mut offset = from.max(handle.log_start_offset());
    while offset < upto {
        let slice = handle.read(offset, SCAN_CHUNK_BYTES)?;
        if slice.bytes.is_empty() || slice.next_offset <= offset {
            break;
        }
        let mut bytes: Bytes = slice.bytes;
        while !bytes.is_empty() {
            let batch: Vec<(EsRecord, i64)> = decode_next_batch(&mut bytes)?
                .iter()
                .filter(|r| r.offset >= offset)
                .filter_map(|r| records::classify(r).map(|es| (es, r.offset)))
                .collect();
            if !batch.is_empty() {
                each(batch);
            }
        }
        offset = slice.next_offset;
    }
    Ok(offset)
}

/// The partition's index from the stored index plus the log after it (see the module docs).
async fn rebuild(
    topic: &str,
    partition: i32,
    handle: &PartitionHandle,
    meta: &Meta,
) -> Result<PartitionIndex, EsError> {
    let (topic, handle, meta) = (topic.to_string(), handle.clone(), meta.clone());
    tokio::task::spawn_blocking(move || {
        let end = handle.high_watermark();
        let start = handle.log_start_offset();
        let (stored, indexed_upto) = meta.es_index(&topic, partition)?;
        let mut index = PartitionIndex::default();
        // A stored index past the log's end describes records the log lost (a power failure
        // under `fsync.policy=never`): trust only the log then.
        let index_from = if indexed_upto > end {
            start
        } else {
            for s in stored {
                index.streams.insert(
                    s.stream.clone(),
                    StreamState {
                        last_revision: u64::try_from(s.last_revision).ok(),
                        durable_revision: u64::try_from(s.last_revision).ok(),
                        last_offset: s.last_offset,
                        recent_floor: None,
                        soft_deleted: s.soft_deleted,
                        tombstoned: s.tombstoned,
                        truncate_before: s.truncate_before,
                        limits: records::StreamLimits {
                            max_count: s.max_count,
                            max_age_ms: s.max_age_ms,
                        },
                    },
                );
            }
            indexed_upto.max(start)
        };
        let scan_from = index_from.min((end - RECENT_SCAN_RECORDS).max(start));
        scan_batches(&handle, scan_from, end, |batch| {
            let mut ids = Vec::new();
            let mut last = None;
            for (record, offset) in &batch {
                if *offset >= index_from {
                    index.apply(record, *offset);
                }
                if let EsRecord::Event {
                    stream,
                    revision,
                    id,
                } = record
                {
                    ids.push(id.clone());
                    last = Some((stream.clone(), *revision, *offset));
                }
            }
            if let Some((stream, revision, position)) = last {
                let (_, outcome) = watch::channel(Some(Ok(AppendSuccess {
                    next_expected_revision: revision,
                    partition,
                    position,
                    duplicate: false,
                })));
                index.remember(RecentAppend {
                    stream,
                    ids,
                    outcome,
                });
            }
        })?;
        Ok(index)
    })
    .await
    .map_err(|_| EsError::Unavailable("rebuilding the stream index failed".into()))?
}
