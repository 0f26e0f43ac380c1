//! One segment: a `.log` file of concatenated record batches, its offset index and time index,
//! and the bookkeeping the partition needs (base and next offset, size, max timestamp, age).
//!
//! Writes and reads are positional (`pwrite`/`pread` through `FileExt`), so any number of readers
//! can read through a shared reference while the single writer appends: readers never need the
//! write lock, and the file handle is an `Arc<File>` that the group-commit writer can fdatasync
//! after releasing the partition lock.
//!
//! Preallocation: an fdatasync after overwriting already-written bytes only flushes data, while
//! one after growing the file must also commit the new size through the filesystem journal
//! (measured here ~120 µs vs ~210 µs). With `preallocate` on, the segment therefore keeps a
//! zero-filled region ahead of the write position, extended in [`PREALLOCATE_CHUNK`] steps, and
//! trims the file back to its logical size when it is rolled or closed. A crash leaves that zero
//! tail in place, which recovery recognises (length 0, magic 0) and truncates.
//!
//! A full disk is not a reason to fail-stop: a write that fails with `ENOSPC`/`EDQUOT` may have
//! landed in part (the kernel writes what fits), so [`Segment::append`] undoes it — truncating
//! the file back to where the write began, or re-zeroing preallocated space — before reporting
//! the error, and the segment is exactly as before the call. Only when that undo fails is the
//! error fatal. [`write_refused`] tells the caller which case it got. Tests provoke a full disk
//! through [`set_disk_full`], a per-directory fault that costs the write path one relaxed
//! atomic load while nothing is armed.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

use super::batch::{BatchHeader, HEADER_LEN};
use super::config::LogConfig;
use super::index::{OffsetIndex, INDEX_FLUSH_ENTRIES};
use super::open_files::{FileCache, LazyFile, WriteError};
use super::time_index::TimeIndex;
use super::{LogError, Result};

/// How much zeroed space a preallocating segment adds at a time. Small enough that the
/// fdatasync which flushes a fresh chunk is a short hiccup (~2.5 ms at 400 MB/s).
pub const PREALLOCATE_CHUNK: u64 = 1 << 20;

/// Bytes read at a time when walking batch headers.
const SCAN_CHUNK: usize = 16 * 1024;

/// Log file name for a segment: the base offset as 20 zero-padded digits, as Kafka names it.
pub fn file_stem(base_offset: i64) -> String {
    format!("{base_offset:020}")
}

/// Path of the `.log` file of the segment at `base_offset` in `dir`.
pub fn log_path(dir: &Path, base_offset: i64) -> PathBuf {
    dir.join(format!("{}.log", file_stem(base_offset)))
}

/// Path of the `.index` file of the segment at `base_offset` in `dir`.
pub fn index_path(dir: &Path, base_offset: i64) -> PathBuf {
    dir.join(format!("{}.index", file_stem(base_offset)))
}

/// Path of the `.timeindex` file of the segment at `base_offset` in `dir`.
pub fn time_index_path(dir: &Path, base_offset: i64) -> PathBuf {
    dir.join(format!("{}.timeindex", file_stem(base_offset)))
}

/// Directories with an armed disk-full fault, and how many bytes each write there may still
/// put on disk before it fails (a short write, as a nearly full disk does).
static DISK_FULL: parking_lot::Mutex<Vec<(PathBuf, usize)>> = parking_lot::Mutex::new(Vec::new());
/// `DISK_FULL.len()`, so the write path skips the lock while no fault is armed.
static DISK_FULL_ARMED: AtomicUsize = AtomicUsize::new(0);

/// Makes every segment write in `dir` behave as on a full disk — write at most `room` bytes,
/// then fail with `ENOSPC` — until called again with `None` ("space returns"). For tests of
/// the disk-full path; see [`PartitionHandle::inject_disk_full`](super::PartitionHandle).
#[doc(hidden)]
pub fn set_disk_full(dir: &Path, room: Option<usize>) {
    let mut armed = DISK_FULL.lock();
    armed.retain(|(d, _)| d != dir);
    if let Some(room) = room {
        armed.push((dir.to_path_buf(), room));
    }
    DISK_FULL_ARMED.store(armed.len(), Ordering::Release);
}

