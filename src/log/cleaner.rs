//! Log compaction (`cleanup.policy=compact`): the cleaner keeps the latest record of every key
//! and drops the older ones, so a topic used as a table holds one value per key however often
//! it is updated.
//!
//! Kafka's design, for one writer and whole-segment swaps:
//! - **What may be cleaned.** Only sealed segments: never the active one, and none whose newest
//!   record is younger than `min.compaction.lag.ms`. The first offset that may not be cleaned
//!   bounds the pass.
//! - **When.** A partition remembers in [`CHECKPOINT_FILE`] the offset below which it is
//!   clean. The *dirty ratio* is the share of the cleanable bytes in segments that reach past
//!   that checkpoint; a pass runs when it reaches `min.cleanable.dirty.ratio`, or whatever the
//!   ratio once the oldest dirty segment is older than `max.compaction.lag.ms`.
//! - **How.** One scan of the dirty section fills an [`OffsetMap`] (key hash -> latest offset)
//!   whose memory is fixed by `log.cleaner_dedupe_buffer_bytes`; if it fills up, the pass stops
//!   at that offset and the rest waits for the next pass. Then every cleanable segment below
//!   that offset with something to drop is rewritten: a record goes if the map has a later
//!   offset for its key, or if it is a tombstone (null value) that is the latest of its key and
//!   older than `delete.retention.ms`. Offsets are kept (clients handle gaps); a batch kept
//!   whole is copied byte for byte (compression and producer fields intact), and the records
//!   kept from a thinned batch are re-encoded, uncompressed, one batch per run of consecutive
//!   offsets. Control batches and keyless records (written before the topic was compacted) are
//!   always kept.
//! - **Transactions.** As Kafka: a pass never reaches the first offset of a transaction still
//!   open (the last stable offset bounds it), records of aborted transactions count for no key
//!   and are removed, and their markers are kept (a reader past them needs nothing else).
//! - **Crash safety.** The new segment is written as `<base>.log.cleaned` and fsynced; then,
//!   under the partition lock, the old indexes are unlinked and the cleaned file renamed over
//!   the `.log` (atomic) and the directory fsynced; the new indexes are built from the new file
//!   afterwards, outside the lock. A crash before the rename leaves the old segment and a
//!   `.cleaned` leftover that recovery removes; after it, the new segment, whose missing
//!   indexes recovery rebuilds. Either way every key keeps its latest value. Recovery accepts
//!   offset gaps only below the bound the checkpoint file records, which a pass raises (temp
//!   file, fsync, rename) before its first swap; the clean offset itself is written last, so a
//!   crash only makes the next pass redo work.
//! - **Never blocking appends or reads.** Reads of the old segment and the writing of the new
//!   one happen outside the partition lock (which only the swap takes, for two unlinks, a
//!   rename and a directory fsync); the old file stays pinned open until the new segment
//!   replaces it, so a concurrent read sees the old bytes with the old index, never a mix.
//!
//! Metrics: `ferry_log_cleaner_runs_total`, `ferry_log_cleaner_bytes_reclaimed_total`,
//! `ferry_log_cleaner_records_removed_total` (broker-wide), `ferry_log_cleaner_dirty_ratio`
//! (per partition, labelled `topic` and `partition`).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::path::Path;

use bytes::{Bytes, BytesMut};

use super::batch::{decode_next_batch, try_encode_batch, BatchHeader, EncodeOptions, SimpleRecord};
use super::config::LogConfig;
use super::txn_index::{is_aborted, AbortedTxn};
use super::{LogError, Result};

/// File in the partition directory holding, as decimal text, the offset below which the log
/// has been compacted.
pub const CHECKPOINT_FILE: &str = "cleaner.checkpoint";

/// Default memory of the offset map (`log.cleaner_dedupe_buffer_bytes`): about a million keys.
pub const DEFAULT_DEDUPE_BUFFER_BYTES: usize = 32 << 20;

/// What one map entry costs, hash table overhead included (16-byte hash, 8-byte offset, and
/// the table's control bytes and spare capacity).
const MAP_ENTRY_BYTES: usize = 40;

