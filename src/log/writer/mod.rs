//! `PartitionHandle`: the async face of a partition log, with one writer task per partition doing
//! group commit, and the high watermark that bounds what readers may see.
//!
//! The writer task exists only while the partition is written: the first append starts it and it
//! retires after [`WRITER_IDLE_RETIRE`] without work (and without an interval fsync due), so an
//! idle partition holds no task and no queue. A retiring writer closes its queue under the same
//! lock a sender takes to find it, finishes what was already queued, and the next writer waits
//! for that before it starts: appends submitted in order are still written in order. A layer
//! above that needs to act on new records (the topic router) registers a high-watermark hook
//! rather than parking a task per partition on the watch channel.
//!
//! Appends are queued to the writer task. Each round it drains everything queued (up to
//! [`GROUP_MAX_BYTES`] / [`GROUP_MAX_REQUESTS`]), appends the group under the write lock with
//! [`PartitionLog::append_many`] (each request validated on its own and given its own result, so
//! one bad batch fails only its own request; the good ones go to disk in one write), releases the
//! lock, and only then fdatasyncs once for the whole group — through the segment's `Arc<File>`,
//! so readers are never blocked behind the disk. Under `fsync.policy=always` nobody is answered
//! before that sync; under `interval` a timer syncs dirty data; under `never` only roll and close
//! sync. Then the high watermark advances to the log end and every waiter is completed at once.
//!
//! The blocking write+fsync runs in `tokio::task::spawn_blocking`, once per group. Measured in
//! `benches/log.rs` on the 2-core dev VM: a `spawn_blocking` round trip costs ~17 µs and a
//! `block_in_place` ~10 µs, against ~110-160 µs for the fdatasync itself. The ~7 µs saved per
//! group is not worth `block_in_place`'s costs: it panics on a current-thread runtime (the
//! default of `#[tokio::test]` and of small embedders) and takes a worker thread out of the
//! scheduler for the duration of every fsync.
//!
//! A failed write or fsync fail-stops the partition: the group's requests and every later append
//! get [`LogError::FailStopped`], [`PartitionHandle::is_failed`] turns true for health checks, and
//! an error is logged. Reads stay bounded by the last durable high watermark.
//!
//! A full disk is different: a write refused with `ENOSPC` is undone by the segment (see
//! `segment.rs`), fails only the appends it carried (Kafka `KAFKA_STORAGE_ERROR`, AMQP nack),
//! and the partition accepts appends again as soon as space returns.
//!
//! Power-loss tests need to know what an fsync made durable, which no file system reports.
//! With the hidden `sync_journal` option the writer keeps it in a [`SYNC_JOURNAL_FILE`] in the
//! partition directory: after every successful fsync it stores (one 8-byte `pwrite`, ~1 µs
//! against the ~100 µs fsync; nothing at all when the option is off) the log end offset
//! captured *before* that fsync began, so the file never claims more than is on disk. Rolling
//! also syncs but does not update it: the journal errs towards claiming less, which a test can
//! only count as a loss, never hide one with. It survives SIGKILL (it is in the page cache like
//! everything else), and a test cuts the log back to that offset to mimic the page cache lost.
//!
//! Metrics (through the `metrics` facade, labelled `topic` and `partition`; an empty partition
//! registers none until its first append, each labelled series costing the recorder memory):
//! `ferry_log_appended_bytes_total`, `ferry_log_appended_records_total`, `ferry_log_fsync_seconds`,
//! `ferry_log_refused_appends_total`, `ferry_log_segments`, `ferry_log_size_bytes`,
//! `ferry_log_start_offset`, `ferry_log_end_offset`, `ferry_log_recovery_repairs_total`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, oneshot, watch};

use super::config::{FsyncPolicy, LogConfig};
use super::open_files::LazyFile;
use super::partition_log::{AppendInfo, PartitionLog, RetentionReport};
use super::recovery::RecoveryReport;
use super::{LogError, Result};
use crate::clock::Clock;
use lazy::{wait_for, Writer, WriterSlot};

