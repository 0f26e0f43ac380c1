//! Offsets committed inside a Kafka transaction (TxnOffsetCommit), applied to the group when
//! the transaction commits. The transaction coordinator (`broker::txn`) keeps them aside until
//! then, so a consumer never sees offsets of an aborted transaction; the committer's group
//! membership is checked when TxnOffsetCommit arrives ([`GroupCoordinator::check_txn_committer`]),
//! so none is made when they land (Kafka's group coordinator likewise applies the markers'
//! offsets unconditionally).

use super::*;

/// Who sends a TxnOffsetCommit: the consumer's generation, member id and instance id
/// (v3+, KIP-447; older versions send none, which is `generation` -1 and an empty id).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnCommitter {
    pub generation: i32,
    pub member_id: String,
    pub instance_id: Option<String>,
}

impl GroupCoordinator {
    /// Kafka's checks of a TxnOffsetCommit's member against the classic group: see
    /// `Group::check_txn_commit`. An unknown group has no members, so any member named is
    /// UNKNOWN_MEMBER_ID there.
    pub fn check_txn_committer(
        &self,
        group_id: &str,
        who: &TxnCommitter,
    ) -> Result<(), GroupError> {
        self.check_running()?;
        let anonymous = who.generation < 0 && who.member_id.is_empty() && who.instance_id.is_none();
        let Some(entry) = self.group(group_id, false)? else {
            return if anonymous {
                Ok(())
            } else {
                Err(GroupError::UnknownMemberId)
            };
        };
        let group = entry.state.lock();
        group.check_txn_commit(who.generation, &who.member_id, who.instance_id.as_deref())
    }

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
