//! `PartitionLog`: one partition's log as a synchronous, single-owner object — validate and
//! append record batches, read whole batches by offset, roll segments, apply retention, close.
//! Split by job: this file holds the state, open, roll, sync and close; [`append`] the write
//! path, [`read`] the fetch path, [`trim`] the deletion of whole segments.
//!
//! Appends are atomic per call: every batch in the buffer is validated (framing, CRC, size limit,
//! record count) before any byte is written, then offsets are assigned densely by patching each
//! base offset, and the whole buffer goes to the active segment in one positional write. A failed
//! write or fsync fail-stops the log (every later call gets [`LogError::FailStopped`]): after such
//! an error the kernel may have dropped dirty pages, so what is on disk is unknown until recovery
//! rereads it (PostgreSQL's "fsyncgate" lesson). The one exception is a write the disk refused
//! for lack of space, which the segment undoes (see `segment.rs`): it fails only the requests it
//! carried (and the rest of their group, whose offsets followed them), the producers' sequence
//! state is rebuilt from the log so their retries are not mistaken for duplicates, and the log
//! stays open.
//!
//! Reads follow Kafka fetch semantics (KIP-74): whole batches, starting with the batch that holds
//! the requested offset, never reaching the caller's upper bound (the high watermark), at most
//! `max_bytes` except that the first batch is always returned whole, continuing into later
//! segments while the byte budget lasts. Concurrency is the caller's business: the async face in
//! `writer.rs` keeps this behind a `RwLock` and reads only need `&self`.
//!
//! Segment and index files hold descriptors only while in use, under one process-wide budget
//! (`open_files.rs`): a read of an idle segment reopens its file transparently.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::batch::BatchIter;
use super::config::LogConfig;
use super::open_files::LazyFile;
use super::producer_state::ProducerStates;
use super::recovery::{self, RecoveryReport, CLEAN_SHUTDOWN_FILE};
use super::segment::{self, Segment};
use super::txn_index::{AbortedTxn, TxnIndex};
use super::{LogError, Result};
use crate::clock::Clock;

mod append;
pub(crate) mod compact;
mod read;
mod trim;
pub use trim::RetiredFiles;

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset of the first record appended.
    pub base_offset: i64,
    /// Offset of the last record appended.
    pub last_offset: i64,
    /// The timestamp stamped into the batches for `LogAppendTime` topics, else -1.
    pub log_append_time_ms: i64,
    /// Records appended (sum of lastOffsetDelta + 1).
    pub record_count: u64,
    /// Bytes appended.
    pub bytes: usize,
}

/// Whole batches read from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSlice {
    /// Concatenated batches, exactly as stored.
    pub bytes: Bytes,
    /// Base offset of the first batch (may be below the requested offset: a batch is returned
    /// whole), or the requested offset if empty.
    pub first_offset: i64,
    /// Offset after the last batch returned: where the next read should start.
    pub next_offset: i64,
}

/// A run of whole stored batches, described rather than read: the segment file (held open, so
/// the bytes stay readable even if retention or compaction unlinks the segment meanwhile),
/// where the run starts and how long it is. A zero-copy fetch hands these to `sendfile(2)`.
#[derive(Debug, Clone)]
pub struct FileSpan {
    pub file: Arc<File>,
    pub pos: u64,
    pub len: usize,
}

/// Whole batches located in the log (see [`PartitionLog::read_spans`]): what [`LogSlice`]
/// holds, before anything is copied.
#[derive(Debug, Clone)]
pub struct LogSpans {
    /// One span per segment the read crossed, in log order.
    pub spans: Vec<FileSpan>,
    /// As in [`LogSlice::first_offset`].
    pub first_offset: i64,
    /// As in [`LogSlice::next_offset`].
    pub next_offset: i64,
}

impl LogSpans {
    /// Total bytes.
    pub fn len(&self) -> usize {
        self.spans.iter().map(|s| s.len).sum()
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.spans.iter().all(|s| s.len == 0)
    }

