//! Reads: a stream forwards or backwards from a revision, and one partition of the store in
//! log order (`$all` of a one-partition store). Only durable records (below the high
//! watermark) are read.
//!
//! A stream read starts at the stored sparse revision index's entry at or below the first
//! revision wanted (`meta::es`, every 64th revision), else at the log start, and scans forward
//! filtering by key; so it costs the records of the partition between that entry and the last
//! event returned. Soft-deleted revisions and events past `$maxCount` / `$maxAge` are left out.

use bytes::Bytes;

use super::records::{self, EsRecord};
use super::{EsError, StreamState};
use crate::log::batch::decode_next_batch;
use crate::log::{PartitionHandle, SimpleRecord};
use crate::meta::Meta;

/// Most events one read returns.
pub const MAX_READ_COUNT: usize = 10_000;

/// One event as read.
#[derive(Debug, Clone)]
pub struct RecordedEvent {
    pub stream: String,
    pub revision: u64,
    pub partition: i32,
    /// Log offset of its record.
    pub position: i64,
    /// Key, value, headers (CloudEvents + revision) and timestamp.
    pub record: SimpleRecord,
}

/// Where a stream read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    Start,
    End,
    Revision(u64),
}

/// Log bytes a cursor read and has not used yet: a catch-up subscription polls a few hundred
/// events at a time, and reading a fresh [`SCAN_CHUNK_BYTES`](super::partition::SCAN_CHUNK_BYTES)
/// slice per poll copied and re-read about ten times the bytes it used.
#[derive(Debug, Default)]
pub(super) struct ReadAhead {
    /// Whole batches, from the one holding the cursor's next record.
    bytes: Bytes,
    /// The offset after the last batch in `bytes`.
    next_offset: i64,
}

/// Calls `each` with every record from `from` below the high watermark, in order, until it
/// returns false; returns the offset after the last record looked at. Every record a read
/// returns is below the high watermark *at that read* (durable), so all of them are taken: a
/// slice may reach past the watermark seen when the scan started, and skipping those records
/// while moving past them would lose them.
pub(super) fn scan(
    handle: &PartitionHandle,
    from: i64,
    each: impl FnMut(i64, EsRecord, SimpleRecord) -> bool,
) -> Result<i64, EsError> {
    scan_ahead(handle, from, &mut ReadAhead::default(), each)
}

/// [`scan`] that starts with the bytes `ahead` kept from the cursor's last scan (which must
/// have returned `from`) and keeps what this one does not use.
pub(super) fn scan_ahead(
    handle: &PartitionHandle,
    from: i64,
    ahead: &mut ReadAhead,
    mut each: impl FnMut(i64, EsRecord, SimpleRecord) -> bool,
) -> Result<i64, EsError> {
    let upto = handle.high_watermark();
    let mut offset = from.max(handle.log_start_offset());
    loop {
        if ahead.bytes.is_empty() {
            if offset >= upto {
                break;
            }
            let slice = handle.read(offset, super::partition::SCAN_CHUNK_BYTES)?;
            if slice.bytes.is_empty() || slice.next_offset <= offset {
                break;
            }
            ahead.bytes = slice.bytes;
            ahead.next_offset = slice.next_offset;
        }
        while !ahead.bytes.is_empty() {
            let batch_start = ahead.bytes.clone();
            let decoded = decode_next_batch(&mut ahead.bytes);
            let batch = match decoded {
                Ok(batch) => batch,
                Err(e) => {
                    ahead.bytes = Bytes::new();
                    return Err(e.into());
                }
            };
            for stored in batch {
                if stored.offset < offset {
                    continue;
                }
                let at = stored.offset;
                if let Some(es) = records::classify(&stored) {
                    if !each(at, es, stored.record) {
                        // The rest of this batch is decoded again (skipping up to `at`) next time.
                        ahead.bytes = batch_start;
                        return Ok(at + 1);
                    }
                }
            }
        }
        offset = offset.max(ahead.next_offset);
    }
    Ok(offset)
}