/// Most bytes of appends one group commit takes from the queue.
pub const GROUP_MAX_BYTES: usize = 16 << 20;
/// Most append requests one group commit takes from the queue.
pub const GROUP_MAX_REQUESTS: usize = 1024;
/// Append requests that may wait in the queue before `append` awaits room (back-pressure).
const QUEUE_DEPTH: usize = 4096;
/// How long a writer task waits for work before it retires. An idle partition then holds no
/// task and no queue (about 3 KB each with the channel's first block), which is most of what
/// 100,000 mostly idle partitions would otherwise cost; the next append starts a writer again
/// (one task spawn, ~2 µs, against the ~100 µs fsync of a group).
pub const WRITER_IDLE_RETIRE: std::time::Duration = std::time::Duration::from_secs(5);
/// With the `sync_journal` option: file in the partition directory holding, as 8 little-endian
/// bytes, the log end offset as of the last successful fsync (everything below it is durable).
pub const SYNC_JOURNAL_FILE: &str = "sync.journal";

mod lazy;
mod reads;
mod trim;

/// Which partition a handle serves; used as metric labels and in log lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLabels {
    /// Topic (or queue) name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
}

enum Command {
    Append {
        batches: BytesMut,
        reply: oneshot::Sender<Result<AppendInfo>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
    /// Answered once every append queued before it has completed (durable per policy and below
    /// the high watermark, or failed).
    Barrier {
        reply: oneshot::Sender<()>,
    },
}

struct Shared {
    log: RwLock<PartitionLog>,
    high_watermark: watch::Sender<i64>,
    failure: Mutex<Option<String>>,
    failed: AtomicBool,
    fsyncs: AtomicU64,
    /// Appends a full disk refused (see `segment::write_refused`).
    refused: AtomicU64,
    fail_next_fsync: AtomicBool,
    /// The `sync_journal` file, when that test option is on.
    journal: Option<File>,
    dir: PathBuf,
    labels: LogLabels,
    metric_labels: Vec<(&'static str, String)>,
    /// Repairs recovery made at open, counted when the partition's metrics are first
    /// published (see `publish_gauges`).
    repairs_at_open: u64,
    /// Whether this partition's metric series exist yet: an empty partition registers none
    /// until its first append, since every labelled series costs the recorder ~400 bytes.
    metrics_registered: AtomicBool,
    shutdown_done: tokio::sync::Mutex<bool>,
    /// Where writer tasks are spawned.
    runtime: tokio::runtime::Handle,
    /// Called with the new high watermark each time it advances (see
    /// [`PartitionHandle::on_high_watermark_advance`]).
    on_advance: std::sync::OnceLock<AdvanceHook>,
}

/// See [`PartitionHandle::on_high_watermark_advance`].
pub type AdvanceHook = Box<dyn Fn(i64) + Send + Sync>;

impl Shared {
    fn fsync(&self, file: &LazyFile) -> Result<()> {
        let start = Instant::now();
        let result = if self.fail_next_fsync.swap(false, Ordering::SeqCst) {
            Err(LogError::io(
                format!("fsync of {}/{}", self.labels.topic, self.labels.partition),
                std::io::Error::other("injected fsync failure"),
            ))
        } else {
            file.sync_data()
        };
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        metrics::histogram!("ferry_log_fsync_seconds", &self.metric_labels)
            .record(start.elapsed().as_secs_f64());
        result
    }

    /// Records in the sync journal (if any) that everything below `end` is durable. A failed
    /// journal write only weakens a test hook, so it is logged, not fatal.
    fn record_durable(&self, end: i64) {
        if let Some(journal) = &self.journal {
            if let Err(e) = journal.write_all_at(&end.to_le_bytes(), 0) {
                tracing::warn!(topic = %self.labels.topic, error = %e, "cannot update sync journal");
            }
        }
    }

    /// Fail-stops the partition after a write/fsync error; returns the error for callers.
    fn fail_stop(&self, cause: LogError) -> LogError {
        let err = self.log.write().fail(cause);
        self.mark_failed(&err);
        err
    }

    fn mark_failed(&self, err: &LogError) {
        if !self.failed.swap(true, Ordering::SeqCst) {
            tracing::error!(
                topic = %self.labels.topic,
                partition = self.labels.partition,
                error = %err,
                "partition fail-stopped: refusing all appends until reopened"
            );
            *self.failure.lock() = Some(err.to_string());
        }
    }

    fn failed_error(&self) -> LogError {
        LogError::FailStopped(
            self.failure
                .lock()
                .clone()
                .unwrap_or_else(|| "partition failed".to_string()),
        )
    }

    fn advance_high_watermark(&self, offset: i64) {
        let advanced = self.high_watermark.send_if_modified(|hw| {
            if offset > *hw {
                *hw = offset;
                true
            } else {
                false
            }
        });
        if advanced {
            if let Some(hook) = self.on_advance.get() {
                hook(offset);
            }
        }
    }

