//! Limits enforced on the delivery state before every claim and count, and on a timer by the
//! router's maintenance task: message TTLs, per-message expiry at the head, max-length and
//! max-length-bytes with drop-head, and the dead letters they produce.

use super::*;

impl Queue {
    /// Brings the size book up to the high watermark: appends that landed move from
    /// `inflight` to `by_offset` and count as ready; offsets nobody submitted in this process
    /// (messages from before a restart) are read once for their sizes.
    pub(super) fn sync_sizes(&self, c: &mut Counters, hw: i64) {
        let Some(sz) = c.sizes.as_mut() else {
            return;
        };
        let mut missing = Vec::new();
        if c.scan_requeued {
            c.scan_requeued = false;
            missing.extend(c.state.requeued.iter().copied());
            missing.extend(c.state.delayed.keys().copied());
        }
        while sz.known_upto < hw {
            let o = sz.known_upto;
            match sz.inflight.pop_front() {
                Some(n) => {
                    sz.by_offset.insert(o, n);
                    sz.ready_bytes += u64::from(n);
                }
                None => missing.push(o),
            }
            sz.known_upto += 1;
        }
        if missing.is_empty() {
            return;
        }
        match self.read_records(&missing) {
            Ok(records) => {
                for (o, r) in records {
                    let n = body_len(&r);
                    sz.by_offset.insert(o, n);
                    sz.ready_bytes += u64::from(n);
                }
            }
            Err(e) => {
                // Sizes stay unknown (counted as 0): a byte limit is enforced late, never
                // by losing a message.
                tracing::warn!(queue = %self.def.name, error = %e, "reading message sizes failed")
            }
        }
    }

    /// Moves fresh messages from the cursor into a priority queue's index, up to the window.
    pub(super) fn absorb(&self, c: &mut Counters, hw: i64) {
        let Some(ix) = c.prio.as_mut() else {
            return;
        };
        let st = &mut c.state;
        let mut unknown: Vec<i64> = Vec::new();
        if ix.scan {
            ix.scan = false;
            unknown.extend(st.requeued.iter().copied());
        }
        // The cursor may have moved past pending priorities (purge, TTL, overflow).
        while ix.base < st.next {
            ix.pending.pop_front();
            ix.base += 1;
        }
        let room = PRIORITY_WINDOW.saturating_sub(st.requeued.len()) as i64;
        let end = hw.min(st.next.saturating_add(room));
        let mut known: Vec<(i64, u8)> = Vec::new();
        while st.next < end {
            let o = st.next;
            match ix.pending.front().copied().filter(|_| o == ix.base) {
                Some(p) => {
                    ix.pending.pop_front();
                    ix.base += 1;
                    known.push((o, p));
                }
                None => unknown.push(o),
            }
            st.requeued.insert(o);
            ix.fresh.insert(o);
            st.next += 1;
        }
        for (o, p) in known {
            ix.add(o, p);
        }
        if unknown.is_empty() {
            return;
        }
        match self.read_records(&unknown) {
            Ok(records) => {
                for o in unknown {
                    let p = records.get(&o).map_or(0, record_priority);
                    ix.add(o, p);
                }
            }
            Err(e) => {
                // Delivered at priority 0 rather than not at all.
                tracing::warn!(queue = %self.def.name, error = %e, "reading message priorities failed");
                for o in unknown {
                    ix.add(o, 0);
                }
            }
        }
    }

    /// The head's own expiry, reading it once per head.
    pub(super) fn head_expiry(&self, c: &mut Counters, head: i64) -> Option<i64> {
        if let Some((o, at)) = c.head_expiry {
            if o == head {
                return at;
            }
        }
        let at = match self.read_records(&[head]) {
            Ok(r) => r.get(&head).and_then(record_expiry),
            Err(_) => None,
        };
        c.head_expiry = Some((head, at));
        at
    }

