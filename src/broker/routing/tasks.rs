//! Background tasks of the router: the delivery-state flusher, the per-vhost delay scheduler, and each queue's maintenance (TTL, length limits, dead letters, `x-expires`).

use super::*;

impl Router {
    /// The task writing durable queues' delivery states behind their changes (see
    /// [`crate::broker::queue::StateFlusher`]).
    pub(super) fn start_state_flusher(&self) {
        let router = self.clone();
        let mut stop = self.stop.subscribe();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = router.state_flusher.changed() => {}
                    _ = stop.changed() => return,
                }
                tokio::time::sleep(crate::broker::queue::STATE_WRITE_DELAY).await;
                let dirty = router.state_flusher.take_dirty();
                let r = router.clone();
                // sled writes block; keep them off the async workers.
                let _ = tokio::task::spawn_blocking(move || {
                    for (vhost, name) in dirty {
                        if let Some(q) = r.queue(&vhost, &name) {
                            q.persist_now();
                        }
                    }
                })
                .await;
            }
        });
        self.tasks.lock().push(task);
    }

    /// Starts the scheduler of a vhost's delay queue (once per vhost).
    pub(super) fn start_delay_scheduler(&self, q: &Arc<Queue>) {
        if !self.delay_schedulers.lock().insert(q.vhost().to_string()) {
            return;
        }
        let task = tokio::spawn(crate::broker::delayed::run_scheduler(
            self.clone(),
            q.clone(),
        ));
        let mut tasks = self.tasks.lock();
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// Runs TTL/max-length on a timer and forwards dead letters, for queues whose arguments
    /// need it. Ends when the queue is deleted.
    pub(super) fn start_maintenance(&self, q: &Arc<Queue>) {
        if !q.limits().needs_maintenance() && q.limits().dead_letter_exchange.is_none() {
            return;
        }
        let router = self.clone();
        let q = q.clone();
        let mut stop = self.stop.subscribe();
        let task = tokio::spawn(async move {
            let mut appends = q.subscribe_appends();
            let mut ready = q.subscribe_ready();
            while !q.is_deleted() && !*stop.borrow_and_update() {
                if q.expired_unused() {
                    router.expire_queue(&q).await;
                    break;
                }
                q.enforce_now();
                let dead = q.take_dead();
                if !dead.is_empty() {
                    router.dead_letter(&q, dead).await;
                }
                // Wake at the next expiry; with a manual clock, re-check every second too.
                let wait = q
                    .next_expiry_ms()
                    .map(|at| at.saturating_sub(router.clock.now_ms()).clamp(1, 1000) as u64)
                    .unwrap_or(1000);
                tokio::select! {
                    r = appends.changed() => if r.is_err() { break },
                    r = ready.changed() => if r.is_err() { break },
                    _ = q.dead_letters_waiting() => {}
                    _ = tokio::time::sleep(std::time::Duration::from_millis(wait)) => {}
                    _ = stop.changed() => break,
                }
            }
        });
        let mut tasks = self.tasks.lock();
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }
}

impl Router {
    /// Deletes a queue whose `x-expires` ran out (re-checked under the admin lock: a declare
    /// or consumer may have used it meanwhile).
    pub(super) async fn expire_queue(&self, q: &Arc<Queue>) {
        let _admin = self.admin.lock().await;
        if q.is_deleted() || !q.expired_unused() {
            return;
        }
        tracing::debug!(queue = q.name(), "queue expired (x-expires)");
        if let Err(e) = self.remove_queue(q).await {
            tracing::warn!(queue = q.name(), error = %e, "deleting an expired queue failed");
        }
    }
}