    /// Reads the spans into one buffer: one `pread` per span straight into memory that is
    /// never zero-filled first, the only copy the copying path makes before encoding.
    pub fn read_bytes(&self) -> Result<Bytes> {
        match self.spans.as_slice() {
            [] => Ok(Bytes::new()),
            spans => {
                let mut buf = Vec::with_capacity(self.len());
                for span in spans {
                    pread_append(span, &mut buf)?;
                }
                Ok(Bytes::from(buf))
            }
        }
    }

    /// The same read as a [`LogSlice`].
    pub fn into_slice(self) -> Result<LogSlice> {
        Ok(LogSlice {
            bytes: self.read_bytes()?,
            first_offset: self.first_offset,
            next_offset: self.next_offset,
        })
    }
}

/// Appends `span`'s bytes to `buf` by `pread` into its spare capacity (no zero fill). A file
/// shorter than the span (truncated under us) is an error, never a short buffer.
fn pread_append(span: &FileSpan, buf: &mut Vec<u8>) -> Result<()> {
    use std::os::fd::AsRawFd;
    buf.reserve(span.len);
    let mut done = 0usize;
    while done < span.len {
        let spare = buf.spare_capacity_mut();
        let want = (span.len - done).min(spare.len());
        // SAFETY: `spare` is `want` or more bytes of writable capacity owned by `buf`; pread
        // writes at most `want` bytes there, and only the bytes it reports written are made
        // part of the vector below.
        let n = unsafe {
            libc::pread(
                span.file.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                want,
                (span.pos + done as u64) as libc::off_t,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(LogError::io("read segment", e));
        }
        if n == 0 {
            return Err(LogError::io(
                "read segment",
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "segment file is shorter than its batches",
                ),
            ));
        }
        // SAFETY: pread initialised exactly `n` (<= spare capacity) bytes after the length.
        unsafe { buf.set_len(buf.len() + n as usize) };
        done += n as usize;
    }
    Ok(())
}

/// What retention did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionReport {
    /// Segments deleted.
    pub deleted_segments: usize,
    /// Bytes freed.
    pub deleted_bytes: u64,
    /// Log start offset afterwards.
    pub log_start_offset: i64,
    /// Whether the active segment was rolled because it had entirely expired.
    pub rolled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Open,
    Failed(String),
    Closed,
}

/// One partition's segmented log.
#[derive(Debug)]
pub struct PartitionLog {
    dir: PathBuf,
    config: LogConfig,
    clock: Clock,
    /// Oldest first; never empty; the last one is the active segment.
    segments: Vec<Segment>,
    state: State,
    /// Idempotent producers' recent sequence ranges (see `producer_state`).
    producers: ProducerStates,
    /// Open and aborted transactions (see `txn_index`), rebuilt with `producers`.
    txns: TxnIndex,
    /// A refused write recorded sequences that did not land and the state could not be
    /// rebuilt from the log at once: it is, before the next append.
    producers_stale: bool,
}

impl PartitionLog {
    /// Opens (creating the directory if absent) and recovers the log in `dir`.
    pub fn open(
        dir: &Path,
        config: LogConfig,
        clock: Clock,
    ) -> Result<(PartitionLog, RecoveryReport)> {
        config.validate()?;
        let (segments, report) = recovery::recover(dir, &config, &clock)?;
        let mut log = PartitionLog {
            dir: dir.to_path_buf(),
            config,
            clock,
            segments,
            state: State::Open,
            producers: ProducerStates::default(),
            txns: TxnIndex::default(),
            producers_stale: false,
        };
        log.rebuild_producer_states()?;
        Ok((log, report))
    }

    /// Loads the producer-state snapshot and replays the batch headers written after it (all
    /// of the log when there is no usable snapshot).
    /// The idempotent producers this partition remembers (see `producer_state`).
    pub fn producer_summaries(&self) -> Vec<super::producer_state::ProducerSummary> {
        self.producers.summaries()
    }

