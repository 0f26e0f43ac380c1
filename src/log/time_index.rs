//! The sparse time index of one segment, in Kafka's `.timeindex` format: 12-byte big-endian
//! entries of (i64 timestamp, u32 offset relative to the segment base).
//!
//! An entry is added only when the segment's max timestamp grows (so timestamps are strictly
//! increasing even when producers' clocks are not), at most once per index interval, plus once
//! more when the segment is rolled or closed so the last entry is the segment's max timestamp.
//! An entry (T, O) says: T is the largest timestamp among offsets `<= O`, and no earlier offset
//! reached T. So to find the first offset with timestamp `>= t`, start scanning the log at the
//! batch holding O of the greatest entry with `T <= t`. Like the offset index it is rebuildable
//! and, like it, written lazily and only fsynced at roll and close.

use std::path::Path;

use super::index::{IndexFormat, SparseIndex};
use super::Result;

/// One time index entry, with the offset made absolute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    /// Max timestamp of the segment up to and including `offset`.
    pub timestamp: i64,
    /// Last offset of the batch that first reached `timestamp`.
    pub offset: i64,
}

/// Bytes per `.timeindex` entry.
pub const TIME_INDEX_ENTRY_SIZE: usize = 12;

/// Kafka's `.timeindex` layout: (i64 timestamp, u32 relative offset); timestamps strictly
/// increase, offsets never decrease.
#[derive(Debug)]
pub enum TimeFormat {}

impl IndexFormat for TimeFormat {
    type Raw = (i64, u32);
    type Entry = TimeEntry;
    const SIZE: usize = TIME_INDEX_ENTRY_SIZE;
    const NAME: &'static str = "time";

    fn encode((ts, rel): (i64, u32), out: &mut Vec<u8>) {
        out.extend_from_slice(&ts.to_be_bytes());
        out.extend_from_slice(&rel.to_be_bytes());
    }

    fn decode(chunk: &[u8]) -> (i64, u32) {
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&chunk[..8]);
        (
            i64::from_be_bytes(ts),
            u32::from_be_bytes([chunk[8], chunk[9], chunk[10], chunk[11]]),
        )
    }

    fn follows((last_ts, last_rel): (i64, u32), (ts, rel): (i64, u32)) -> bool {
        ts > last_ts && rel >= last_rel
    }

    fn stale(_: (i64, u32), log_len: u64) -> Option<String> {
        (log_len == 0).then(|| "entries for an empty log".to_string())
    }

    fn entry(base_offset: i64, (timestamp, rel): (i64, u32)) -> TimeEntry {
        TimeEntry {
            timestamp,
            offset: base_offset + i64::from(rel),
        }
    }
}

/// The sparse time index of one segment.
pub type TimeIndex = SparseIndex<TimeFormat>;

impl SparseIndex<TimeFormat> {
    /// Replaces the file at `path` with exactly `entries`.
    pub fn rebuild(path: &Path, base_offset: i64, entries: &[TimeEntry]) -> Result<Self> {
        let mut index = Self::create(path, base_offset)?;
        for e in entries {
            index.maybe_append(e.timestamp, e.offset);
        }
        index.flush()?;
        Ok(index)
    }

    /// Adds (in memory) an entry if `timestamp` is greater than the last one and `offset` not
    /// smaller; otherwise does nothing.
    pub fn maybe_append(&mut self, timestamp: i64, offset: i64) {
        if let Some(rel) = self.relative(offset) {
            self.push((timestamp, rel));
        }
    }

    /// Greatest entry whose timestamp is `<= timestamp`, if any.
    pub fn lookup(&self, timestamp: i64) -> Option<TimeEntry> {
        self.greatest(|&(ts, _)| ts <= timestamp)
    }

    /// Drops entries whose offset is `>= next_offset` after the log was truncated.
    pub fn truncate_to_offset(&mut self, next_offset: i64) -> Result<()> {
        let base = self.base_offset();
        self.truncate_where(|&(_, rel)| base + i64::from(rel) < next_offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_growing_timestamps_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.timeindex");
        let mut t = TimeIndex::create(&path, 0).unwrap();
        t.maybe_append(100, 4);
        t.maybe_append(90, 9); // older: skipped
        t.maybe_append(100, 9); // not greater: skipped
        t.maybe_append(150, 20);
        t.flush().unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.lookup(99), None);
        assert_eq!(t.lookup(100).unwrap().offset, 4);
        assert_eq!(t.lookup(149).unwrap().offset, 4);
        assert_eq!(t.lookup(1_000).unwrap().offset, 20);
        let loaded = TimeIndex::load(&path, 0, 10).unwrap().unwrap();
        assert_eq!(loaded.entries(), t.entries());
        assert!(TimeIndex::load(&path, 0, 0).unwrap().is_none());
    }

    #[test]
    fn garbage_is_rejected_and_truncation_works() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.timeindex");
        std::fs::write(&path, [7u8; 13]).unwrap();
        assert!(TimeIndex::load(&path, 0, 10).unwrap().is_none());
        let mut t = TimeIndex::create(&path, 10).unwrap();
        t.maybe_append(1, 10);
        t.maybe_append(2, 15);
        t.maybe_append(3, 20);
        t.flush().unwrap();
        t.truncate_to_offset(15).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 12);
    }
}
