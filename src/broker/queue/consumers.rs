//! Counts, registered consumers (priorities, single active consumer, credit) and their
//! circuit breakers, and the watches push consumers wait on.

use super::*;

impl Queue {
    /// Messages in the queue and not handed out: fresh ones below the high watermark,
    /// requeued ones, and those waiting out a retry delay (they are in the queue, only not
    /// deliverable yet; [`delayed_count`](Self::delayed_count) tells them apart).
    pub fn message_count(&self) -> u64 {
        let hw = self.log.high_watermark();
        let mut inner = self.inner.lock();
        self.enforce_limits(&mut inner, hw);
        (hw - inner.state.next).max(0) as u64
            + inner.state.requeued.len() as u64
            + inner.state.delayed.len() as u64
    }

    /// Messages handed out and not settled.
    pub fn unacked_count(&self) -> u64 {
        self.inner.lock().state.unacked.len() as u64
    }

    pub fn consumer_count(&self) -> u32 {
        self.inner.lock().consumers
    }

    /// Registers a consumer with its priority (`x-priority`, default 0); returns its id for
    /// [`may_take`](Self::may_take), [`set_credit`](Self::set_credit) and
    /// [`remove_consumer`](Self::remove_consumer).
    pub fn add_consumer(&self, priority: i32) -> u64 {
        self.add_consumer_with(priority, None)
    }

    /// [`add_consumer`](Self::add_consumer) with the consumer's own circuit breaker policy
    /// (from its basic.consume arguments), which overrides the queue's.
    pub fn add_consumer_with(&self, priority: i32, breaker: Option<BreakerPolicy>) -> u64 {
        self.touch();
        let mut inner = self.inner.lock();
        inner.consumers += 1;
        inner.next_consumer_id += 1;
        let id = inner.next_consumer_id;
        inner.slots.push(ConsumerSlot {
            id,
            priority,
            has_credit: true,
            breaker: breaker.or(self.limits.breaker).map(Breaker::new),
        });
        drop(inner);
        // A new consumer can change who is allowed to take.
        self.ready_tx.send_modify(|v| *v += 1);
        id
    }

    /// Returns the remaining consumer count.
    pub fn remove_consumer(&self, id: u64) -> u32 {
        self.touch();
        let mut inner = self.inner.lock();
        inner.consumers = inner.consumers.saturating_sub(1);
        if let Some(slot) = inner.slots.iter().find(|c| c.id == id) {
            if slot.breaker.is_some() {
                self.breaker_gauge(id, BreakerState::Closed);
            }
        }
        inner.slots.retain(|c| c.id != id);
        let left = inner.consumers;
        drop(inner);
        // The next single active consumer, or lower-priority ones, may take now.
        self.ready_tx.send_modify(|v| *v += 1);
        left
    }

    /// Records whether a consumer can take messages now (it has prefetch credit). Consumers
    /// of lower priority wait only while a higher one has credit, so a change wakes them.
    pub fn set_credit(&self, id: u64, has_credit: bool) {
        let mut inner = self.inner.lock();
        let Some(slot) = inner.slots.iter_mut().find(|c| c.id == id) else {
            return;
        };
        if slot.has_credit == has_credit {
            return;
        }
        slot.has_credit = has_credit;
        drop(inner);
        self.ready_tx.send_modify(|v| *v += 1);
    }

    /// Whether a consumer may take messages now. With `x-single-active-consumer` only the
    /// active one may: the highest priority, earliest registered (RabbitMQ). Otherwise a
    /// consumer waits while any consumer of higher priority has credit (consumer priorities:
    /// higher ones get messages first, lower ones when the higher are full).
    pub fn may_take(&self, id: u64) -> bool {
        let inner = self.inner.lock();
        let Some(me) = inner.slots.iter().find(|c| c.id == id) else {
            return false;
        };
        if self.limits.single_active_consumer {
            let mut active: Option<&ConsumerSlot> = None;
            for c in &inner.slots {
                if active.is_none_or(|a| c.priority > a.priority) {
                    active = Some(c);
                }
            }
            return active.is_some_and(|a| a.id == id);
        }
        !inner
            .slots
            .iter()
            .any(|c| c.priority > me.priority && c.has_credit)
    }

