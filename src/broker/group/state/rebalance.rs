//! Preparing and completing a rebalance: the join deadline, electing the leader, removing members.
//! Part of the pure state machine of [`Group`]: no I/O, no awaits.

use super::*;

impl Group {
    pub(super) fn maybe_prepare_rebalance(
        &mut self,
        now: Instant,
        settings: &GroupSettings,
        reason: &str,
    ) {
        if matches!(
            self.state,
            GroupState::Stable | GroupState::CompletingRebalance | GroupState::Empty
        ) {
            self.prepare_rebalance(now, settings, reason);
        }
    }

    pub(super) fn prepare_rebalance(
        &mut self,
        now: Instant,
        settings: &GroupSettings,
        reason: &str,
    ) {
        if self.state == GroupState::CompletingRebalance {
            // Members parked in SyncGroup must rejoin; the assignment in the making is void.
            self.reset_assignments_with_error(GroupError::RebalanceInProgress, now);
        }
        self.pending_sync.clear();
        self.sync_deadline = None;
        let rebalance_timeout = self.max_rebalance_timeout();
        self.join_timer = Some(if self.state == GroupState::Empty {
            let delay = settings.initial_rebalance_delay;
            JoinTimer::Initial {
                deadline: now + delay,
                delay,
                remaining: rebalance_timeout.saturating_sub(delay),
            }
        } else {
            JoinTimer::Rebalance {
                deadline: now + rebalance_timeout,
            }
        });
        tracing::info!(group = %self.id, from = %self.state, generation = self.generation,
            reason, "preparing to rebalance");
        self.state = GroupState::PreparingRebalance;
        self.try_complete_join(now);
    }

    pub(super) fn reset_assignments_with_error(&mut self, error: GroupError, now: Instant) {
        for m in &mut self.members {
            m.assignment = Bytes::new();
            if let Some(reply) = m.sync_reply.take() {
                let _ = reply.send(Err(error.clone()));
                m.touch(now);
            }
        }
    }

    /// Completes the rebalance early once every member has rejoined and no MEMBER_ID_REQUIRED
    /// id is still expected (Kafka's DelayedJoin.tryComplete); the initial delay never does.
    pub(super) fn try_complete_join(&mut self, now: Instant) {
        if self.state != GroupState::PreparingRebalance
            || matches!(self.join_timer, Some(JoinTimer::Initial { .. }))
        {
            return;
        }
        if self.pending.is_empty() && self.members.iter().all(|m| m.join_reply.is_some()) {
            self.complete_join(now);
        }
    }