/// Latest offset of each key seen, keyed by a 128-bit hash of the key (two independent
/// SipHash-1-3 keys), so memory per key is fixed whatever the key's length. Two distinct keys
/// with the same 128-bit hash would lose the older one's value, a risk of about 2^-64 for a
/// billion keys; Kafka's cleaner takes the same risk with MD5.
pub struct OffsetMap {
    offsets: HashMap<u128, i64>,
    capacity: usize,
    hashers: (
        std::collections::hash_map::RandomState,
        std::collections::hash_map::RandomState,
    ),
}

impl OffsetMap {
    /// A map using at most about `bytes` of memory (at least 1,024 entries).
    pub fn with_memory(bytes: usize) -> OffsetMap {
        OffsetMap {
            offsets: HashMap::new(),
            capacity: (bytes / MAP_ENTRY_BYTES).max(1024),
            hashers: Default::default(),
        }
    }

    /// Most keys the map holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn hash(&self, key: &[u8]) -> u128 {
        let half = |h: &std::collections::hash_map::RandomState| {
            let mut hasher = h.build_hasher();
            hasher.write(key);
            hasher.finish()
        };
        (u128::from(half(&self.hashers.0)) << 64) | u128::from(half(&self.hashers.1))
    }

    /// Records `offset` as the latest of `key`; `false` (nothing recorded) when the key is new
    /// and the map is full.
    pub fn put(&mut self, key: &[u8], offset: i64) -> bool {
        let hash = self.hash(key);
        if let Some(latest) = self.offsets.get_mut(&hash) {
            *latest = (*latest).max(offset);
            return true;
        }
        if self.offsets.len() >= self.capacity {
            return false;
        }
        if self.offsets.capacity() == 0 {
            self.offsets.reserve(self.capacity.min(64 * 1024));
        }
        self.offsets.insert(hash, offset);
        true
    }

    /// The latest offset recorded for `key`.
    pub fn latest(&self, key: &[u8]) -> Option<i64> {
        self.offsets.get(&self.hash(key)).copied()
    }

    /// Keys recorded.
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    /// Whether no key is recorded.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Forgets every key, keeping the memory for the next partition.
    pub fn clear(&mut self) {
        self.offsets.clear();
    }
}

/// What the cleaner needs to know about one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentView {
    /// First offset of the segment (its file name).
    pub base_offset: i64,
    /// Offset after its last batch.
    pub next_offset: i64,
    /// Bytes of batches.
    pub size: u64,
    /// Largest record timestamp, -1 if none.
    pub max_timestamp: i64,
}

/// The cleaner's view of a partition now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CleanPlan {
    /// Offset below which the log is already clean.
    pub dirty_from: i64,
    /// First offset this pass may not touch (the first uncleanable segment's base).
    pub clean_upto: i64,
    /// Segments (oldest first) this pass may rewrite.
    pub cleanable_segments: usize,
    /// Share of the cleanable bytes in segments reaching past `dirty_from`.
    pub dirty_ratio: f64,
    /// Whether a pass should run now (ratio reached, or `max.compaction.lag.ms` passed).
    pub due: bool,
}

/// Decides whether and how far to clean. `segments` are oldest first; the last one is the
/// active segment. `None`: nothing is cleanable (not a compacted log, or no sealed segment
/// old enough).
pub fn plan(
    segments: &[SegmentView],
    checkpoint: i64,
    config: &LogConfig,
    now_ms: i64,
) -> Option<CleanPlan> {
    if !config.cleanup_policy.compacts() || segments.len() < 2 {
        return None;
    }
    let sealed = &segments[..segments.len() - 1];
    let lag_horizon = now_ms.saturating_sub(config.min_compaction_lag_ms);
    let cleanable = sealed
        .iter()
        .take_while(|s| config.min_compaction_lag_ms == 0 || s.max_timestamp <= lag_horizon)
        .count();
    if cleanable == 0 {
        return None;
    }
    let clean_upto = segments[cleanable].base_offset;
    let dirty_from = checkpoint.clamp(segments[0].base_offset, clean_upto);
    let cleanable_set = &segments[..cleanable];
    let total: u64 = cleanable_set.iter().map(|s| s.size).sum();
    let dirty_segments = cleanable_set.iter().filter(|s| s.next_offset > dirty_from);
    let dirty: u64 = dirty_segments.clone().map(|s| s.size).sum();
    if dirty == 0 || total == 0 {
        return Some(CleanPlan {
            dirty_from,
            clean_upto,
            cleanable_segments: cleanable,
            dirty_ratio: 0.0,
            due: false,
        });
    }
    let dirty_ratio = dirty as f64 / total as f64;
    let overdue = dirty_segments
        .filter(|s| s.max_timestamp >= 0)
        .map(|s| s.max_timestamp)
        .min()
        .is_some_and(|oldest| now_ms.saturating_sub(oldest) > config.max_compaction_lag_ms);
    Some(CleanPlan {
        dirty_from,
        clean_upto,
        cleanable_segments: cleanable,
        dirty_ratio,
        due: dirty_ratio >= config.min_cleanable_dirty_ratio || overdue,
    })
}

