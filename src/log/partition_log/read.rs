//! The fetch path of [`PartitionLog`]: whole batches by offset (Kafka fetch semantics, KIP-74)
//! and offsets by timestamp (ListOffsets).

use bytes::{Bytes, BytesMut};

use super::{LogSlice, PartitionLog};
use crate::log::batch::{first_record_at_or_after, BatchHeader, HEADER_LEN};
use crate::log::segment::Segment;
use crate::log::{LogError, Result};

impl PartitionLog {
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