    fn publish_gauges(&self) {
        let log = self.log.read();
        let l = &self.metric_labels;
        if !self.metrics_registered.swap(true, Ordering::Relaxed) {
            metrics::counter!("ferry_log_recovery_repairs_total", l)
                .increment(self.repairs_at_open);
        }
        metrics::gauge!("ferry_log_segments", l).set(log.segment_count() as f64);
        metrics::gauge!("ferry_log_size_bytes", l).set(log.size_bytes() as f64);
        metrics::gauge!("ferry_log_start_offset", l).set(log.log_start_offset() as f64);
        metrics::gauge!("ferry_log_end_offset", l).set(log.log_end_offset() as f64);
    }
}

/// An append that is queued on the writer; [`wait`](PendingAppend::wait) for its outcome.
#[derive(Debug)]
pub struct PendingAppend(oneshot::Receiver<Result<AppendInfo>>);

/// What [`PartitionHandle::try_submit_append`] did.
pub enum TrySubmit {
    Queued(PendingAppend),
    /// The writer's queue was full: the batch, not queued.
    Busy(BytesMut),
}

impl PendingAppend {
    /// Resolves once the append is durable per the fsync policy (or has failed).
    pub async fn wait(self) -> Result<AppendInfo> {
        self.0.await.map_err(|_| LogError::Closed)?
    }
}

/// A cheap, cloneable, thread-safe handle to one partition log and its writer task.
#[derive(Clone)]
pub struct PartitionHandle {
    shared: Arc<Shared>,
    writer: Arc<Writer>,
}

impl std::fmt::Debug for PartitionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionHandle")
            .field("labels", &self.shared.labels)
            .field("high_watermark", &self.high_watermark())
            .field("failed", &self.is_failed())
            .finish()
    }
}

