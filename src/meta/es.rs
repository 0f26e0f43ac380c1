//! The event store's stored stream index (see `crate::es`): per event-store partition, one
//! entry per stream (last revision, last offset, deletion state), sparse revision -> offset
//! entries for reads, and the offset below which the log is reflected in them. All of it is
//! derived from the log and written only after the records are durable, so it can be dropped
//! and rebuilt from the log at any time; one atomic batch per update keeps it self-consistent.

use serde::{Deserialize, Serialize};

use super::{decode, encode, keys, Meta, MetaError, MetaOp};

/// One stream's stored index entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRecord {
    pub stream: String,
    /// Last revision written (events and deletions count none), -1 for none.
    pub last_revision: i64,
    /// Log offset of the stream's last record, -1 for none.
    pub last_offset: i64,
    /// Soft-deleted: revisions up to `last_revision` are gone until the next append.
    pub soft_deleted: bool,
    /// Hard-deleted for good.
    pub tombstoned: bool,
    /// Revisions below this one were soft-deleted.
    #[serde(default)]
    pub truncate_before: u64,
    /// `$maxCount`, `$maxAge` (ms).
    #[serde(default)]
    pub max_count: Option<u64>,
    #[serde(default)]
    pub max_age_ms: Option<u64>,
}

/// One update of a partition's stored index.
#[derive(Debug, Default)]
pub struct EsIndexUpdate {
    pub streams: Vec<StreamRecord>,
    /// Sparse (stream, revision, offset) entries.
    pub revisions: Vec<(String, u64, i64)>,
    /// The log offset the index now reflects everything below.
    pub indexed_upto: i64,
}

impl Meta {
    /// The stored index of one event-store partition: its streams and how far it reaches.
    pub fn es_index(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<(Vec<StreamRecord>, i64), MetaError> {
        // The offset first: a concurrent update can then only make the streams newer than it,
        // and replaying the log from an older offset over newer entries converges.
        let upto = self
            .get::<i64>(&keys::es_indexed(topic, partition))?
            .unwrap_or(0);
        let streams = self.scan(&keys::es_streams(topic, partition))?;
        Ok((streams, upto))
    }

    /// Applies one update atomically (not flushed: the index is rebuilt from the log after a
    /// crash, so it only needs to be consistent, not current).
    pub fn put_es_index(
        &self,
        topic: &str,
        partition: i32,
        update: &EsIndexUpdate,
    ) -> Result<(), MetaError> {
        let mut ops = Vec::with_capacity(update.streams.len() + update.revisions.len() + 1);
        for s in &update.streams {
            ops.push(MetaOp::Put(
                keys::es_stream(topic, partition, &s.stream),
                encode(s),
            ));
        }
        for (stream, revision, offset) in &update.revisions {
            ops.push(MetaOp::Put(
                keys::es_revision(topic, partition, stream, *revision),
                encode(offset),
            ));
        }
        ops.push(MetaOp::Put(
            keys::es_indexed(topic, partition),
            encode(&update.indexed_upto),
        ));
        self.store.apply(ops)
    }

    /// Drops a partition's stored index (before a rebuild from the log start).
    pub fn clear_es_index(&self, topic: &str, partition: i32) -> Result<(), MetaError> {
        let mut ops = Vec::new();
        for (k, _) in self
            .store
            .scan_prefix(&keys::es_streams(topic, partition))?
        {
            ops.push(MetaOp::Delete(k));
        }
        let revisions = keys::es_revisions(topic, partition, "");
        // `es_revisions(.., "")` ends with the empty stream's terminator; the partition's
        // prefix is everything before it.
        let partition_prefix = &revisions[..revisions.len() - 2];
        for (k, _) in self.store.scan_prefix(partition_prefix)? {
            ops.push(MetaOp::Delete(k));
        }
        ops.push(MetaOp::Delete(keys::es_indexed(topic, partition)));
        self.store.apply(ops)
    }

    /// The offset of the latest sparse entry at or below `revision` of `stream`, if any.
    pub fn es_revision_floor(
        &self,
        topic: &str,
        partition: i32,
        stream: &str,
        revision: u64,
    ) -> Result<Option<(u64, i64)>, MetaError> {
        let prefix = keys::es_revisions(topic, partition, stream);
        let mut best = None;
        for (k, v) in self.store.scan_prefix(&prefix)? {
            let parts = keys::parts(&k).unwrap_or_default();
            let Some(rev) = parts
                .last()
                .and_then(|r| std::str::from_utf8(r).ok())
                .and_then(|r| r.parse::<u64>().ok())
            else {
                continue;
            };
            if rev > revision {
                break;
            }
            best = Some((rev, decode::<i64>(&k, &v)?));
        }
        Ok(best)
    }
}
