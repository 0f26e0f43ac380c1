//! Keeps a partition's stored stream index (`meta::es`) up to date: a task per event-store
//! partition in use follows the high watermark, reads the durable records it has not indexed
//! yet, and writes the streams they touched, sparse revision -> offset entries and the new
//! indexed offset in one atomic metadata batch. Because it reads only below the high watermark,
//! the stored index never describes a record that is not durable; after a crash the in-memory
//! index is rebuilt from it plus the log after it (`partition.rs`).
//!
//! The follower steps at most once per [`FOLLOW_INTERVAL`], not once per high-watermark change,
//! and so writes each stream it saw once per interval, not once per append. Every sled batch
//! seals and writes one of sled's log buffers on its I/O threads and every put walks sled's
//! tree: a step per group commit cost ~300 µs of broker CPU per append to one stream, and the
//! puts were a fifth of the broker's samples with 10,000 streams. A lagging stored index costs
//! nothing in correctness: a rebuild scans the log after `indexed_upto` (at most an interval of
//! records), and a read starts its scan at the nearest revision entry below the one it wants,
//! taken from the in-memory index (`StreamState::recent_floor`) when the stored one is behind.

use std::collections::HashMap;

use tokio::sync::oneshot;

use super::partition::scan_batches;
use super::records::EsRecord;
use crate::log::PartitionHandle;
use crate::meta::es::{EsIndexUpdate, StreamRecord};
use crate::meta::Meta;

/// Every this many revisions of a stream gets a stored revision -> offset entry.
pub const REVISION_INDEX_INTERVAL: u64 = 64;
/// The shortest time between two steps (see the module docs).
pub const FOLLOW_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

struct Follower {
    topic: String,
    partition: i32,
    handle: PartitionHandle,
    meta: Meta,
    streams: HashMap<String, StreamRecord>,
    upto: i64,
}

impl Follower {
    /// Loads the stored index; one that reaches past the log's end (records lost to a power
    /// failure) is dropped and rebuilt from the log's start.
    fn load(&mut self) -> Result<(), super::EsError> {
        let (stored, upto) = self.meta.es_index(&self.topic, self.partition)?;
        if upto > self.handle.high_watermark() {
            self.meta.clear_es_index(&self.topic, self.partition)?;
            self.streams.clear();
            self.upto = 0;
            return Ok(());
        }
        self.streams = stored.into_iter().map(|s| (s.stream.clone(), s)).collect();
        self.upto = upto;
        Ok(())
    }

    /// Indexes the durable records from `upto` to `end`.
    fn step(&mut self, end: i64) -> Result<(), super::EsError> {
        let mut touched: Vec<String> = Vec::new();
        let mut revisions = Vec::new();
        let streams = &mut self.streams;
        let reached = scan_batches(&self.handle, self.upto, end, |batch| {
            for (record, offset) in batch {
                let (stream, revision) = match &record {
                    EsRecord::Event {
                        stream, revision, ..
                    } => (stream, Some(*revision)),
                    EsRecord::Deleted { stream, .. } | EsRecord::Metadata { stream, .. } => {
                        (stream, None)
                    }
                };
                let entry = streams
                    .entry(stream.clone())
                    .or_insert_with(|| StreamRecord {
                        stream: stream.clone(),
                        last_revision: -1,
                        last_offset: -1,
                        soft_deleted: false,
                        tombstoned: false,
                        truncate_before: 0,
                        max_count: None,
                        max_age_ms: None,
                    });
                entry.last_offset = offset;
                match (&record, revision) {
                    (_, Some(revision)) => {
                        entry.last_revision = revision as i64;
                        entry.soft_deleted = false;
                        if revision % REVISION_INDEX_INTERVAL == 0 {
                            revisions.push((stream.clone(), revision, offset));
                        }
                    }
                    (EsRecord::Deleted { hard: true, .. }, None) => entry.tombstoned = true,
                    (EsRecord::Metadata { limits, .. }, None) => {
                        entry.max_count = limits.max_count;
                        entry.max_age_ms = limits.max_age_ms;
                    }
                    _ => {
                        entry.soft_deleted = true;
                        entry.truncate_before = u64::try_from(entry.last_revision + 1).unwrap_or(0);
                    }
                }
                touched.push(stream.clone());
            }
        })?;
        touched.sort_unstable();
        touched.dedup();
        let update = EsIndexUpdate {
            streams: touched
                .iter()
                .filter_map(|s| self.streams.get(s).cloned())
                .collect(),
            revisions,
            indexed_upto: reached.max(self.upto),
        };
        self.meta
            .put_es_index(&self.topic, self.partition, &update)?;
        self.upto = update.indexed_upto;
        Ok(())
    }
}

/// Follows the partition until `stop` resolves (the event-store partition was dropped).
pub(super) async fn run(
    topic: String,
    partition: i32,
    handle: PartitionHandle,
    meta: Meta,
    mut stop: oneshot::Receiver<()>,
) {
    let mut watermark = handle.subscribe_high_watermark();
    let mut follower = Some(Follower {
        topic,
        partition,
        handle,
        meta,
        streams: HashMap::new(),
        upto: 0,
    });
    let mut loaded = false;
    loop {
        let end = *watermark.borrow_and_update();
        let Some(mut f) = follower.take() else {
            return;
        };
        if !loaded || f.upto < end {
            let result = tokio::task::spawn_blocking(move || {
                let outcome = if loaded { Ok(()) } else { f.load() }.and_then(|()| {
                    if f.upto < end {
                        f.step(end)
                    } else {
                        Ok(())
                    }
                });
                (f, outcome)
            })
            .await;
            let Ok((f, outcome)) = result else {
                return;
            };
            match outcome {
                Ok(()) => loaded = true,
                Err(e) => tracing::warn!(
                    topic = %f.topic,
                    partition = f.partition,
                    error = %e,
                    "updating the stored stream index failed; it is rebuilt from the log on restart"
                ),
            }
            follower = Some(f);
            // Let the records of the next interval gather into one step.
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW_INTERVAL) => {}
                _ = &mut stop => return,
            }
        } else {
            follower = Some(f);
        }
        tokio::select! {
            changed = watermark.changed() => if changed.is_err() { return },
            _ = &mut stop => return,
        }
    }
}
