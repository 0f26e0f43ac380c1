//! Coalesced writes of durable queues' delivery state ([`StateFlusher`]).

use super::*;

/// How long a changed delivery state waits before it is written, so a busy queue writes it
/// a few hundred times a second instead of twice per message.
pub const STATE_WRITE_DELAY: std::time::Duration = std::time::Duration::from_millis(5);

/// Coalesces delivery-state writes of durable queues. Writing the state to the meta store
/// after every take and ack cost a sled batch (and its write-buffer flush) per message: a
/// third of the broker's CPU in `ferry bench amqp`. Instead a queue marks itself dirty and the
/// router's flusher task writes each dirty queue's *current* state [`STATE_WRITE_DELAY`]
/// later, once for every change in between.
///
/// Writing later never loses a message, because an older state only ever describes more
/// work: its cursor is lower and its unsettled set is a superset of what was settled since
/// (anything acked after it was written is redelivered after a crash, at least once, like
/// RabbitMQ's acks, which are not confirmed to the consumer either). The window adds to the
/// meta store's own flush interval; a clean shutdown writes every dirty state.
#[derive(Clone, Default)]
pub struct StateFlusher {
    pub(super) inner: std::sync::Arc<FlusherInner>,
}

#[derive(Default)]
pub(super) struct FlusherInner {
    pub(super) dirty: Mutex<HashSet<(String, String)>>,
    pub(super) wake: tokio::sync::Notify,
}

impl StateFlusher {
    pub(super) fn mark(&self, vhost: &str, name: &str) {
        self.inner
            .dirty
            .lock()
            .insert((vhost.to_string(), name.to_string()));
        self.inner.wake.notify_one();
    }

    /// Resolves when some queue's state changed.
    pub async fn changed(&self) {
        self.inner.wake.notified().await
    }

    /// The queues (vhost, name) whose state changed since the last call.
    pub fn take_dirty(&self) -> Vec<(String, String)> {
        self.inner.dirty.lock().drain().collect()
    }
}
