//! Heartbeat and LeaveGroup, and whether an OffsetCommit comes from a current member (or one from before a restart).
//! Part of the pure state machine of [`Group`]: no I/O, no awaits.

use super::*;

impl Group {
    pub(in crate::broker::group) fn heartbeat(
        &mut self,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        now: Instant,
    ) -> Result<(), GroupError> {
        if self.state == GroupState::Dead {
            return Err(GroupError::CoordinatorNotAvailable);
        }
        self.validate_member(member_id, instance_id)?;
        if generation != self.generation {
            return Err(GroupError::IllegalGeneration);
        }
        let state = self.state;
        let Some(m) = self.member_mut(member_id) else {
            return Err(GroupError::UnknownMemberId);
        };
        match state {
            GroupState::Empty
            | GroupState::Dead
            | GroupState::Assigning
            | GroupState::Reconciling => Err(GroupError::UnknownMemberId),
            GroupState::CompletingRebalance | GroupState::Stable => {
                m.touch(now);
                Ok(())
            }
            // The heartbeat still counts: the member is alive and about to rejoin.
            GroupState::PreparingRebalance => {
                m.touch(now);
                Err(GroupError::RebalanceInProgress)
            }
        }
    }

    /// One member of a LeaveGroup request (Kafka's handleLeaveGroup, per member).
    pub(in crate::broker::group) fn leave(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        now: Instant,
        settings: &GroupSettings,
    ) -> Result<(), GroupError> {
        if member_id.is_empty() {
            // Administrative removal by instance id (LeaveGroup v3+, `kafka-consumer-groups
            // --delete-members`): whoever currently holds the instance id goes.
            let current = instance_id
                .and_then(|i| self.static_members.get(i))
                .cloned();
            return match current {
                Some(current) if self.member(&current).is_some() => {
                    self.remove_member_and_update(&current, now, settings, "left (by instance id)");
                    Ok(())
                }
                Some(_) => {
                    // A mapping restored from disk whose member never came back.
                    if let Some(instance) = instance_id {
                        self.static_members.remove(instance);
                    }
                    Err(GroupError::UnknownMemberId)
                }
                None => Err(GroupError::UnknownMemberId),
            };
        }
        if self.pending.remove(member_id).is_some() {
            self.try_complete_join(now);
            return Ok(());
        }
        self.validate_member(member_id, instance_id)?;
        self.remove_member_and_update(member_id, now, settings, "left the group");
        Ok(())
    }

    /// Kafka's validateOffsetCommit plus its per-state rules; refreshes the committer's session.
    pub(in crate::broker::group) fn check_commit(
        &mut self,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        now: Instant,
    ) -> Result<(), GroupError> {
        if self.state == GroupState::Dead {
            return Err(GroupError::CoordinatorNotAvailable);
        }
        if let Some(c) = &self.consumer {
            // KIP-848: the member epoch stands in for the generation.
            return c.check_commit(generation, member_id);
        }
        if generation < 0 && self.state == GroupState::Empty {
            // Admin tools and consumers without group management (`assign()`).
            return Ok(());
        }
        if self.commit_from_before_restart(generation, member_id, instance_id) {
            return Ok(());
        }
        if generation >= 0 || !member_id.is_empty() || instance_id.is_some() {
            self.validate_member(member_id, instance_id)?;
            if generation != self.generation {
                return Err(GroupError::IllegalGeneration);
            }
        } else {
            // A simple commit into a group with live members: only members may commit.
            return Err(GroupError::UnknownMemberId);
        }
        match self.state {
            // Commits stay allowed while rebalancing: the member learns of the rebalance from
            // its next heartbeat and commits what it processed before rejoining.
            GroupState::Stable | GroupState::PreparingRebalance => {
                if let Some(m) = self.member_mut(member_id) {
                    m.touch(now);
                }
                Ok(())
            }
            // The member has this generation's JoinGroup answer but no assignment yet.
            GroupState::CompletingRebalance => Err(GroupError::RebalanceInProgress),
            GroupState::Empty => Ok(()),
            GroupState::Dead | GroupState::Assigning | GroupState::Reconciling => {
                Err(GroupError::CoordinatorNotAvailable)
            }
        }
    }

    /// A commit from a member of the generation the group had when the broker stopped, which
    /// this restart forgot (membership is not restored, see the module docs of `group`). Kafka
    /// restores the members and accepts such a commit; refusing it loses whatever the client
    /// processed between reconnecting and rejoining, which is then delivered again. Worse, a
    /// librdkafka member told UNKNOWN_MEMBER_ID resets its member id to "" and then commits
    /// what it revokes under that empty id: for a static member the restored instance id
    /// mapping made that FENCED_INSTANCE_ID, a fatal error that kills the consumer.
    ///
    /// Accepting such a commit is safe while no newer generation exists: nobody else can own
    /// those partitions yet (and an Empty group takes generation -1 commits from anyone
    /// anyway). A static incarnation the mapping does not name is still fenced, unless it
    /// comes with the empty id and the named member is not live (no one to protect).
    pub(super) fn commit_from_before_restart(
        &self,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> bool {
        let fenced = instance_id
            .and_then(|i| self.static_members.get(i))
            .is_some_and(|current| {
                current != member_id && (!member_id.is_empty() || self.member(current).is_some())
            });
        self.restored_generation == Some(generation)
            && generation == self.generation
            && self.member(member_id).is_none()
            && !fenced
    }

    /// Kafka's validateOffsetCommit for a TxnOffsetCommit (v3+ carries the consumer's
    /// generation, member id and instance id): a commit naming no member is accepted, as from
    /// a producer that does not know the group; one naming a member must come from a current
    /// member (FENCED_INSTANCE_ID for a replaced static one) of the current generation. The
    /// rebalance state does not matter: the offsets land only when the transaction commits.
    pub(in crate::broker::group) fn check_txn_commit(
        &self,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<(), GroupError> {
        if self.state == GroupState::Dead {
            return Err(GroupError::CoordinatorNotAvailable);
        }
        if generation < 0 && member_id.is_empty() && instance_id.is_none() {
            return Ok(());
        }
        if self.commit_from_before_restart(generation, member_id, instance_id) {
            return Ok(());
        }
        self.validate_member(member_id, instance_id)?;
        if generation != self.generation {
            return Err(GroupError::IllegalGeneration);
        }
        Ok(())
    }
}
