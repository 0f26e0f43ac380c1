//! The in-memory stream index of one event-store partition, as a pure state machine: what each
//! stream's last revision and deletion state are, the expected-revision check, and the recent
//! appends by first event id (for idempotent resends).
//!
//! The index holds *reserved* state: an append updates it when it is queued on the partition's
//! writer, before it is durable, so the next append can be checked at once without waiting on
//! the fsync of the one before (group commit batches them). A failed write makes the reserved
//! state wrong; the owner then rebuilds the index from the log (see `partition.rs`).

use std::collections::{HashMap, VecDeque};

use tokio::sync::watch;

use super::follower::REVISION_INDEX_INTERVAL;
use super::records::EsRecord;
use super::{AppendSuccess, ExpectedRevision, StreamState};

/// Appends remembered per partition for idempotent resends (first event id -> outcome).
pub const RECENT_APPENDS: usize = 100_000;

/// The outcome of an append as a resend sees it: `None` while it is not durable yet; an error
/// is kept as text (the resend is then written anew).
pub type SharedOutcome = watch::Receiver<Option<Result<AppendSuccess, String>>>;

pub(crate) struct RecentAppend {
    pub stream: String,
    pub ids: Vec<String>,
    pub outcome: SharedOutcome,
}

/// Why an append is refused by the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckFailure {
    WrongExpectedVersion { current: Option<u64> },
    StreamDeleted,
}

#[derive(Default)]
pub(crate) struct PartitionIndex {
    pub streams: HashMap<String, StreamState>,
    recent: HashMap<String, RecentAppend>,
    recent_order: VecDeque<String>,
}

impl PartitionIndex {
    /// Applies a durable record read from the log at `offset` (recovery, rebuild).
    pub fn apply(&mut self, record: &EsRecord, offset: i64) {
        match record {
            EsRecord::Event {
                stream, revision, ..
            } => {
                let state = self.streams.entry(stream.clone()).or_default();
                state.last_revision = Some(*revision);
                state.durable_revision = Some(*revision);
                state.last_offset = offset;
                state.soft_deleted = false;
                if revision % REVISION_INDEX_INTERVAL == 0 {
                    state.recent_floor = Some((*revision, offset));
                }
            }
            EsRecord::Metadata { stream, limits } => {
                let state = self.streams.entry(stream.clone()).or_default();
                state.last_offset = offset;
                state.limits = *limits;
            }
            EsRecord::Deleted { stream, hard } => {
                let state = self.streams.entry(stream.clone()).or_default();
                state.last_offset = offset;
                if *hard {
                    state.tombstoned = true;
                } else {
                    state.soft_deleted = true;
                    state.truncate_before = state.last_revision.map_or(0, |r| r + 1);
                }
            }
        }
    }

    /// Checks `expected` against `stream`; on success returns the revision the next event
    /// gets.
    pub fn check(&self, stream: &str, expected: ExpectedRevision) -> Result<u64, CheckFailure> {
        let state = self.streams.get(stream).cloned().unwrap_or_default();
        if state.tombstoned {
            return Err(CheckFailure::StreamDeleted);
        }
        let exists = state.last_revision.is_some() && !state.soft_deleted;
        let current = if exists { state.last_revision } else { None };
        let ok = match expected {
            ExpectedRevision::Any => true,
            ExpectedRevision::NoStream => !exists,
            ExpectedRevision::StreamExists => exists,
            // A soft-deleted stream continues at its last revision + 1, so that revision is
            // what a writer who saw it before the deletion expects.
            ExpectedRevision::Exact(n) => state.last_revision == Some(n),
        };
        if !ok {
            return Err(CheckFailure::WrongExpectedVersion { current });
        }
        Ok(state.last_revision.map_or(0, |r| r + 1))
    }

    /// Reserves `count` revisions from `first` for `stream` (the append is queued).
    pub fn reserve(&mut self, stream: &str, first: u64, count: u64) {
        let state = self.streams.entry(stream.to_string()).or_default();
        state.last_revision = Some(first + count - 1);
        state.soft_deleted = false;
    }

    /// Reserves a deletion of `stream`.
    pub fn reserve_deletion(&mut self, stream: &str, hard: bool) {
        let state = self.streams.entry(stream.to_string()).or_default();
        if hard {
            state.tombstoned = true;
        } else {
            state.soft_deleted = true;
            state.truncate_before = state.last_revision.map_or(0, |r| r + 1);
        }
    }

    /// Reserves a metadata change of `stream`.
    pub fn reserve_metadata(&mut self, stream: &str, limits: super::records::StreamLimits) {
        self.streams.entry(stream.to_string()).or_default().limits = limits;
    }

    /// Records that an append ending at `offset` with revision `last_revision` is durable,
    /// unless a later one already moved the stream past it.
    /// The append's events have consecutive offsets (one batch), so `first_revision` is at
    /// `offset - (last_revision - first_revision)`.
    pub fn record_durable(
        &mut self,
        stream: &str,
        offset: i64,
        first_revision: u64,
        last_revision: u64,
    ) {
        if let Some(state) = self.streams.get_mut(stream) {
            state.last_offset = state.last_offset.max(offset);
            state.durable_revision = state.durable_revision.max(Some(last_revision));
            let floor = last_revision - last_revision % REVISION_INDEX_INTERVAL;
            if floor >= first_revision && state.recent_floor.is_none_or(|(r, _)| r < floor) {
                let back = i64::try_from(last_revision - floor).unwrap_or(0);
                state.recent_floor = Some((floor, offset - back));
            }
        }
    }

