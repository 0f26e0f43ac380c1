//! Incremental fetch sessions (KIP-227): a consumer of many partitions names them all once, in
//! a full fetch (epoch 0) that creates a session, and afterwards sends only the partitions
//! whose fetch position changed, plus the ones it stops fetching (`forgotten_topics_data`);
//! the answer of such an incremental fetch carries only the partitions with records, an error,
//! or a changed high watermark, last stable offset or log start offset.
//!
//! Design. The cache is a pure table under one mutex: [`FetchSessionCache::open`] turns a
//! request's session id and epoch into a [`Context`] (what to fetch) before the fetch runs,
//! checking and advancing the epoch at once, so a repeated or out-of-order request gets
//! INVALID_FETCH_SESSION_EPOCH as in Kafka; after the (possibly long-polled) read,
//! [`FetchSessionCache::create`] or [`FetchSessionCache::complete`] records what the answer
//! told the client, which is what the next incremental answer is compared with. The cache
//! holds at most `kafka.max_incremental_fetch_session_cache_slots` sessions (Kafka's
//! `max.incremental.fetch.session.cache.slots`, 1000) and evicts the least recently used
//! one to make room; a client whose session was evicted gets FETCH_SESSION_ID_NOT_FOUND and
//! starts again with a full fetch. Sessions are not tied to a connection (clients may
//! reconnect), but to the principal that created them: another principal presenting the id
//! is told it does not exist. Within a session, partitions that returned records move to the
//! back of the order, so a size-limited answer serves the others next time (Kafka's
//! fairness rule). Nothing is persisted: after a restart clients start again from a full
//! fetch, as they do after any session error.

use std::collections::HashMap;
use std::hash::BuildHasher;

use kafka_protocol::ResponseError;
use parking_lot::Mutex;

/// The session id of "no session".
pub const INVALID_SESSION_ID: i32 = 0;
/// A full fetch that asks for a (new) session.
pub const INITIAL_EPOCH: i32 = 0;
/// A full fetch without a session (closing the named one, if any).
pub const FINAL_EPOCH: i32 = -1;

/// One partition as a fetch asks for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WantedPartition {
    /// The topic's name; empty for a topic id (v13+) this broker does not know.
    pub topic: String,
    /// The topic id (v13+ names topics by id); nil before v13.
    pub topic_id: uuid::Uuid,
    pub partition: i32,
    pub fetch_offset: i64,
    pub max_bytes: i32,
}

/// A partition of a session: name and id together, so unknown ids (empty name) stay apart
/// and a topic re-created under the same name is another partition.
pub type PartitionKey = (String, uuid::Uuid, i32);

impl WantedPartition {
    fn key(&self) -> PartitionKey {
        (self.topic.clone(), self.topic_id, self.partition)
    }
}

/// What an answer told the client about one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reported {
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    pub error_code: i16,
    pub record_bytes: usize,
}

/// How to serve one fetch request.
#[derive(Debug, PartialEq, Eq)]
pub enum Context {
    /// No session: a fetch before v7, or one with epoch -1. Every partition asked for is
    /// answered, and the answer names session 0.
    Sessionless(Vec<WantedPartition>),
    /// A full fetch with epoch 0: every partition is answered, then the session is created
    /// with [`FetchSessionCache::create`].
    Full(Vec<WantedPartition>),
    /// An incremental fetch: `partitions` is the whole session in its current order; the
    /// answer keeps only those [`FetchSessionCache::complete`] selects.
    Incremental {
        session_id: i32,
        /// The epoch the session expects next (already advanced past this request).
        next_epoch: i32,
        partitions: Vec<WantedPartition>,
    },
    /// Answer with this top-level error and no partitions.
    Error(i16),
}

struct CachedPartition {
    wanted: WantedPartition,
    /// (high watermark, last stable offset, log start offset) as last sent; `None` for a
    /// partition added since the last answer, which the next answer must always carry.
    sent: Option<(i64, i64, i64)>,
    /// Position in the session's order (lower first).
    order: u64,
}

struct Session {
    principal: String,
    /// The epoch the next incremental request must carry.
    epoch: i32,
    partitions: HashMap<PartitionKey, CachedPartition>,
    next_order: u64,
    /// Tick of the last use, for least-recently-used eviction.
    last_used: u64,
}

impl Session {
    fn ordered(&self) -> Vec<WantedPartition> {
        let mut parts: Vec<&CachedPartition> = self.partitions.values().collect();
        parts.sort_by_key(|p| p.order);
        parts.into_iter().map(|p| p.wanted.clone()).collect()
    }