/// Where a scan for `stream`'s `revision` may start: the nearest revision entry at or below it,
/// from the stored index or, while that is a step behind the log, from the in-memory one.
pub(super) fn scan_start(
    meta: &Meta,
    topic: &str,
    partition: i32,
    stream: &str,
    state: &StreamState,
    revision: u64,
) -> Result<i64, EsError> {
    let stored = meta
        .es_revision_floor(topic, partition, stream, revision)?
        .map_or(0, |(_, offset)| offset);
    let recent = state
        .recent_floor
        .filter(|(r, _)| *r <= revision)
        .map_or(0, |(_, offset)| offset);
    Ok(stored.max(recent))
}

/// Reads `stream` (whose index state is `state`) per `from`, `backwards` and `max_count`.
#[allow(clippy::too_many_arguments)]
pub(super) fn read_stream(
    handle: &PartitionHandle,
    meta: &Meta,
    topic: &str,
    partition: i32,
    stream: &str,
    state: &StreamState,
    from: ReadFrom,
    backwards: bool,
    max_count: usize,
    now_ms: i64,
) -> Result<Vec<RecordedEvent>, EsError> {
    // Only durable revisions: one still waiting for its fsync is not below the high watermark,
    // so a read that counted it would come back short (empty for a backward read from the end).
    let Some(last) = state.durable_revision else {
        return Ok(Vec::new());
    };
    let max_count = max_count.clamp(1, MAX_READ_COUNT) as u64;
    let mut visible_from = state.truncate_before;
    if let Some(keep) = state.limits.max_count {
        visible_from = visible_from.max((last + 1).saturating_sub(keep));
    }
    let min_time = state
        .limits
        .max_age_ms
        .map(|age| now_ms.saturating_sub(i64::try_from(age).unwrap_or(i64::MAX)));
    let (low, high) = if backwards {
        let top = match from {
            ReadFrom::Start => 0,
            ReadFrom::End => last,
            ReadFrom::Revision(r) => r.min(last),
        };
        ((top + 1).saturating_sub(max_count).max(visible_from), top)
    } else {
        let first = match from {
            ReadFrom::Start => 0,
            ReadFrom::End => last,
            ReadFrom::Revision(r) => r,
        }
        .max(visible_from);
        (first, first.saturating_add(max_count - 1).min(last))
    };
    if low > high {
        return Ok(Vec::new());
    }
    let start = scan_start(meta, topic, partition, stream, state, low)?;
    let mut events = Vec::new();
    scan(handle, start, |position, es, record| {
        let EsRecord::Event {
            stream: s,
            revision,
            ..
        } = es
        else {
            return true;
        };
        if s != stream || revision < low {
            return true;
        }
        if revision > high {
            return false;
        }
        if min_time.is_none_or(|t| record.timestamp >= t) {
            events.push(RecordedEvent {
                stream: s,
                revision,
                partition,
                position,
                record,
            });
        }
        revision < high
    })?;
    if backwards {
        events.reverse();
    }
    Ok(events)
}

/// Reads up to `max_count` events of the partition from `from_position` on; returns them and
/// the position the next read continues at.
pub(super) fn read_all(
    handle: &PartitionHandle,
    partition: i32,
    from_position: i64,
    max_count: usize,
) -> Result<(Vec<RecordedEvent>, i64), EsError> {
    let max_count = max_count.clamp(1, MAX_READ_COUNT);
    let mut events = Vec::new();
    let next = scan(handle, from_position, |position, es, record| {
        if let EsRecord::Event {
            stream, revision, ..
        } = es
        {
            events.push(RecordedEvent {
                stream,
                revision,
                partition,
                position,
                record,
            });
        }
        events.len() < max_count
    })?;
    Ok((events, next.max(from_position)))
}