/// The room left by an armed disk-full fault on the directory of `path`, if any.
fn disk_full_room(path: &Path) -> Option<usize> {
    if DISK_FULL_ARMED.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let dir = path.parent()?;
    DISK_FULL
        .lock()
        .iter()
        .find(|(d, _)| d == dir)
        .map(|(_, room)| *room)
}

fn is_out_of_space(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// Whether an error from [`Segment::append`] is a write that left nothing in the file — the
/// disk refused it for lack of space and it was undone, or the segment's file could not be
/// reopened (descriptors exhausted, say) so it never started — with the segment as before the
/// call, so the log may stay open and retry later appends (instead of fail-stopping).
pub fn write_refused(e: &LogError) -> bool {
    matches!(e, LogError::Io { source, .. } if is_out_of_space(source)) || is_not_started(e)
}

/// Whether `e` is a write that never started because its file could not be (re)opened. Never
/// true of an fsync error (an fsync does not reopen), so an `ENOSPC` from writeback still
/// fail-stops.
pub(crate) fn is_not_started(e: &LogError) -> bool {
    matches!(e, LogError::Io { source, .. }
        if source.get_ref().is_some_and(|r| r.is::<NotStarted>()))
}

/// The cause of a write that never started because its file could not be (re)opened.
#[derive(Debug)]
struct NotStarted(std::io::Error);

impl std::fmt::Display for NotStarted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for NotStarted {}

/// Marks an open failure of a write as [`write_refused`]. Only an operating-system error
/// qualifies: a file poisoned by an earlier failed fsync must keep fail-stopping.
pub(crate) fn not_started(e: LogError) -> LogError {
    match e {
        LogError::Io { context, source } if source.raw_os_error().is_some() => LogError::Io {
            context,
            source: std::io::Error::new(source.kind(), NotStarted(source)),
        },
        other => other,
    }
}

/// An error after the batches of an append were written: never [`write_refused`], whatever
/// its cause, since nothing was undone.
fn written_anyway(e: LogError) -> LogError {
    match e {
        LogError::Io { context, source } if is_out_of_space(&source) => LogError::Io {
            context,
            source: std::io::Error::other(source),
        },
        other => other,
    }
}

/// Metadata of a segment that recovery has established (after any truncation).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SegmentState {
    pub size: u64,
    pub next_offset: i64,
    pub max_timestamp: i64,
    pub offset_of_max_timestamp: i64,
    pub created_at_ms: Option<i64>,
    pub bytes_since_index: usize,
}

/// One segment of a partition log.
#[derive(Debug)]
pub struct Segment {
    base_offset: i64,
    log_path: PathBuf,
    /// Open only while the file budget allows (see `open_files.rs`).
    file: LazyFile,
    /// Logical size: bytes of batches.
    size: u64,
    /// Physical length when preallocating (>= size; the rest is zeros).
    allocated: u64,
    index: OffsetIndex,
    time_index: TimeIndex,
    next_offset: i64,
    max_timestamp: i64,
    offset_of_max_timestamp: i64,
    created_at_ms: Option<i64>,
    bytes_since_index: usize,
}