/// Adds the keys of the records of `batches` (whole stored batches) from `from` on to `map`.
/// Returns the first offset whose key did not fit (the map is full), if any.
/// Batches of the `aborted` transactions are skipped: their records are no key's value.
pub fn map_keys(
    batches: &Bytes,
    from: i64,
    map: &mut OffsetMap,
    aborted: &[AbortedTxn],
) -> Result<Option<i64>> {
    let mut buf = batches.clone();
    while !buf.is_empty() {
        let header = BatchHeader::parse(&buf)?;
        if header.is_control() || is_aborted(aborted, &header) {
            let _ = buf.split_to(header.total_size().min(buf.len()));
            continue;
        }
        for r in decode_next_batch(&mut buf)? {
            if r.offset < from {
                continue;
            }
            if let Some(key) = &r.record.key {
                if !map.put(key, r.offset) {
                    return Ok(Some(r.offset));
                }
            }
        }
    }
    Ok(None)
}

/// Rules of one pass, fixed before it starts.
#[derive(Debug, Clone, Copy)]
pub struct Retain {
    /// Records at or past this offset were not mapped: kept as they are.
    pub map_end: i64,
    /// Tombstones older than this (ms) that are the latest of their key are dropped.
    pub tombstone_horizon: i64,
}

/// Records kept and dropped by [`compact_batches`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Records kept.
    pub kept: u64,
    /// Records dropped.
    pub removed: u64,
}

/// Appends to `out` what the cleaner keeps of `batches` (whole stored batches): see the module
/// documentation for the rules.
/// Batches of the `aborted` transactions are dropped whole.
pub fn compact_batches(
    batches: &Bytes,
    map: &OffsetMap,
    rules: Retain,
    aborted: &[AbortedTxn],
    out: &mut BytesMut,
) -> Result<Compacted> {
    let mut counts = Compacted::default();
    let mut buf = batches.clone();
    while !buf.is_empty() {
        let header = BatchHeader::parse(&buf)?;
        let size = header.total_size();
        if size > buf.len() {
            return Err(LogError::InvalidBatch(
                "truncated batch while cleaning".into(),
            ));
        }
        let whole = buf.slice(..size);
        if header.base_offset < rules.map_end && is_aborted(aborted, &header) {
            counts.removed += header.record_count().max(0) as u64;
            let _ = buf.split_to(size);
            continue;
        }
        if header.is_control() || header.base_offset >= rules.map_end {
            out.extend_from_slice(&whole);
            counts.kept += header.record_count().max(0) as u64;
            let _ = buf.split_to(size);
            continue;
        }
        let records = decode_next_batch(&mut buf)?;
        let keep: Vec<bool> = records
            .iter()
            .map(|r| keeps(r.offset, &r.record, map, rules))
            .collect();
        let kept = keep.iter().filter(|k| **k).count();
        counts.kept += kept as u64;
        counts.removed += (records.len() - kept) as u64;
        if kept == records.len() {
            out.extend_from_slice(&whole);
            continue;
        }
        // Runs of consecutive kept offsets, one batch each.
        let mut run: Vec<SimpleRecord> = Vec::new();
        let mut run_base = 0i64;
        let mut expected = i64::MIN;
        for (r, keep) in records.into_iter().zip(keep) {
            if !keep {
                continue;
            }
            if r.offset != expected && !run.is_empty() {
                encode_run(&run, run_base, out)?;
                run.clear();
            }
            if run.is_empty() {
                run_base = r.offset;
            }
            expected = r.offset + 1;
            run.push(r.record);
        }
        if !run.is_empty() {
            encode_run(&run, run_base, out)?;
        }
    }
    Ok(counts)
}

