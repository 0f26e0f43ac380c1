//! The budget of open segment and index files: descriptors follow the *active* partitions, not
//! the number of partitions.
//!
//! Every `.log`, `.index` and `.timeindex` file is a [`LazyFile`]: a path plus, while it is in
//! use, an open descriptor. The descriptors of all lazy files are counted by one [`FileCache`]
//! (one per process, [`FileCache::global`]); when opening one more would pass the budget
//! (`log.max_open_files`), the least recently used *idle* files are closed, down to 7/8 of the
//! budget so that evictions come in batches rather than one per open. A closed file is reopened
//! transparently by the next read or write.
//!
//! Pinning is reference counting: [`LazyFile::pin`] hands out an `Arc<File>`, and a file whose
//! `Arc` is held by anyone but the cache (an append, a read, the group-commit writer's fdatasync
//! outside the partition lock) is never closed, so the active segment of a hot partition is
//! opened once and never reopened per append. The budget is therefore soft: if every file is
//! pinned, the count may pass it until some are released. The hot path costs one uncontended
//! mutex, an `Arc` clone and a relaxed counter bump.
//!
//! Durability: a file written since its last fdatasync is synced before it is closed, so a
//! writeback error cannot be lost with the descriptor (the fsyncgate lesson). If that sync
//! fails the file is poisoned: every later use returns the error, and the partition fail-stops
//! at its next append, exactly as if its own fsync had failed. A file that cannot be reopened
//! (deleted underneath, `EMFILE`) is an I/O error with its cause, logged, never a panic.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, OnceLock, Weak};

use parking_lot::Mutex;

use super::{LogError, Result};

/// The smallest budget: below it the files of a single partition rolling a segment (old and
/// new `.log` and indexes) would thrash.
pub const MIN_OPEN_FILES: usize = 16;

/// The budget used when none is configured: half the soft open-files limit, leaving the other
/// half for sockets, the metadata store and everything else the process opens.
pub fn default_max_open_files() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed by pointer.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        1024
    };
    let soft = usize::try_from(soft).unwrap_or(usize::MAX);
    (soft / 2).clamp(MIN_OPEN_FILES, 1 << 20)
}

/// Counts the open descriptors of lazy files and closes the least recently used idle ones when
/// there are more than the budget.
#[derive(Debug)]
pub struct FileCache {
    budget: AtomicUsize,
    open: AtomicUsize,
    /// Source of "last used" stamps: a larger stamp is more recent.
    tick: AtomicU64,
    next_id: AtomicU64,
    /// The lazy files that currently hold a descriptor.
    registry: Mutex<HashMap<u64, Weak<Slot>>>,
    evictions: AtomicU64,
}

static GLOBAL: LazyLock<Arc<FileCache>> =
    LazyLock::new(|| FileCache::new(default_max_open_files()));

impl FileCache {
    /// A cache allowing `budget` open files (at least [`MIN_OPEN_FILES`]).
    pub fn new(budget: usize) -> Arc<FileCache> {
        Arc::new(FileCache {
            budget: AtomicUsize::new(budget.max(MIN_OPEN_FILES)),
            open: AtomicUsize::new(0),
            tick: AtomicU64::new(1),
            next_id: AtomicU64::new(1),
            registry: Mutex::new(HashMap::new()),
            evictions: AtomicU64::new(0),
        })
    }

