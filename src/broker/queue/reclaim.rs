//! The low-water mark, deletion of fully settled segments, and writing the delivery state.

use super::*;

impl Queue {
    /// The low-water mark: every offset below it is settled.
    pub fn low_water_mark(&self) -> i64 {
        self.inner.lock().state.low_water_mark()
    }

    /// Deletes the log segments whose messages are all settled (ARCHITECTURE rule 4), so a
    /// queue's disk use follows its backlog, not its history. Cheap on the ack path: the
    /// boundary to cross (the second segment's base) is cached, and looked up again only
    /// every 256 calls while the log has a single segment.
    pub(super) fn reclaim_settled(&self, low: i64) {
        let mut boundary = self.reclaim_at.load(Ordering::Acquire);
        if boundary == i64::MAX {
            if self.reclaim_polls.fetch_add(1, Ordering::Relaxed) % 256 != 0 {
                return;
            }
            boundary = self.log.second_segment_base().unwrap_or(i64::MAX);
            self.reclaim_at.store(boundary, Ordering::Release);
        }
        // No-ack claims being read hold their segments (they are settled before they are read).
        let low = self
            .reads_in_flight
            .lock()
            .iter()
            .copied()
            .fold(low, i64::min);
        if low < boundary || self.is_deleted() {
            return;
        }
        match self.log.delete_segments_below(low) {
            Ok(report) if report.deleted_segments > 0 => {
                tracing::debug!(queue = %self.def.name, segments = report.deleted_segments, bytes = report.deleted_bytes, "deleted settled queue segments");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(queue = %self.def.name, error = %e, "deleting settled queue segments failed")
            }
        }
        self.reclaim_at.store(
            self.log.second_segment_base().unwrap_or(i64::MAX),
            Ordering::Release,
        );
    }

    /// Marks the delivery state changed. Durable queues write it to the meta store a few
    /// milliseconds later through the router's [`StateFlusher`], once for all the changes
    /// in between (see [`StateFlusher`] for why that loses nothing); without a flusher, now.
    pub(super) fn persist(&self, st: &DeliveryState) {
        if self.meta.is_none() || self.is_deleted() {
            return;
        }
        match &self.flusher {
            Some(f) => {
                if !self.state_dirty.swap(true, Ordering::AcqRel) {
                    f.mark(&self.def.vhost, &self.def.name);
                }
            }
            None => self.write_state(st),
        }
    }

    /// Writes the delivery state now if it changed since the last write.
    pub(crate) fn persist_now(&self) {
        if !self.state_dirty.swap(false, Ordering::AcqRel) || self.is_deleted() {
            return;
        }
        let encoded = self.inner.lock().state.encode();
        self.write_encoded(&encoded);
    }

    pub(super) fn write_state(&self, st: &DeliveryState) {
        self.write_encoded(&st.encode());
    }

    pub(super) fn write_encoded(&self, encoded: &[u8]) {
        let Some(meta) = &self.meta else { return };
        if let Err(e) = meta.put_queue_state(&self.def.vhost, &self.def.name, encoded) {
            // The in-memory state stays right; a restart would redeliver, never lose.
            tracing::error!(queue = %self.def.name, error = %e, "persisting queue state failed");
        }
    }

    /// Bytes of the persisted state, for tests of the on-disk design.
    pub fn encoded_state(&self) -> Vec<u8> {
        self.inner.lock().state.encode()
    }

    /// Up to `max` offsets of ready messages, in delivery order for a plain queue (requeued
    /// ones first, then fresh ones from the cursor), without claiming them. For the admin
    /// API's browse ([`crate::broker::queue_browse`]), which must not change delivery state.
    pub(crate) fn ready_offsets(&self, max: usize) -> Vec<i64> {
        let hw = self.log.high_watermark();
        let mut inner = self.inner.lock();
        self.enforce_limits(&mut inner, hw);
        let st = &inner.state;
        let mut out: Vec<i64> = st.requeued.iter().copied().take(max).collect();
        let mut o = st.next;
        while out.len() < max && o < hw {
            out.push(o);
            o += 1;
        }
        out
    }
}