    fn upsert(&mut self, wanted: WantedPartition) {
        match self.partitions.get_mut(&wanted.key()) {
            Some(cached) => cached.wanted = wanted,
            None => {
                let order = self.next_order;
                self.next_order += 1;
                self.partitions.insert(
                    wanted.key(),
                    CachedPartition {
                        wanted,
                        sent: None,
                        order,
                    },
                );
            }
        }
    }
}

struct Inner {
    sessions: HashMap<i32, Session>,
    tick: u64,
    /// Seeds session ids; random per process so ids cannot be predicted from another run.
    ids: std::collections::hash_map::RandomState,
    id_counter: u64,
}

/// The broker's fetch sessions; one per Kafka listener set, shared by every connection.
pub struct FetchSessionCache {
    slots: usize,
    inner: Mutex<Inner>,
}

/// The epoch after `epoch`, wrapping to 1 (0 means "new session").
fn next_epoch(epoch: i32) -> i32 {
    if epoch == i32::MAX {
        1
    } else {
        epoch + 1
    }
}

impl FetchSessionCache {
    /// A cache of at most `slots` sessions; 0 disables sessions (every full fetch answers
    /// session id 0, which clients take as "keep sending full fetches").
    pub fn new(slots: usize) -> Self {
        FetchSessionCache {
            slots,
            inner: Mutex::new(Inner {
                sessions: HashMap::new(),
                tick: 0,
                ids: std::collections::hash_map::RandomState::new(),
                id_counter: 0,
            }),
        }
    }

    /// Sessions held.
    pub fn len(&self) -> usize {
        self.inner.lock().sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The gauge moves by differences, not by setting a value, so several brokers in one
    /// process (tests, embedders) add up instead of overwriting each other.
    fn gauge(change: f64) {
        metrics::gauge!("ferry_kafka_fetch_sessions").increment(change);
    }

    /// Removes `session_id` if `principal` owns it (a full fetch naming it replaces or closes
    /// it).
    fn close(inner: &mut Inner, principal: &str, session_id: i32) {
        if session_id == INVALID_SESSION_ID {
            return;
        }
        if inner
            .sessions
            .get(&session_id)
            .is_some_and(|s| s.principal == principal)
        {
            inner.sessions.remove(&session_id);
            Self::gauge(-1.0);
        }
    }

    /// Decides how a v7+ fetch is served. `wanted` is what the request lists (for an
    /// incremental fetch: the partitions added or changed), `forgotten` what it drops.
    pub fn open(
        &self,
        principal: &str,
        session_id: i32,
        epoch: i32,
        wanted: Vec<WantedPartition>,
        forgotten: &[PartitionKey],
    ) -> Context {
        let mut inner = self.inner.lock();
        match epoch {
            FINAL_EPOCH => {
                Self::close(&mut inner, principal, session_id);
                Context::Sessionless(wanted)
            }
            INITIAL_EPOCH => {
                Self::close(&mut inner, principal, session_id);
                Context::Full(wanted)
            }
            e if e < 0 => Context::Error(ResponseError::InvalidFetchSessionEpoch.code()),
            _ => {
                inner.tick += 1;
                let tick = inner.tick;
                let Some(session) = inner
                    .sessions
                    .get_mut(&session_id)
                    .filter(|s| s.principal == principal)
                else {
                    return Context::Error(ResponseError::FetchSessionIdNotFound.code());
                };
                if session.epoch != epoch {
                    return Context::Error(ResponseError::InvalidFetchSessionEpoch.code());
                }
                for w in wanted {
                    session.upsert(w);
                }
                for key in forgotten {
                    session.partitions.remove(key);
                }
                session.epoch = next_epoch(epoch);
                session.last_used = tick;
                Context::Incremental {
                    session_id,
                    next_epoch: session.epoch,
                    partitions: session.ordered(),
                }
            }
        }
    }

    /// After a full fetch's answer: creates its session, remembering what the answer said of
    /// each partition (`reports[i]` is about `partitions[i]`). Returns the new session's id,
    /// or 0 when sessions are disabled. A full cache loses its least recently used session.
    pub fn create(
        &self,
        principal: &str,
        partitions: &[WantedPartition],
        reports: &[Reported],
    ) -> i32 {
        if self.slots == 0 {
            return INVALID_SESSION_ID;
        }
        let mut inner = self.inner.lock();
        while inner.sessions.len() >= self.slots {
            let Some(oldest) = inner
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(id, _)| *id)
            else {
                break;
            };
            inner.sessions.remove(&oldest);
            Self::gauge(-1.0);
            metrics::counter!("ferry_kafka_fetch_sessions_evicted_total").increment(1);
        }
        let id = loop {
            inner.id_counter += 1;
            let raw = inner.ids.hash_one(inner.id_counter) as u32 & (i32::MAX as u32);
            let id = raw as i32;
            if id != INVALID_SESSION_ID && !inner.sessions.contains_key(&id) {
                break id;
            }
        };
        inner.tick += 1;
        let mut session = Session {
            principal: principal.to_string(),
            epoch: next_epoch(INITIAL_EPOCH),
            partitions: HashMap::with_capacity(partitions.len()),
            next_order: 0,
            last_used: inner.tick,
        };
        for (wanted, report) in partitions.iter().zip(reports) {
            session.upsert(wanted.clone());
            if let Some(cached) = session.partitions.get_mut(&wanted.key()) {
                cached.sent = Some((
                    report.high_watermark,
                    report.last_stable_offset,
                    report.log_start_offset,
                ));
            }
        }
        inner.sessions.insert(id, session);
        Self::gauge(1.0);
        id
    }