    /// The process-wide cache every partition log uses (descriptors are a process resource).
    pub fn global() -> &'static Arc<FileCache> {
        &GLOBAL
    }

    /// Changes the budget (at least [`MIN_OPEN_FILES`]), closing idle files if now over it.
    pub fn set_budget(&self, budget: usize) {
        self.budget
            .store(budget.max(MIN_OPEN_FILES), Ordering::Relaxed);
        self.evict_if_over();
    }

    /// Most files kept open while idle.
    pub fn budget(&self) -> usize {
        self.budget.load(Ordering::Relaxed)
    }

    /// Descriptors currently held by lazy files of this cache.
    pub fn open_files(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Files closed to stay within the budget since the cache was made.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    fn stamp(&self) -> u64 {
        self.tick.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts a descriptor `slot` just took, then makes room if the budget is passed.
    fn opened(&self, slot: &Arc<Slot>) {
        self.registry.lock().insert(slot.id, Arc::downgrade(slot));
        self.open.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("ferry_log_open_files").increment(1.0);
        self.evict_if_over();
    }

    fn closed(&self, id: u64) {
        self.registry.lock().remove(&id);
        self.open.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("ferry_log_open_files").decrement(1.0);
    }

    /// Closes idle files, least recently used first, until at most 7/8 of the budget are open.
    fn evict_if_over(&self) {
        let budget = self.budget();
        if self.open_files() <= budget {
            return;
        }
        let target = budget - budget / 8;
        let mut candidates: Vec<(u64, Arc<Slot>)> = self
            .registry
            .lock()
            .values()
            .filter_map(Weak::upgrade)
            .map(|slot| (slot.last_used.load(Ordering::Relaxed), slot))
            .collect();
        candidates.sort_unstable_by_key(|(stamp, _)| *stamp);
        for (_, slot) in candidates {
            if self.open_files() <= target {
                break;
            }
            if slot.close_if_idle() {
                self.evictions.fetch_add(1, Ordering::Relaxed);
                self.closed(slot.id);
            }
        }
    }
}

/// The shared state of one lazy file.
#[derive(Debug)]
struct Slot {
    id: u64,
    path: PathBuf,
    cache: Arc<FileCache>,
    file: Mutex<Option<Arc<File>>>,
    last_used: AtomicU64,
    /// Writes started and the count of them covered by the last successful fdatasync: the
    /// file is dirty while they differ.
    writes: AtomicU64,
    synced_writes: AtomicU64,
    /// Set when the sync before an eviction failed: that error belongs to the owner.
    poisoned: OnceLock<String>,
}

impl Slot {
    fn is_dirty(&self) -> bool {
        self.writes.load(Ordering::Acquire) != self.synced_writes.load(Ordering::Acquire)
    }

    /// Closes the descriptor if nobody but the cache holds it, syncing unsynced writes first.
    /// Returns whether it closed one.
    fn close_if_idle(&self) -> bool {
        let mut guard = self.file.lock();
        let Some(file) = guard.as_ref() else {
            return false;
        };
        if Arc::strong_count(file) > 1 {
            return false;
        }
        if self.is_dirty() {
            let writes = self.writes.load(Ordering::Acquire);
            if let Err(e) = file.sync_data() {
                let reason = format!("fsync {} before closing it: {e}", self.path.display());
                tracing::error!(error = %reason, "storage error");
                let _ = self.poisoned.set(reason);
            } else {
                self.synced_writes.fetch_max(writes, Ordering::AcqRel);
            }
        }
        *guard = None;
        true
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.file.get_mut().take().is_some() {
            self.cache.closed(self.id);
        }
    }
}

/// A segment or index file that holds a descriptor only while the [`FileCache`] lets it.
/// Clones share the file (the group-commit writer's sync handle is one).
#[derive(Debug, Clone)]
pub struct LazyFile {
    slot: Arc<Slot>,
}

impl LazyFile {
    fn with(cache: &Arc<FileCache>, path: &Path, file: Option<File>) -> LazyFile {
        let stamp = cache.stamp();
        let slot = Arc::new(Slot {
            id: cache.next_id.fetch_add(1, Ordering::Relaxed),
            path: path.to_path_buf(),
            cache: Arc::clone(cache),
            file: Mutex::new(None),
            last_used: AtomicU64::new(stamp),
            writes: AtomicU64::new(0),
            synced_writes: AtomicU64::new(0),
            poisoned: OnceLock::new(),
        });
        if let Some(file) = file {
            *slot.file.lock() = Some(Arc::new(file));
            cache.opened(&slot);
        }
        LazyFile { slot }
    }

    /// Takes over a descriptor already opened (read and write) on `path`.
    pub fn adopt(cache: &Arc<FileCache>, path: &Path, file: File) -> LazyFile {
        LazyFile::with(cache, path, Some(file))
    }

    /// A lazy file for `path` that opens it (read and write, never creating it) at first use.
    pub fn closed(cache: &Arc<FileCache>, path: &Path) -> LazyFile {
        LazyFile::with(cache, path, None)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.slot.path
    }

    /// Whether a descriptor is open now.
    pub fn is_open(&self) -> bool {
        self.slot.file.lock().is_some()
    }

    /// The open file, reopening it if it was closed; it stays open at least as long as the
    /// returned `Arc` lives.
    pub fn pin(&self) -> Result<Arc<File>> {
        let slot = &self.slot;
        if let Some(reason) = slot.poisoned.get() {
            return Err(LogError::io(
                reason.clone(),
                std::io::Error::other("an earlier fsync failed"),
            ));
        }
        slot.last_used.store(slot.cache.stamp(), Ordering::Relaxed);
        let open = slot.file.lock().as_ref().map(Arc::clone);
        if let Some(file) = open {
            // Files pinned while the cache filled up are released by now, maybe: catch up
            // (one relaxed load when within budget).
            slot.cache.evict_if_over();
            return Ok(file);
        }
        // Opened without holding the slot's lock: another thread may race us, and the loser's
        // descriptor is simply dropped.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&slot.path)
            .map_err(|e| {
                let err = LogError::io(format!("reopen {}", slot.path.display()), e);
                tracing::error!(error = %err, "storage error");
                err
            })?;
        let file = {
            let mut guard = slot.file.lock();
            if let Some(existing) = guard.as_ref() {
                return Ok(Arc::clone(existing));
            }
            let file = Arc::new(file);
            *guard = Some(Arc::clone(&file));
            file
        };
        slot.cache.opened(slot);
        Ok(file)
    }

    fn context(&self, what: &str) -> String {
        format!("{what} {}", self.slot.path.display())
    }

    /// Runs a write on the pinned file, counting it as unsynced until the next [`sync_data`].
    ///
    /// [`sync_data`]: Self::sync_data
    fn write_with<T>(&self, f: impl FnOnce(&File) -> std::io::Result<T>) -> Result<T, WriteError> {
        let file = self.pin().map_err(WriteError::Open)?;
        self.slot.writes.fetch_add(1, Ordering::AcqRel);
        f(&file).map_err(WriteError::Io)
    }

    /// `pwrite` of all of `buf` at `pos`. The error keeps the OS error as is (so the caller
    /// can tell a full disk) and only an open failure comes wrapped.
    pub fn write_all_at(&self, buf: &[u8], pos: u64) -> Result<(), WriteError> {
        self.write_with(|f| f.write_all_at(buf, pos))
    }

    /// `ftruncate` to `len`.
    pub fn set_len(&self, len: u64) -> Result<(), WriteError> {
        self.write_with(|f| f.set_len(len))
    }

    /// `pread` of exactly `buf.len()` bytes at `pos`.
    pub fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> Result<()> {
        let file = self.pin()?;
        file.read_exact_at(buf, pos)
            .map_err(|e| LogError::io(self.context("read"), e))
    }

    /// `fdatasync`. A file with no descriptor open has nothing unsynced (it was synced when it
    /// was closed), so this does not reopen it.
    pub fn sync_data(&self) -> Result<()> {
        let slot = &self.slot;
        if let Some(reason) = slot.poisoned.get() {
            return Err(LogError::io(
                reason.clone(),
                std::io::Error::other("an earlier fsync failed"),
            ));
        }
        let Some(file) = slot.file.lock().as_ref().map(Arc::clone) else {
            return Ok(());
        };
        let writes = slot.writes.load(Ordering::Acquire);
        file.sync_data()
            .map_err(|e| LogError::io(self.context("fsync"), e))?;
        slot.synced_writes.fetch_max(writes, Ordering::AcqRel);
        Ok(())
    }

    /// Metadata of the file, by path (no descriptor needed).
    pub fn metadata(&self) -> std::io::Result<std::fs::Metadata> {
        std::fs::metadata(&self.slot.path)
    }
}

/// Why a write through a [`LazyFile`] failed.
#[derive(Debug)]
pub enum WriteError {
    /// The file could not be (re)opened, or was poisoned; nothing was written.
    Open(LogError),
    /// The write itself failed.
    Io(std::io::Error),
}

impl WriteError {
    /// As a log error, with `context` for the write case.
    pub fn into_log_error(self, context: impl Into<String>) -> LogError {
        match self {
            WriteError::Open(e) => e,
            WriteError::Io(e) => LogError::io(context, e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(cache: &Arc<FileCache>, dir: &Path, n: usize) -> Vec<LazyFile> {
        (0..n)
            .map(|i| {
                let path = dir.join(format!("f{i}"));
                std::fs::write(&path, format!("file {i}")).unwrap();
                LazyFile::closed(cache, &path)
            })
            .collect()
    }

    fn open_set(files: &[LazyFile]) -> Vec<usize> {
        (0..files.len()).filter(|&i| files[i].is_open()).collect()
    }

    #[test]
    fn least_recently_used_idle_files_are_closed_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::new(MIN_OPEN_FILES);
        let files = files(&cache, dir.path(), MIN_OPEN_FILES + 1);
        for f in &files[..MIN_OPEN_FILES] {
            drop(f.pin().unwrap());
        }
        assert_eq!(cache.open_files(), MIN_OPEN_FILES);
        // Touch 0 and 1 again: 2 and 3 are now the least recently used.
        drop(files[0].pin().unwrap());
        drop(files[1].pin().unwrap());
        drop(files[MIN_OPEN_FILES].pin().unwrap());
        // Over budget by one: down to 7/8 of it, oldest first (2, 3 and 4).
        assert_eq!(cache.open_files(), MIN_OPEN_FILES - MIN_OPEN_FILES / 8);
        let open = open_set(&files);
        assert!(
            !open.contains(&2) && !open.contains(&3) && !open.contains(&4),
            "{open:?}"
        );
        assert!(open.contains(&0) && open.contains(&1), "{open:?}");
        assert!(open.contains(&MIN_OPEN_FILES), "{open:?}");
        assert_eq!(cache.evictions(), 3);
    }

    #[test]
    fn pinned_files_are_never_closed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::new(MIN_OPEN_FILES);
        let files = files(&cache, dir.path(), 3 * MIN_OPEN_FILES);
        // The oldest file stays pinned (as the active segment during an append would be).
        let pinned = files[0].pin().unwrap();
        for f in &files[1..] {
            drop(f.pin().unwrap());
        }
        assert!(files[0].is_open());
        assert!(cache.open_files() <= MIN_OPEN_FILES);
        // Every file pinned: the budget gives way rather than close one in use.
        let all: Vec<_> = files.iter().map(|f| f.pin().unwrap()).collect();
        assert_eq!(cache.open_files(), files.len());
        assert!(files.iter().all(LazyFile::is_open));
        drop(all);
        drop(pinned);
        drop(files[0].pin().unwrap());
        assert!(cache.open_files() <= MIN_OPEN_FILES);
        drop(files);
        assert_eq!(cache.open_files(), 0);
    }

    #[test]
    fn an_evicted_file_reopens_with_the_same_bytes_and_keeps_its_writes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::new(MIN_OPEN_FILES);
        let files = files(&cache, dir.path(), 2 * MIN_OPEN_FILES);
        files[0].write_all_at(b"FILE", 0).unwrap();
        for f in &files[1..] {
            drop(f.pin().unwrap());
        }
        assert!(!files[0].is_open(), "the first file was evicted");
        let mut buf = [0u8; 6];
        files[0].read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"FILE 0");
        assert!(files[0].is_open());
    }

    #[test]
    fn a_file_that_cannot_be_reopened_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::new(MIN_OPEN_FILES);
        let files = files(&cache, dir.path(), 1);
        std::fs::remove_file(files[0].path()).unwrap();
        let err = files[0].read_exact_at(&mut [0u8; 1], 0).unwrap_err();
        assert!(
            matches!(&err, LogError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
            "{err}"
        );
        assert_eq!(cache.open_files(), 0);
    }
}
