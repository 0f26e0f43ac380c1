//! JoinGroup: admitting new, known and static members, protocol selection, and the join answer.
//! Part of the pure state machine of [`Group`]: no I/O, no awaits.

use super::*;

impl Group {
    pub(in crate::broker::group) fn join(
        &mut self,
        req: JoinRequest,
        now: Instant,
        settings: &GroupSettings,
    ) -> Reply<JoinResponse> {
        let reply = self.join_inner(req, now, settings);
        if self.state == GroupState::PreparingRebalance {
            self.try_complete_join(now);
        }
        reply
    }

    pub(super) fn join_inner(
        &mut self,
        req: JoinRequest,
        now: Instant,
        settings: &GroupSettings,
    ) -> Reply<JoinResponse> {
        if self.state == GroupState::Dead {
            // Deleted under our feet: the client rediscovers the coordinator and retries.
            return Reply::Now(Err(GroupError::CoordinatorNotAvailable));
        }
        if let Err(e) = self.admit_classic() {
            return Reply::Now(Err(e));
        }
        if !self.accepts_joining_member(&req.member_id, settings.max_size) {
            // An over-capacity group sheds existing members that have not rejoined yet, as
            // Kafka does (plain removal: the completion check in `join` follows).
            self.detach_member(&req.member_id);
            return Reply::Now(Err(GroupError::GroupMaxSizeReached));
        }
        if req.member_id.is_empty() {
            self.join_new_member(req, now, settings)
        } else {
            self.join_known_member(req, now, settings)
        }
    }

    /// Kafka's `acceptJoiningMember`: while rebalancing, count members that already rejoined
    /// (the group may be over a lowered limit); otherwise count all members.
    pub(super) fn accepts_joining_member(&self, member_id: &str, max_size: Option<usize>) -> bool {
        let Some(max) = max_size else { return true };
        match self.state {
            // Assigning/Reconciling belong to consumer groups, never to this classic state.
            GroupState::Empty
            | GroupState::Dead
            | GroupState::Assigning
            | GroupState::Reconciling => true,
            GroupState::PreparingRebalance => {
                self.member(member_id)
                    .is_some_and(|m| m.join_reply.is_some())
                    || self
                        .members
                        .iter()
                        .filter(|m| m.join_reply.is_some())
                        .count()
                        < max
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                self.member(member_id).is_some() || self.members.len() < max
            }
        }
    }

    /// Whether a member with these protocols may be in the group: an Empty group takes any
    /// non-empty type and list; otherwise the type must match and one protocol must be shared
    /// with every other member. (`except`: the member being updated or replaced, whose old
    /// protocols must not count; Kafka counts them, which only matters when a member switches to
    /// protocols its own old self did not support.)
    pub(super) fn supports_protocols(
        &self,
        protocol_type: &str,
        protocols: &[(String, Bytes)],
        except: Option<&str>,
    ) -> bool {
        if protocol_type.is_empty() || protocols.is_empty() {
            return false;
        }
        if self.state == GroupState::Empty {
            return true;
        }
        self.protocol_type.as_deref() == Some(protocol_type)
            && protocols.iter().any(|(name, _)| {
                self.members
                    .iter()
                    .filter(|m| Some(m.id.as_str()) != except)
                    .all(|m| m.supports(name))
            })
    }

    pub(super) fn join_new_member(
        &mut self,
        req: JoinRequest,
        now: Instant,
        settings: &GroupSettings,
    ) -> Reply<JoinResponse> {
        // A static member that restarted: the old incarnation is still a member here.
        let replacing = req
            .instance_id
            .as_ref()
            .and_then(|instance| self.static_members.get(instance))
            .filter(|old| self.member(old).is_some())
            .cloned();
        if !self.supports_protocols(&req.protocol_type, &req.protocols, replacing.as_deref()) {
            return Reply::Now(Err(GroupError::InconsistentGroupProtocol));
        }
        let prefix = req.instance_id.as_deref().unwrap_or(&req.client_id);
        let new_id = new_member_id(prefix);
        if let Some(old) = replacing {
            return self.replace_static_member(&old, new_id, req, now, settings);
        }
        if req.instance_id.is_none() && req.require_known_member_id {
            // KIP-394: hand out the id and make the client come back with it, so a client that
            // times out and retries reuses one id instead of piling up defunct members.
            self.pending
                .insert(new_id.clone(), now + req.session_timeout);
            return Reply::Now(Err(GroupError::MemberIdRequired(new_id)));
        }
        self.add_member_and_rebalance(new_id, req, now, settings)
    }

