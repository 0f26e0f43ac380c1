//! Offsets committed inside a Kafka transaction (TxnOffsetCommit), applied to the group when
//! the transaction commits. The transaction coordinator (`broker::txn`) keeps them aside until
//! then, so a consumer never sees offsets of an aborted transaction; by the time they land the
//! producer's generation checks were made at TxnOffsetCommit time, so none are made here
//! (Kafka's group coordinator likewise applies the markers' offsets unconditionally).

use super::*;

impl GroupCoordinator {
    /// Stores `offsets` for `group_id` (creating the group if needed), flushed before `Ok`.
    /// Blocks on that flush: call it from a blocking-tolerant context.
    pub fn commit_transactional_offsets(
        &self,
        group_id: &str,
        offsets: Vec<CommittedOffset>,
    ) -> Result<(), GroupError> {
        self.check_running()?;
        if offsets.is_empty() {
            return Ok(());
        }
        let Some(entry) = self.group(group_id, true)? else {
            return Err(GroupError::CoordinatorNotAvailable);
        };
        let _writer = entry.commit_lock.lock();
        self.store_offsets(&entry, group_id, offsets)
    }
}
