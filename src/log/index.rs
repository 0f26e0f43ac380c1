//! The sparse indexes of one segment: one generic [`SparseIndex`] over an [`IndexFormat`], and
//! the offset index in Kafka's `.index` format: 8-byte big-endian entries of (u32 offset relative
//! to the segment base, u32 byte position in the `.log` file). The time index
//! (`time_index.rs`) is the other format.
//!
//! The entries live in a `Vec` for lookups and are mirrored to an append-only file. Like Kafka,
//! an entry names the *last* offset of a batch and the position where that batch starts, so
//! "greatest entry <= target" always points at or before the batch holding the target. Lookups
//! use the in-memory entries only, so file writes are deferred and batched (the segment flushes
//! every [`INDEX_FLUSH_ENTRIES`] entries, and at roll and close, where it also fsyncs): on this
//! kind of VM a syscall costs several µs, as much as writing a small batch. Losing unflushed
//! entries in a crash is harmless: recovery rescans the last segment after an unclean shutdown,
//! and rebuilds any index that fails [`OffsetIndex::load`]'s sanity checks.

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::open_files::{FileCache, LazyFile};
use super::{LogError, Result};

/// One offset index entry, with the offset made absolute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Last offset of the indexed batch.
    pub offset: i64,
    /// Byte position of that batch in the segment's `.log` file.
    pub position: u32,
}

/// An append-only file of fixed-size entries with an in-memory write cursor; shared by the
/// offset and time indexes. Lookups never touch the file, so it holds a descriptor only while
/// being written (see `open_files.rs`): a sealed segment's indexes cost none.
#[derive(Debug)]
pub(crate) struct EntryFile {
    pub(crate) path: PathBuf,
    file: LazyFile,
    /// Bytes of entries already written to the file.
    written: u64,
}

impl EntryFile {
    pub(crate) fn create(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| LogError::io(format!("create {}", path.display()), e))?;
        Ok(EntryFile {
            path: path.to_path_buf(),
            file: LazyFile::adopt(FileCache::global(), path, file),
            written: 0,
        })
    }

    /// Reads a whole existing file; `None` if it does not exist.
    pub(crate) fn read_existing(path: &Path) -> Result<Option<(Self, Vec<u8>)>> {
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(LogError::io(format!("open {}", path.display()), e)),
        };
        let len = file
            .metadata()
            .map_err(|e| LogError::io(format!("stat {}", path.display()), e))?
            .len();
        let mut bytes = vec![0u8; len as usize];
        file.read_exact_at(&mut bytes, 0)
            .map_err(|e| LogError::io(format!("read {}", path.display()), e))?;
        // Read once into memory; the descriptor is reopened only if the index is written again.
        drop(file);
        Ok(Some((
            EntryFile {
                path: path.to_path_buf(),
                file: LazyFile::closed(FileCache::global(), path),
                written: len,
            },
            bytes,
        )))
    }

    pub(crate) fn write_tail(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.file
            .write_all_at(bytes, self.written)
            .map_err(|e| match e {
                // Nothing written: the entries stay unflushed and the next flush retries.
                super::open_files::WriteError::Open(e) => super::segment::not_started(e),
                e => e.into_log_error(format!("write {}", self.path.display())),
            })?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    pub(crate) fn truncate(&mut self, len: u64) -> Result<()> {
        self.file
            .set_len(len)
            .map_err(|e| e.into_log_error(format!("truncate {}", self.path.display())))?;
        self.written = self.written.min(len);
        Ok(())
    }

    pub(crate) fn sync(&self) -> Result<()> {
        self.file.sync_data()
    }
}

