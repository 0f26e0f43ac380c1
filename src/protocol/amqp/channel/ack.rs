//! Settling deliveries: basic.ack, basic.nack, basic.reject and basic.recover against the
//! delivery book, one queue call per queue touched; rejected messages go to the queue's
//! dead-letter exchange when it has one.

use super::*;

impl Channel {
    /// basic.ack / nack / reject. `requeue: None` means ack.
    pub fn settle(
        &mut self,
        core: &BrokerCore,
        tag: u64,
        multiple: bool,
        requeue: Option<bool>,
    ) -> Result<(), AmqpError> {
        if let Some(tx) = self.tx.as_mut() {
            tx.settles.push((tag, multiple, requeue));
            return Ok(());
        }
        self.settle_now(core, tag, multiple, requeue)
    }

    pub(super) fn settle_now(
        &mut self,
        core: &BrokerCore,
        tag: u64,
        multiple: bool,
        requeue: Option<bool>,
    ) -> Result<(), AmqpError> {
        let _span = tracing::debug_span!(
            "ack",
            channel = self.id,
            delivery_tag = tag,
            multiple,
            requeue = ?requeue
        )
        .entered();
        let taken: Vec<Unacked> = {
            let mut book = self.shared.book.lock();
            if requeue.is_some() && stream_consumer::has_tags(&book.stream_unacked, tag, multiple) {
                return Err(stream_consumer::refuse_requeue());
            }
            let taken: Vec<Unacked> = if multiple {
                let rest = if tag == 0 {
                    BTreeMap::new()
                } else {
                    book.unacked.split_off(&(tag + 1))
                };
                let upto = std::mem::replace(&mut book.unacked, rest);
                upto.into_values().collect()
            } else {
                book.unacked.remove(&tag).into_iter().collect()
            };
            let streamed = stream_consumer::take_tags(&mut book.stream_unacked, tag, multiple);
            if taken.is_empty() && streamed.is_empty() && !(multiple && tag == 0) {
                return Err(AmqpError::channel(
                    406,
                    format!("unknown delivery tag {tag}"),
                ));
            }
            for c in &streamed {
                if let Some(n) = book.per_consumer.get_mut(c) {
                    *n = n.saturating_sub(1);
                }
            }
            for u in &taken {
                if let Some(c) = &u.consumer {
                    if let Some(n) = book.per_consumer.get_mut(c) {
                        *n = n.saturating_sub(1);
                    }
                }
            }
            taken
        };
        crate::observe::metrics::record_settled(requeue, taken.len());
        // Each consumer's circuit breaker learns how its deliveries went.
        for u in &taken {
            if let Some(c) = u.consumer.as_deref().and_then(|t| self.consumers.get(t)) {
                if Arc::ptr_eq(&c.queue, &u.queue) {
                    c.queue.record_outcome(c.id, requeue.is_none(), 1);
                }
            }
        }
        settle_all(core, taken, requeue);
        self.shared.bump();
        Ok(())
    }

    /// basic.recover: every unacked delivery goes back to its queue.
    pub fn recover(&mut self) {
        self.requeue_all();
    }

    pub(super) fn requeue_all(&self) {
        let taken: Vec<Unacked> = {
            let mut book = self.shared.book.lock();
            book.per_consumer.values_mut().for_each(|n| *n = 0);
            book.stream_unacked.clear();
            std::mem::take(&mut book.unacked).into_values().collect()
        };
        settle_all_requeue(taken);
        self.shared.bump();
    }
}

/// Groups deliveries by queue.
pub(super) fn by_queue(taken: Vec<Unacked>) -> Vec<(Arc<Queue>, Vec<i64>)> {
    let mut out: Vec<(Arc<Queue>, Vec<i64>)> = Vec::new();
    for u in taken {
        match out.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &u.queue)) {
            Some((_, offs)) => offs.push(u.offset),
            None => out.push((u.queue, vec![u.offset])),
        }
    }

    out
}

pub(super) fn settle_all_requeue(taken: Vec<Unacked>) {
    for (q, offs) in by_queue(taken) {
        q.requeue_returned(&offs);
    }
}

/// Acks (`requeue: None`), requeues, or rejects a set of deliveries, one call per queue.
/// Rejected messages of a queue with a dead-letter exchange are forwarded there by a task (the
/// copy must be durable before the original is settled; the connection does not wait on it).
pub(super) fn settle_all(core: &BrokerCore, taken: Vec<Unacked>, requeue: Option<bool>) {
    for (q, offs) in by_queue(taken) {
        match requeue {
            None => q.ack(&offs),
            Some(true) => q.requeue(&offs),
            Some(false) if q.limits().dead_letter_exchange.is_some() => {
                let router = core.router().clone();
                let dead = offs.iter().map(|o| (*o, DeathReason::Rejected)).collect();
                tokio::spawn(async move { router.dead_letter(&q, dead).await });
            }
            // Without a dead-letter exchange a rejected message is discarded (RabbitMQ).
            Some(false) => q.ack(&offs),
        }
    }
}