    /// After an incremental fetch's read: which of `partitions` (the session's, as
    /// [`Context::Incremental`] gave them) the answer carries: those with records or an
    /// error, or whose high watermark, last stable offset or log start offset the client has
    /// not been told yet. Records what the answer tells. `None` if the session was closed or
    /// moved on meanwhile (a concurrent request with the next epoch): answer
    /// INVALID_FETCH_SESSION_EPOCH.
    pub fn complete(
        &self,
        session_id: i32,
        next_epoch: i32,
        partitions: &[WantedPartition],
        reports: &[Reported],
    ) -> Option<Vec<bool>> {
        let mut inner = self.inner.lock();
        let session = inner.sessions.get_mut(&session_id)?;
        if session.epoch != next_epoch {
            return None;
        }
        let mut keep = Vec::with_capacity(partitions.len());
        for (wanted, report) in partitions.iter().zip(reports) {
            let Some(cached) = session.partitions.get_mut(&wanted.key()) else {
                keep.push(false);
                continue;
            };
            let now = (
                report.high_watermark,
                report.last_stable_offset,
                report.log_start_offset,
            );
            let must =
                report.record_bytes > 0 || report.error_code != 0 || cached.sent != Some(now);
            if must {
                cached.sent = Some(now);
            }
            if report.record_bytes > 0 {
                cached.order = session.next_order;
                session.next_order += 1;
            }
            keep.push(must);
        }
        Some(keep)
    }
}