/// What distinguishes one sparse index from another: the on-disk entry layout, the order
/// entries must keep, and the check a loaded entry must pass against the log. Everything else
/// (the in-memory entries, deferred writes, load, rebuild, truncation) is [`SparseIndex`].
pub trait IndexFormat {
    /// One entry as kept in memory, with its offset relative to the segment base.
    type Raw: Copy + std::fmt::Debug;
    /// One entry as callers see it, with the offset made absolute.
    type Entry;
    /// Bytes per entry on disk.
    const SIZE: usize;
    /// What the index is called in logs.
    const NAME: &'static str;
    fn encode(raw: Self::Raw, out: &mut Vec<u8>);
    /// Decodes one `SIZE`-byte chunk.
    fn decode(chunk: &[u8]) -> Self::Raw;
    /// Whether `next` may follow `prev`: a sparse index may skip entries, never reorder them.
    fn follows(prev: Self::Raw, next: Self::Raw) -> bool;
    /// Why a loaded entry cannot belong to a log of `log_len` bytes, if it cannot.
    fn stale(raw: Self::Raw, log_len: u64) -> Option<String>;
    fn entry(base_offset: i64, raw: Self::Raw) -> Self::Entry;
}

/// The sparse index of one segment: entries in a `Vec` for lookups, mirrored to an append-only
/// file written lazily by [`flush`](Self::flush).
#[derive(Debug)]
pub struct SparseIndex<F: IndexFormat> {
    file: EntryFile,
    base_offset: i64,
    /// Strictly ordered by [`IndexFormat::follows`].
    entries: Vec<F::Raw>,
}

/// Unflushed entries (of either index) after which the segment writes them out.
pub const INDEX_FLUSH_ENTRIES: usize = 256;

impl<F: IndexFormat> SparseIndex<F> {
    /// Creates (or empties) the index file for a segment starting at `base_offset`.
    pub fn create(path: &Path, base_offset: i64) -> Result<Self> {
        Ok(SparseIndex {
            file: EntryFile::create(path)?,
            base_offset,
            entries: Vec::new(),
        })
    }

    /// Loads an existing index. Returns `Ok(None)` if the file is missing or fails a sanity
    /// check (size not a multiple of the entry size, entries out of order, an entry the log of
    /// `log_len` bytes cannot hold); the caller then rebuilds it from the log.
    pub fn load(path: &Path, segment_base: i64, log_len: u64) -> Result<Option<Self>> {
        let Some((file, bytes)) = EntryFile::read_existing(path)? else {
            return Ok(None);
        };
        match parse_entries::<F>(&bytes, log_len) {
            Ok(entries) => Ok(Some(SparseIndex {
                file,
                base_offset: segment_base,
                entries,
            })),
            Err(reason) => {
                tracing::warn!(path = %path.display(), %reason, index = F::NAME, "index fails sanity check");
                Ok(None)
            }
        }
    }

    /// Base offset of the segment this index belongs to.
    pub fn base_offset(&self) -> i64 {
        self.base_offset
    }

    /// Path of the index file.
    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// `offset` relative to the segment base, if it fits an entry.
    pub(super) fn relative(&self, offset: i64) -> Option<u32> {
        u32::try_from(offset.saturating_sub(self.base_offset)).ok()
    }

    /// Adds an entry in memory (written by the next flush) if it follows the last one.
    pub(super) fn push(&mut self, raw: F::Raw) {
        if self
            .entries
            .last()
            .is_none_or(|&last| F::follows(last, raw))
        {
            self.entries.push(raw);
        }
    }

    /// Entries in memory not yet written to the file.
    pub fn unflushed(&self) -> usize {
        self.entries
            .len()
            .saturating_sub(self.file.written() as usize / F::SIZE)
    }

    /// Writes entries not yet in the file.
    pub fn flush(&mut self) -> Result<()> {
        let from = (self.file.written() as usize / F::SIZE).min(self.entries.len());
        if from == self.entries.len() {
            return Ok(());
        }
        let mut bytes = Vec::with_capacity((self.entries.len() - from) * F::SIZE);
        for &raw in &self.entries[from..] {
            F::encode(raw, &mut bytes);
        }
        self.file.write_tail(&bytes)
    }

    /// Flushes and fdatasyncs the file (at roll and close).
    pub fn sync(&mut self) -> Result<()> {
        self.flush()?;
        self.file.sync()
    }

    fn entry(&self, i: usize) -> F::Entry {
        F::entry(self.base_offset, self.entries[i])
    }

