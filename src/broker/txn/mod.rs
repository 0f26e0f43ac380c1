//! The transaction coordinator: Kafka's exactly-once transactions (KIP-98) in protocol-free
//! terms. A `transactional.id` maps durably to a producer id and epoch; registering it again
//! bumps the epoch, which fences the previous instance (a zombie) and aborts whatever it left
//! open. A transaction is the set of partitions (and consumer groups) added to it; ending it
//! writes a COMMIT or ABORT marker, a control batch through the one record-batch codec, to
//! every partition, and on commit applies the offsets committed in it to their groups.
//!
//! Design:
//! - The state of each id is a [`TxnRecord`] in [`Meta`], written and flushed before the
//!   coordinator answers and before it writes markers (status `PrepareCommit`/`PrepareAbort`),
//!   so after a crash [`BrokerCore::recover_transactions`] finishes every decided transaction
//!   and the partitions' own transaction index (rebuilt from the log) agrees with it. A
//!   transaction still `Ongoing` after a restart keeps running until its producer ends it or
//!   its timeout aborts it.
//! - Operations on one id are serialized by an async mutex per id (markers are awaited under
//!   it); different ids proceed in parallel.
//! - Produce consults [`TxnCoordinator::check_produce`], an in-memory view of every producer's
//!   current epoch and open partitions, so a transactional batch is accepted only from the
//!   current epoch and only for a partition added to its open transaction (what KIP-890 part 1
//!   verifies), and a fenced zombie's writes are refused.
//! - This file holds the state machine (pure, unit-tested); [`ops`] the async operations on
//!   [`BrokerCore`](super::BrokerCore).

mod ops;

pub(super) use ops::spawn_timeout_sweeper;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::meta::{Meta, MetaError, TxnRecord, TxnStatus};

/// Longest `transaction.timeout.ms` accepted (Kafka's `transaction.max.timeout.ms` default).
pub const MAX_TRANSACTION_TIMEOUT_MS: i32 = 900_000;

#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    /// The epoch presented is not the current one for the id: a newer instance took over.
    #[error("producer fenced: a newer instance registered this transactional id")]
    ProducerFenced,
    /// The producer id presented is not the one the transactional id maps to.
    #[error("the producer id does not belong to this transactional id")]
    InvalidProducerIdMapping,
    /// The request does not fit the transaction's state (end without begin, commit after
    /// abort, a write to a partition not added).
    #[error("invalid transaction state: {0}")]
    InvalidTxnState(String),
    /// The previous transaction is still being completed; retry.
    #[error("a previous transaction is still being completed")]
    ConcurrentTransactions,
    #[error("transaction timeout {0} ms is outside 1..={MAX_TRANSACTION_TIMEOUT_MS}")]
    InvalidTransactionTimeout(i32),
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// Writing a marker failed; the transaction stays decided and is completed on retry or
    /// at the next start.
    #[error("writing transaction markers failed: {0}")]
    Log(String),
    #[error("applying transactional offsets failed: {0}")]
    Group(String),
    /// TxnOffsetCommit from a consumer that is not a current member of the group's current
    /// generation (ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, FENCED_INSTANCE_ID, ...).
    #[error("transactional offset commit refused by the group: {0}")]
    Member(crate::broker::group::GroupError),
}

/// What produce needs to know about a transactional producer id, kept in memory.
#[derive(Debug, Clone, Default)]
struct LiveProducer {
    epoch: i16,
    /// Partitions of the open transaction; empty when none is open.
    open: BTreeSet<(String, i32)>,
    /// (group, topic, partition) of the offsets the open or deciding transaction holds
    /// (TxnOffsetCommit), until they are applied or dropped.
    pending_offsets: BTreeSet<(String, String, i32)>,
}

/// The coordinator's in-memory side: one async lock per transactional id over its record, and
/// the producer view produce checks against.
#[derive(Default)]
pub struct TxnCoordinator {
    entries: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<TxnRecord>>>>>,
    live: RwLock<HashMap<i64, LiveProducer>>,
}

impl TxnCoordinator {
    /// Loads every transactional id from `meta`.
    pub fn load(meta: &Meta) -> Result<Self, MetaError> {
        let coordinator = TxnCoordinator::default();
        for record in meta.transactions()? {
            coordinator.publish(&record);
            coordinator.entries.lock().insert(
                record.transactional_id.clone(),
                Arc::new(tokio::sync::Mutex::new(Some(record))),
            );
        }
        Ok(coordinator)
    }

