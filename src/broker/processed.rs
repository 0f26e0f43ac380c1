//! Processed-id store: the event ids each named idempotent handler has completed, so an SDK
//! consumer can skip (and ack) a repeat of an event it already handled.
//!
//! Ids live in the metadata store (`v2/processed/<handler>/<id>` -> time recorded), not in a
//! compacted internal log: the store is a keyed set with point lookups and deletes on eviction,
//! which is exactly what the metadata store offers (atomic batches, prefix scans, a flush), and
//! it needs no index rebuilt by reading a log at start. Each handler's ids are loaded into memory
//! the first time it is asked about, oldest first, and bounded two ways: by age (an id older than
//! `max_age_ms` is forgotten, since a duplicate that late is not a redelivery) and by count (past
//! `max_ids` the oldest goes first), the bounds of the queue deduplication cache
//! (`broker::dedup`). Evicted ids are deleted from the store too, so it stays bounded across
//! restarts. A record is flushed before it returns: the SDK acks the event only after that, so a
//! broker crash between the two leaves at worst an id recorded for an event redelivered (skipped,
//! as it should be), never an acked event whose id is lost.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::clock::Clock;
use crate::meta::{Meta, MetaError};

/// Ids remembered per handler unless configured otherwise.
pub const DEFAULT_MAX_IDS: usize = 100_000;
/// How long an id is remembered unless configured otherwise: 7 days.
pub const DEFAULT_MAX_AGE_MS: i64 = 7 * 24 * 60 * 60 * 1000;
/// Longest handler name or event id accepted, in bytes.
pub const MAX_NAME_BYTES: usize = 255;
/// Handler names held in memory at once unless configured otherwise: each costs up to
/// `max_ids` ids, so a client inventing names must not grow the store without bound.
pub const DEFAULT_MAX_HANDLERS: usize = 10_000;