    /// [`take`](Self::take) for consumer `id`, within what its circuit breaker allows: nothing
    /// while open, one probe while half-open.
    pub fn take_for(
        &self,
        id: u64,
        max: usize,
        settle: bool,
    ) -> Result<Vec<QueuedMessage>, LogError> {
        let now = self.clock.now_ms();
        let max = {
            let mut inner = self.inner.lock();
            match inner
                .slots
                .iter_mut()
                .find(|c| c.id == id)
                .and_then(|c| c.breaker.as_mut())
            {
                Some(b) => {
                    let (allowed, change) = b.allowance(now, max);
                    if let Some(state) = change {
                        drop(inner);
                        self.breaker_changed(id, state);
                    }
                    allowed
                }
                None => max,
            }
        };
        let msgs = self.take(max, settle)?;
        if !msgs.is_empty() {
            let mut inner = self.inner.lock();
            if let Some(b) = inner
                .slots
                .iter_mut()
                .find(|c| c.id == id)
                .and_then(|c| c.breaker.as_mut())
            {
                b.delivered(msgs.len());
            }
        }
        Ok(msgs)
    }

    /// Feeds consumer `id`'s circuit breaker with the outcome of `n` of its deliveries: acks
    /// (`success`) or nacks/rejects.
    pub fn record_outcome(&self, id: u64, success: bool, n: usize) {
        let now = self.clock.now_ms();
        let mut changes = Vec::new();
        {
            let mut inner = self.inner.lock();
            let Some(b) = inner
                .slots
                .iter_mut()
                .find(|c| c.id == id)
                .and_then(|c| c.breaker.as_mut())
            else {
                return;
            };
            for _ in 0..n {
                if let Some(state) = b.outcome(success, now) {
                    changes.push(state);
                }
            }
        }
        for state in changes {
            self.breaker_changed(id, state);
        }
    }

    /// How many of the queue's consumers have an open circuit breaker.
    pub fn open_breakers(&self) -> usize {
        self.inner
            .lock()
            .slots
            .iter()
            .filter(|c| {
                matches!(
                    c.breaker.as_ref().map(Breaker::state),
                    Some(BreakerState::Open { .. })
                )
            })
            .count()
    }

    /// The state of consumer `id`'s circuit breaker, if it has one.
    pub fn breaker_state(&self, id: u64) -> Option<BreakerState> {
        let inner = self.inner.lock();
        inner
            .slots
            .iter()
            .find(|c| c.id == id)
            .and_then(|c| c.breaker.as_ref())
            .map(Breaker::state)
    }

    /// How long until consumer `id`'s open circuit breaker may be probed.
    pub fn breaker_wait(&self, id: u64) -> Option<std::time::Duration> {
        let at = {
            let inner = self.inner.lock();
            inner
                .slots
                .iter()
                .find(|c| c.id == id)
                .and_then(|c| c.breaker.as_ref())
                .and_then(Breaker::wake_at)?
        };
        let ms = at.saturating_sub(self.clock.now_ms()).max(1);
        Some(std::time::Duration::from_millis(ms as u64))
    }

    pub(super) fn breaker_changed(&self, id: u64, state: BreakerState) {
        tracing::info!(
            vhost = %self.def.vhost,
            queue = %self.def.name,
            consumer = id,
            state = state.name(),
            "consumer circuit breaker changed state"
        );
        metrics::counter!(
            "ferry_circuit_breaker_transitions_total",
            "vhost" => self.def.vhost.clone(),
            "queue" => self.def.name.clone(),
            "to" => state.name()
        )
        .increment(1);
        self.breaker_gauge(id, state);
        // The maintenance task must wake when an open breaker's cool-down ends.
        self.maintenance.notify_one();
        self.ready_tx.send_modify(|v| *v += 1);
    }

    pub(super) fn breaker_gauge(&self, id: u64, state: BreakerState) {
        metrics::gauge!(
            "ferry_circuit_breaker_state",
            "vhost" => self.def.vhost.clone(),
            "queue" => self.def.name.clone(),
            "consumer" => id.to_string()
        )
        .set(state.gauge());
    }

    /// Wakes when the high watermark advances (new messages are readable).
    pub fn subscribe_appends(&self) -> watch::Receiver<i64> {
        self.log.subscribe_high_watermark()
    }

    /// Wakes when messages are requeued or the queue is deleted.
    pub fn subscribe_ready(&self) -> watch::Receiver<u64> {
        self.ready_tx.subscribe()
    }
}