    /// Applies TTLs and length limits to the ready messages. Removed ones are settled, or with
    /// a dead-letter exchange, kept unacked and queued for the maintenance task. Called with
    /// the state lock held.
    pub(super) fn enforce_limits(&self, c: &mut Counters, hw: i64) {
        self.release_due(c);
        self.sync_sizes(c, hw);
        self.absorb(c, hw);
        let mut removed: Vec<(i64, DeathReason)> = Vec::new();
        if let Some(ttl) = self.limits.message_ttl_ms {
            let st = &mut c.state;
            let cutoff = self.clock.now_ms().saturating_sub(ttl);
            // Records are stamped with their enqueue time, in offset order: everything below
            // the first record younger than the cutoff has expired.
            let boundary = match self.log.offset_for_timestamp(cutoff.saturating_add(1)) {
                Ok(Some((o, _))) => o.min(hw),
                Ok(None) => hw,
                Err(_) => st.next.min(hw),
            };
            while let Some(o) = st.requeued.first().copied().filter(|o| *o < boundary) {
                st.requeued.remove(&o);
                removed.push((o, DeathReason::Expired));
            }
            while st.next < boundary {
                removed.push((st.next, DeathReason::Expired));
                st.next += 1;
            }
        }
        if c.ttl_seen && c.state.requeued.is_empty() && c.state.next >= hw {
            // Nothing is ready and no submitted message is still on its way into the log:
            // no message can carry a TTL any more, so heads need not be read for one until a
            // publish with a TTL comes (a queue reopened with messages starts flagged).
            if c.appends_expected <= hw {
                c.ttl_seen = false;
            }
        }
        if c.ttl_seen {
            // Per-message TTL, RabbitMQ's way: only the head expires. A message behind an
            // unexpired one waits until it reaches the head (it is never delivered expired,
            // because delivery takes from the head after this check).
            let now = self.clock.now_ms();
            while let Some(head) = head_of(c, hw) {
                match self.head_expiry(c, head) {
                    Some(at) if at <= now => {
                        remove_head(c, head);
                        removed.push((head, DeathReason::Expired));
                    }
                    _ => break,
                }
            }
        }
        if let Some(sz) = c.sizes.as_mut() {
            for (o, _) in &removed {
                sz.leave_ready(*o);
            }
        }
        if self.limits.overflow == Overflow::DropHead {
            let mut ready = (hw - c.state.next).max(0) as u64 + c.state.requeued.len() as u64;
            loop {
                let over_count = self.limits.max_length.is_some_and(|m| ready > m);
                let over_bytes = match (self.limits.max_length_bytes, c.sizes.as_ref()) {
                    (Some(m), Some(sz)) => sz.ready_bytes > m,
                    _ => false,
                };
                if ready == 0 || !(over_count || over_bytes) {
                    break;
                }
                let Some(o) = head_of(c, hw) else {
                    break;
                };
                remove_head(c, o);
                if let Some(sz) = c.sizes.as_mut() {
                    sz.leave_ready(o);
                }
                removed.push((o, DeathReason::MaxLen));
                ready -= 1;
            }
        }
        if removed.is_empty() {
            return;
        }
        for (o, _) in &removed {
            c.state.returns.remove(o);
            if let Some(ix) = c.prio.as_mut() {
                if self.limits.dead_letter_exchange.is_some() {
                    ix.unready(*o);
                } else {
                    ix.settle(*o);
                }
            }
        }
        if self.limits.dead_letter_exchange.is_some() {
            c.state.unacked.extend(removed.iter().map(|(o, _)| *o));
            self.dead.lock().extend(removed);
            self.maintenance.notify_one();
        } else if let Some(sz) = c.sizes.as_mut() {
            for (o, _) in &removed {
                sz.settle(*o);
            }
        }
        self.persist(&c.state);
    }

    /// Runs the limits now (the maintenance task's tick).
    pub fn enforce_now(&self) {
        let hw = self.log.high_watermark();
        let mut inner = self.inner.lock();
        let delayed = inner.state.delayed.len();
        self.enforce_limits(&mut inner, hw);
        let now = self.clock.now_ms();
        // Consumers wait on appends and requeues; a released retry or a breaker whose
        // cool-down ended is neither, so wake them here.
        let wake = inner.state.delayed.len() < delayed
            || inner.slots.iter().any(|slot| {
                slot.breaker
                    .as_ref()
                    .and_then(Breaker::wake_at)
                    .is_some_and(|at| at <= now)
            });
        drop(inner);
        if wake {
            self.ready_tx.send_modify(|v| *v += 1);
        }
    }

    /// Takes the messages waiting to be dead-lettered.
    pub fn take_dead(&self) -> Vec<(i64, DeathReason)> {
        std::mem::take(&mut *self.dead.lock())
    }

    /// Resolves when dead letters are waiting.
    pub async fn dead_letters_waiting(&self) {
        self.maintenance.notified().await
    }

    /// When the maintenance task next has something to do (ms since the epoch): the oldest
    /// ready message expiring by `x-message-ttl` or by its own TTL, or `x-expires` running out.
    pub fn next_expiry_ms(&self) -> Option<i64> {
        let hw = self.log.high_watermark();
        let mut due: Option<i64> = self
            .limits
            .expires_ms
            .map(|e| self.last_used_ms.load(Ordering::Acquire).saturating_add(e));
        let mut inner = self.inner.lock();
        let mut earliest = |at: i64| due = Some(due.map_or(at, |d| d.min(at)));
        if let Some((at, _)) = inner.delayed_by_due.first() {
            earliest(*at);
        }
        for slot in &inner.slots {
            if let Some(at) = slot.breaker.as_ref().and_then(Breaker::wake_at) {
                earliest(at);
            }
        }
        let Some(head) = head_of(&inner, hw) else {
            return due;
        };
        if inner.ttl_seen {
            if let Some(at) = self.head_expiry(&mut inner, head) {
                earliest(at);
            }
        }
        drop(inner);
        if let Some(ttl) = self.limits.message_ttl_ms {
            if let Ok(records) = self.read_records(&[head]) {
                if let Some(r) = records.get(&head) {
                    earliest(r.timestamp.saturating_add(ttl));
                }
            }
        }
        due
    }
}