/// The store's name for `handler` of `user`: a handler's ids belong to the user that recorded
/// them. The user's length comes first, so no (user, handler) pair spells another's.
pub fn scoped_handler(user: &str, handler: &str) -> String {
    format!("{}:{user}/{handler}", user.len())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessedLimits {
    pub max_ids: usize,
    pub max_age_ms: i64,
    pub max_handlers: usize,
}

impl Default for ProcessedLimits {
    fn default() -> Self {
        Self {
            max_ids: DEFAULT_MAX_IDS,
            max_age_ms: DEFAULT_MAX_AGE_MS,
            max_handlers: DEFAULT_MAX_HANDLERS,
        }
    }
}

/// One handler's ids in memory, with their insertion order for eviction.
#[derive(Default)]
struct HandlerIds {
    at: HashMap<String, i64>,
    order: VecDeque<(i64, String)>,
}

impl HandlerIds {
    /// Drops what is past the bounds and returns the ids to delete from the store.
    fn evict(&mut self, limits: ProcessedLimits, now_ms: i64) -> Vec<String> {
        let mut gone = Vec::new();
        while let Some((at, _)) = self.order.front() {
            let too_old = now_ms.saturating_sub(*at) >= limits.max_age_ms;
            if !too_old && self.order.len() <= limits.max_ids {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.at.remove(&id);
                gone.push(id);
            }
        }
        gone
    }
}

/// The processed ids of every handler; cheap to share.
pub struct ProcessedIds {
    meta: Meta,
    clock: Clock,
    limits: Mutex<ProcessedLimits>,
    handlers: Mutex<HashMap<String, Arc<Mutex<HandlerIds>>>>,
}

impl ProcessedIds {
    pub fn new(meta: Meta, clock: Clock) -> Self {
        Self {
            meta,
            clock,
            limits: Mutex::new(ProcessedLimits::default()),
            handlers: Mutex::new(HashMap::new()),
        }
    }

    pub fn set_limits(&self, limits: ProcessedLimits) {
        *self.limits.lock() = limits;
    }

    /// Whether `handler` may be used: it is known already, or there is room for one more name
    /// under `max_handlers`. Callers refuse a request for a name that is not admitted.
    pub fn admits(&self, handler: &str) -> bool {
        let max = self.limits.lock().max_handlers;
        let handlers = self.handlers.lock();
        handlers.contains_key(handler) || handlers.len() < max
    }

    /// The handler's ids, loaded from the store on first use. The store's lock is held across
    /// the load so two first callers do not load twice.
    fn handler(&self, handler: &str) -> Result<Arc<Mutex<HandlerIds>>, MetaError> {
        let mut handlers = self.handlers.lock();
        if let Some(ids) = handlers.get(handler) {
            return Ok(ids.clone());
        }
        let mut stored = self.meta.processed_ids(handler)?;
        stored.sort_by_key(|(_, at)| *at);
        let mut ids = HandlerIds::default();
        for (id, at) in stored {
            ids.at.insert(id.clone(), at);
            ids.order.push_back((at, id));
        }
        let ids = Arc::new(Mutex::new(ids));
        handlers.insert(handler.to_string(), ids.clone());
        Ok(ids)
    }

    /// Applies the bounds to `ids`, deleting what they drop from the store.
    fn evict(&self, handler: &str, ids: &mut HandlerIds) -> Result<(), MetaError> {
        let gone = ids.evict(*self.limits.lock(), self.clock.now_ms());
        if gone.is_empty() {
            return Ok(());
        }
        self.meta.delete_processed(handler, &gone)
    }

    /// Whether `handler` completed `event_id` within the bounds.
    pub fn is_processed(&self, handler: &str, event_id: &str) -> Result<bool, MetaError> {
        let ids = self.handler(handler)?;
        let mut ids = ids.lock();
        self.evict(handler, &mut ids)?;
        Ok(ids.at.contains_key(event_id))
    }

    /// Records that `handler` completed `event_id`, durably before it returns. Recording an id
    /// again keeps its first time (the window runs from the first completion).
    pub fn record(&self, handler: &str, event_id: &str) -> Result<(), MetaError> {
        let ids = self.handler(handler)?;
        let mut ids = ids.lock();
        if !ids.at.contains_key(event_id) {
            let now = self.clock.now_ms();
            self.meta.put_processed(handler, event_id, now)?;
            ids.at.insert(event_id.to_string(), now);
            ids.order.push_back((now, event_id.to_string()));
        }
        self.evict(handler, &mut ids)?;
        self.meta.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(clock: &Clock, max_ids: usize, max_age_ms: i64) -> ProcessedIds {
        let s = ProcessedIds::new(Meta::in_memory(), clock.clone());
        s.set_limits(ProcessedLimits {
            max_ids,
            max_age_ms,
            ..ProcessedLimits::default()
        });
        s
    }

    #[test]
    fn ids_are_per_handler_and_bounded_by_count_and_age() {
        let clock = Clock::manual(1_000);
        let s = store(&clock, 2, 10_000);
        s.record("billing", "e1").unwrap();
        assert!(s.is_processed("billing", "e1").unwrap());
        assert!(!s.is_processed("shipping", "e1").unwrap(), "per handler");
        s.record("billing", "e2").unwrap();
        s.record("billing", "e3").unwrap();
        assert!(
            !s.is_processed("billing", "e1").unwrap(),
            "the oldest went first"
        );
        assert_eq!(
            s.meta.processed_ids("billing").unwrap().len(),
            2,
            "and from the store"
        );
        clock.advance_ms(10_000);
        assert!(!s.is_processed("billing", "e3").unwrap(), "too old");
        assert!(s.meta.processed_ids("billing").unwrap().is_empty());
    }

    #[test]
    fn ids_are_reloaded_from_the_store() {
        let clock = Clock::manual(1_000);
        let meta = Meta::in_memory();
        let first = ProcessedIds::new(meta.clone(), clock.clone());
        first.record("billing", "e1").unwrap();
        let second = ProcessedIds::new(meta, clock);
        assert!(second.is_processed("billing", "e1").unwrap());
        assert!(!second.is_processed("billing", "e2").unwrap());
    }
}