    /// The lock over one id's record (`None` inside: never registered).
    fn entry(&self, transactional_id: &str) -> Arc<tokio::sync::Mutex<Option<TxnRecord>>> {
        self.entries
            .lock()
            .entry(transactional_id.to_string())
            .or_default()
            .clone()
    }

    /// The lock over a registered id's record, without creating one for an id a client made
    /// up (requests other than InitProducerId must not grow the table).
    fn existing_entry(
        &self,
        transactional_id: &str,
    ) -> Option<Arc<tokio::sync::Mutex<Option<TxnRecord>>>> {
        self.entries.lock().get(transactional_id).cloned()
    }

    /// Every id's lock, for sweeps (timeouts, recovery, listing).
    fn all_entries(&self) -> Vec<Arc<tokio::sync::Mutex<Option<TxnRecord>>>> {
        self.entries.lock().values().cloned().collect()
    }

    /// Makes `record` what produce checks see.
    fn publish(&self, record: &TxnRecord) {
        let open = if record.status == TxnStatus::Ongoing {
            record.partitions.iter().cloned().collect()
        } else {
            BTreeSet::new()
        };
        let pending_offsets = record
            .pending_offsets
            .iter()
            .map(|(group, o)| (group.clone(), o.topic.clone(), o.partition))
            .collect();
        self.live.write().insert(
            record.producer_id,
            LiveProducer {
                epoch: record.epoch,
                open,
                pending_offsets,
            },
        );
    }

    /// Does a transaction hold an offset of `group` for `(topic, partition)` that is not
    /// applied yet? OffsetFetch with `require_stable` answers UNSTABLE_OFFSET_COMMIT then.
    pub fn has_pending_offset(&self, group: &str, topic: &str, partition: i32) -> bool {
        let key = (group.to_string(), topic.to_string(), partition);
        self.live
            .read()
            .values()
            .any(|p| p.pending_offsets.contains(&key))
    }

    /// Forgets a producer id that was replaced (its epoch ran out).
    fn unpublish(&self, producer_id: i64) {
        self.live.write().remove(&producer_id);
    }

    /// May a transactional batch of `(producer_id, epoch)` be appended to `(topic,
    /// partition)`? Only for the current epoch of an id, into a partition added to its open
    /// transaction.
    pub fn check_produce(
        &self,
        producer_id: i64,
        epoch: i16,
        topic: &str,
        partition: i32,
    ) -> Result<(), TxnError> {
        let live = self.live.read();
        let Some(producer) = live.get(&producer_id) else {
            return Err(TxnError::InvalidProducerIdMapping);
        };
        if epoch != producer.epoch {
            return Err(TxnError::ProducerFenced);
        }
        if !producer.open.contains(&(topic.to_string(), partition)) {
            return Err(TxnError::InvalidTxnState(
                "the partition was not added to the transaction".into(),
            ));
        }
        Ok(())
    }
}

/// Checks that `(producer_id, epoch)` is the id's current producer.
fn check_producer(record: &TxnRecord, producer_id: i64, epoch: i16) -> Result<(), TxnError> {
    if producer_id != record.producer_id {
        return Err(TxnError::InvalidProducerIdMapping);
    }
    if epoch != record.epoch {
        return Err(TxnError::ProducerFenced);
    }
    Ok(())
}

/// Opens a transaction if none is open (AddPartitionsToTxn, AddOffsetsToTxn). Returns whether
/// the record changed.
fn begin(record: &mut TxnRecord, now_ms: i64) -> Result<bool, TxnError> {
    match record.status {
        TxnStatus::Ongoing => Ok(false),
        TxnStatus::PrepareCommit | TxnStatus::PrepareAbort => Err(TxnError::ConcurrentTransactions),
        TxnStatus::Empty | TxnStatus::CompleteCommit | TxnStatus::CompleteAbort => {
            record.status = TxnStatus::Ongoing;
            record.partitions.clear();
            record.groups.clear();
            record.pending_offsets.clear();
            record.started_ms = now_ms;
            record.updated_ms = now_ms;
            Ok(true)
        }
    }
}

/// What EndTxn must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndAction {
    /// Write the markers (the record is now `Prepare*`; persist it first).
    WriteMarkers,
    /// The same end was already completed (a retried EndTxn): answer success.
    AlreadyDone,
}

