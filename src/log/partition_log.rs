//! `PartitionLog`: one partition's log as a synchronous, single-owner object — validate and
//! append record batches, read whole batches by offset, roll segments, apply retention, close.
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

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::batch::{
    first_record_at_or_after, set_base_offset, set_log_append_time, BatchHeader, BatchIter,
    HEADER_LEN,
};
use super::config::{LogConfig, TimestampType};
use super::producer_state::{ProducerStates, SeqCheck};
use super::recovery::{self, RecoveryReport, CLEAN_SHUTDOWN_FILE};
use super::retention::{self, SegmentMeta};
use super::segment::{self, Segment};
use super::{LogError, Result};
use crate::clock::Clock;

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

/// A validated request, offsets assigned, not yet written.
struct Prepared {
    info: AppendInfo,
    headers: Vec<(BatchHeader, Range<usize>)>,
    /// The request repeats batches an idempotent producer already wrote: nothing to write,
    /// `info` holds the offsets they got the first time.
    duplicate: bool,
}

/// Consecutive prepared requests of a group, concatenated for one write.
#[derive(Default)]
struct Run {
    bytes: Vec<u8>,
    headers: Vec<(BatchHeader, Range<usize>)>,
    /// Indexes of the requests (in the results) whose bytes are in `bytes`.
    members: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Open,
    Failed(String),
    Closed,
}

