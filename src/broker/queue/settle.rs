//! Settling deliveries: ack, requeue (with delivery counts and delayed retries), restore
//! after a restart, purge.

use super::*;

impl Queue {
    /// Settles unacked offsets (ack, reject/nack without requeue). Unknown offsets are ignored.
    pub fn ack(&self, offsets: &[i64]) {
        let mut inner = self.inner.lock();
        let c = &mut *inner;
        let mut changed = false;
        for o in offsets {
            if c.state.unacked.remove(o) {
                changed = true;
                c.state.returns.remove(o);
                if let Some(sz) = c.sizes.as_mut() {
                    sz.settle(*o);
                }
                if let Some(ix) = c.prio.as_mut() {
                    ix.settle(*o);
                }
            }
        }
        if changed {
            self.persist(&c.state);
            let low = c.state.low_water_mark();
            drop(inner);
            self.reclaim_settled(low);
        }
    }

    /// Returns unacked offsets to the queue because the consumer failed them (basic.nack or
    /// basic.reject with requeue), to be delivered again with `redelivered` set. Each return
    /// counts as a delivery attempt; past `x-delivery-limit` the message is dead-lettered (or
    /// dropped without a dead-letter exchange) instead, as RabbitMQ's quorum queues do; with
    /// `x-delayed-retry-*` it waits out its backoff first.
    pub fn requeue(&self, offsets: &[i64]) {
        self.return_to_queue(offsets, ReturnKind::Failed)
    }

    /// Returns unacked offsets whose channel closed (or basic.recover, a cancelled consumer):
    /// like [`requeue`](Self::requeue), but delayed only with `x-delayed-retry-type` `returned`
    /// or `all`.
    pub fn requeue_returned(&self, offsets: &[i64]) {
        self.return_to_queue(offsets, ReturnKind::Returned)
    }

    pub(super) fn return_to_queue(&self, offsets: &[i64], kind: ReturnKind) {
        let now = self.clock.now_ms();
        let retry = self.limits.retry.filter(|r| r.applies_to(kind));
        let mut inner = self.inner.lock();
        let c = &mut *inner;
        let mut changed = false;
        let mut over = Vec::new();
        for o in offsets {
            if !c.state.unacked.contains(o) {
                continue;
            }
            changed = true;
            let mut attempts = 0;
            if self.limits.counts_returns() {
                let n = c.state.returns.entry(*o).or_insert(0);
                *n = n.saturating_add(1);
                attempts = *n;
                if self
                    .limits
                    .delivery_limit
                    .is_some_and(|limit| attempts > limit)
                {
                    c.state.returns.remove(o);
                    over.push(*o);
                    continue;
                }
            }
            c.state.unacked.remove(o);
            if let Some(policy) = retry {
                let due = now.saturating_add(policy.delay_ms(attempts));
                c.state.delayed.insert(*o, due);
                c.delayed_by_due.insert((due, *o));
                metrics::counter!("ferry_retries_scheduled_total").increment(1);
                continue;
            }
            c.state.requeued.insert(*o);
            if let Some(sz) = c.sizes.as_mut() {
                sz.enter_ready(*o);
            }
            if let Some(ix) = c.prio.as_mut() {
                ix.readd(*o);
            }
        }
        if !over.is_empty() {
            if self.limits.dead_letter_exchange.is_some() {
                // They stay unacked until the maintenance task has their copies durable.
                self.dead
                    .lock()
                    .extend(over.iter().map(|o| (*o, DeathReason::DeliveryLimit)));
                self.maintenance.notify_one();
            } else {
                for o in &over {
                    c.state.unacked.remove(o);
                    if let Some(sz) = c.sizes.as_mut() {
                        sz.settle(*o);
                    }
                    if let Some(ix) = c.prio.as_mut() {
                        ix.settle(*o);
                    }
                }
            }
        }
        if changed {
            self.persist(&c.state);
            drop(inner);
            self.ready_tx.send_modify(|v| *v += 1);
        }
    }

    /// Makes delayed retries whose time has come ready again (oldest offset first, like any
    /// requeued message). Called with the state lock held, before every claim and count.
    pub(super) fn release_due(&self, c: &mut Counters) -> usize {
        if c.delayed_by_due.is_empty() {
            return 0;
        }
        let now = self.clock.now_ms();
        let mut released = 0;
        while let Some(&(due, o)) = c.delayed_by_due.first() {
            if due > now {
                break;
            }
            c.delayed_by_due.pop_first();
            if c.state.delayed.remove(&o).is_none() {
                continue;
            }
            released += 1;
            c.state.requeued.insert(o);
            if let Some(sz) = c.sizes.as_mut() {
                sz.enter_ready(o);
            }
            if let Some(ix) = c.prio.as_mut() {
                ix.readd(o);
            }
        }
        released
    }

    /// Messages waiting out a retry delay.
    pub fn delayed_count(&self) -> u64 {
        self.inner.lock().state.delayed.len() as u64
    }

    /// Returns unacked offsets without counting a delivery attempt (a dead-letter copy that
    /// could not be written: the broker failed, not the consumer).
    pub fn restore(&self, offsets: &[i64]) {
        let mut inner = self.inner.lock();
        let c = &mut *inner;
        let mut changed = false;
        for o in offsets {
            if c.state.unacked.remove(o) {
                c.state.requeued.insert(*o);
                if let Some(sz) = c.sizes.as_mut() {
                    sz.enter_ready(*o);
                }
                if let Some(ix) = c.prio.as_mut() {
                    ix.readd(*o);
                }
                changed = true;
            }
        }
        if changed {
            self.persist(&c.state);
            drop(inner);
            self.ready_tx.send_modify(|v| *v += 1);
        }
    }

    /// Settles every ready message (not the unacked ones); returns how many.
    pub fn purge(&self) -> u64 {
        let hw = self.log.high_watermark();
        let mut inner = self.inner.lock();
        self.sync_sizes(&mut inner, hw);
        let c = &mut *inner;
        let st = &mut c.state;
        let fresh = (hw - st.next).max(0) as u64;
        let count = fresh + st.requeued.len() as u64 + st.delayed.len() as u64;
        if let Some(sz) = c.sizes.as_mut() {
            for o in st
                .requeued
                .iter()
                .chain(st.delayed.keys())
                .copied()
                .chain(st.next..hw)
            {
                sz.settle(o);
            }
            sz.ready_bytes = 0;
        }
        for o in st.delayed.keys() {
            st.returns.remove(o);
            if let Some(ix) = c.prio.as_mut() {
                ix.settle(*o);
            }
        }
        st.delayed.clear();
        c.delayed_by_due.clear();
        for o in &st.requeued {
            st.returns.remove(o);
            if let Some(ix) = c.prio.as_mut() {
                ix.settle(*o);
            }
        }
        st.next = st.next.max(hw);
        st.requeued.clear();
        self.persist(st);
        let low = st.low_water_mark();
        drop(inner);
        self.reclaim_settled(low);
        count
    }
}