impl PartitionHandle {
    /// Opens and recovers the log in `dir` and spawns its writer task on the current tokio
    /// runtime. Everything recovered is fsynced, so the high watermark starts at the log end.
    pub fn open(
        dir: &Path,
        config: LogConfig,
        clock: Clock,
        labels: LogLabels,
    ) -> Result<(PartitionHandle, RecoveryReport)> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            LogError::io(
                "PartitionHandle::open needs a tokio runtime",
                std::io::Error::other(e),
            )
        })?;
        let (mut log, report) = PartitionLog::open(dir, config, clock)?;
        // Data a killed process left in the page cache is valid but maybe not yet on disk;
        // make it durable before exposing it to readers.
        log.sync()?;
        let end = log.log_end_offset();
        let journal = if log.config().sync_journal {
            let path = dir.join(SYNC_JOURNAL_FILE);
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| LogError::io(format!("open {}", path.display()), e))?;
            Some(file)
        } else {
            None
        };
        let (hw_tx, _) = watch::channel(end);
        let metric_labels = vec![
            ("topic", labels.topic.clone()),
            ("partition", labels.partition.to_string()),
        ];
        let shared = Arc::new(Shared {
            log: RwLock::new(log),
            high_watermark: hw_tx,
            failure: Mutex::new(None),
            failed: AtomicBool::new(false),
            fsyncs: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            fail_next_fsync: AtomicBool::new(false),
            journal,
            dir: dir.to_path_buf(),
            labels,
            metric_labels,
            repairs_at_open: report.repairs() as u64,
            metrics_registered: AtomicBool::new(false),
            shutdown_done: tokio::sync::Mutex::new(false),
            runtime,
            on_advance: std::sync::OnceLock::new(),
        });
        shared.record_durable(end);
        if end > 0 || report.repairs() > 0 {
            shared.publish_gauges();
        }
        let writer = Arc::new(Writer {
            shared: Arc::clone(&shared),
            slot: Mutex::new(WriterSlot::default()),
        });
        Ok((PartitionHandle { shared, writer }, report))
    }

    /// Appends one or more concatenated record batches. Resolves once the data is durable per
    /// the fsync policy and visible below the high watermark.
    pub async fn append(&self, batches: BytesMut) -> Result<AppendInfo> {
        self.submit_append(batches).await?.wait().await
    }

    /// Queues an append and returns as soon as it is queued, with a handle to await its result.
    /// Appends queued one after another (by one task) are written in that order, which is how a
    /// connection keeps its pipelined produce requests in order while waiting on them together.
    pub async fn submit_append(&self, batches: BytesMut) -> Result<PendingAppend> {
        if self.shared.failed.load(Ordering::SeqCst) {
            return Err(self.shared.failed_error());
        }
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(Command::Append { batches, reply }, false)
            .await
            .map_err(|_| LogError::Closed)?;
        Ok(PendingAppend(rx))
    }

    /// [`submit_append`](Self::submit_append) without waiting, for a caller that must queue
    /// while it holds a synchronous lock (the event store checks and queues under one, so its
    /// appends do not convoy on an async lock). [`TrySubmit::Busy`] gives the batch back when
    /// the writer's queue is full: nothing was queued.
    pub fn try_submit_append(&self, batches: BytesMut) -> Result<TrySubmit> {
        if self.shared.failed.load(Ordering::SeqCst) {
            return Err(self.shared.failed_error());
        }
        let (reply, rx) = oneshot::channel();
        match self.writer.try_send(Command::Append { batches, reply }) {
            None => Err(LogError::Closed),
            Some(Ok(())) => Ok(TrySubmit::Queued(PendingAppend(rx))),
            Some(Err(Command::Append { batches, .. })) => Ok(TrySubmit::Busy(batches)),
            Some(Err(_)) => Err(LogError::Closed),
        }
    }

    /// Resolves once every append submitted before this call has completed, so a reader that
    /// follows a writer in program order (AMQP basic.get after basic.publish on one channel)
    /// sees its writes. Resolves at once if the writer is gone.
    pub async fn barrier(&self) {
        let (running, draining) = {
            let slot = self.writer.slot.lock();
            let running = slot.tx.as_ref().filter(|tx| !tx.is_closed()).cloned();
            (running, slot.draining.clone())
        };
        // With no writer running, everything submitted is done, or is being finished by a
        // retiring writer.
        let Some(tx) = running else {
            return wait_for(draining).await;
        };
        let (reply, rx) = oneshot::channel();
        match tx.send(Command::Barrier { reply }).await {
            Ok(()) => {
                let _ = rx.await;
            }
            // It retired meanwhile, finishing its queue first.
            Err(_) => {
                let draining = self.writer.slot.lock().draining.clone();
                wait_for(draining).await;
            }
        }
    }

    /// Sets a function called with the new high watermark each time it advances, after
    /// watchers of [`subscribe_high_watermark`](Self::subscribe_high_watermark) can see it:
    /// how a layer above starts work for a partition only once it has records, instead of
    /// keeping a task per idle partition. It runs on the writer's task, so it must be quick
    /// and must not block. Only the first hook set is kept.
    pub fn on_high_watermark_advance(&self, hook: AdvanceHook) {
        let _ = self.shared.on_advance.set(hook);
    }

    /// Replaces the configuration (fsync policy changes apply from the next group).
    pub fn update_config(&self, config: LogConfig) -> Result<()> {
        self.shared.log.write().update_config(config)
    }

    /// Current configuration.
    pub fn config(&self) -> LogConfig {
        self.shared.log.read().config().clone()
    }

    /// Whether a write or fsync error has fail-stopped the partition.
    pub fn is_failed(&self) -> bool {
        self.shared.failed.load(Ordering::SeqCst)
    }

    /// The log behind this handle, for the cleaner's short critical sections.
    pub(crate) fn log_lock(&self) -> &RwLock<PartitionLog> {
        &self.shared.log
    }

    /// The `topic` and `partition` metric labels.
    pub(crate) fn metric_labels(&self) -> &[(&'static str, String)] {
        &self.shared.metric_labels
    }

    /// Republishes the size gauges (after the cleaner shrank the log).
    pub(crate) fn refresh_gauges(&self) {
        self.shared.publish_gauges();
    }

    /// Whether a writer task is running (one starts with an append and retires after
    /// [`WRITER_IDLE_RETIRE`] without work); for tests and diagnostics.
    pub fn writer_running(&self) -> bool {
        let slot = self.writer.slot.lock();
        slot.tx.as_ref().is_some_and(|tx| !tx.is_closed())
            || slot.draining.as_ref().is_some_and(|done| !*done.borrow())
    }

    /// fdatasyncs performed by the writer so far (for tests and diagnostics).
    pub fn fsync_count(&self) -> u64 {
        self.shared.fsyncs.load(Ordering::Relaxed)
    }

    /// Appends refused because the disk was full (each failed alone; the partition stayed up).
    pub fn refused_append_count(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }

    /// Makes the next fsync fail, to test fail-stop. Not for production use.
    #[doc(hidden)]
    pub fn inject_fsync_failure(&self) {
        self.shared.fail_next_fsync.store(true, Ordering::SeqCst);
    }

    /// Simulates a full disk under this partition (`Some(room)`: each write puts at most `room`
    /// bytes on disk, then fails with `ENOSPC`) or its end (`None`: space returns). Not for
    /// production use.
    #[doc(hidden)]
    pub fn inject_disk_full(&self, room: Option<usize>) {
        super::segment::set_disk_full(&self.shared.dir, room);
    }

    /// Completes every append queued before it, fsyncs, and closes the log (leaving the
    /// clean-shutdown marker). Later appends get [`LogError::Closed`]. Idempotent; errors are
    /// logged and reflected in [`is_failed`](Self::is_failed).
    pub async fn shutdown(&self) {
        let mut done = self.shared.shutdown_done.lock().await;
        if *done {
            return;
        }
        let (reply, rx) = oneshot::channel();
        if self
            .writer
            .send(Command::Shutdown { reply }, true)
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
        *done = true;
    }
}

