//! The fetch path of [`PartitionLog`]: whole batches by offset (Kafka fetch semantics, KIP-74)
//! and offsets by timestamp (ListOffsets).
//!
//! A read first *locates* its batches ([`PartitionLog::read_spans`]): per segment, a file
//! span from the first wanted batch to the end of the last whole batch that fits, found by
//! reading batch headers only (from the offset index's entry nearest the cut). A zero-copy
//! fetch sends those spans as they are; [`PartitionLog::read`] reads them with one `pread` per
//! segment into a buffer that is never zero-filled, so the copying path copies each byte once.

use super::{FileSpan, LogSlice, LogSpans, PartitionLog};
use crate::log::batch::first_record_at_or_after;
use crate::log::segment::Segment;
use crate::log::{LogError, Result};

impl PartitionLog {
    /// Reads whole batches starting with the one containing `offset`, stopping before
    /// `upper_bound` (exclusive), at most `max_bytes` except that the first batch is always
    /// whole. `offset` outside `[log_start, log_end]` is [`LogError::OffsetOutOfRange`]; at or
    /// past the upper bound the slice is empty.
    pub fn read(&self, offset: i64, max_bytes: usize, upper_bound: i64) -> Result<LogSlice> {
        self.read_spans(offset, max_bytes, upper_bound)?
            .into_slice()
    }

    /// What [`read`](Self::read) returns, located but not read: the segment files (held
    /// open) and byte ranges of the batches, for a caller that sends them without copying.
    /// Only batch headers are read here.
    pub fn read_spans(&self, offset: i64, max_bytes: usize, upper_bound: i64) -> Result<LogSpans> {
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
        let mut found = LogSpans {
            spans: Vec::new(),
            first_offset: offset,
            next_offset: offset,
        };
        if offset >= upper {
            return Ok(found);
        }
        let first_seg = self
            .segments
            .partition_point(|s| s.base_offset() <= offset)
            .saturating_sub(1);

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
            let is_first = found.spans.is_empty();
            let want = if is_first {
                budget.max(first.total_size())
            } else {
                budget
            };
            let end = pos + (want as u64).min(limit.saturating_sub(pos));
            let Some((cut, last_next)) = seg.whole_batches_until(pos, end)? else {
                break;
            };
            if is_first {
                found.first_offset = first.base_offset;
            }
            found.next_offset = last_next;
            let len = (cut - pos) as usize;
            budget = budget.saturating_sub(len);
            found.spans.push(FileSpan {
                file: seg.pinned_file()?,
                pos,
                len,
            });
            if cut < limit || limit < seg.size() || budget == 0 {
                break;
            }
            target = seg.next_offset();
        }
        Ok(found)
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
}
