//! Flow control toward publishers, in the spirit of RabbitMQ's credit flow: when a queue's
//! delivery falls behind its publishers, their connections stop reading their sockets for a
//! moment, and TCP carries the back-pressure to the publishing clients.
//!
//! The signal is deliberately not the ready count alone. A backlog in a queue nobody consumes,
//! or whose consumers have all used up their prefetch (the application is slow, not the
//! broker), is a backlog users want: publishers are not held for it, as RabbitMQ does not hold
//! them (its credit flow only reacts to its own processes falling behind). A queue holds its
//! publishers when more than [`FLOW_HIGH`] messages are ready *while some consumer could take
//! them* (it has prefetch credit and no open circuit breaker): deliveries are not keeping up
//! with appends, and every further message only waits longer. It releases them once the
//! ready count falls to [`FLOW_LOW`], or once no consumer can take any more (so a connection
//! that both publishes and consumes cannot hold itself: its unread acks leave its consumer
//! without credit), or the queue is deleted. The adapter also bounds each hold in time.
//!
//! Cost on the hot path: one atomic load per publish per queue, and the check below under the
//! queue lock that `submit` and `take` already hold.

use super::*;

/// Ready messages (counting appends not yet landed) above which a queue whose consumers have
/// credit holds its publishers. About what RabbitMQ's credit chain lets pile up between a
/// reader and a queue (initial credit 400 per hop, several hops), and at ~150k messages/s
/// about 10 ms of waiting.
pub const FLOW_HIGH: u64 = 2048;
/// Ready messages at or below which held publishers are released.
pub const FLOW_LOW: u64 = 1024;

impl Counters {
    fn ready_for_flow(&self) -> u64 {
        (self.appends_expected - self.state.next).max(0) as u64 + self.state.requeued.len() as u64
    }

    /// Some consumer could take a message now.
    fn draining(&self) -> bool {
        self.slots.iter().any(|s| {
            s.has_credit
                && s.breaker
                    .as_ref()
                    .is_none_or(|b| b.state() == BreakerState::Closed)
        })
    }
}

impl Queue {
    /// Whether publishers to this queue should be held now (see the module docs).
    pub fn flow_wanted(&self) -> bool {
        self.flow_on.load(Ordering::Acquire)
    }

    /// After an append was queued (under the queue lock): raises flow control when the
    /// backlog passed [`FLOW_HIGH`] while consumers could take it.
    pub(super) fn flow_after_submit(&self, c: &Counters) {
        if !self.flow_on.load(Ordering::Relaxed) && c.ready_for_flow() > FLOW_HIGH && c.draining() {
            self.flow_on.store(true, Ordering::Release);
        }
    }

    /// After messages left the ready set or consumers changed (under the queue lock): releases
    /// held publishers once the backlog is down to [`FLOW_LOW`] or nobody can take more.
    pub(super) fn flow_after_drain(&self, c: &Counters) {
        if self.flow_on.load(Ordering::Relaxed)
            && (c.ready_for_flow() <= FLOW_LOW || !c.draining() || self.is_deleted())
        {
            self.flow_release();
        }
    }

    pub(super) fn flow_release(&self) {
        self.flow_on.store(false, Ordering::Release);
        self.flow_released.notify_waiters();
    }

    /// Waits until flow control on this queue is released, at most `limit`. `true` if it was
    /// released, `false` if the time ran out first.
    pub async fn flow_wait(&self, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let released = self.flow_released.notified();
            tokio::pin!(released);
            // Registered before the check, so a release in between is not missed.
            released.as_mut().enable();
            if !self.flow_wanted() {
                return true;
            }
            tokio::select! {
                _ = &mut released => {}
                _ = tokio::time::sleep_until(deadline) => return !self.flow_wanted(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(ready: i64, credit: Option<bool>) -> Counters {
        let mut slots = Vec::new();
        if let Some(has_credit) = credit {
            slots.push(ConsumerSlot {
                id: 1,
                priority: 0,
                has_credit,
                breaker: None,
            });
        }
        Counters {
            state: DeliveryState::default(),
            consumers: slots.len() as u32,
            slots,
            next_consumer_id: 1,
            sizes: None,
            ttl_seen: false,
            head_expiry: None,
            scan_requeued: false,
            prio: None,
            appends_expected: ready,
            delayed_by_due: BTreeSet::new(),
        }
    }

    #[test]
    fn a_backlog_only_counts_while_a_consumer_could_take_it() {
        let over = FLOW_HIGH as i64 + 1;
        assert!(counters(over, Some(true)).draining());
        assert!(counters(over, Some(true)).ready_for_flow() > FLOW_HIGH);
        // No consumers, or consumers out of prefetch credit: the backlog is the users'.
        assert!(!counters(over, None).draining());
        assert!(!counters(over, Some(false)).draining());
    }
}