fn keeps(offset: i64, record: &SimpleRecord, map: &OffsetMap, rules: Retain) -> bool {
    if offset >= rules.map_end {
        return true;
    }
    let Some(key) = &record.key else {
        return true;
    };
    let latest = map.latest(key);
    if latest.is_some_and(|l| l > offset) {
        return false;
    }
    // The latest of its key (or of a key only in the clean section, which holds one record
    // per key): a tombstone goes once it is older than `delete.retention.ms`.
    !(record.value.is_none() && record.timestamp < rules.tombstone_horizon)
}

fn encode_run(records: &[SimpleRecord], base_offset: i64, out: &mut BytesMut) -> Result<()> {
    let options = EncodeOptions {
        base_offset,
        ..EncodeOptions::default()
    };
    out.extend_from_slice(&try_encode_batch(records, &options)?);
    Ok(())
}

/// The two offsets of [`CHECKPOINT_FILE`]: `clean` (below it the log is compacted) and
/// `gaps_below` (below it the cleaner may have swapped in segments with offset gaps, which
/// recovery must then accept). The second is raised before a pass swaps anything and the
/// first only after, so a crash in between never makes recovery cut a cleaned segment short.
fn read_both(dir: &Path) -> Option<(i64, i64)> {
    let text = std::fs::read_to_string(dir.join(CHECKPOINT_FILE)).ok()?;
    let mut parts = text.split_whitespace().map(str::parse::<i64>);
    let clean = parts.next()?.ok()?;
    let gaps_below = match parts.next() {
        Some(v) => v.ok()?,
        None => clean,
    };
    Some((clean, gaps_below))
}

/// Reads the clean offset of the partition in `dir` (`None` if never cleaned or unreadable:
/// the whole log then counts as dirty, which only costs work).
pub fn read_checkpoint(dir: &Path) -> Option<i64> {
    read_both(dir).map(|(clean, _)| clean)
}

/// Below which offset recovery must accept gaps between batches (`None`: nowhere).
pub fn read_gaps_below(dir: &Path) -> Option<i64> {
    read_both(dir).map(|(_, gaps)| gaps)
}