    /// The greatest entry for which `at_or_below` holds, with `at_or_below` true for a prefix
    /// of the entries (the index's order makes every key search one).
    pub(super) fn greatest(&self, at_or_below: impl FnMut(&F::Raw) -> bool) -> Option<F::Entry> {
        let n = self.entries.partition_point(at_or_below);
        n.checked_sub(1).map(|i| self.entry(i))
    }

    /// The last entry, if any.
    pub fn last(&self) -> Option<F::Entry> {
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
    pub fn entries(&self) -> Vec<F::Entry> {
        (0..self.entries.len()).map(|i| self.entry(i)).collect()
    }

    /// Keeps the entries for which `keep` holds (a prefix) and cuts the file to match.
    pub(super) fn truncate_where(&mut self, keep: impl FnMut(&F::Raw) -> bool) -> Result<()> {
        let kept = self.entries.partition_point(keep);
        self.entries.truncate(kept);
        let bytes = (kept * F::SIZE) as u64;
        if self.file.written() > bytes {
            self.file.truncate(bytes)?;
        }
        Ok(())
    }
}

fn parse_entries<F: IndexFormat>(
    bytes: &[u8],
    log_len: u64,
) -> std::result::Result<Vec<F::Raw>, String> {
    if bytes.len() % F::SIZE != 0 {
        return Err(format!(
            "size {} is not a multiple of {}",
            bytes.len(),
            F::SIZE
        ));
    }
    let mut entries: Vec<F::Raw> = Vec::with_capacity(bytes.len() / F::SIZE);
    for chunk in bytes.chunks_exact(F::SIZE) {
        let raw = F::decode(chunk);
        if let Some(reason) = F::stale(raw, log_len) {
            return Err(reason);
        }
        if let Some(&last) = entries.last() {
            if !F::follows(last, raw) {
                return Err(format!("entry {raw:?} does not follow {last:?}"));
            }
        }
        entries.push(raw);
    }
    Ok(entries)
}

/// Kafka's `.index` layout: (u32 relative offset, u32 position), both strictly increasing.
#[derive(Debug)]
pub enum OffsetFormat {}

/// Bytes per `.index` entry.
pub const INDEX_ENTRY_SIZE: usize = 8;

impl IndexFormat for OffsetFormat {
    type Raw = (u32, u32);
    type Entry = IndexEntry;
    const SIZE: usize = INDEX_ENTRY_SIZE;
    const NAME: &'static str = "offset";

    fn encode((rel, pos): (u32, u32), out: &mut Vec<u8>) {
        out.extend_from_slice(&rel.to_be_bytes());
        out.extend_from_slice(&pos.to_be_bytes());
    }

    fn decode(chunk: &[u8]) -> (u32, u32) {
        (
            u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]),
            u32::from_be_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]),
        )
    }

    fn follows((last_rel, last_pos): (u32, u32), (rel, pos): (u32, u32)) -> bool {
        rel > last_rel && pos > last_pos
    }

    fn stale((_, pos): (u32, u32), log_len: u64) -> Option<String> {
        (u64::from(pos) >= log_len).then(|| format!("position {pos} is past the log end {log_len}"))
    }

    fn entry(base_offset: i64, (rel, position): (u32, u32)) -> IndexEntry {
        IndexEntry {
            offset: base_offset + i64::from(rel),
            position,
        }
    }
}

/// The sparse offset index of one segment.
pub type OffsetIndex = SparseIndex<OffsetFormat>;

impl SparseIndex<OffsetFormat> {
    /// Replaces the file at `path` with exactly `entries` (from a scan of the log).
    pub fn rebuild(path: &Path, base_offset: i64, entries: &[IndexEntry]) -> Result<Self> {
        let mut index = Self::create(path, base_offset)?;
        for e in entries {
            index.append(e.offset, e.position);
        }
        index.flush()?;
        Ok(index)
    }

    /// Adds an entry in memory (written by the next [`flush`](Self::flush)). Entries that would
    /// not be strictly increasing, or whose relative offset does not fit in 32 bits, are ignored:
    /// a sparse index may skip entries without becoming wrong.
    pub fn append(&mut self, offset: i64, position: u32) {
        if let Some(rel) = self.relative(offset) {
            self.push((rel, position));
        }
    }

