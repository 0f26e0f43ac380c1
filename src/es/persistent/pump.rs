//! The pump: one task per group that reads the source while fewer than [`READ_AHEAD`] events
//! wait, expires message timeouts, dispatches, writes parked links and stores the checkpoint
//! every `checkpoint_after` settled events. It holds the broker core only weakly and upgrades
//! it per round, never across a wait, so a stopped broker's meta store and logs close; a
//! deleted topic or group ends it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::group::{blocking, Group};
use super::state::{Origin, Status};
use super::{READ_AHEAD, READ_BATCH, RECHECK};
use crate::broker::WeakBrokerCore;
use crate::es::catchup::{CatchUp, CatchUpMessage};
use crate::es::read::RecordedEvent;
use crate::es::EventStore;

/// Reads the source, dispatches, expires, parks and checkpoints until the group stops or the
/// broker shuts down. It holds the core only while it works, never across a wait.
pub(super) async fn pump(core: WeakBrokerCore, group: Arc<Group>, mut cursors: Vec<CatchUp>) {
    loop {
        if group.stopped.load(Ordering::SeqCst) {
            return;
        }
        let Some(core) = core.upgrade() else {
            group.stop();
            return;
        };
        let store = EventStore::new(&core);
        if store.core.topic(&group.topic).is_none() {
            group.stop();
            store
                .registry()
                .groups
                .lock()
                .remove(&(group.topic.clone(), group.name.clone()));
            return;
        }
        let settings = group.settings();
        // Read while few events wait.
        let mut progressed = false;
        let room = {
            let st = group.state.lock();
            READ_AHEAD.saturating_sub(st.fresh.len() + st.retries.len())
        };
        if room > 0 {
            for cursor in &mut cursors {
                let before = cursor.position();
                let messages = match cursor.poll(READ_BATCH.min(room)) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(group = %group.name, error = %e, "persistent subscription read failed");
                        continue;
                    }
                };
                let mut st = group.state.lock();
                for m in messages {
                    if let CatchUpMessage::Event(event) = m {
                        if event.stream.starts_with('$') {
                            continue;
                        }
                        let origin = Origin::Log {
                            partition: event.partition,
                            position: event.position,
                        };
                        st.add(origin, event, false);
                    }
                }
                st.read_upto.insert(cursor.partition(), cursor.position());
                progressed |= cursor.position() != before;
            }
        }
        let now = Instant::now();
        let (to_park, deadline, checkpoint) = {
            let mut st = group.state.lock();
            let deadline = st.expire(now, settings.max_retry_count);
            st.dispatch(&settings, now);
            let to_park = std::mem::take(&mut st.to_park);
            let cp = st.checkpoint();
            let due = st.settled_since_checkpoint >= settings.checkpoint_after.max(1);
            let checkpoint = (due && cp != st.stored).then(|| {
                st.settled_since_checkpoint = 0;
                st.stored = cp.clone();
                cp
            });
            let parking: Vec<(u64, RecordedEvent, String)> = to_park
                .into_iter()
                .filter_map(|(id, why)| st.entries.get(&id).map(|e| (id, e.event.clone(), why)))
                .collect();
            (parking, deadline, checkpoint)
        };
        for (id, event, reason) in to_park {
            progressed = true;
            match store.park(&group, &event, &reason).await {
                Ok(()) => {
                    let mut st = group.state.lock();
                    st.settle(id);
                    st.parked += 1;
                }
                Err(e) => {
                    tracing::warn!(group = %group.name, error = %e, "parking an event failed; it is retried");
                    {
                        let mut st = group.state.lock();
                        if let Some(entry) = st.entries.get_mut(&id) {
                            entry.status = Status::Ready;
                        }
                        st.retries.push_back(id);
                    }
                    tokio::time::sleep(RECHECK).await;
                }
            }
        }
        if let Some(cp) = checkpoint {
            let meta = store.core.meta().clone();
            let (t, g) = (group.topic.clone(), group.name.clone());
            let written = blocking(move || Ok(meta.put_persistent_checkpoint(&t, &g, &cp)?)).await;
            if let Err(e) = written {
                tracing::warn!(group = %group.name, error = %e, "storing a checkpoint failed");
            }
        }
        drop((store, core));
        if progressed {
            continue;
        }
        let sleep = deadline
            .map_or(RECHECK, |d| d.saturating_duration_since(Instant::now()))
            .min(RECHECK);
        let watermarks = async {
            if cursors.is_empty() {
                std::future::pending::<()>().await;
            } else {
                futures::future::select_all(cursors.iter_mut().map(|c| Box::pin(c.wait()))).await;
            }
        };
        tokio::select! {
            _ = group.wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
            _ = watermarks => {}
        }
    }
}