    pub(super) fn join_known_member(
        &mut self,
        req: JoinRequest,
        now: Instant,
        settings: &GroupSettings,
    ) -> Reply<JoinResponse> {
        let id = req.member_id.clone();
        if !self.supports_protocols(&req.protocol_type, &req.protocols, Some(&id)) {
            return Reply::Now(Err(GroupError::InconsistentGroupProtocol));
        }
        if self.pending.contains_key(&id) {
            if req.instance_id.is_some() {
                // Static members never get MEMBER_ID_REQUIRED; Kafka treats this as an internal
                // error. Forget the id so the client starts over with an empty one.
                self.pending.remove(&id);
                return Reply::Now(Err(GroupError::UnknownMemberId));
            }
            return self.add_member_and_rebalance(id, req, now, settings);
        }
        if let Err(e) = self.validate_member(&id, req.instance_id.as_deref()) {
            return Reply::Now(Err(e));
        }
        let unchanged = self
            .member(&id)
            .is_some_and(|m| m.protocols == req.protocols);
        match self.state {
            GroupState::PreparingRebalance => self.update_member_and_rebalance(req, now, settings),
            // Same metadata: the member probably lost our JoinGroup answer; repeat it.
            GroupState::CompletingRebalance if unchanged => self.repeat_join_response(&id, now),
            // A follower rejoining a stable group with nothing new gets the current generation
            // back and goes on to SyncGroup; the leader rejoining forces a rebalance, since
            // that is how a consumer reacts to topic metadata changes its members cannot see.
            GroupState::Stable if unchanged && !self.is_leader(&id) => {
                self.repeat_join_response(&id, now)
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                self.update_member_and_rebalance(req, now, settings)
            }
            GroupState::Empty
            | GroupState::Dead
            | GroupState::Assigning
            | GroupState::Reconciling => Reply::Now(Err(GroupError::UnknownMemberId)),
        }
    }

    pub(super) fn repeat_join_response(&mut self, id: &str, now: Instant) -> Reply<JoinResponse> {
        if let Some(m) = self.member_mut(id) {
            m.touch(now);
        }
        Reply::Now(Ok(self.join_response(id)))
    }

