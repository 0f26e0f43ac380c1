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

use super::index::EntryFile;
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

/// The sparse time index of one segment.
#[derive(Debug)]
pub struct TimeIndex {
    file: EntryFile,
    base_offset: i64,
    entries: Vec<(i64, u32)>,
}

impl TimeIndex {
    /// Creates (or empties) the time index file for a segment starting at `base_offset`.
    pub fn create(path: &Path, base_offset: i64) -> Result<Self> {
        Ok(TimeIndex {
            file: EntryFile::create(path)?,
            base_offset,
            entries: Vec::new(),
        })
    }

    /// Loads an existing time index. `Ok(None)` if missing or failing a sanity check (size not a
    /// multiple of 12, timestamps not strictly increasing, offsets decreasing, entries in an
    /// empty log); the caller rebuilds it.
    pub fn load(path: &Path, segment_base: i64, log_len: u64) -> Result<Option<Self>> {
        let Some((file, bytes)) = EntryFile::read_existing(path)? else {
            return Ok(None);
        };
        match parse_entries(&bytes, log_len) {
            Ok(entries) => Ok(Some(TimeIndex {
                file,
                base_offset: segment_base,
                entries,
            })),
            Err(reason) => {
                tracing::warn!(path = %path.display(), %reason, "time index fails sanity check");
                Ok(None)
            }
        }
    }

    /// Replaces the file at `path` with exactly `entries`.
    pub fn rebuild(path: &Path, base_offset: i64, entries: &[TimeEntry]) -> Result<Self> {
        let mut index = TimeIndex::create(path, base_offset)?;
        for e in entries {
            index.maybe_append(e.timestamp, e.offset);
        }
        index.flush()?;
        Ok(index)
    }

    /// Path of the `.timeindex` file.
    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// Adds (in memory) an entry if `timestamp` is greater than the last one and `offset` not
    /// smaller; otherwise does nothing.
    pub fn maybe_append(&mut self, timestamp: i64, offset: i64) {
        let Ok(rel) = u32::try_from(offset.saturating_sub(self.base_offset)) else {
            return;
        };
        if let Some(&(last_ts, last_rel)) = self.entries.last() {
            if timestamp <= last_ts || rel < last_rel {
                return;
            }
        }
        self.entries.push((timestamp, rel));
    }

    /// Entries in memory not yet written to the file.
    pub fn unflushed(&self) -> usize {
        self.entries
            .len()
            .saturating_sub(self.file.written() as usize / TIME_INDEX_ENTRY_SIZE)
    }

    /// Writes entries not yet in the file.
    pub fn flush(&mut self) -> Result<()> {
        let from = (self.file.written() as usize / TIME_INDEX_ENTRY_SIZE).min(self.entries.len());
        if from == self.entries.len() {
            return Ok(());
        }
        let mut bytes = Vec::with_capacity((self.entries.len() - from) * TIME_INDEX_ENTRY_SIZE);
        for &(ts, rel) in &self.entries[from..] {
            bytes.extend_from_slice(&ts.to_be_bytes());
            bytes.extend_from_slice(&rel.to_be_bytes());
        }
        self.file.write_tail(&bytes)
    }

    /// Flushes and fdatasyncs the file.
    pub fn sync(&mut self) -> Result<()> {
        self.flush()?;
        self.file.sync()
    }

    fn entry(&self, i: usize) -> TimeEntry {
        let (timestamp, rel) = self.entries[i];
        TimeEntry {
            timestamp,
            offset: self.base_offset + i64::from(rel),
        }
    }

    /// Greatest entry whose timestamp is `<= timestamp`, if any.
    pub fn lookup(&self, timestamp: i64) -> Option<TimeEntry> {
        let n = self.entries.partition_point(|&(ts, _)| ts <= timestamp);
        n.checked_sub(1).map(|i| self.entry(i))
    }

    /// The last entry (the segment's max timestamp once rolled or closed).
    pub fn last(&self) -> Option<TimeEntry> {
        self.entries.len().checked_sub(1).map(|i| self.entry(i))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All entries, oldest first.
    pub fn entries(&self) -> Vec<TimeEntry> {
        (0..self.entries.len()).map(|i| self.entry(i)).collect()
    }

    /// Drops entries whose offset is `>= next_offset` after the log was truncated.
    pub fn truncate_to_offset(&mut self, next_offset: i64) -> Result<()> {
        let base = self.base_offset;
        let keep = self
            .entries
            .partition_point(|&(_, rel)| base + i64::from(rel) < next_offset);
        self.entries.truncate(keep);
        let bytes = (keep * TIME_INDEX_ENTRY_SIZE) as u64;
        if self.file.written() > bytes {
            self.file.truncate(bytes)?;
        }
        Ok(())
    }
}

fn parse_entries(bytes: &[u8], log_len: u64) -> std::result::Result<Vec<(i64, u32)>, String> {
    if bytes.len() % TIME_INDEX_ENTRY_SIZE != 0 {
        return Err(format!(
            "size {} is not a multiple of {TIME_INDEX_ENTRY_SIZE}",
            bytes.len()
        ));
    }
    if log_len == 0 && !bytes.is_empty() {
        return Err("entries for an empty log".to_string());
    }
    let mut entries: Vec<(i64, u32)> = Vec::with_capacity(bytes.len() / TIME_INDEX_ENTRY_SIZE);
    for chunk in bytes.chunks_exact(TIME_INDEX_ENTRY_SIZE) {
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&chunk[..8]);
        let ts = i64::from_be_bytes(ts);
        let rel = u32::from_be_bytes([chunk[8], chunk[9], chunk[10], chunk[11]]);
        if let Some(&(last_ts, last_rel)) = entries.last() {
            if ts <= last_ts || rel < last_rel {
                return Err(format!(
                    "entry ({ts}, {rel}) does not follow ({last_ts}, {last_rel})"
                ));
            }
        }
        entries.push((ts, rel));
    }
    Ok(entries)
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