impl Segment {
    /// Creates a new, empty segment's three files in `dir` (replacing any files of that name).
    pub fn create(dir: &Path, base_offset: i64) -> Result<Segment> {
        let log_path = log_path(dir, base_offset);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&log_path)
            .map_err(|e| LogError::io(format!("create {}", log_path.display()), e))?;
        let index = OffsetIndex::create(&index_path(dir, base_offset), base_offset)?;
        let time_index = TimeIndex::create(&time_index_path(dir, base_offset), base_offset)?;
        Ok(Segment {
            base_offset,
            file: LazyFile::adopt(FileCache::global(), &log_path, file),
            log_path,
            size: 0,
            allocated: 0,
            index,
            time_index,
            next_offset: base_offset,
            max_timestamp: -1,
            offset_of_max_timestamp: base_offset,
            created_at_ms: None,
            bytes_since_index: 0,
        })
    }

    /// Assembles a segment from files recovery has checked (the log already truncated to
    /// `state.size`).
    pub(crate) fn from_parts(
        base_offset: i64,
        log_path: PathBuf,
        file: File,
        index: OffsetIndex,
        time_index: TimeIndex,
        state: SegmentState,
    ) -> Segment {
        Segment {
            base_offset,
            file: LazyFile::adopt(FileCache::global(), &log_path, file),
            log_path,
            size: state.size,
            allocated: state.size,
            index,
            time_index,
            next_offset: state.next_offset,
            max_timestamp: state.max_timestamp,
            offset_of_max_timestamp: state.offset_of_max_timestamp,
            created_at_ms: state.created_at_ms,
            bytes_since_index: state.bytes_since_index,
        }
    }

    /// First offset this segment may hold (its file name).
    pub fn base_offset(&self) -> i64 {
        self.base_offset
    }

    /// Offset the next appended batch would get.
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// Bytes of batches in the segment.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// No batches yet.
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Largest batch max timestamp in the segment, or -1 if none has a timestamp.
    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp
    }

    /// Clock time of the first append (or, for a segment found on disk, its first batch's
    /// timestamp); `None` while empty. Drives `segment.ms` rolling.
    pub fn created_at_ms(&self) -> Option<i64> {
        self.created_at_ms
    }

    /// Path of the `.log` file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The offset index.
    pub fn index(&self) -> &OffsetIndex {
        &self.index
    }

    /// The time index.
    pub fn time_index(&self) -> &TimeIndex {
        &self.time_index
    }

    /// The log file handle, for fdatasync without holding the partition lock.
    pub fn sync_handle(&self) -> LazyFile {
        self.file.clone()
    }

    /// The timestamp retention compares against: the max timestamp, or when no batch carries
    /// one, the file's modification time (Kafka does the same).
    pub fn retention_timestamp(&self) -> i64 {
        if self.max_timestamp >= 0 {
            return self.max_timestamp;
        }
        self.file
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as i64)
            // If even that is unknown, keep the segment rather than guess it is old.
            .unwrap_or(i64::MAX)
    }

    /// Appends already validated, offset-assigned batches. `batches` are the headers and ranges
    /// of the batches inside `buf`, in order. On error the in-memory state is unchanged. If
    /// [`write_refused`] says so, the file is too (a full disk, undone); otherwise the file may
    /// hold part of the write and the caller must fail-stop.
    pub(crate) fn append(
        &mut self,
        buf: &[u8],
        batches: &[(BatchHeader, std::ops::Range<usize>)],
        now_ms: i64,
        config: &LogConfig,
    ) -> Result<()> {
        let Some((last, _)) = batches.last() else {
            return Ok(());
        };
        let start = self.size;
        let end = start + buf.len() as u64;
        if config.preallocate && end > self.allocated {
            self.preallocate_to(end, config.segment_bytes)?;
        }
        match self.write_at(buf, start) {
            Ok(()) => {}
            Err(WriteError::Open(e)) => return Err(not_started(e)),
            Err(WriteError::Io(e)) => return Err(self.undo_failed_write(start, end, e)),
        }

        for (h, range) in batches {
            if h.max_timestamp > self.max_timestamp {
                self.max_timestamp = h.max_timestamp;
                self.offset_of_max_timestamp = h.last_offset();
            }
            if self.bytes_since_index > config.index_interval_bytes {
                if let Ok(pos) = u32::try_from(start + range.start as u64) {
                    self.index.append(h.last_offset(), pos);
                    self.time_index
                        .maybe_append(self.max_timestamp, self.offset_of_max_timestamp);
                }
                self.bytes_since_index = 0;
            }
            self.bytes_since_index += range.len();
        }
        if self.size == 0 {
            self.created_at_ms = Some(now_ms);
        }
        self.size = end;
        self.next_offset = last.next_offset();
        // The batches are written and counted by now, so a full disk here must not read as a
        // refused (undone) write: it is reported as a plain I/O error, which fail-stops.
        // An index file that cannot be reopened just now keeps its entries in memory for the
        // next flush (at the latest the roll or close): the batches are safely in the log.
        let deferred = |e: LogError| {
            if is_not_started(&e) {
                tracing::warn!(error = %e, "index flush deferred");
                Ok(())
            } else {
                Err(written_anyway(e))
            }
        };
        if self.index.unflushed() >= INDEX_FLUSH_ENTRIES {
            self.index.flush().or_else(deferred)?;
        }
        if self.time_index.unflushed() >= INDEX_FLUSH_ENTRIES {
            self.time_index.flush().or_else(deferred)?;
        }
        Ok(())
    }

    /// Writes zeros from the allocated end up past `end`, in whole chunks, capped at the segment
    /// size limit (space past it would only be trimmed at roll).
    fn preallocate_to(&mut self, end: u64, segment_bytes: u64) -> Result<()> {
        let target = (end + PREALLOCATE_CHUNK / 2).next_multiple_of(PREALLOCATE_CHUNK);
        let target = target.min(segment_bytes.max(end));
        let from = self.allocated.max(self.size);
        if target <= from {
            return Ok(());
        }
        let zeros = vec![0u8; (target - from) as usize];
        // A failure leaves at most some zeros past `allocated`: never mistaken for batches,
        // overwritten by the next preallocation and trimmed at roll, so `ENOSPC` here is
        // already "undone".
        self.write_at(&zeros, from)
            .map_err(|e| e.into_log_error(format!("preallocate {}", self.log_path.display())))?;
        self.allocated = target;
        Ok(())
    }

    /// `write_all_at`, unless a disk-full fault is armed for this directory.
    fn write_at(&self, buf: &[u8], pos: u64) -> Result<(), WriteError> {
        if let Some(room) = disk_full_room(&self.log_path) {
            let n = room.min(buf.len());
            self.file.write_all_at(&buf[..n], pos)?;
            if n < buf.len() {
                return Err(WriteError::Io(std::io::Error::from_raw_os_error(
                    libc::ENOSPC,
                )));
            }
            return Ok(());
        }
        self.file.write_all_at(buf, pos)
    }

    /// Turns a failed data write at `start..end` into the error to report. Out of space, the
    /// bytes that did land are removed so that no later recovery can take them for batches the
    /// producer was told had failed: beyond the preallocated region by truncating (which frees
    /// space, so it cannot itself run out), inside it by rewriting zeros over blocks that are
    /// already allocated. If that fails the error no longer counts as refused (fail-stop).
    fn undo_failed_write(&mut self, start: u64, end: u64, cause: std::io::Error) -> LogError {
        let context = format!("write {}", self.log_path.display());
        if !is_out_of_space(&cause) {
            return LogError::io(context, cause);
        }
        let as_io = |e: WriteError| match e {
            WriteError::Io(e) => e,
            WriteError::Open(e) => std::io::Error::other(e),
        };
        let undone = if start < self.allocated {
            let upto = end.min(self.allocated);
            let zeros = vec![0u8; (upto - start) as usize];
            self.file.write_all_at(&zeros, start).and_then(|()| {
                if end > self.allocated {
                    self.file.set_len(self.allocated)
                } else {
                    Ok(())
                }
            })
        } else {
            self.file.set_len(start)
        }
        .map_err(as_io);
        match undone {
            Ok(()) => LogError::io(context, cause),
            Err(e) => LogError::io(
                format!("{context}: undoing a partial write after `{cause}`"),
                std::io::Error::other(e),
            ),
        }
    }

    /// fdatasync of the log file.
    pub fn sync(&self) -> Result<()> {
        self.file.sync_data()
    }

    /// Makes the segment ready to stop being written (roll or close): records the final time
    /// index entry, trims preallocated zeros, and fsyncs the log and both indexes.
    pub(crate) fn finish(&mut self) -> Result<()> {
        if self.max_timestamp >= 0 {
            self.time_index
                .maybe_append(self.max_timestamp, self.offset_of_max_timestamp);
        }
        if self.allocated > self.size {
            self.file.set_len(self.size).map_err(|e| match e {
                WriteError::Open(e) => not_started(e),
                e => e.into_log_error(format!("trim {}", self.log_path.display())),
            })?;
            self.allocated = self.size;
        }
        self.sync()?;
        self.index.sync()?;
        self.time_index.sync()?;
        Ok(())
    }

    /// The open log file, kept open (even if evicted from the descriptor budget, or unlinked by
    /// retention) for as long as the returned handle lives: what a zero-copy send holds on to.
    pub fn pinned_file(&self) -> Result<std::sync::Arc<File>> {
        self.file.pin()
    }

    /// The run of whole batches starting at `pos` (a batch boundary) and ending at or before
    /// `end`: its end position and the offset after its last batch, or `None` when not even
    /// the first batch fits. Only batch headers are read, one `pread` each, starting from the
    /// offset index's last entry before `end` (so a long run of small batches costs a few
    /// reads, not one per batch); if the batch at that entry does not fit, the walk starts at
    /// the entry before it, whose batches all end by then.
    pub(crate) fn whole_batches_until(&self, pos: u64, end: u64) -> Result<Option<(u64, i64)>> {
        let end = end.min(self.size);
        let mut from = self
            .index
            .last_position_at_or_below(end)
            .filter(|&p| p > pos);
        let mut header = [0u8; HEADER_LEN];
        loop {
            let start = from.unwrap_or(pos);
            let mut p = start;
            let mut next = None;
            while p + HEADER_LEN as u64 <= end {
                self.read_exact(&mut header, p)?;
                let h = BatchHeader::parse(&header).map_err(|e| {
                    LogError::InvalidBatch(format!(
                        "{} at position {p}: {e}",
                        self.log_path.display()
                    ))
                })?;
                let after = p + h.total_size() as u64;
                if after > end {
                    break;
                }
                p = after;
                next = Some(h.next_offset());
            }
            match next {
                Some(next) => return Ok(Some((p, next))),
                None if start == pos => return Ok(None),
                None => {
                    from = self.index.last_position_below(start).filter(|&q| q > pos);
                }
            }
        }
    }

    /// Reads `len` bytes at `pos`, clamped to the logical size.
    pub fn read(&self, pos: u64, len: usize) -> Result<Bytes> {
        let len = (len as u64).min(self.size.saturating_sub(pos)) as usize;
        let mut buf = vec![0u8; len];
        self.read_exact(&mut buf, pos)?;
        Ok(Bytes::from(buf))
    }

    fn read_exact(&self, buf: &mut [u8], pos: u64) -> Result<()> {
        self.file.read_exact_at(buf, pos)
    }

    /// Walks batch headers from `pos` (which must be a batch boundary) to the end of the
    /// segment, calling `f(position, header)` until it returns `true`. Returns the position and
    /// header `f` stopped at. Headers are read in chunks, not one syscall per batch.
    pub(crate) fn walk_headers(
        &self,
        mut pos: u64,
        mut f: impl FnMut(u64, &BatchHeader) -> bool,
    ) -> Result<Option<(u64, BatchHeader)>> {
        let mut buf = vec![0u8; SCAN_CHUNK];
        while pos < self.size {
            let n = (SCAN_CHUNK as u64).min(self.size - pos) as usize;
            self.read_exact(&mut buf[..n], pos)?;
            let mut p = 0usize;
            while p + HEADER_LEN <= n {
                let h = BatchHeader::parse(&buf[p..n]).map_err(|e| {
                    LogError::InvalidBatch(format!(
                        "{} at position {}: {e}",
                        self.log_path.display(),
                        pos + p as u64
                    ))
                })?;
                if f(pos + p as u64, &h) {
                    return Ok(Some((pos + p as u64, h)));
                }
                p += h.total_size();
            }
            if p == 0 {
                return Err(LogError::InvalidBatch(format!(
                    "{}: partial batch header at position {pos}",
                    self.log_path.display()
                )));
            }
            pos += p as u64;
        }
        Ok(None)
    }

    /// Position and header of the first batch whose last offset is `>= offset`, if any.
    pub fn find_batch(&self, offset: i64) -> Result<Option<(u64, BatchHeader)>> {
        let start = self.index.lookup(offset);
        self.walk_headers(start, |_, h| h.last_offset() >= offset)
    }

    /// Position and header of the first batch whose max timestamp is `>= timestamp`, using the
    /// time index to skip ahead.
    pub fn find_timestamp(&self, timestamp: i64) -> Result<Option<(u64, BatchHeader)>> {
        let start = match self.time_index.lookup(timestamp) {
            Some(entry) => self.index.lookup(entry.offset),
            None => 0,
        };
        self.walk_headers(start, |_, h| h.max_timestamp >= timestamp)
    }

    /// Deleting a segment, first half: renames the files to `*.deleted` (cheap, and from then
    /// on a crash cannot resurrect the segment) and returns the new paths for
    /// [`unlink_retired`], which may run later and elsewhere. A failed rename is an error.
    pub(crate) fn retire_files(&self) -> Result<Vec<PathBuf>> {
        let paths = [
            self.log_path.clone(),
            self.index.path().to_path_buf(),
            self.time_index.path().to_path_buf(),
        ];
        let mut retired = Vec::with_capacity(paths.len());
        for path in &paths {
            let mut deleted = path.clone().into_os_string();
            deleted.push(".deleted");
            let deleted = PathBuf::from(deleted);
            match std::fs::rename(path, &deleted) {
                Ok(()) => retired.push(deleted),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(LogError::io(format!("rename {}", path.display()), e)),
            }
        }
        Ok(retired)
    }
}