async fn writer_task(
    shared: Arc<Shared>,
    writer: std::sync::Weak<Writer>,
    mut rx: mpsc::Receiver<Command>,
    predecessor: Option<watch::Receiver<bool>>,
) {
    wait_for(predecessor).await;
    // Deadline of the next interval fsync while unsynced data exists.
    let mut sync_deadline: Option<tokio::time::Instant> = None;
    // Set once retired: the queue is closed, what it still holds is finished, then this
    // turns true for the next writer.
    let mut retired: Option<watch::Sender<bool>> = None;
    loop {
        let first = match sync_deadline {
            Some(deadline) => tokio::select! {
                cmd = rx.recv() => cmd,
                _ = tokio::time::sleep_until(deadline) => {
                    sync_deadline = None;
                    interval_sync(&shared).await;
                    continue;
                }
            },
            None if retired.is_some() => rx.recv().await,
            None => tokio::select! {
                cmd = rx.recv() => cmd,
                _ = tokio::time::sleep(WRITER_IDLE_RETIRE) => {
                    if let Some(writer) = writer.upgrade() {
                        let (done_tx, done_rx) = watch::channel(false);
                        if writer.retire(&mut rx, done_rx) {
                            retired = Some(done_tx);
                        }
                    }
                    continue;
                }
            },
        };
        let Some(first) = first else {
            match retired {
                Some(done) => {
                    if sync_deadline.is_some() {
                        interval_sync(&shared).await;
                    }
                    let _ = done.send(true);
                }
                // Every handle is gone: close quietly.
                None => close_log(&shared).await,
            }
            return;
        };

        let mut appends = Vec::new();
        let mut shutdown = None;
        let mut barrier = None;
        let mut bytes = 0usize;
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Append { batches, reply } => {
                    bytes += batches.len();
                    appends.push((batches, reply));
                }
                Command::Shutdown { reply } => {
                    shutdown = Some(reply);
                    break;
                }
                Command::Barrier { reply } => {
                    // Ends the group: everything before it is committed, then it is answered.
                    barrier = Some(reply);
                    break;
                }
            }
            if bytes >= GROUP_MAX_BYTES || appends.len() >= GROUP_MAX_REQUESTS {
                break;
            }
            next = rx.try_recv().ok();
        }

        if !appends.is_empty() {
            let appended = commit_group(&shared, appends).await;
            if appended {
                let policy = shared.log.read().config().fsync;
                if let FsyncPolicy::Interval(every) = policy {
                    sync_deadline.get_or_insert_with(|| tokio::time::Instant::now() + every);
                }
            }
        }

        if let Some(reply) = barrier {
            let _ = reply.send(());
        }

        if let Some(reply) = shutdown {
            close_log(&shared).await;
            let _ = reply.send(());
            rx.close();
            while let Some(cmd) = rx.recv().await {
                match cmd {
                    Command::Append { reply, .. } => {
                        let _ = reply.send(Err(LogError::Closed));
                    }
                    Command::Shutdown { reply } | Command::Barrier { reply } => {
                        let _ = reply.send(());
                    }
                }
            }
            return;
        }
    }
}