    pub(super) fn rebuild_producer_states(&mut self) -> Result<()> {
        let start = self.log_start_offset();
        let end = self.log_end_offset();
        let (mut states, mut txns, mut from) = match ProducerStates::load(&self.dir) {
            Some((states, txns, offset)) if offset >= start && offset <= end => {
                (states, txns, offset)
            }
            _ => (ProducerStates::default(), TxnIndex::default(), start),
        };
        while from < end {
            let slice = self.read(from, 8 * 1024 * 1024, end)?;
            if slice.bytes.is_empty() {
                break;
            }
            for (h, range) in BatchIter::new(&slice.bytes) {
                if h.base_offset >= from {
                    states.record(&h);
                    txns.record(&h, &slice.bytes[range]);
                }
            }
            if slice.next_offset <= from {
                break;
            }
            from = slice.next_offset;
        }
        states.expire_below(start);
        txns.expire_below(start);
        self.producers = states;
        self.txns = txns;
        Ok(())
    }

    /// Offset of the first record of the oldest transaction still open in this partition.
    pub fn first_unstable_offset(&self) -> Option<i64> {
        self.txns.first_unstable_offset()
    }

    /// Aborted transactions with records in `[from, to)`.
    pub fn aborted_between(&self, from: i64, to: i64) -> Vec<AbortedTxn> {
        self.txns.aborted_between(from, to)
    }

    /// Offset of the first record of `producer_id`'s transaction open in this partition.
    pub fn open_transaction_start(&self, producer_id: i64) -> Option<i64> {
        self.txns.open_since(producer_id)
    }

    /// Whether `producer_id` has a transaction open in this partition.
    pub fn has_open_transaction(&self, producer_id: i64) -> bool {
        self.txns.is_open(producer_id)
    }

    /// Writes the producer-state snapshot for the current log end; a failure only costs a
    /// longer scan at the next start, so it is logged, not fatal.
    fn snapshot_producer_states(&self) {
        if let Err(e) = self
            .producers
            .save(&self.dir, self.log_end_offset(), &self.txns)
        {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write producer state snapshot");
        }
    }

    fn active(&self) -> &Segment {
        // `segments` is never empty: recovery creates one and retention keeps the active one.
        &self.segments[self.segments.len() - 1]
    }

    fn active_mut(&mut self) -> &mut Segment {
        let last = self.segments.len() - 1;
        &mut self.segments[last]
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        match &self.state {
            State::Open => Ok(()),
            State::Failed(reason) => Err(LogError::FailStopped(reason.clone())),
            State::Closed => Err(LogError::Closed),
        }
    }

    /// Puts the log into the fail-stopped state (after a failed write or fsync) and returns the
    /// error to hand to the caller.
    pub(crate) fn fail(&mut self, cause: LogError) -> LogError {
        let reason = cause.to_string();
        if self.state == State::Open {
            tracing::error!(dir = %self.dir.display(), error = %reason, "partition log fail-stopped");
            self.state = State::Failed(reason.clone());
        }
        match &self.state {
            State::Failed(r) => LogError::FailStopped(r.clone()),
            _ => LogError::FailStopped(reason),
        }
    }

    /// Whether a write or fsync error has fail-stopped the log.
    pub fn is_failed(&self) -> bool {
        matches!(self.state, State::Failed(_))
    }

    /// Why the log fail-stopped, if it did.
    pub fn failure(&self) -> Option<&str> {
        match &self.state {
            State::Failed(reason) => Some(reason),
            _ => None,
        }
    }
    /// Seals the active segment (final time index entry, trim, fsync) and starts a new one at
    /// the log end offset.
    ///
    /// A roll that fails because a file cannot be opened just now (`EMFILE`) returns an error
    /// [`segment::write_refused`] recognises and leaves the old segment active, so the append
    /// that wanted the roll is refused and a later one retries it. That holds while sealing
    /// the old segment (sealing twice is harmless) and while creating the new one made nothing
    /// yet; a failure after that fail-stops as any other.
    pub fn roll(&mut self) -> Result<()> {
        self.check_open()?;
        let next = self.log_end_offset();
        self.active_mut().finish()?;
        let segment = match Segment::create(&self.dir, next) {
            Ok(segment) => segment,
            // Nothing of the new segment exists (its `.log` is made first), so the old one may
            // go on taking appends. Once files exist the log must stop at `next`: an unlink now
            // might not be durable, and recovery would find a segment inside the old one.
            Err(e) if !segment::log_path(&self.dir, next).exists() => {
                return Err(segment::not_started(e))
            }
            Err(e) => return Err(e),
        };
        // The new file's directory entry must be durable before data in it is acknowledged.
        recovery::sync_dir(&self.dir)?;
        tracing::debug!(dir = %self.dir.display(), base_offset = next, "rolled segment");
        self.segments.push(segment);
        // Bounds the replay after a crash to the active segment.
        self.snapshot_producer_states();
        Ok(())
    }

