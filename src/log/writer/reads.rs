//! The read side of a partition handle: bounded reads (by the high watermark, or by the last
//! stable offset for `read_committed` readers), offsets, sizes and timestamp lookups. They take
//! the log's read lock briefly and never wait for the writer task, so readers and the single
//! writer meet only at that lock and at the high-watermark watch. Never hold a borrow of that
//! watch while calling one of these: a second read queued behind a waiting writer deadlocks.

use tokio::sync::watch;

use super::PartitionHandle;
use crate::log::partition_log::{LogSlice, LogSpans};
use crate::log::Result;

impl PartitionHandle {
    /// Reads whole batches from `offset`, bounded by the high watermark (see
    /// [`PartitionLog::read`](crate::log::PartitionLog::read)).
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<LogSlice> {
        let hw = self.high_watermark();
        self.shared.log.read().read(offset, max_bytes, hw)
    }

    /// [`read`](Self::read), located but not copied (see
    /// [`PartitionLog::read_spans`](crate::log::PartitionLog::read_spans)).
    pub fn read_spans(&self, offset: i64, max_bytes: usize) -> Result<LogSpans> {
        let hw = self.high_watermark();
        self.shared.log.read().read_spans(offset, max_bytes, hw)
    }

    /// The idempotent producers this partition remembers, with their last appended batch.
    pub fn producers(&self) -> Vec<crate::log::producer_state::ProducerSummary> {
        self.shared.log.read().producer_summaries()
    }

    /// The last stable offset: the high watermark, or the first record of the oldest
    /// transaction still open here if that is lower. `read_committed` readers stop there.
    pub fn last_stable_offset(&self) -> i64 {
        let hw = self.high_watermark();
        self.shared
            .log
            .read()
            .first_unstable_offset()
            .map_or(hw, |first| first.min(hw))
    }

    /// Reads whole batches from `offset` for a `read_committed` reader: bounded by the last
    /// stable offset, with the aborted transactions that have records in what was read (the
    /// reader drops those producers' batches in those ranges).
    pub fn read_committed(
        &self,
        offset: i64,
        max_bytes: usize,
    ) -> Result<(LogSlice, Vec<crate::log::AbortedTxn>)> {
        let (spans, aborted) = self.read_committed_spans(offset, max_bytes)?;
        Ok((spans.into_slice()?, aborted))
    }

    /// [`read_committed`](Self::read_committed), located but not copied. The aborted list is
    /// all a `read_committed` client needs to drop aborted records (it filters, as from
    /// Kafka), so the batches themselves go out exactly as stored.
    pub fn read_committed_spans(
        &self,
        offset: i64,
        max_bytes: usize,
    ) -> Result<(LogSpans, Vec<crate::log::AbortedTxn>)> {
        let lso = self.last_stable_offset();
        let log = self.shared.log.read();
        let spans = log.read_spans(offset, max_bytes, lso)?;
        let aborted = if spans.is_empty() {
            Vec::new()
        } else {
            log.aborted_between(spans.first_offset, spans.next_offset)
        };
        Ok((spans, aborted))
    }

    /// Offset of the first record of `producer_id`'s transaction open in this partition
    /// (DescribeProducers' `current_txn_start_offset`).
    pub fn open_transaction_start(&self, producer_id: i64) -> Option<i64> {
        self.shared.log.read().open_transaction_start(producer_id)
    }

    /// Whether `producer_id` has a transaction open in this partition.
    pub fn has_open_transaction(&self, producer_id: i64) -> bool {
        self.shared.log.read().has_open_transaction(producer_id)
    }

    /// Offset below which everything is durable (per policy) and readable.
    pub fn high_watermark(&self) -> i64 {
        *self.shared.high_watermark.borrow()
    }

    /// A receiver that changes whenever the high watermark advances (for long-poll fetches and
    /// push consumers).
    pub fn subscribe_high_watermark(&self) -> watch::Receiver<i64> {
        self.shared.high_watermark.subscribe()
    }

    /// First offset still in the log.
    pub fn log_start_offset(&self) -> i64 {
        self.shared.log.read().log_start_offset()
    }

    /// Next offset to be written (may be ahead of the high watermark while a group is syncing).
    pub fn log_end_offset(&self) -> i64 {
        self.shared.log.read().log_end_offset()
    }

    /// Bytes in all segments.
    pub fn size_bytes(&self) -> u64 {
        self.shared.log.read().size_bytes()
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.shared.log.read().segment_count()
    }

    /// Earliest offset (below the high watermark) whose timestamp is `>= timestamp`, with that
    /// timestamp; see [`PartitionLog::offset_for_timestamp`](crate::log::PartitionLog::offset_for_timestamp).
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<(i64, i64)>> {
        let hw = self.high_watermark();
        let found = self.shared.log.read().offset_for_timestamp(timestamp)?;
        Ok(found.filter(|(offset, _)| *offset < hw))
    }

    /// The offset and timestamp of the newest-timestamped record below the high watermark.
    pub fn max_timestamp_offset(&self) -> Result<Option<(i64, i64)>> {
        let hw = self.high_watermark();
        let found = self.shared.log.read().max_timestamp_offset()?;
        Ok(found.filter(|(offset, _)| *offset < hw))
    }
}