/// Bytes freed per step by [`shrink_gradually`].
const FREE_STEP: u64 = 4 * 1024 * 1024;

/// Pause between [`shrink_gradually`]'s steps, so fsyncs of live segments get the disk.
const FREE_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

/// Frees a retired file's blocks a few MiB at a time, down to nothing, before it is unlinked (RocksDB's
/// rate-limited delete does the same). Freeing a 64 MiB queue segment in one unlink took ~30 ms
/// on the dev VM (ext4 mounted with `discard`), and an fdatasync of the live segment issued
/// meanwhile waited ~20 ms for it; in 4 MiB steps each waits ~2 ms at most. Only for files no
/// one may still read through an open descriptor (a zero-copy send reads a retention-deleted
/// segment to its end after the unlink; truncating would cut it short).
pub(crate) fn shrink_gradually(path: &Path) {
    let Ok(file) = OpenOptions::new().write(true).open(path) else {
        return;
    };
    let Ok(mut len) = file.metadata().map(|m| m.len()) else {
        return;
    };
    while len > 0 {
        len = (len - 1) / FREE_STEP * FREE_STEP;
        if file.set_len(len).is_err() {
            return;
        }
        if len > 0 {
            std::thread::sleep(FREE_PAUSE);
        }
    }
}

/// Unlinks a file [`Segment::retire_files`] renamed; a failure is only logged, since recovery
/// removes `.deleted` files (and one already gone, with its directory, is no failure).
pub(crate) fn unlink_retired(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot unlink deleted segment file")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::batch::{encode_batch, set_base_offset, BatchIter, SimpleRecord};
    use std::os::unix::fs::FileExt;

    #[test]
    fn a_retired_file_is_freed_in_steps_and_unlinked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000000000000000.log.deleted");
        let file = File::create(&path).unwrap();
        // 9 MiB and a bit: three steps, the last one partial.
        let len = 2 * FREE_STEP + 12345;
        file.write_all_at(&vec![7u8; len as usize], 0).unwrap();
        shrink_gradually(&path);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        unlink_retired(&path);
        assert!(!path.exists());
        // Gone already (its directory deleted with its queue): no panic, nothing to do.
        shrink_gradually(&path);
        unlink_retired(&path);
    }

    fn batch_at(offset: i64, n: usize, ts: i64) -> Vec<u8> {
        let recs: Vec<_> = (0..n)
            .map(|i| SimpleRecord {
                value: Some(Bytes::from(vec![b'x'; 100])),
                timestamp: ts + i as i64,
                ..Default::default()
            })
            .collect();
        let mut b = encode_batch(&recs);
        set_base_offset(&mut b, offset);
        b.to_vec()
    }

    fn append(seg: &mut Segment, buf: &[u8], cfg: &LogConfig) {
        let batches: Vec<_> = BatchIter::new(buf).collect();
        seg.append(buf, &batches, 0, cfg).unwrap();
    }

    /// A full disk mid-write: the bytes that landed are undone, the segment (file and state)
    /// is as before, and once space returns the next append goes where the refused one would.
    #[test]
    fn refused_write_is_undone() {
        for preallocate in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let cfg = LogConfig {
                preallocate,
                ..LogConfig::default()
            };
            let mut seg = Segment::create(dir.path(), 0).unwrap();
            append(&mut seg, &batch_at(0, 2, 1_000), &cfg);
            let size = seg.size();
            let file_len = std::fs::metadata(seg.log_path()).unwrap().len();

            set_disk_full(dir.path(), Some(40));
            let b = batch_at(2, 3, 2_000);
            let batches: Vec<_> = BatchIter::new(&b).collect();
            let err = seg.append(&b, &batches, 0, &cfg).unwrap_err();
            assert!(write_refused(&err), "{err}");
            assert_eq!((seg.size(), seg.next_offset()), (size, 2));
            assert_eq!(std::fs::metadata(seg.log_path()).unwrap().len(), file_len);
            let tail = std::fs::read(seg.log_path()).unwrap();
            assert!(tail[size as usize..].iter().all(|&b| b == 0));

            set_disk_full(dir.path(), None);
            append(&mut seg, &b, &cfg);
            assert_eq!(seg.next_offset(), 5);
            let (pos, h) = seg.find_batch(3).unwrap().unwrap();
            assert_eq!((pos, h.base_offset), (size, 2));
        }
    }

    #[test]
    fn append_index_and_find() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            index_interval_bytes: 300,
            preallocate: true,
            ..LogConfig::default()
        };
        let mut seg = Segment::create(dir.path(), 0).unwrap();
        let mut offset = 0;
        for i in 0..50 {
            let b = batch_at(offset, 2, 1_000 + i * 10);
            append(&mut seg, &b, &cfg);
            offset += 2;
        }
        assert_eq!(seg.next_offset(), 100);
        assert!(seg.index().len() > 10);
        let file_len = std::fs::metadata(seg.log_path()).unwrap().len();
        assert_eq!(file_len, PREALLOCATE_CHUNK);
        let (pos, h) = seg.find_batch(37).unwrap().unwrap();
        assert_eq!(h.base_offset, 36);
        let bytes = seg.read(pos, h.total_size()).unwrap();
        assert_eq!(BatchIter::new(&bytes).count(), 1);
        assert!(seg.find_batch(100).unwrap().is_none());
        let (_, h) = seg.find_timestamp(1_251).unwrap().unwrap();
        assert_eq!(h.base_offset, 50);
        seg.finish().unwrap();
        assert_eq!(std::fs::metadata(seg.log_path()).unwrap().len(), seg.size());
        assert_eq!(seg.time_index().last().unwrap().timestamp, 1_491);
    }
}
