//! The write path of [`PartitionLog`]: validate a request's batches, assign offsets, check
//! idempotent producers' sequences, roll when the active segment is full or old, and write one
//! request (or a group commit's consecutive requests) with one positional write.

use std::ops::Range;

use super::{AppendInfo, PartitionLog};
use crate::log::batch::{set_base_offset, set_log_append_time, BatchHeader, BatchIter};
use crate::log::config::TimestampType;
use crate::log::producer_state::SeqCheck;
use crate::log::segment;
use crate::log::{LogError, Result};

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

/// The error for an append a full disk refused (see [`segment::write_refused`]).
fn no_space(reason: &str) -> LogError {
    LogError::io(
        reason.to_string(),
        std::io::Error::from_raw_os_error(libc::ENOSPC),
    )
}

/// A compacted topic keeps the latest record per key, so a record without a key has no place
/// in it: Kafka refuses it with INVALID_RECORD, and so does Ferry (control batches aside).
fn refuse_keyless(batches: &[u8], headers: &[(BatchHeader, Range<usize>)]) -> Result<()> {
    for (h, range) in headers {
        if h.is_control() {
            continue;
        }
        let mut one = bytes::Bytes::copy_from_slice(&batches[range.clone()]);
        let records = crate::log::batch::decode_next_batch(&mut one)?;
        if records.iter().any(|r| r.record.key.is_none()) {
            return Err(LogError::InvalidRecord(
                "Compacted topic cannot accept message without key".into(),
            ));
        }
    }
    Ok(())
}

impl PartitionLog {
    /// Appends the record batches in `batches` (one or more, concatenated, as a Kafka produce
    /// request carries them). All are validated before anything is written; on success their
    /// base offsets (and for `LogAppendTime`, max timestamps and CRCs) have been patched in the
    /// buffer, which then holds exactly the bytes stored.
    pub fn append(&mut self, batches: &mut [u8]) -> Result<AppendInfo> {
        self.check_open()?;
        self.refresh_producer_states()?;
        let now = self.clock.now_ms();
        let prepared = self.prepare(batches, self.log_end_offset(), now)?;
        let info = prepared.info;
        if prepared.duplicate {
            return Ok(info);
        }
        if self.should_roll(0, batches.len() as u64, info.last_offset, now) {
            if let Err(e) = self.roll() {
                // A file that could not be opened refuses this append only (see `roll`).
                return Err(if segment::is_not_started(&e) {
                    e
                } else {
                    self.fail(e)
                });
            }
        }
        // Recorded after any roll, whose snapshot must cover only what is written.
        self.record_producers(batches, &prepared.headers);
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
        if let Err(e) = self.refresh_producer_states() {
            // Every request gets the same failure (`LogError` is not `Clone`).
            let (context, kind) = match &e {
                LogError::Io { context, source } => (context.clone(), source.kind()),
                other => (other.to_string(), std::io::ErrorKind::Other),
            };
            return requests
                .iter()
                .map(|_| Err(LogError::io(context.clone(), kind.into())))
                .collect();
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
                        e if segment::is_not_started(&e) => e,
                        other => self.fail(other),
                    };
                    results.push(Err(e));
                    continue;
                }
            }
            // After any roll (its snapshot covers only written data), before the next request
            // of the group is checked against it.
            self.record_producers(batches, &prepared.headers);
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
        if self.config.cleanup_policy.compacts() {
            refuse_keyless(batches, &headers)?;
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

    /// Rebuilds the producers' sequence state if a refused write left it stale and the
    /// rebuild could not be done then.
    fn refresh_producer_states(&mut self) -> Result<()> {
        if self.producers_stale {
            self.rebuild_producer_states()?;
            self.producers_stale = false;
        }
        Ok(())
    }

    /// Accounts for a request's batches (offsets assigned) in the producer and transaction
    /// state; `batches` holds them at the headers' ranges.
    fn record_producers(&mut self, batches: &[u8], headers: &[(BatchHeader, Range<usize>)]) {
        for (h, range) in headers {
            self.producers.record(h);
            self.txns.record(h, &batches[range.clone()]);
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
                // If the log cannot be read back just now (the same descriptor shortage, say),
                // the next append retries the rebuild before it checks any sequence.
                if let Err(re) = self.rebuild_producer_states() {
                    tracing::warn!(dir = %self.dir.display(), error = %re, "rebuilding producer state deferred");
                    self.producers_stale = true;
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
}