/// Appends one group under the write lock, syncs once per policy outside it, advances the high
/// watermark and answers every request. Returns whether anything was appended.
async fn commit_group(
    shared: &Arc<Shared>,
    appends: Vec<(BytesMut, oneshot::Sender<Result<AppendInfo>>)>,
) -> bool {
    let (buffers, replies): (Vec<BytesMut>, Vec<_>) = appends.into_iter().unzip();
    let worker = Arc::clone(shared);
    let joined = tokio::task::spawn_blocking(move || {
        let mut buffers = buffers;
        let (mut results, end, file, policy) = {
            let mut log = worker.log.write();
            let results = log.append_many(&mut buffers);
            (
                results,
                log.log_end_offset(),
                log.sync_handle(),
                log.config().fsync,
            )
        };
        let appended = results.iter().any(Result::is_ok);
        if appended && policy == FsyncPolicy::Always {
            match worker.fsync(&file) {
                Ok(()) => worker.record_durable(end),
                Err(e) => {
                    let err = worker.fail_stop(e);
                    for r in results.iter_mut().filter(|r| r.is_ok()) {
                        *r = Err(LogError::FailStopped(err.to_string()));
                    }
                }
            }
        }
        (results, end)
    })
    .await;

    let (results, end) = match joined {
        Ok(r) => r,
        Err(e) => {
            let err = shared.fail_stop(LogError::FailStopped(format!("writer panicked: {e}")));
            for reply in replies {
                let _ = reply.send(Err(LogError::FailStopped(err.to_string())));
            }
            return false;
        }
    };

    let mut appended = false;
    let (mut bytes, mut records) = (0u64, 0u64);
    for r in &results {
        match r {
            Ok(info) => {
                appended = true;
                bytes += info.bytes as u64;
                records += info.record_count;
            }
            Err(LogError::FailStopped(_)) => {
                if !shared.failed.load(Ordering::SeqCst) {
                    // A failed write inside `append` fail-stops the log itself.
                    let reason = shared
                        .log
                        .read()
                        .failure()
                        .unwrap_or("write failed")
                        .to_string();
                    shared.mark_failed(&LogError::FailStopped(reason));
                }
            }
            Err(e) if super::segment::write_refused(e) => {
                shared.refused.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("ferry_log_refused_appends_total", &shared.metric_labels)
                    .increment(1);
            }
            Err(_) => {}
        }
    }
    if appended {
        shared.advance_high_watermark(end);
        let l = &shared.metric_labels;
        metrics::counter!("ferry_log_appended_bytes_total", l).increment(bytes);
        metrics::counter!("ferry_log_appended_records_total", l).increment(records);
        shared.publish_gauges();
    }
    for (reply, result) in replies.into_iter().zip(results) {
        let _ = reply.send(result);
    }
    appended
}

async fn interval_sync(shared: &Arc<Shared>) {
    let worker = Arc::clone(shared);
    let result = tokio::task::spawn_blocking(move || {
        let (file, end) = {
            let log = worker.log.read();
            (log.sync_handle(), log.log_end_offset())
        };
        match worker.fsync(&file) {
            Ok(()) => worker.record_durable(end),
            Err(e) => {
                worker.fail_stop(e);
            }
        }
    })
    .await;
    if let Err(e) = result {
        shared.fail_stop(LogError::FailStopped(format!("fsync task panicked: {e}")));
    }
}

async fn close_log(shared: &Arc<Shared>) {
    let worker = Arc::clone(shared);
    let result = tokio::task::spawn_blocking(move || {
        let mut log = worker.log.write();
        let end = log.log_end_offset();
        (log.close_in_place(), end)
    })
    .await;
    match result {
        Ok((Ok(()), end)) => {
            shared.record_durable(end);
            shared.advance_high_watermark(end);
            tracing::debug!(
                topic = %shared.labels.topic,
                partition = shared.labels.partition,
                "partition log closed"
            );
        }
        Ok((Err(e), _)) => {
            if !matches!(e, LogError::FailStopped(_)) || !shared.failed.load(Ordering::SeqCst) {
                tracing::error!(
                    topic = %shared.labels.topic,
                    partition = shared.labels.partition,
                    error = %e,
                    "closing partition log failed"
                );
            }
            shared.mark_failed(&e);
        }
        Err(e) => {
            shared.mark_failed(&LogError::FailStopped(format!("close panicked: {e}")));
        }
    }
}
