//! Durable transaction-coordinator state: one record per `transactional.id`, holding the
//! producer id and epoch it maps to and the transaction in progress (its partitions, the
//! groups whose offsets it carries and those offsets). The coordinator (`broker::txn`) writes
//! and flushes a record before it answers or writes a marker, so a restart resumes every
//! transaction from its last decided state.

use serde::{Deserialize, Serialize};

use super::{keys, CommittedOffset, Meta, MetaError, MetaOp};

/// Kafka's transaction states, minus the ones a single node never needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnStatus {
    /// No transaction since the producer registered.
    #[default]
    Empty,
    /// Partitions or offsets were added; neither committed nor aborted yet.
    Ongoing,
    /// Commit decided: markers are being written (a restart finishes them).
    PrepareCommit,
    /// Abort decided: markers are being written (a restart finishes them).
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

/// One transactional id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRecord {
    pub transactional_id: String,
    pub producer_id: i64,
    pub epoch: i16,
    /// The producer's `transaction.timeout.ms`.
    pub timeout_ms: i32,
    pub status: TxnStatus,
    /// Partitions of the transaction in progress, sorted.
    #[serde(default)]
    pub partitions: Vec<(String, i32)>,
    /// Groups added with AddOffsetsToTxn, sorted.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Offsets committed in the transaction (TxnOffsetCommit), per group: applied to the
    /// groups only when the transaction commits.
    #[serde(default)]
    pub pending_offsets: Vec<(String, CommittedOffset)>,
    /// When the transaction in progress started (wall clock, ms), for the timeout.
    #[serde(default)]
    pub started_ms: i64,
    /// Last change (ms), for DescribeTransactions/ListTransactions.
    #[serde(default)]
    pub updated_ms: i64,
}

impl Meta {
    pub fn put_transaction(&self, record: &TxnRecord) -> Result<(), MetaError> {
        self.put(keys::transaction(&record.transactional_id), record)
    }
    pub fn transactions(&self) -> Result<Vec<TxnRecord>, MetaError> {
        self.scan(&keys::transactions())
    }
    pub fn delete_transaction(&self, transactional_id: &str) -> Result<(), MetaError> {
        self.store
            .apply(vec![MetaOp::Delete(keys::transaction(transactional_id))])
    }
}