/// The error for an append a full disk refused (see [`segment::write_refused`]).
fn no_space(reason: &str) -> LogError {
    LogError::io(
        reason.to_string(),
        std::io::Error::from_raw_os_error(libc::ENOSPC),
    )
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
        };
        log.rebuild_producer_states()?;
        Ok((log, report))
    }

    /// Loads the producer-state snapshot and replays the batch headers written after it (all
    /// of the log when there is no usable snapshot).
    fn rebuild_producer_states(&mut self) -> Result<()> {
        let start = self.log_start_offset();
        let end = self.log_end_offset();
        let (mut states, mut from) = match ProducerStates::load(&self.dir) {
            Some((states, offset)) if offset >= start && offset <= end => (states, offset),
            _ => (ProducerStates::default(), start),
        };
        while from < end {
            let slice = self.read(from, 8 * 1024 * 1024, end)?;
            if slice.bytes.is_empty() {
                break;
            }
            for (h, _) in BatchIter::new(&slice.bytes) {
                if h.base_offset >= from {
                    states.record(&h);
                }
            }
            if slice.next_offset <= from {
                break;
            }
            from = slice.next_offset;
        }
        states.expire_below(start);
        self.producers = states;
        Ok(())
    }

    /// Writes the producer-state snapshot for the current log end; a failure only costs a
    /// longer scan at the next start, so it is logged, not fatal.
    fn snapshot_producer_states(&self) {
        if let Err(e) = self.producers.save(&self.dir, self.log_end_offset()) {
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

    fn check_open(&self) -> Result<()> {
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

    /// Appends the record batches in `batches` (one or more, concatenated, as a Kafka produce
    /// request carries them). All are validated before anything is written; on success their
    /// base offsets (and for `LogAppendTime`, max timestamps and CRCs) have been patched in the
    /// buffer, which then holds exactly the bytes stored.
    pub fn append(&mut self, batches: &mut [u8]) -> Result<AppendInfo> {
        self.check_open()?;
        let now = self.clock.now_ms();
        let prepared = self.prepare(batches, self.log_end_offset(), now)?;
        let info = prepared.info;
        if prepared.duplicate {
            return Ok(info);
        }
        if self.should_roll(0, batches.len() as u64, info.last_offset, now) {
            if let Err(e) = self.roll() {
                return Err(self.fail(e));
            }
        }
        // Recorded after any roll, whose snapshot must cover only what is written.
        self.record_producers(&prepared.headers);
        self.write(batches, &prepared.headers, now)?;
        Ok(info)
    }

    /// Appends several independent requests (a group commit), each with its own result exactly
    /// as if [`append`](Self::append) had been called for each in turn, but with consecutive
    /// requests written by one positional write instead of one each: a write syscall costs
    /// several µs, as much as copying a few tens of KiB. A failed write fail-stops the log and
    /// fails every request it carried.
    pub fn append_many<B: AsMut<[u8]>>(&mut self, requests: &mut [B]) -> Vec<Result<AppendInfo>> {
        if let [single] = requests {
            return vec![self.append(single.as_mut())];
        }
        let now = self.clock.now_ms();
        let mut results: Vec<Result<AppendInfo>> = Vec::with_capacity(requests.len());
        let mut run = Run::default();
        let mut next = self.log_end_offset();
        // Set once a full disk refused a run: the offsets handed out after it are void, so the
        // rest of the group fails too (and its producers retry) rather than be renumbered.
        let mut refused: Option<String> = None;
        for request in requests.iter_mut() {
            if let Some(reason) = &refused {
                results.push(Err(no_space(reason)));
                continue;
            }
            if let Err(e) = self.check_open() {
                results.push(Err(e));
                continue;
            }
            let batches = request.as_mut();
            let prepared = match self.prepare(batches, next, now) {
                Ok(p) => p,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            if prepared.duplicate {
                results.push(Ok(prepared.info));
                continue;
            }
            let incoming = batches.len() as u64;
            if self.should_roll(
                run.bytes.len() as u64,
                incoming,
                prepared.info.last_offset,
                now,
            ) {
                refused = self.write_run(&mut run, &mut results, now);
                if let Some(reason) = &refused {
                    results.push(Err(no_space(reason)));
                    continue;
                }
                if let Err(e) = self.check_open().and_then(|()| self.roll()) {
                    let e = match e {
                        LogError::FailStopped(_) | LogError::Closed => e,
                        other => self.fail(other),
                    };
                    results.push(Err(e));
                    continue;
                }
            }
            // After any roll (its snapshot covers only written data), before the next request
            // of the group is checked against it.
            self.record_producers(&prepared.headers);
            let base = run.bytes.len();
            run.bytes.extend_from_slice(batches);
            run.headers.extend(
                prepared
                    .headers
                    .into_iter()
                    .map(|(h, r)| (h, r.start + base..r.end + base)),
            );
            run.members.push(results.len());
            next = prepared.info.last_offset + 1;
            results.push(Ok(prepared.info));
        }
        self.write_run(&mut run, &mut results, now);
        results
    }

    /// Writes the pending run of a group; on failure turns its members' results into errors.
    /// Returns the error text if a full disk refused the write (the log stays open).
    fn write_run(
        &mut self,
        run: &mut Run,
        results: &mut [Result<AppendInfo>],
        now: i64,
    ) -> Option<String> {
        if run.members.is_empty() {
            return None;
        }
        let bytes = std::mem::take(&mut run.bytes);
        let headers = std::mem::take(&mut run.headers);
        let mut refused = None;
        if let Err(e) = self.write(&bytes, &headers, now) {
            let reason = e.to_string();
            let refused_now = segment::write_refused(&e);
            for &i in &run.members {
                results[i] = Err(if refused_now {
                    no_space(&reason)
                } else {
                    LogError::FailStopped(reason.clone())
                });
            }
            if refused_now {
                refused = Some(reason);
            }
        }
        run.members.clear();
        refused
    }

    /// Validates the batches of one request and assigns them offsets from `first_offset`,
    /// patching the buffer. No I/O; nothing in the log changes.
    fn prepare(&self, batches: &mut [u8], first_offset: i64, now: i64) -> Result<Prepared> {
        if batches.is_empty() {
            return Err(LogError::InvalidBatch("no record batches".into()));
        }
        if batches.len() > i32::MAX as usize {
            return Err(LogError::MessageTooLarge {
                size: batches.len(),
                max: i32::MAX as usize,
            });
        }
        let max = self.config.max_message_bytes;
        let mut headers = Vec::new();
        let mut it = BatchIter::new(batches);
        for (h, range) in it.by_ref() {
            if range.len() > max {
                return Err(LogError::MessageTooLarge {
                    size: range.len(),
                    max,
                });
            }
            if i64::from(h.records_count) != h.record_count() {
                return Err(LogError::InvalidBatch(format!(
                    "recordsCount {} does not match lastOffsetDelta {}",
                    h.records_count, h.last_offset_delta
                )));
            }
            headers.push((h, range));
        }
        if let Some(stop) = it.take_stop() {
            return Err(stop.into_error());
        }
        if let Some(duplicate) = self.check_producers(&headers)? {
            return Ok(Prepared {
                info: duplicate,
                headers: Vec::new(),
                duplicate: true,
            });
        }

        let log_append_time = self.config.message_timestamp_type == TimestampType::LogAppendTime;
        let mut next = first_offset;
        for (h, range) in headers.iter_mut() {
            let bytes = &mut batches[range.clone()];
            set_base_offset(bytes, next);
            if log_append_time {
                set_log_append_time(bytes, now);
            }
            // Re-read the patched header so indexes see what is stored.
            *h = BatchHeader::parse(bytes)?;
            next = h.next_offset();
        }
        Ok(Prepared {
            info: AppendInfo {
                base_offset: first_offset,
                last_offset: next - 1,
                log_append_time_ms: if log_append_time { now } else { -1 },
                record_count: (next - first_offset) as u64,
                bytes: batches.len(),
            },
            headers,
            duplicate: false,
        })
    }

    /// Checks idempotent producers' sequences for a request's batches. `Some(info)` when the
    /// whole request repeats what was already appended.
    fn check_producers(
        &self,
        headers: &[(BatchHeader, Range<usize>)],
    ) -> Result<Option<AppendInfo>> {
        match headers {
            [] => Ok(None),
            [(h, range)] => match self.producers.check(h)? {
                SeqCheck::Append => Ok(None),
                SeqCheck::Duplicate {
                    first_offset,
                    last_offset,
                } => Ok(Some(AppendInfo {
                    base_offset: first_offset,
                    last_offset,
                    log_append_time_ms: -1,
                    record_count: (last_offset - first_offset + 1) as u64,
                    bytes: range.len(),
                })),
            },
            many => {
                // Several batches in one request: each must follow the previous one, and a
                // partial repeat cannot be answered with one offset range, so it is an error.
                let mut tentative = self.producers.clone();
                for (h, _) in many {
                    match tentative.check(h)? {
                        SeqCheck::Append => tentative.record(h),
                        SeqCheck::Duplicate { .. } => {
                            return Err(LogError::OutOfOrderSequence {
                                producer_id: h.producer_id,
                                expected: -1,
                                received: h.base_sequence,
                            })
                        }
                    }
                }
                Ok(None)
            }
        }
    }

    fn record_producers(&mut self, headers: &[(BatchHeader, Range<usize>)]) {
        for (h, _) in headers {
            self.producers.record(h);
        }
    }

    /// Writes prepared batches to the active segment, fail-stopping on error.
    fn write(
        &mut self,
        bytes: &[u8],
        headers: &[(BatchHeader, Range<usize>)],
        now: i64,
    ) -> Result<()> {
        let last = self.segments.len() - 1;
        let (segments, config) = (&mut self.segments, &self.config);
        if let Err(e) = segments[last].append(bytes, headers, now, config) {
            if segment::write_refused(&e) {
                // A full disk refused the write and the segment undid it: the log stays open.
                // The producers' sequences were recorded before writing; forget the ones that
                // did not land, or the producer's retry would be taken for a duplicate.
                if let Err(re) = self.rebuild_producer_states() {
                    return Err(self.fail(re));
                }
                return Err(e);
            }
            return Err(self.fail(e));
        }
        Ok(())
    }

    /// Whether the active segment must roll before `incoming` more bytes (after `pending` bytes
    /// not yet written) ending at `last_offset` go in.
    fn should_roll(&self, pending: u64, incoming: u64, last_offset: i64, now: i64) -> bool {
        let active = self.active();
        if active.is_empty() && pending == 0 {
            return false;
        }
        let size = active.size() + pending + incoming;
        size > self.config.segment_bytes
            // Index positions are 32-bit.
            || size > u32::MAX as u64
            || active
                .created_at_ms()
                .is_some_and(|t| now.saturating_sub(t) > self.config.segment_ms)
            // Index offsets are 32-bit relative to the base (Kafka caps at i32 too).
            || last_offset - active.base_offset() > i32::MAX as i64
    }

    /// Seals the active segment (final time index entry, trim, fsync) and starts a new one at
    /// the log end offset.
    pub fn roll(&mut self) -> Result<()> {
        self.check_open()?;
        let next = self.log_end_offset();
        self.active_mut().finish()?;
        let segment = Segment::create(&self.dir, next)?;
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
    pub fn sync_handle(&self) -> Arc<File> {
        self.active().sync_handle()
    }

    /// Reads whole batches starting with the one containing `offset`, stopping before
    /// `upper_bound` (exclusive), at most `max_bytes` except that the first batch is always
    /// whole. `offset` outside `[log_start, log_end]` is [`LogError::OffsetOutOfRange`]; at or
    /// past the upper bound the slice is empty.
    pub fn read(&self, offset: i64, max_bytes: usize, upper_bound: i64) -> Result<LogSlice> {
        self.check_open()?;
        let (log_start, log_end) = (self.log_start_offset(), self.log_end_offset());
        if offset < log_start || offset > log_end {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start,
                log_end,
            });
        }
        let upper = upper_bound.min(log_end);
        let empty = LogSlice {
            bytes: Bytes::new(),
            first_offset: offset,
            next_offset: offset,
        };
        if offset >= upper {
            return Ok(empty);
        }
        let first_seg = self
            .segments
            .partition_point(|s| s.base_offset() <= offset)
            .saturating_sub(1);

        let mut chunks: Vec<Bytes> = Vec::new();
        let mut first_offset = None;
        let mut next_offset = offset;
        let mut budget = max_bytes;
        let mut target = offset;
        for seg in &self.segments[first_seg..] {
            if seg.base_offset() >= upper {
                break;
            }
            let Some((pos, first)) = seg.find_batch(target)? else {
                // Past this segment's data (or an offset gap): continue in the next one.
                continue;
            };
            if first.last_offset() >= upper {
                break;
            }
            // Where the upper bound cuts this segment, if it does.
            let mut limit = seg.size();
            if seg.next_offset() > upper {
                if let Some((p, _)) = seg.find_batch(upper)? {
                    limit = p;
                }
            }
            let is_first = chunks.is_empty();
            let want = if is_first {
                budget.max(first.total_size())
            } else {
                budget
            };
            let len = (want as u64).min(limit.saturating_sub(pos)) as usize;
            if len < HEADER_LEN {
                break;
            }
            let data = seg.read(pos, len)?;
            let (cut, last_next) = whole_batches(&data)?;
            if cut == 0 {
                break;
            }
            first_offset.get_or_insert(first.base_offset);
            next_offset = last_next;
            budget = budget.saturating_sub(cut);
            let reached_limit = pos + cut as u64 >= limit;
            chunks.push(data.slice(..cut));
            if !reached_limit || limit < seg.size() || budget == 0 {
                break;
            }
            target = seg.next_offset();
        }
        let Some(first_offset) = first_offset else {
            return Ok(empty);
        };
        let bytes = if chunks.len() == 1 {
            chunks.pop().unwrap_or_default()
        } else {
            let mut all = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
            for c in &chunks {
                all.extend_from_slice(c);
            }
            all.freeze()
        };
        Ok(LogSlice {
            bytes,
            first_offset,
            next_offset,
        })
    }

    /// Kafka `ListOffsets` by timestamp: the earliest offset whose timestamp is `>= timestamp`,
    /// with that timestamp. Within an uncompressed `CreateTime` batch the exact record is found;
    /// for compressed or `LogAppendTime` batches it is the batch's base offset and max timestamp
    /// (records are never decompressed here).
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<(i64, i64)>> {
        self.check_open()?;
        for seg in &self.segments {
            if seg.is_empty() || seg.max_timestamp() < timestamp {
                continue;
            }
            if let Some((pos, h)) = seg.find_timestamp(timestamp)? {
                if h.compression() == 0 && !h.is_log_append_time() {
                    let data = seg.read(pos, h.total_size())?;
                    if let Some(found) = first_record_at_or_after(&data, timestamp) {
                        return Ok(Some(found));
                    }
                }
                return Ok(Some((h.base_offset, h.max_timestamp)));
            }
        }
        Ok(None)
    }

    /// First offset still in the log.
    /// The offset and timestamp of the record with the largest timestamp (Kafka's
    /// ListOffsets `MAX_TIMESTAMP`, KIP-734); `None` for an empty log or one without
    /// timestamps.
    pub fn max_timestamp_offset(&self) -> Result<Option<(i64, i64)>> {
        let max = self
            .segments
            .iter()
            .map(Segment::max_timestamp)
            .max()
            .unwrap_or(-1);
        if max < 0 {
            return Ok(None);
        }
        // The first batch whose max timestamp reaches the overall max is the one holding it.
        self.offset_for_timestamp(max)
    }

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

    /// Deletes whole old segments per `retention.ms` and `retention.bytes` (see `retention.rs`),
    /// rolling the active segment first if it has entirely expired. The log start offset moves
    /// up to the first remaining segment.
    pub fn enforce_retention(&mut self) -> Result<RetentionReport> {
        self.check_open()?;
        let now = self.clock.now_ms();
        let metas: Vec<SegmentMeta> = self
            .segments
            .iter()
            .map(|s| SegmentMeta {
                base_offset: s.base_offset(),
                size_bytes: s.size(),
                largest_timestamp_ms: s.retention_timestamp(),
            })
            .collect();
        let plan = retention::plan(&metas, &self.config, now);
        let mut report = RetentionReport {
            log_start_offset: self.log_start_offset(),
            ..RetentionReport::default()
        };
        if plan.delete_count == 0 {
            return Ok(report);
        }
        if plan.roll_active {
            if let Err(e) = self.roll() {
                return Err(self.fail(e));
            }
            report.rolled = true;
        }
        self.drop_oldest(plan.delete_count, "retention", report)
    }

    /// Deletes the `count` oldest segments' files and moves the log start past them; `why`
    /// names the rule in the log line. A file that cannot be deleted is reported (it would
    /// reappear at the next start, where the same rule deletes it again).
    fn drop_oldest(
        &mut self,
        count: usize,
        why: &str,
        mut report: RetentionReport,
    ) -> Result<RetentionReport> {
        let doomed: Vec<Segment> = self.segments.drain(..count).collect();
        let mut first_error = None;
        for seg in &doomed {
            report.deleted_segments += 1;
            report.deleted_bytes += seg.size();
            tracing::info!(path = %seg.log_path().display(), bytes = seg.size(), why, "deleting segment");
            if let Err(e) = seg.delete_files() {
                tracing::warn!(error = %e, why, "cannot delete segment; it will reappear on restart");
                first_error.get_or_insert(e);
            }
        }
        recovery::sync_dir(&self.dir)?;
        report.log_start_offset = self.log_start_offset();
        self.producers.expire_below(report.log_start_offset);
        match first_error {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// Deletes the oldest segments whose every offset lies below `offset`, never the active
    /// one. Queues call it with their low-water mark once every message in a segment is
    /// settled (ARCHITECTURE rule 4, the LavinMQ model); the log start moves up with it.
    pub fn delete_segments_below(&mut self, offset: i64) -> Result<RetentionReport> {
        self.check_open()?;
        let report = RetentionReport {
            log_start_offset: self.log_start_offset(),
            ..RetentionReport::default()
        };
        // A segment is wholly below `offset` when its successor starts at or below it; the
        // active segment has no successor, so it is never chosen.
        let count = self
            .segments
            .windows(2)
            .take_while(|w| w[1].base_offset() <= offset)
            .count();
        if count == 0 {
            return Ok(report);
        }
        self.drop_oldest(count, "settled", report)
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
        if let Err(e) = self.active_mut().finish() {
            return Err(self.fail(e));
        }
        self.snapshot_producer_states();
        let marker = self.dir.join(CLEAN_SHUTDOWN_FILE);
        std::fs::write(&marker, b"")
            .map_err(|e| LogError::io(format!("write {}", marker.display()), e))?;
        recovery::sync_dir(&self.dir)?;
        self.state = State::Closed;
        Ok(())
    }

    /// Removes the partition directory and everything in it.
    pub fn delete(self) -> Result<()> {
        let dir = self.dir.clone();
        drop(self);
        std::fs::remove_dir_all(&dir)
            .map_err(|e| LogError::io(format!("remove {}", dir.display()), e))
    }
}

/// Length of the run of whole batches at the start of `data`, and the offset after the last.
fn whole_batches(data: &[u8]) -> Result<(usize, i64)> {
    let mut p = 0;
    let mut next = 0;
    while p + HEADER_LEN <= data.len() {
        let h = BatchHeader::parse(&data[p..])?;
        if p + h.total_size() > data.len() {
            break;
        }
        p += h.total_size();
        next = h.next_offset();
    }
    Ok((p, next))
}