/// Stores the clean offset and the gap bound durably: a temp file, fsynced, renamed over the
/// old one, the directory fsynced.
pub fn write_checkpoint(dir: &Path, clean: i64, gaps_below: i64) -> Result<()> {
    let path = dir.join(CHECKPOINT_FILE);
    let tmp = dir.join(format!("{CHECKPOINT_FILE}.tmp"));
    let io = |what: &str, e| LogError::io(format!("{what} {}", tmp.display()), e);
    let mut file = std::fs::File::create(&tmp).map_err(|e| io("create", e))?;
    file.write_all(format!("{clean} {gaps_below}\n").as_bytes())
        .map_err(|e| io("write", e))?;
    file.sync_data().map_err(|e| io("fsync", e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io("rename", e))?;
    super::recovery::sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::batch::{encode_batch, set_base_offset, BatchIter};

    fn rec(key: Option<&str>, value: Option<&str>, ts: i64) -> SimpleRecord {
        SimpleRecord {
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
            headers: vec![],
            timestamp: ts,
        }
    }

    /// One stored batch per slice of `records`, offsets from `base` on.
    fn stored(base: i64, batches: &[Vec<SimpleRecord>]) -> Bytes {
        let mut out = BytesMut::new();
        let mut next = base;
        for records in batches {
            let mut b = encode_batch(records);
            set_base_offset(&mut b, next);
            next += records.len() as i64;
            out.extend_from_slice(&b);
        }
        out.freeze()
    }

    /// (offset, key, value) of every record in `bytes`.
    fn contents(bytes: &Bytes) -> Vec<(i64, Option<String>, Option<String>)> {
        let mut buf = bytes.clone();
        let mut all = Vec::new();
        while !buf.is_empty() {
            for r in decode_next_batch(&mut buf).unwrap() {
                let s = |b: Option<Bytes>| b.map(|b| String::from_utf8(b.to_vec()).unwrap());
                all.push((r.offset, s(r.record.key), s(r.record.value)));
            }
        }
        all
    }

    fn view(base: i64, next: i64, size: u64, ts: i64) -> SegmentView {
        SegmentView {
            base_offset: base,
            next_offset: next,
            size,
            max_timestamp: ts,
        }
    }

    fn compacting() -> LogConfig {
        let mut c = LogConfig::default();
        c.set("cleanup.policy", "compact").unwrap();
        c
    }

    /// A value written by an aborted transaction is no value: the committed one before it
    /// stays, and the aborted batch goes.
    #[test]
    fn aborted_transactions_count_for_no_key_and_are_removed() {
        let mut log = BytesMut::from(&stored(0, &[vec![rec(Some("k"), Some("committed"), 1)]])[..]);
        let options = EncodeOptions {
            base_offset: 1,
            producer_id: 5,
            producer_epoch: 0,
            base_sequence: 0,
            transactional: true,
            ..EncodeOptions::default()
        };
        log.extend_from_slice(
            &try_encode_batch(&[rec(Some("k"), Some("aborted"), 2)], &options).unwrap(),
        );
        let log = log.freeze();
        let aborted = [AbortedTxn {
            producer_id: 5,
            first_offset: 1,
            last_offset: 2,
        }];
        let mut map = OffsetMap::with_memory(1 << 20);
        map_keys(&log, 0, &mut map, &aborted).unwrap();
        assert_eq!(map.latest(b"k"), Some(0));
        let rules = Retain {
            map_end: 2,
            tombstone_horizon: 0,
        };
        let mut out = BytesMut::new();
        let counts = compact_batches(&log, &map, rules, &aborted, &mut out).unwrap();
        assert_eq!((counts.kept, counts.removed), (1, 1));
        assert_eq!(
            contents(&out.freeze()),
            vec![(0, Some("k".into()), Some("committed".into()))]
        );
    }

    #[test]
    fn latest_value_per_key_is_kept_with_its_offset() {
        let log = stored(
            0,
            &[
                vec![rec(Some("a"), Some("a1"), 1), rec(Some("b"), Some("b1"), 2)],
                vec![rec(Some("a"), Some("a2"), 3), rec(None, Some("keyless"), 4)],
                vec![rec(Some("c"), Some("c1"), 5), rec(Some("b"), Some("b2"), 6)],
            ],
        );
        let mut map = OffsetMap::with_memory(1 << 20);
        assert_eq!(map_keys(&log, 0, &mut map, &[]).unwrap(), None);
        assert_eq!(map.len(), 3);
        let mut out = BytesMut::new();
        let rules = Retain {
            map_end: 6,
            tombstone_horizon: 0,
        };
        let counts = compact_batches(&log, &map, rules, &[], &mut out).unwrap();
        assert_eq!(
            counts,
            Compacted {
                kept: 4,
                removed: 2
            }
        );
        let out = out.freeze();
        assert_eq!(
            contents(&out),
            vec![
                (2, Some("a".into()), Some("a2".into())),
                (3, None, Some("keyless".into())),
                (4, Some("c".into()), Some("c1".into())),
                (5, Some("b".into()), Some("b2".into())),
            ]
        );
        // Every output batch is valid; the last one, kept whole, is the original bytes.
        let bases: Vec<i64> = BatchIter::new(&out).map(|(h, _)| h.base_offset).collect();
        assert_eq!(bases, vec![2, 4]);
        let last = |b: &Bytes| BatchIter::new(b).last().map(|(_, r)| b.slice(r)).unwrap();
        assert_eq!(last(&out), last(&log));
    }

    #[test]
    fn tombstones_go_only_after_delete_retention() {
        let log = stored(
            10,
            &[vec![
                rec(Some("k"), Some("v"), 100),
                rec(Some("k"), None, 200),
                rec(Some("j"), Some("w"), 300),
            ]],
        );
        let mut map = OffsetMap::with_memory(1 << 20);
        map_keys(&log, 10, &mut map, &[]).unwrap();
        let pass = |horizon| {
            let mut out = BytesMut::new();
            let rules = Retain {
                map_end: 13,
                tombstone_horizon: horizon,
            };
            compact_batches(&log, &map, rules, &[], &mut out).unwrap();
            contents(&out.freeze())
        };
        assert_eq!(
            pass(200),
            vec![
                (11, Some("k".into()), None),
                (12, Some("j".into()), Some("w".into()))
            ],
            "a tombstone younger than delete.retention.ms stays"
        );
        assert_eq!(pass(201), vec![(12, Some("j".into()), Some("w".into()))]);
    }

    #[test]
    fn records_past_a_full_map_are_kept() {
        let many: Vec<SimpleRecord> = (0..3000)
            .map(|i| rec(Some(&format!("key-{i}")), Some("x"), i))
            .collect();
        let log = stored(0, &[many, vec![rec(Some("key-0"), Some("new"), 5000)]]);
        let mut map = OffsetMap::with_memory(0);
        assert_eq!(map.capacity(), 1024);
        let end = map_keys(&log, 0, &mut map, &[]).unwrap();
        assert_eq!(end, Some(1024), "the map filled at its capacity");
        let mut out = BytesMut::new();
        let rules = Retain {
            map_end: 1024,
            tombstone_horizon: 0,
        };
        let counts = compact_batches(&log, &map, rules, &[], &mut out).unwrap();
        // Nothing below 1024 is superseded within the map: everything stays, including
        // key-0's old value, whose newer one the map never saw.
        assert_eq!(counts.removed, 0);
        assert_eq!(contents(&out.freeze()).len(), 3001);
    }

    #[test]
    fn plan_follows_the_dirty_ratio_and_lags() {
        let c = compacting();
        let segs = [
            view(0, 100, 1000, 10),
            view(100, 200, 1000, 20),
            view(200, 250, 500, 30),
        ];
        let p = plan(&segs, 0, &c, 1000).unwrap();
        assert_eq!((p.clean_upto, p.cleanable_segments, p.due), (200, 2, true));
        assert_eq!(p.dirty_ratio, 1.0);
        // Half clean: ratio 0.5 reaches the default.
        let p = plan(&segs, 100, &c, 1000).unwrap();
        assert_eq!((p.dirty_ratio, p.due), (0.5, true));
        let mut strict = c.clone();
        strict.set("min.cleanable.dirty.ratio", "0.9").unwrap();
        assert!(!plan(&segs, 100, &strict, 1000).unwrap().due);
        // ... unless the dirty part is older than max.compaction.lag.ms.
        strict.set("max.compaction.lag.ms", "500").unwrap();
        assert!(plan(&segs, 100, &strict, 1000).unwrap().due);
        // min.compaction.lag.ms keeps the young second segment out.
        let mut lagging = c.clone();
        lagging.set("min.compaction.lag.ms", "985").unwrap();
        let p = plan(&segs, 0, &lagging, 1000).unwrap();
        assert_eq!((p.clean_upto, p.cleanable_segments), (100, 1));
        // The active segment alone is never cleanable, and a delete-only log never is.
        assert!(plan(&segs[2..], 0, &c, 1000).is_none());
        assert!(plan(&segs, 0, &LogConfig::default(), 1000).is_none());
        // All clean: nothing due.
        assert!(!plan(&segs, 200, &c, 1000).unwrap().due);
    }

    #[test]
    fn checkpoint_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_checkpoint(dir.path()), None);
        assert_eq!(read_gaps_below(dir.path()), None);
        write_checkpoint(dir.path(), 1000, 1234).unwrap();
        assert_eq!(read_checkpoint(dir.path()), Some(1000));
        assert_eq!(read_gaps_below(dir.path()), Some(1234));
    }
}