impl Drop for FetchSessionCache {
    fn drop(&mut self) {
        let held = self.inner.get_mut().sessions.len();
        if held > 0 {
            Self::gauge(-(held as f64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(topic: &str, partition: i32, fetch_offset: i64) -> WantedPartition {
        WantedPartition {
            topic: topic.into(),
            topic_id: uuid::Uuid::nil(),
            partition,
            fetch_offset,
            max_bytes: 1024,
        }
    }

    fn report(hw: i64, bytes: usize) -> Reported {
        Reported {
            high_watermark: hw,
            last_stable_offset: hw,
            log_start_offset: 0,
            error_code: 0,
            record_bytes: bytes,
        }
    }

    fn incremental(ctx: Context) -> (i32, i32, Vec<WantedPartition>) {
        match ctx {
            Context::Incremental {
                session_id,
                next_epoch,
                partitions,
            } => (session_id, next_epoch, partitions),
            other => panic!("expected an incremental context, got {other:?}"),
        }
    }

    #[test]
    fn full_then_incremental_carries_only_changes() {
        let cache = FetchSessionCache::new(10);
        let parts = vec![want("a", 0, 0), want("a", 1, 0), want("b", 0, 5)];
        assert_eq!(
            cache.open("User:x", 0, INITIAL_EPOCH, parts.clone(), &[]),
            Context::Full(parts.clone())
        );
        let id = cache.create(
            "User:x",
            &parts,
            &[report(0, 0), report(3, 0), report(5, 0)],
        );
        assert_ne!(id, INVALID_SESSION_ID);
        assert_eq!(cache.len(), 1);

        // Nothing changed: nothing to carry.
        let (sid, next, all) = incremental(cache.open("User:x", id, 1, vec![], &[]));
        assert_eq!((sid, next, all.len()), (id, 2, 3));
        let keep = cache
            .complete(id, next, &all, &[report(0, 0), report(3, 0), report(5, 0)])
            .unwrap();
        assert_eq!(keep, vec![false, false, false]);

        // a-1 gained records; it is carried, then moves to the back of the order.
        let (_, next, all) = incremental(cache.open("User:x", id, 2, vec![], &[]));
        let keep = cache
            .complete(
                id,
                next,
                &all,
                &[report(0, 0), report(4, 100), report(5, 0)],
            )
            .unwrap();
        assert_eq!(keep, vec![false, true, false]);
        let (_, next, all) = incremental(cache.open("User:x", id, 3, vec![want("a", 1, 4)], &[]));
        assert_eq!(all.last().unwrap(), &want("a", 1, 4));
        // The high watermark it was told is remembered: an unchanged one is not sent again.
        let keep = cache
            .complete(id, next, &all, &[report(0, 0), report(5, 0), report(4, 0)])
            .unwrap();
        assert_eq!(keep, vec![false, false, false]);
    }

    #[test]
    fn added_partitions_answer_once_and_forgotten_ones_leave() {
        let cache = FetchSessionCache::new(10);
        let parts = vec![want("a", 0, 0)];
        let id = cache.create("u", &parts, &[report(0, 0)]);
        let (_, next, all) = incremental(cache.open(
            "u",
            id,
            1,
            vec![want("c", 0, 0)],
            &[("a".to_string(), uuid::Uuid::nil(), 0)],
        ));
        assert_eq!(all, vec![want("c", 0, 0)]);
        assert_eq!(
            cache.complete(id, next, &all, &[report(0, 0)]).unwrap(),
            vec![true]
        );
        let (_, next, all) = incremental(cache.open("u", id, 2, vec![], &[]));
        assert_eq!(
            cache.complete(id, next, &all, &[report(0, 0)]).unwrap(),
            vec![false]
        );
        // Errors are always carried.
        let (_, next, all) = incremental(cache.open("u", id, 3, vec![], &[]));
        let mut failed = report(0, 0);
        failed.error_code = 3;
        assert_eq!(
            cache.complete(id, next, &all, &[failed]).unwrap(),
            vec![true]
        );
    }

    #[test]
    fn wrong_epochs_unknown_ids_and_other_principals_are_refused() {
        let cache = FetchSessionCache::new(10);
        let id = cache.create("u", &[want("a", 0, 0)], &[report(0, 0)]);
        let epoch_error = Context::Error(ResponseError::InvalidFetchSessionEpoch.code());
        let not_found = Context::Error(ResponseError::FetchSessionIdNotFound.code());
        assert_eq!(cache.open("u", id, 2, vec![], &[]), epoch_error);
        assert_eq!(cache.open("u", id, -2, vec![], &[]), epoch_error);
        assert_eq!(
            cache.open("u", id.wrapping_add(1), 1, vec![], &[]),
            not_found
        );
        assert_eq!(cache.open("v", id, 1, vec![], &[]), not_found);
        // Another principal cannot close it either.
        assert!(matches!(
            cache.open("v", id, FINAL_EPOCH, vec![], &[]),
            Context::Sessionless(_)
        ));
        assert_eq!(cache.len(), 1);
        // The right epoch still works after the refusals; a replayed one does not.
        let (_, next, _) = incremental(cache.open("u", id, 1, vec![], &[]));
        assert_eq!(next, 2);
        assert_eq!(cache.open("u", id, 1, vec![], &[]), epoch_error);
        // Epoch -1 closes it.
        assert!(matches!(
            cache.open("u", id, FINAL_EPOCH, vec![], &[]),
            Context::Sessionless(_)
        ));
        assert!(cache.is_empty());
        assert_eq!(cache.open("u", id, 2, vec![], &[]), not_found);
    }

    #[test]
    fn a_full_cache_evicts_the_least_recently_used_session() {
        let cache = FetchSessionCache::new(2);
        let p = [want("a", 0, 0)];
        let r = [report(0, 0)];
        let first = cache.create("u", &p, &r);
        let second = cache.create("u", &p, &r);
        // Using the first makes the second the least recently used.
        let _ = incremental(cache.open("u", first, 1, vec![], &[]));
        let third = cache.create("u", &p, &r);
        assert_eq!(cache.len(), 2);
        assert!(matches!(
            cache.open("u", second, 1, vec![], &[]),
            Context::Error(_)
        ));
        assert!(matches!(
            cache.open("u", first, 2, vec![], &[]),
            Context::Incremental { .. }
        ));
        assert!(matches!(
            cache.open("u", third, 1, vec![], &[]),
            Context::Incremental { .. }
        ));
        // No slots: no sessions.
        assert_eq!(FetchSessionCache::new(0).create("u", &p, &r), 0);
    }

    #[test]
    fn a_request_racing_the_session_forward_is_refused_at_completion() {
        let cache = FetchSessionCache::new(2);
        let p = [want("a", 0, 0)];
        let id = cache.create("u", &p, &[report(0, 0)]);
        let (_, next, all) = incremental(cache.open("u", id, 1, vec![], &[]));
        let _ = incremental(cache.open("u", id, 2, vec![], &[]));
        assert!(cache.complete(id, next, &all, &[report(0, 0)]).is_none());
        assert_eq!(next_epoch(i32::MAX), 1);
    }
}