    /// Kafka's validateCurrentMember: an instance id must map to this member id (else the caller
    /// is a fenced zombie), and the member id must be in the group.
    pub(super) fn validate_member(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<(), GroupError> {
        if let Some(instance) = instance_id {
            match self.static_members.get(instance) {
                Some(current) if current != member_id => return Err(GroupError::FencedInstanceId),
                Some(_) => {}
                None => return Err(GroupError::UnknownMemberId),
            }
        }
        if self.member(member_id).is_none() {
            return Err(GroupError::UnknownMemberId);
        }
        Ok(())
    }

    pub(super) fn add_member_and_rebalance(
        &mut self,
        id: String,
        req: JoinRequest,
        now: Instant,
        settings: &GroupSettings,
    ) -> Reply<JoinResponse> {
        let (tx, rx) = oneshot::channel();
        if self.state == GroupState::PreparingRebalance && self.generation == 0 {
            self.new_member_added = true;
        }
        if self.members.is_empty() {
            self.protocol_type = Some(req.protocol_type.clone());
        }
        if self.leader.is_none() {
            self.leader = Some(id.clone());
        }
        if let Some(instance) = &req.instance_id {
            self.static_members.insert(instance.clone(), id.clone());
        }
        self.pending.remove(&id);
        tracing::info!(group = %self.id, member = %id, instance = ?req.instance_id,
            client = %req.client_id, reason = ?req.reason, state = %self.state, "member joining");
        self.members.push(Member {
            id,
            instance_id: req.instance_id,
            client_id: req.client_id,
            client_host: req.client_host,
            session_timeout: req.session_timeout,
            rebalance_timeout: req.rebalance_timeout,
            protocols: req.protocols,
            assignment: Bytes::new(),
            join_reply: Some(tx),
            sync_reply: None,
            is_new: true,
            deadline: now + NEW_MEMBER_JOIN_TIMEOUT,
        });
        self.maybe_prepare_rebalance(now, settings, "new member joined");
        Reply::Later(rx)
    }

    pub(super) fn update_member_and_rebalance(
        &mut self,
        req: JoinRequest,
        now: Instant,
        settings: &GroupSettings,
    ) -> Reply<JoinResponse> {
        let (tx, rx) = oneshot::channel();
        let Some(m) = self.member_mut(&req.member_id) else {
            return Reply::Now(Err(GroupError::UnknownMemberId));
        };
        m.protocols = req.protocols;
        m.session_timeout = req.session_timeout;
        m.rebalance_timeout = req.rebalance_timeout;
        if let Some(superseded) = m.join_reply.replace(tx) {
            // The same member joined again while its earlier JoinGroup was parked (a client
            // retry after a timeout); that earlier request is answered so it does not hang.
            let _ = superseded.send(Err(GroupError::RebalanceInProgress));
        }
        self.maybe_prepare_rebalance(now, settings, "member rejoined");
        Reply::Later(rx)
    }

    /// KIP-345: a static member rejoining with an empty member id takes over its old
    /// incarnation's place (and assignment) under a new member id; the old id is fenced.
    pub(super) fn replace_static_member(
        &mut self,
        old: &str,
        new_id: String,
        req: JoinRequest,
        now: Instant,
        settings: &GroupSettings,
    ) -> Reply<JoinResponse> {
        let previous_leader = self.leader.clone();
        let (tx, rx) = oneshot::channel();
        let Some(m) = self.member_mut(old) else {
            return Reply::Now(Err(GroupError::UnknownMemberId));
        };
        // The old incarnation may still have a request parked here: fence it now.
        if let Some(reply) = m.join_reply.take() {
            let _ = reply.send(Err(GroupError::FencedInstanceId));
        }
        if let Some(reply) = m.sync_reply.take() {
            let _ = reply.send(Err(GroupError::FencedInstanceId));
        }
        m.id = new_id.clone();
        m.protocols = req.protocols;
        m.session_timeout = req.session_timeout;
        m.rebalance_timeout = req.rebalance_timeout;
        m.client_id = req.client_id;
        m.client_host = req.client_host;
        m.touch(now);
        m.join_reply = Some(tx);
        if self.is_leader(old) {
            self.leader = Some(new_id.clone());
        }
        if let Some(instance) = &req.instance_id {
            self.static_members.insert(instance.clone(), new_id.clone());
        }
        if self.pending_sync.remove(old) {
            self.pending_sync.insert(new_id.clone());
        }
        tracing::info!(group = %self.id, old_member = %old, member = %new_id,
            instance = ?req.instance_id, state = %self.state, "static member replaced");
        match self.state {
            // Only a change of the group's protocol forces a rebalance; otherwise the member gets
            // the current generation and, from SyncGroup, its previous assignment.
            GroupState::Stable if self.select_protocol() == self.protocol => {
                let is_leader = self.is_leader(&new_id);
                let mut response = self.join_response(&new_id);
                if req.supports_skip_assignment {
                    // JoinGroup v9+: the leader learns it leads (to keep watching metadata) but
                    // is told not to run the assignor, whose result a Stable group would ignore.
                    response.skip_assignment = is_leader;
                } else {
                    // Older clients: report the previous leader id, so a replaced leader does
                    // not take itself for the leader and compute a throwaway assignment.
                    response.members.clear();
                    response.leader_id = previous_leader.unwrap_or_default();
                }
                if let Some(reply) = self.member_mut(&new_id).and_then(|m| m.join_reply.take()) {
                    let _ = reply.send(Ok(response));
                }
            }
            GroupState::Stable => {
                self.maybe_prepare_rebalance(now, settings, "static member changed protocols")
            }
            // The leader may be assigning for the old member id right now; its assignment would
            // not reach the new id, so start over.
            GroupState::CompletingRebalance => {
                self.prepare_rebalance(now, settings, "static member rejoined during sync")
            }
            GroupState::PreparingRebalance
            | GroupState::Empty
            | GroupState::Dead
            | GroupState::Assigning
            | GroupState::Reconciling => {}
        }
        Reply::Later(rx)
    }

    pub(super) fn join_response(&self, member_id: &str) -> JoinResponse {
        let members = if self.is_leader(member_id) {
            self.member_list()
        } else {
            Vec::new()
        };
        JoinResponse {
            generation: self.generation,
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            protocol_name: self.protocol.clone().unwrap_or_default(),
            leader_id: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            skip_assignment: false,
            members,
        }
    }

    /// Every member with its metadata for the chosen protocol: what the leader assigns from.
    pub(super) fn member_list(&self) -> Vec<JoinedMember> {
        let protocol = self.protocol.as_deref().unwrap_or_default();
        self.members
            .iter()
            .map(|m| JoinedMember {
                member_id: m.id.clone(),
                instance_id: m.instance_id.clone(),
                metadata: m.metadata(protocol),
            })
            .collect()
    }

    /// Kafka's vote: the candidates are the protocols every member supports; each member votes
    /// for the candidate it prefers most; the most votes win. Ties go to the earlier candidate in
    /// the first member's preference order (Kafka leaves ties to hash order).
    pub(super) fn select_protocol(&self) -> Option<String> {
        let first = self.members.first()?;
        let candidates: Vec<&str> = first
            .protocols
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| self.members.iter().all(|m| m.supports(name)))
            .collect();
        let mut votes = vec![0usize; candidates.len()];
        for m in &self.members {
            let choice = m
                .protocols
                .iter()
                .find_map(|(name, _)| candidates.iter().position(|c| c == name));
            if let Some(i) = choice {
                votes[i] += 1;
            }
        }
        let mut best: Option<usize> = None;
        for (i, v) in votes.iter().enumerate() {
            if best.is_none_or(|b| *v > votes[b]) {
                best = Some(i);
            }
        }
        best.map(|i| candidates[i].to_string())
    }
}
