//! A running group: its definition, settings and delivery state behind locks, the [`Notify`]
//! that wakes its pump, and the stop flag; the per-core [`Registry`] of running groups (a
//! group starts on first use, from the meta store); and a [`PersistentConsumer`], one
//! connected consumer, whose settles change the state and wake the pump, and whose drop hands
//! its unsettled events back for retry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use super::state::State;
use super::{PersistentDelivery, Settings, SettleAction, Source, MAX_GROUP_NAME_BYTES};
use crate::es::EsError;

pub(super) struct Group {
    pub(super) topic: String,
    pub(super) name: String,
    pub(super) source: Source,
    pub(super) settings: parking_lot::Mutex<Settings>,
    pub(super) state: parking_lot::Mutex<State>,
    pub(super) wake: Notify,
    pub(super) stopped: AtomicBool,
    pub(super) replaying: tokio::sync::Mutex<()>,
}

impl Group {
    pub(super) fn settings(&self) -> Settings {
        self.settings.lock().clone()
    }

    pub(super) fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        // Dropping the senders ends every consumer's stream.
        self.state.lock().consumers.clear();
        self.wake.notify_one();
    }
}

/// The groups of one broker core, started on first use from the meta store.
#[derive(Default)]
pub(super) struct Registry {
    pub(super) groups: parking_lot::Mutex<HashMap<(String, String), Arc<Group>>>,
    /// Serialises group creation (the existence check and the write).
    pub(super) create: tokio::sync::Mutex<()>,
}

/// A consumer connected to a group; dropping it retries its unsettled events.
pub struct PersistentConsumer {
    pub(super) group: Arc<Group>,
    pub(super) id: u64,
    pub(super) rx: mpsc::UnboundedReceiver<PersistentDelivery>,
}

impl PersistentConsumer {
    /// The next event; `None` once the group was deleted.
    pub async fn recv(&mut self) -> Option<PersistentDelivery> {
        self.rx.recv().await
    }

    /// Settles deliveries this consumer received.
    pub fn settle(&self, delivery_ids: &[u64], action: SettleAction, reason: &str) {
        let max = self.group.settings.lock().max_retry_count;
        self.group
            .state
            .lock()
            .settle_deliveries(self.id, delivery_ids, action, reason, max);
        self.group.wake.notify_one();
    }
}

impl Drop for PersistentConsumer {
    fn drop(&mut self) {
        let max = self.group.settings.lock().max_retry_count;
        self.group.state.lock().disconnect(self.id, max);
        self.group.wake.notify_one();
    }
}

pub(super) fn check_group_name(group: &str) -> Result<(), EsError> {
    if group.is_empty() || group.len() > MAX_GROUP_NAME_BYTES {
        return Err(EsError::InvalidArgument(format!(
            "a group name must be 1 to {MAX_GROUP_NAME_BYTES} bytes"
        )));
    }
    Ok(())
}

pub(super) fn group_not_found(topic: &str, group: &str) -> EsError {
    EsError::GroupNotFound(format!(
        "no persistent subscription group `{group}` on `{topic}`"
    ))
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EsError> + Send + 'static,
) -> Result<T, EsError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| EsError::Unavailable("the meta store call failed".into()))?
}
impl Drop for Registry {
    /// The broker is gone: every pump ends (they hold only a weak reference to the core, so
    /// a stopped broker's meta store and logs close).
    fn drop(&mut self) {
        for group in self.groups.get_mut().values() {
            group.stop();
        }
    }
}