    /// Greatest entry whose offset is `<= offset`, if any.
    pub fn lookup_entry(&self, offset: i64) -> Option<IndexEntry> {
        let rel = offset.saturating_sub(self.base_offset);
        if rel < 0 {
            return None;
        }
        let rel = u32::try_from(rel).unwrap_or(u32::MAX);
        self.greatest(|&(r, _)| r <= rel)
    }

    /// File position to start scanning from to find `offset`: that of the greatest entry
    /// `<= offset`, or 0.
    pub fn lookup(&self, offset: i64) -> u64 {
        self.lookup_entry(offset)
            .map(|e| u64::from(e.position))
            .unwrap_or(0)
    }

    /// Position of the last entry at or before file position `pos` (entries point at batch
    /// starts, so this is a batch boundary).
    pub fn last_position_at_or_below(&self, pos: u64) -> Option<u64> {
        self.greatest(|&(_, p)| u64::from(p) <= pos)
            .map(|e| u64::from(e.position))
    }

    /// Position of the last entry strictly before file position `pos`.
    pub fn last_position_below(&self, pos: u64) -> Option<u64> {
        self.greatest(|&(_, p)| u64::from(p) < pos)
            .map(|e| u64::from(e.position))
    }

    /// Drops entries pointing at or past `log_len` after the log was truncated there.
    pub fn truncate_to_position(&mut self, log_len: u64) -> Result<()> {
        self.truncate_where(|&(_, pos)| u64::from(pos) < log_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_finds_greatest_entry_at_or_below() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000000000000100.index");
        let mut idx = OffsetIndex::create(&path, 100).unwrap();
        idx.append(109, 4100);
        idx.append(120, 8300);
        idx.append(120, 9000); // not increasing: ignored
        idx.flush().unwrap();
        assert_eq!(idx.lookup(100), 0);
        assert_eq!(idx.lookup(108), 0);
        assert_eq!(idx.lookup(109), 4100);
        assert_eq!(idx.lookup(119), 4100);
        assert_eq!(idx.lookup(500), 8300);
        assert_eq!(idx.lookup(5), 0);

        let loaded = OffsetIndex::load(&path, 100, 10_000).unwrap().unwrap();
        assert_eq!(loaded.entries(), idx.entries());
        // A position past the log end means the index is stale.
        assert!(OffsetIndex::load(&path, 100, 8300).unwrap().is_none());
    }

    #[test]
    fn load_rejects_garbage_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.index");
        assert!(OffsetIndex::load(&path, 0, 100).unwrap().is_none());
        std::fs::write(&path, [1u8; 7]).unwrap();
        assert!(OffsetIndex::load(&path, 0, 100).unwrap().is_none());
        let mut bad = Vec::new();
        for (r, p) in [(5u32, 50u32), (3, 60)] {
            bad.extend_from_slice(&r.to_be_bytes());
            bad.extend_from_slice(&p.to_be_bytes());
        }
        std::fs::write(&path, &bad).unwrap();
        assert!(OffsetIndex::load(&path, 0, 100).unwrap().is_none());
        std::fs::write(&path, []).unwrap();
        assert!(OffsetIndex::load(&path, 0, 0).unwrap().unwrap().is_empty());
    }

    #[test]
    fn truncate_drops_entries_past_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.index");
        let mut idx = OffsetIndex::create(&path, 0).unwrap();
        for i in 1..=5u32 {
            idx.append(i64::from(i) * 10, i * 1000);
        }
        idx.flush().unwrap();
        idx.truncate_to_position(3000).unwrap();
        assert_eq!(idx.len(), 2);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 16);
        idx.append(60, 3500);
        idx.flush().unwrap();
        let loaded = OffsetIndex::load(&path, 0, 4000).unwrap().unwrap();
        assert_eq!(loaded.len(), 3);
        assert_eq!(loaded.last().unwrap().offset, 60);
    }
}
