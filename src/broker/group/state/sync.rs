//! SyncGroup: waiting for the leader's assignment and handing each member its part.
//! Part of the pure state machine of [`Group`]: no I/O, no awaits.

use super::*;

impl Group {
    pub(in crate::broker::group) fn sync(
        &mut self,
        req: SyncRequest,
        now: Instant,
    ) -> Reply<SyncResponse> {
        if self.state == GroupState::Dead {
            return Reply::Now(Err(GroupError::CoordinatorNotAvailable));
        }
        if let Err(e) = self.validate_member(&req.member_id, req.instance_id.as_deref()) {
            return Reply::Now(Err(e));
        }
        if req.generation != self.generation {
            return Reply::Now(Err(GroupError::IllegalGeneration));
        }
        if req
            .protocol_type
            .as_ref()
            .is_some_and(|t| self.protocol_type.as_ref() != Some(t))
            || req
                .protocol_name
                .as_ref()
                .is_some_and(|p| self.protocol.as_ref() != Some(p))
        {
            return Reply::Now(Err(GroupError::InconsistentGroupProtocol));
        }
        match self.state {
            GroupState::Empty
            | GroupState::Dead
            | GroupState::Assigning
            | GroupState::Reconciling => Reply::Now(Err(GroupError::UnknownMemberId)),
            GroupState::PreparingRebalance => Reply::Now(Err(GroupError::RebalanceInProgress)),
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                if let Some(m) = self.member_mut(&req.member_id) {
                    if let Some(superseded) = m.sync_reply.replace(tx) {
                        let _ = superseded.send(Err(GroupError::RebalanceInProgress));
                    }
                }
                self.sync_received(&req.member_id);
                if self.is_leader(&req.member_id) {
                    self.install_assignment(req.assignments, now);
                }
                Reply::Later(rx)
            }
            GroupState::Stable => {
                // Late follower (or a replaced static member): the assignment is already known.
                self.sync_received(&req.member_id);
                let protocol_type = self.protocol_type.clone().unwrap_or_default();
                let protocol_name = self.protocol.clone().unwrap_or_default();
                let Some(m) = self.member_mut(&req.member_id) else {
                    return Reply::Now(Err(GroupError::UnknownMemberId));
                };
                m.touch(now);
                Reply::Now(Ok(SyncResponse {
                    protocol_type,
                    protocol_name,
                    assignment: m.assignment.clone(),
                }))
            }
        }
    }

    pub(super) fn sync_received(&mut self, member_id: &str) {
        if self.pending_sync.remove(member_id) && self.pending_sync.is_empty() {
            self.sync_deadline = None;
        }
    }

    /// The leader's assignment: store it (members it left out get an empty one, as in Kafka),
    /// answer every parked SyncGroup and become Stable.
    pub(super) fn install_assignment(&mut self, assignments: Vec<(String, Bytes)>, now: Instant) {
        let mut by_member: HashMap<String, Bytes> = assignments.into_iter().collect();
        let protocol_type = self.protocol_type.clone().unwrap_or_default();
        let protocol_name = self.protocol.clone().unwrap_or_default();
        for m in &mut self.members {
            m.assignment = by_member.remove(&m.id).unwrap_or_default();
            if let Some(reply) = m.sync_reply.take() {
                let _ = reply.send(Ok(SyncResponse {
                    protocol_type: protocol_type.clone(),
                    protocol_name: protocol_name.clone(),
                    assignment: m.assignment.clone(),
                }));
                m.touch(now);
            }
        }
        if !by_member.is_empty() {
            tracing::warn!(group = %self.id, unknown = ?by_member.keys().collect::<Vec<_>>(),
                "leader assigned to members that are not in the group; ignored");
        }
        self.state = GroupState::Stable;
        tracing::info!(group = %self.id, generation = self.generation, "group is stable");
    }
}