/// Decides an EndTxn (`commit` or abort) against the record's state.
fn decide_end(record: &mut TxnRecord, commit: bool, now_ms: i64) -> Result<EndAction, TxnError> {
    use TxnStatus::*;
    match (record.status, commit) {
        (Ongoing, _) => {
            record.status = if commit { PrepareCommit } else { PrepareAbort };
            record.updated_ms = now_ms;
            Ok(EndAction::WriteMarkers)
        }
        (PrepareCommit, true) | (PrepareAbort, false) => Ok(EndAction::WriteMarkers),
        (CompleteCommit, true) | (CompleteAbort, false) => Ok(EndAction::AlreadyDone),
        // librdkafka may abort when nothing was added; there is nothing to undo.
        (Empty, false) => Ok(EndAction::AlreadyDone),
        (status, _) => Err(TxnError::InvalidTxnState(format!(
            "cannot {} a transaction in state {status:?}",
            if commit { "commit" } else { "abort" }
        ))),
    }
}

/// Marks a decided transaction complete, clearing what it held.
fn complete(record: &mut TxnRecord, now_ms: i64) {
    record.status = match record.status {
        TxnStatus::PrepareCommit => TxnStatus::CompleteCommit,
        _ => TxnStatus::CompleteAbort,
    };
    record.partitions.clear();
    record.groups.clear();
    record.pending_offsets.clear();
    record.updated_ms = now_ms;
}

/// Kafka's state names, as DescribeTransactions/ListTransactions show them.
pub fn status_name(status: TxnStatus) -> &'static str {
    match status {
        TxnStatus::Empty => "Empty",
        TxnStatus::Ongoing => "Ongoing",
        TxnStatus::PrepareCommit => "PrepareCommit",
        TxnStatus::PrepareAbort => "PrepareAbort",
        TxnStatus::CompleteCommit => "CompleteCommit",
        TxnStatus::CompleteAbort => "CompleteAbort",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> TxnRecord {
        TxnRecord {
            transactional_id: "t".into(),
            producer_id: 7,
            epoch: 2,
            timeout_ms: 60_000,
            status: TxnStatus::Empty,
            partitions: vec![],
            groups: vec![],
            pending_offsets: vec![],
            started_ms: 0,
            updated_ms: 0,
        }
    }

    #[test]
    fn producer_checks_fence_old_epochs_and_foreign_ids() {
        let r = record();
        assert!(check_producer(&r, 7, 2).is_ok());
        assert!(matches!(
            check_producer(&r, 7, 1),
            Err(TxnError::ProducerFenced)
        ));
        assert!(matches!(
            check_producer(&r, 8, 2),
            Err(TxnError::InvalidProducerIdMapping)
        ));
    }

    #[test]
    fn lifecycle_begin_end_retry_and_wrong_end() {
        let mut r = record();
        assert_eq!(
            decide_end(&mut r, false, 1).unwrap(),
            EndAction::AlreadyDone
        );
        assert!(decide_end(&mut r, true, 1).is_err());
        assert!(begin(&mut r, 10).unwrap());
        r.partitions.push(("a".into(), 0));
        assert!(!begin(&mut r, 11).unwrap());
        assert_eq!(r.started_ms, 10);
        assert_eq!(
            decide_end(&mut r, true, 12).unwrap(),
            EndAction::WriteMarkers
        );
        assert_eq!(r.status, TxnStatus::PrepareCommit);
        assert!(matches!(
            begin(&mut r, 13),
            Err(TxnError::ConcurrentTransactions)
        ));
        // A retried commit writes the markers again; an abort now is a state error.
        assert_eq!(
            decide_end(&mut r, true, 13).unwrap(),
            EndAction::WriteMarkers
        );
        assert!(decide_end(&mut r, false, 13).is_err());
        complete(&mut r, 14);
        assert_eq!(r.status, TxnStatus::CompleteCommit);
        assert!(r.partitions.is_empty());
        assert_eq!(
            decide_end(&mut r, true, 15).unwrap(),
            EndAction::AlreadyDone
        );
        assert!(begin(&mut r, 16).unwrap());
        assert_eq!(r.status, TxnStatus::Ongoing);
    }

    #[test]
    fn produce_checks_epoch_and_added_partitions() {
        let c = TxnCoordinator::default();
        let mut r = record();
        c.publish(&r);
        assert!(matches!(
            c.check_produce(7, 2, "a", 0),
            Err(TxnError::InvalidTxnState(_))
        ));
        r.status = TxnStatus::Ongoing;
        r.partitions = vec![("a".into(), 0)];
        c.publish(&r);
        assert!(c.check_produce(7, 2, "a", 0).is_ok());
        assert!(c.check_produce(7, 2, "a", 1).is_err());
        assert!(matches!(
            c.check_produce(7, 1, "a", 0),
            Err(TxnError::ProducerFenced)
        ));
        assert!(matches!(
            c.check_produce(9, 0, "a", 0),
            Err(TxnError::InvalidProducerIdMapping)
        ));
    }
}
