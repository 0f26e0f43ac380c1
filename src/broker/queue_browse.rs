//! Browsing a queue without consuming it: the admin API's view of a dead-letter queue.
//!
//! A queue is a log with cursors (ARCHITECTURE rule 4), so looking at its ready messages is a
//! read of the log at the offsets the cursors call ready; nothing is claimed, nothing is
//! persisted, consumers see exactly what they would have seen. Kept apart from `queue.rs` so
//! the delivery-state code and this read-only view change independently; it uses only the
//! queue's crate-visible API.

use super::queue::{Queue, QueuedMessage};
use crate::log::LogError;

impl Queue {
    /// Up to `max` ready messages, oldest requeued first then fresh ones in log order, read
    /// without changing delivery state (a priority queue would deliver them in another order).
    /// A message settled between listing and reading is simply left out. `redelivered` and
    /// `delivery_count` are not tracked by a browse (always false and 0).
    pub fn peek(&self, max: usize) -> Result<Vec<QueuedMessage>, LogError> {
        if max == 0 || self.is_deleted() {
            return Ok(Vec::new());
        }
        let offsets = self.ready_offsets(max);
        let mut records = self.read(&offsets)?;
        Ok(offsets
            .into_iter()
            .filter_map(|offset| {
                records.remove(&offset).map(|record| QueuedMessage {
                    offset,
                    redelivered: false,
                    delivery_count: 0,
                    record,
                })
            })
            .collect())
    }
}