    /// The earlier append whose first event id is `first_id`, if remembered.
    pub fn recent(&self, first_id: &str) -> Option<&RecentAppend> {
        self.recent.get(first_id)
    }

    /// Remembers an append by its first event id, forgetting the oldest past the bound.
    pub fn remember(&mut self, append: RecentAppend) {
        let Some(first) = append.ids.first().cloned() else {
            return;
        };
        if self.recent.insert(first.clone(), append).is_none() {
            self.recent_order.push_back(first);
        }
        while self.recent_order.len() > RECENT_APPENDS {
            if let Some(old) = self.recent_order.pop_front() {
                self.recent.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(stream: &str, revision: u64) -> EsRecord {
        EsRecord::Event {
            stream: stream.into(),
            revision,
            id: format!("{stream}-{revision}"),
        }
    }

    #[test]
    fn reads_see_a_reserved_revision_only_once_it_is_durable() {
        let mut index = PartitionIndex::default();
        index.apply(&event("s", 0), 0);
        index.reserve("s", 1, 2);
        let state = &index.streams["s"];
        // The check sees the reservation at once; reads stay at what is durable.
        assert_eq!(index.check("s", ExpectedRevision::Exact(2)), Ok(3));
        assert_eq!(
            (state.last_revision, state.durable_revision),
            (Some(2), Some(0))
        );
        index.record_durable("s", 2, 1, 2);
        assert_eq!(index.streams["s"].durable_revision, Some(2));
        // A late completion of an earlier append does not move it back.
        index.record_durable("s", 1, 1, 1);
        assert_eq!(index.streams["s"].durable_revision, Some(2));
        assert_eq!(index.streams["s"].last_offset, 2);
    }

    #[test]
    fn the_recent_floor_is_the_last_durable_revision_on_the_stored_interval() {
        let mut index = PartitionIndex::default();
        index.apply(&event("s", 0), 10);
        assert_eq!(index.streams["s"].recent_floor, Some((0, 10)));
        // Revisions 1..=63 at offsets 11..=73: none on the interval.
        index.reserve("s", 1, 63);
        index.record_durable("s", 73, 1, 63);
        assert_eq!(index.streams["s"].recent_floor, Some((0, 10)));
        // One append of revisions 64..=70 ending at offset 90: revision 64 is at offset 84.
        index.reserve("s", 64, 7);
        index.record_durable("s", 90, 64, 70);
        assert_eq!(index.streams["s"].recent_floor, Some((64, 84)));
        // A late completion of an earlier append does not move it back.
        index.record_durable("s", 5, 0, 0);
        assert_eq!(index.streams["s"].recent_floor, Some((64, 84)));
    }

    #[test]
    fn expected_revision_table() {
        use ExpectedRevision::*;
        let mut index = PartitionIndex::default();
        index.apply(&event("live", 0), 0);
        index.apply(&event("live", 1), 1);
        index.apply(&event("soft", 0), 2);
        index.apply(
            &EsRecord::Deleted {
                stream: "soft".into(),
                hard: false,
            },
            3,
        );
        index.apply(&event("hard", 0), 4);
        index.apply(
            &EsRecord::Deleted {
                stream: "hard".into(),
                hard: true,
            },
            5,
        );
        let wrong = |current| Err(CheckFailure::WrongExpectedVersion { current });
        assert_eq!(index.check("new", Any), Ok(0));
        assert_eq!(index.check("new", NoStream), Ok(0));
        assert_eq!(index.check("new", StreamExists), wrong(None));
        assert_eq!(index.check("new", Exact(0)), wrong(None));
        assert_eq!(index.check("live", Any), Ok(2));
        assert_eq!(index.check("live", NoStream), wrong(Some(1)));
        assert_eq!(index.check("live", StreamExists), Ok(2));
        assert_eq!(index.check("live", Exact(1)), Ok(2));
        assert_eq!(index.check("live", Exact(0)), wrong(Some(1)));
        assert_eq!(index.check("soft", Any), Ok(1));
        assert_eq!(index.check("soft", NoStream), Ok(1));
        assert_eq!(index.check("soft", StreamExists), wrong(None));
        assert_eq!(index.check("soft", Exact(0)), Ok(1));
        for expected in [Any, NoStream, StreamExists, Exact(0)] {
            assert_eq!(
                index.check("hard", expected),
                Err(CheckFailure::StreamDeleted)
            );
        }
    }

    #[test]
    fn reservations_move_the_next_check_before_durability() {
        let mut index = PartitionIndex::default();
        assert_eq!(index.check("s", ExpectedRevision::NoStream), Ok(0));
        index.reserve("s", 0, 3);
        assert_eq!(
            index.check("s", ExpectedRevision::NoStream),
            Err(CheckFailure::WrongExpectedVersion { current: Some(2) })
        );
        assert_eq!(index.check("s", ExpectedRevision::Exact(2)), Ok(3));
    }

    #[test]
    fn recent_appends_are_bounded() {
        let mut index = PartitionIndex::default();
        let (_tx, rx) = watch::channel(None);
        for i in 0..RECENT_APPENDS + 10 {
            index.remember(RecentAppend {
                stream: "s".into(),
                ids: vec![i.to_string()],
                outcome: rx.clone(),
            });
        }
        assert!(index.recent("0").is_none());
        assert!(index.recent(&(RECENT_APPENDS + 9).to_string()).is_some());
        assert_eq!(index.recent.len(), RECENT_APPENDS);
    }
}