    /// fdatasyncs the active segment (earlier segments were synced when they rolled).
    pub fn sync(&mut self) -> Result<()> {
        self.check_open()?;
        if let Err(e) = self.active().sync() {
            return Err(self.fail(e));
        }
        Ok(())
    }

    /// The active segment's file, so a caller can fdatasync it without holding a lock on the
    /// log. If the segment rolls meanwhile that is still correct: rolling syncs it anyway.
    pub fn sync_handle(&self) -> LazyFile {
        self.active().sync_handle()
    }

    /// First offset still in the log.
    pub fn log_start_offset(&self) -> i64 {
        self.segments[0].base_offset()
    }

    /// Offset the next appended record will get.
    pub fn log_end_offset(&self) -> i64 {
        self.active().next_offset()
    }

    /// Bytes of batches in all segments.
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(Segment::size).sum()
    }

    /// Number of segments (at least 1).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The segments, oldest first.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The partition directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log's clock, now.
    pub(crate) fn clock_now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Current configuration.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Replaces the configuration; takes effect from the next append or retention run.
    pub fn update_config(&mut self, config: LogConfig) -> Result<()> {
        config.validate()?;
        self.config = config;
        Ok(())
    }

    /// Seals the active segment, fsyncs everything and leaves the clean-shutdown marker so the
    /// next open can skip the full scan. Later calls return `Closed`.
    pub fn close(mut self) -> Result<()> {
        self.close_in_place()
    }

    pub(crate) fn close_in_place(&mut self) -> Result<()> {
        match &self.state {
            State::Closed => return Ok(()),
            State::Failed(reason) => return Err(LogError::FailStopped(reason.clone())),
            State::Open => {}
        }
        match self.active_mut().finish() {
            Ok(()) => {}
            // The trim or an index write could not even start (no descriptor to be had just
            // now, typically): nothing is lost as long as the batches themselves are synced,
            // since the next open rebuilds the active segment's indexes and cuts preallocated
            // zeros when the clean-shutdown marker is missing. A log being closed must not
            // fail-stop for a shortage that passes.
            Err(e) if segment::is_not_started(&e) => {
                if let Err(e) = self.active().sync() {
                    return Err(self.fail(e));
                }
                self.close_unclean(&e);
                return Ok(());
            }
            Err(e) => return Err(self.fail(e)),
        }
        self.snapshot_producer_states();
        // Everything is synced by now: the marker only spares the next open a scan, so failing
        // to leave it (`EMFILE` again, say) costs that scan, not data.
        let marker = self.dir.join(CLEAN_SHUTDOWN_FILE);
        let marked = std::fs::write(&marker, b"")
            .map_err(|e| LogError::io(format!("write {}", marker.display()), e))
            .and_then(|()| recovery::sync_dir(&self.dir));
        if let Err(e) = marked {
            // A marker that did reach the disk would vouch for what `finish` made durable,
            // so it may stay; one half-made is what a crash leaves too.
            self.close_unclean(&e);
            return Ok(());
        }
        self.state = State::Closed;
        Ok(())
    }

    /// Ends a close whose data is durable but which could not leave the log ready for a fast
    /// start: the next open recovers the active segment as after a crash.
    fn close_unclean(&mut self, cause: &LogError) {
        tracing::warn!(
            dir = %self.dir.display(),
            error = %cause,
            "partition log closed without its clean-shutdown marker; the next open recovers it"
        );
        self.state = State::Closed;
    }

    /// Removes the partition directory and everything in it.
    pub fn delete(self) -> Result<()> {
        let dir = self.dir.clone();
        drop(self);
        std::fs::remove_dir_all(&dir)
            .map_err(|e| LogError::io(format!("remove {}", dir.display()), e))
    }
}
