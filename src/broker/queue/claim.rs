//! Claiming messages for delivery (`basic.get`, push consumers): ready offsets in order
//! (requeued first, priority order in priority queues), read back from the log.

use super::*;

/// How many bytes of log one read asks for when fetching messages for delivery.
pub(super) const READ_CHUNK: usize = 256 * 1024;

impl Queue {
    /// Claims up to `max` ready messages (requeued first, then fresh ones in log order) and
    /// reads them. With `settle` the claim settles them at once (no-ack consumers, basic.get
    /// with no-ack); otherwise they are unacked until [`ack`](Self::ack) or
    /// [`requeue`](Self::requeue).
    pub fn take(&self, max: usize, settle: bool) -> Result<Vec<QueuedMessage>, LogError> {
        if max == 0 || self.is_deleted() {
            return Ok(Vec::new());
        }
        let hw = self.log.high_watermark();
        let mut claimed: Vec<(i64, bool, u32)> = Vec::new();
        {
            let mut inner = self.inner.lock();
            self.enforce_limits(&mut inner, hw);
            let c = &mut *inner;
            let st = &mut c.state;
            while claimed.len() < max {
                let next_ready = match c.prio.as_mut() {
                    Some(ix) => ix.pop_highest().inspect(|o| {
                        st.requeued.remove(o);
                    }),
                    None => st.requeued.pop_first(),
                };
                let Some(o) = next_ready else {
                    break;
                };
                // A message never handed out is not redelivered, even from the index.
                let redelivered = match c.prio.as_mut() {
                    Some(ix) => {
                        let fresh = ix.fresh.remove(&o);
                        if settle {
                            ix.settle(o);
                        }
                        !fresh
                    }
                    None => true,
                };
                let returns = if settle {
                    st.returns.remove(&o)
                } else {
                    st.returns.get(&o).copied()
                };
                claimed.push((o, redelivered, returns.unwrap_or(0)));
            }
            // A priority queue delivers only through its index (absorb fills it).
            while c.prio.is_none() && claimed.len() < max && st.next < hw {
                claimed.push((st.next, false, 0));
                st.next += 1;
            }
            if claimed.is_empty() {
                return Ok(Vec::new());
            }
            if let Some(sz) = c.sizes.as_mut() {
                for (o, _, _) in &claimed {
                    sz.leave_ready(*o);
                    if settle {
                        sz.settle(*o);
                    }
                }
            }
            if !settle {
                st.unacked.extend(claimed.iter().map(|(o, _, _)| *o));
            }
            self.persist(st);
            if settle {
                // Settled already, but not read yet: their segments must stay until then.
                if let Some(first) = claimed.iter().map(|(o, _, _)| *o).min() {
                    self.reads_in_flight.lock().push(first);
                }
            }
        }
        let offsets: Vec<i64> = claimed.iter().map(|(o, _, _)| *o).collect();
        let read_guard = settle.then(|| offsets.iter().copied().min()).flatten();
        let result = self.read_claimed(claimed, offsets);
        if let Some(first) = read_guard {
            let mut reads = self.reads_in_flight.lock();
            if let Some(i) = reads.iter().position(|o| *o == first) {
                reads.swap_remove(i);
            }
        }
        if settle {
            // Only now that the claimed records are read may their segments go.
            let low = self.low_water_mark();
            self.reclaim_settled(low);
        }
        result
    }

    /// Reads the records of a claim made by [`take`](Self::take).
    pub(super) fn read_claimed(
        &self,
        claimed: Vec<(i64, bool, u32)>,
        offsets: Vec<i64>,
    ) -> Result<Vec<QueuedMessage>, LogError> {
        let records = match self.read_records(&offsets) {
            Ok(r) => r,
            Err(e) => {
                // Give the claim back so the messages are not lost to a transient read error.
                let mut inner = self.inner.lock();
                let c = &mut *inner;
                for o in &offsets {
                    c.state.unacked.remove(o);
                    c.state.requeued.insert(*o);
                    if let Some(sz) = c.sizes.as_mut() {
                        sz.enter_ready(*o);
                    }
                    if let Some(ix) = c.prio.as_mut() {
                        ix.readd(*o);
                    }
                }
                self.persist(&c.state);
                return Err(e);
            }
        };
        let mut out = Vec::with_capacity(claimed.len());
        let mut missing = Vec::new();
        for (offset, redelivered, delivery_count) in claimed {
            match records.get(&offset) {
                Some(record) => out.push(QueuedMessage {
                    offset,
                    redelivered,
                    delivery_count,
                    record: record.clone(),
                }),
                None => missing.push(offset),
            }
        }
        if !missing.is_empty() {
            // An offset with no record (a foreign batch we cannot decode): settle it rather
            // than hand it out again forever.
            tracing::warn!(queue = %self.def.name, ?missing, "queue offsets without a readable record; skipping");
            self.ack(&missing);
        }
        Ok(out)
    }

    /// Reads the records at `offsets` (any order) from the log.
    pub(super) fn read_records(
        &self,
        offsets: &[i64],
    ) -> Result<std::collections::HashMap<i64, SimpleRecord>, LogError> {
        let mut wanted: Vec<i64> = offsets.to_vec();
        wanted.sort_unstable();
        let mut found = std::collections::HashMap::with_capacity(wanted.len());
        let mut i = 0;
        while i < wanted.len() {
            let at = wanted[i];
            if found.contains_key(&at) {
                i += 1;
                continue;
            }
            // Ask for about as much log as the run of consecutive offsets needs (the first
            // batch always comes whole), so a prefetch-1 consumer does not read 256 KiB per
            // message.
            let run = wanted[i..]
                .windows(2)
                .take_while(|w| w[1] == w[0] + 1)
                .count()
                + 1;
            let slice = self.log.read(at, (run * 1024).min(READ_CHUNK))?;
            if slice.bytes.is_empty() {
                i += 1;
                continue;
            }
            let mut buf = slice.bytes.clone();
            // The read covers ~1 KiB per wanted message, i.e. many small batches past the run:
            // only the batches holding the run are decoded.
            let last_wanted = wanted[i + run - 1];
            while buf.has_remaining() {
                if let Ok(h) = crate::log::BatchHeader::parse(&buf) {
                    if h.base_offset > last_wanted {
                        break;
                    }
                    if h.last_offset() < at && h.total_size() <= buf.len() {
                        buf.advance(h.total_size());
                        continue;
                    }
                }
                let records = match crate::log::batch::decode_next_batch(&mut buf) {
                    Ok(records) => records,
                    Err(e) => {
                        tracing::warn!(queue = %self.def.name, error = %e, "undecodable batch in queue log");
                        break;
                    }
                };
                for r in records {
                    if r.is_control || wanted.binary_search(&r.offset).is_err() {
                        continue;
                    }
                    found.insert(r.offset, r.record);
                }
            }
            i += 1;
        }
        Ok(found)
    }
}