    /// Kafka's onCompleteJoin: drop dynamic members that did not rejoin, start the next
    /// generation and answer every parked JoinGroup.
    pub(super) fn complete_join(&mut self, now: Instant) {
        self.join_timer = None;
        self.new_member_added = false;
        let missing: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.join_reply.is_none() && m.instance_id.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in &missing {
            tracing::info!(group = %self.id, member = %id, "member did not rejoin in time; removed");
            self.detach_member(id);
            metrics::counter!("ferry_group_members_removed_total", "reason" => "rebalance_timeout")
                .increment(1);
        }
        if self.state == GroupState::Dead {
            return;
        }
        if !self.elect_joined_leader() && !self.members.is_empty() {
            // Only static members that have not rejoined are left: wait another rebalance
            // timeout for them (their session timeout removes them meanwhile if they are gone).
            tracing::warn!(group = %self.id, "no member rejoined; extending the rebalance");
            // (At least a second: a zero rebalance timeout must not make the timer spin.)
            self.join_timer = Some(JoinTimer::Rebalance {
                deadline: now + self.max_rebalance_timeout().max(Duration::from_secs(1)),
            });
            return;
        }
        self.generation += 1;
        self.pending_sync.clear();
        self.sync_deadline = None;
        // Instance ids restored from disk whose member never came back are forgotten now.
        let live: HashSet<&str> = self.members.iter().map(|m| m.id.as_str()).collect();
        self.static_members
            .retain(|_, member| live.contains(member.as_str()));
        metrics::counter!("ferry_group_rebalances_total").increment(1);
        if self.members.is_empty() {
            self.protocol = None;
            self.state = GroupState::Empty;
            tracing::info!(group = %self.id, generation = self.generation, "group is now empty");
            return;
        }
        self.protocol = self.select_protocol();
        if self.protocol.is_none() {
            // Unreachable while joins check protocols; fall back rather than stall the group.
            tracing::error!(group = %self.id, "no protocol common to all members");
            self.protocol = self.members[0].protocols.first().map(|(n, _)| n.clone());
        }
        self.state = GroupState::CompletingRebalance;
        tracing::info!(group = %self.id, generation = self.generation, members = self.members.len(),
            protocol = ?self.protocol, leader = ?self.leader, "rebalance complete; awaiting sync");
        let leader_view = self.member_list();
        let base = self.join_response("");
        for m in &mut self.members {
            if let Some(reply) = m.join_reply.take() {
                let mut response = base.clone();
                response.member_id = m.id.clone();
                if self.leader.as_deref() == Some(m.id.as_str()) {
                    response.members = leader_view.clone();
                }
                let _ = reply.send(Ok(response));
            }
            m.touch(now);
            m.is_new = false;
            self.pending_sync.insert(m.id.clone());
        }
        self.sync_deadline = Some(now + self.max_rebalance_timeout());
    }

    /// Keeps the leader if it rejoined, else picks the first member that did; false if none did.
    pub(super) fn elect_joined_leader(&mut self) -> bool {
        let Some(leader) = self.leader.clone() else {
            return false;
        };
        if self.member(&leader).is_some_and(|m| m.join_reply.is_some()) {
            return true;
        }
        match self.members.iter().find(|m| m.join_reply.is_some()) {
            Some(m) => {
                self.leader = Some(m.id.clone());
                true
            }
            None => false,
        }
    }

    /// Removes a member and what points at it, nothing more (Kafka's `GroupMetadata.remove`).
    pub(super) fn detach_member(&mut self, id: &str) -> Option<Member> {
        self.pending.remove(id);
        let index = self.members.iter().position(|m| m.id == id)?;
        let member = self.members.remove(index);
        if let Some(instance) = &member.instance_id {
            if self.static_members.get(instance).map(String::as_str) == Some(id) {
                self.static_members.remove(instance);
            }
        }
        if self.is_leader(id) {
            self.leader = self.members.first().map(|m| m.id.clone());
        }
        if self.pending_sync.remove(id) && self.pending_sync.is_empty() {
            self.sync_deadline = None;
        }
        Some(member)
    }

    /// Removes a member that left or expired and moves the group on (Kafka's
    /// removeMemberAndUpdateGroup): a rebalance if it was stable, an earlier completion if the
    /// departed member was the one everybody waited for.
    pub(super) fn remove_member_and_update(
        &mut self,
        id: &str,
        now: Instant,
        settings: &GroupSettings,
        reason: &str,
    ) {
        let Some(member) = self.detach_member(id) else {
            return;
        };
        // UNKNOWN_MEMBER_ID makes a still-alive client start over with a fresh join.
        if let Some(reply) = member.join_reply {
            let _ = reply.send(Err(GroupError::UnknownMemberId));
        }
        if let Some(reply) = member.sync_reply {
            let _ = reply.send(Err(GroupError::UnknownMemberId));
        }
        tracing::info!(group = %self.id, member = %id, reason, "member removed");
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.maybe_prepare_rebalance(now, settings, reason)
            }
            GroupState::PreparingRebalance => self.try_complete_join(now),
            GroupState::Empty
            | GroupState::Dead
            | GroupState::Assigning
            | GroupState::Reconciling => {}
        }
    }
}
