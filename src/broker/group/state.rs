//! The membership state machine of one consumer group (Kafka's `GroupMetadata` plus the parts of
//! `GroupCoordinator` that act on it).
//!
//! Everything here runs under the group's mutex and never blocks or awaits: a request either gets
//! its answer at once ([`Reply::Now`]) or parks a oneshot sender on its member ([`Reply::Later`])
//! that a later event completes (the last member rejoining, the leader's SyncGroup, a timer).
//! Kafka's purgatories become plain deadlines stored on the group; [`Group::next_deadline`] tells
//! the group's timer task when to call [`Group::fire_timers`] next, so there is no polling and
//! paused-time tests drive every timeout.
//!
//! Kafka semantics kept on purpose (see the comments at each site): the rebalance completes when
//! every known member has rejoined and no MEMBER_ID_REQUIRED id is outstanding, or when the
//! rebalance timeout expires; an Empty group's first rebalance waits
//! `group.initial.rebalance.delay.ms` and extends it while new members arrive; members that are
//! parked in JoinGroup or SyncGroup are not subject to their session timeout; a member that got
//! its JoinGroup answer but never sends SyncGroup is removed after the rebalance timeout.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::meta::{GroupRecord, Meta};

use super::member::{new_member_id, Member, NEW_MEMBER_JOIN_TIMEOUT};
use super::{
    GroupDescription, GroupError, GroupSettings, GroupState, JoinRequest, JoinResponse,
    JoinedMember, MemberDescription, SyncRequest, SyncResponse,
};

/// The answer to a request: now, or when the group reaches the point the request waits for.
pub(super) enum Reply<T> {
    Now(Result<T, GroupError>),
    Later(oneshot::Receiver<Result<T, GroupError>>),
}

/// The pending rebalance's completion deadline (Kafka's DelayedJoin / InitialDelayedJoin).
#[derive(Clone, Copy, Debug)]
enum JoinTimer {
    /// Completes early once everyone has joined, else at `deadline`.
    Rebalance { deadline: Instant },
    /// First rebalance of an Empty group: never completes early, so members starting together
    /// land in one generation; extended by another `delay` while new members keep arriving,
    /// until `remaining` (rebalance timeout minus the first delay) is used up.
    Initial {
        deadline: Instant,
        delay: Duration,
        remaining: Duration,
    },
}

impl JoinTimer {
    fn deadline(&self) -> Instant {
        match *self {
            JoinTimer::Rebalance { deadline } | JoinTimer::Initial { deadline, .. } => deadline,
        }
    }
}

pub(super) struct Group {
    pub(super) id: String,
    pub(super) state: GroupState,
    pub(super) generation: i32,
    pub(super) protocol_type: Option<String>,
    /// The protocol chosen for the current generation.
    protocol: Option<String>,
    leader: Option<String>,
    /// In join order, so "the first member" (Kafka's leader fallback) is well defined.
    members: Vec<Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, each with the deadline to rejoin by.
    pending: HashMap<String, Instant>,
    /// `group.instance.id` -> current member id.
    static_members: BTreeMap<String, String>,
    /// Members of the current generation that have not sent SyncGroup yet.
    pending_sync: HashSet<String>,
    join_timer: Option<JoinTimer>,
    sync_deadline: Option<Instant>,
    /// A member joined during the first rebalance's initial delay (extends the delay).
    new_member_added: bool,
    /// What [`Meta`] holds for this group, to write only when it changes.
    persisted: GroupRecord,
    /// A timer task is alive for this group (it exits when no deadline is left).
    pub(super) timer_running: bool,
    /// The instant the timer task sleeps until; an earlier new deadline must wake it.
    pub(super) timer_at: Option<Instant>,
    /// The generation this group had when the broker last stopped, if any: its members are
    /// not restored, but their commits are still accepted (see [`Group::check_commit`]).
    restored_generation: Option<i32>,
}

impl Group {
    /// A group as it stands after a restart (or a brand-new one, from an empty record): Empty,
    /// with its generation, protocol type and last known static members.
    pub(super) fn restore(record: GroupRecord) -> Self {
        let restored_generation = (record.generation > 0).then_some(record.generation);
        Self {
            id: record.group_id.clone(),
            state: GroupState::Empty,
            generation: record.generation,
            protocol_type: record.protocol_type.clone(),
            protocol: None,
            leader: None,
            members: Vec::new(),
            pending: HashMap::new(),
            static_members: record.static_members.clone(),
            pending_sync: HashSet::new(),
            join_timer: None,
            sync_deadline: None,
            new_member_added: false,
            persisted: record,
            timer_running: false,
            timer_at: None,
            restored_generation,
        }
    }

    fn member(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    fn member_mut(&mut self, id: &str) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| m.id == id)
    }

    fn is_leader(&self, id: &str) -> bool {
        self.leader.as_deref() == Some(id)
    }

    fn max_rebalance_timeout(&self) -> Duration {
        self.members
            .iter()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default()
    }

    // --- JoinGroup ------------------------------------------------------------------------------

    pub(super) fn join(
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

    fn join_inner(
        &mut self,
        req: JoinRequest,
        now: Instant,
        settings: &GroupSettings,
    ) -> Reply<JoinResponse> {
        if self.state == GroupState::Dead {
            // Deleted under our feet: the client rediscovers the coordinator and retries.
            return Reply::Now(Err(GroupError::CoordinatorNotAvailable));
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
    fn accepts_joining_member(&self, member_id: &str, max_size: Option<usize>) -> bool {
        let Some(max) = max_size else { return true };
        match self.state {
            GroupState::Empty | GroupState::Dead => true,
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
    fn supports_protocols(
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

    fn join_new_member(
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

    fn join_known_member(
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
            GroupState::Empty | GroupState::Dead => Reply::Now(Err(GroupError::UnknownMemberId)),
        }
    }

    fn repeat_join_response(&mut self, id: &str, now: Instant) -> Reply<JoinResponse> {
        if let Some(m) = self.member_mut(id) {
            m.touch(now);
        }
        Reply::Now(Ok(self.join_response(id)))
    }

    /// Kafka's validateCurrentMember: an instance id must map to this member id (else the caller
    /// is a fenced zombie), and the member id must be in the group.
    fn validate_member(
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

    fn add_member_and_rebalance(
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

    fn update_member_and_rebalance(
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
    fn replace_static_member(
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
            GroupState::PreparingRebalance | GroupState::Empty | GroupState::Dead => {}
        }
        Reply::Later(rx)
    }

    fn join_response(&self, member_id: &str) -> JoinResponse {
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
    fn member_list(&self) -> Vec<JoinedMember> {
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
    fn select_protocol(&self) -> Option<String> {
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

    // --- rebalance ------------------------------------------------------------------------------

    fn maybe_prepare_rebalance(&mut self, now: Instant, settings: &GroupSettings, reason: &str) {
        if matches!(
            self.state,
            GroupState::Stable | GroupState::CompletingRebalance | GroupState::Empty
        ) {
            self.prepare_rebalance(now, settings, reason);
        }
    }

    fn prepare_rebalance(&mut self, now: Instant, settings: &GroupSettings, reason: &str) {
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

    fn reset_assignments_with_error(&mut self, error: GroupError, now: Instant) {
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
    fn try_complete_join(&mut self, now: Instant) {
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
    fn complete_join(&mut self, now: Instant) {
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
    fn elect_joined_leader(&mut self) -> bool {
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
    fn detach_member(&mut self, id: &str) -> Option<Member> {
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
    fn remove_member_and_update(
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
            GroupState::Empty | GroupState::Dead => {}
        }
    }

    // --- SyncGroup ------------------------------------------------------------------------------

    pub(super) fn sync(&mut self, req: SyncRequest, now: Instant) -> Reply<SyncResponse> {
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
            GroupState::Empty | GroupState::Dead => Reply::Now(Err(GroupError::UnknownMemberId)),
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

    fn sync_received(&mut self, member_id: &str) {
        if self.pending_sync.remove(member_id) && self.pending_sync.is_empty() {
            self.sync_deadline = None;
        }
    }

    /// The leader's assignment: store it (members it left out get an empty one, as in Kafka),
    /// answer every parked SyncGroup and become Stable.
    fn install_assignment(&mut self, assignments: Vec<(String, Bytes)>, now: Instant) {
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

    // --- Heartbeat, LeaveGroup, OffsetCommit checks --------------------------------------------

    pub(super) fn heartbeat(
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
            GroupState::Empty | GroupState::Dead => Err(GroupError::UnknownMemberId),
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
    pub(super) fn leave(
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
    pub(super) fn check_commit(
        &mut self,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        now: Instant,
    ) -> Result<(), GroupError> {
        if self.state == GroupState::Dead {
            return Err(GroupError::CoordinatorNotAvailable);
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
            GroupState::Dead => Err(GroupError::CoordinatorNotAvailable),
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
    fn commit_from_before_restart(
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

    // --- timers ---------------------------------------------------------------------------------

    /// The earliest instant at which [`Group::fire_timers`] has something to do.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        if self.state == GroupState::Dead {
            return None;
        }
        let members = self.members.iter().filter_map(Member::expiry);
        let pending = self.pending.values().copied();
        let join = self
            .join_timer
            .filter(|_| self.state == GroupState::PreparingRebalance)
            .map(|t| t.deadline());
        members
            .chain(pending)
            .chain(join)
            .chain(self.sync_deadline)
            .min()
    }

    /// Applies every deadline that has passed: expired MEMBER_ID_REQUIRED ids and sessions, the
    /// rebalance deadline (or initial delay) and the SyncGroup deadline.
    pub(super) fn fire_timers(&mut self, now: Instant, settings: &GroupSettings) {
        if self.state == GroupState::Dead {
            return;
        }
        let before = self.pending.len();
        self.pending.retain(|_, deadline| *deadline > now);
        if self.pending.len() != before {
            tracing::debug!(group = %self.id, expired = before - self.pending.len(),
                "pending member ids expired");
            self.try_complete_join(now);
        }

        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.expiry().is_some_and(|d| d <= now))
            .map(|m| m.id.clone())
            .collect();
        for id in expired {
            metrics::counter!("ferry_group_members_removed_total", "reason" => "session_timeout")
                .increment(1);
            self.remove_member_and_update(&id, now, settings, "session timeout");
        }

        if self.state == GroupState::PreparingRebalance {
            match self.join_timer {
                Some(JoinTimer::Initial {
                    deadline,
                    delay,
                    remaining,
                }) if deadline <= now => {
                    if self.new_member_added && !remaining.is_zero() {
                        // Kafka's InitialDelayedJoin: members are still arriving; wait again.
                        self.new_member_added = false;
                        let next = settings.initial_rebalance_delay.min(remaining);
                        self.join_timer = Some(JoinTimer::Initial {
                            deadline: now + next,
                            delay: next,
                            remaining: remaining.saturating_sub(delay),
                        });
                    } else {
                        self.complete_join(now);
                    }
                }
                Some(JoinTimer::Rebalance { deadline }) if deadline <= now => {
                    self.complete_join(now)
                }
                _ => {}
            }
        }

        if self.sync_deadline.is_some_and(|d| d <= now) {
            self.sync_deadline = None;
            if matches!(
                self.state,
                GroupState::CompletingRebalance | GroupState::Stable
            ) && !self.pending_sync.is_empty()
            {
                // Members that got this generation's JoinGroup answer but never asked for their
                // assignment: without this a leader that vanished after joining (while its
                // session is refreshed by nothing but a zombie heartbeat thread) stalls everyone.
                let laggards: Vec<String> = self.pending_sync.drain().collect();
                for id in &laggards {
                    self.detach_member(id);
                    metrics::counter!("ferry_group_members_removed_total", "reason" => "sync_timeout")
                        .increment(1);
                }
                tracing::info!(group = %self.id, members = ?laggards,
                    "members did not sync in time; removed");
                self.prepare_rebalance(now, settings, "members did not sync in time");
            }
        }
    }

    // --- views, persistence, shutdown -----------------------------------------------------------

    /// DescribeGroups: metadata and assignments only once Stable, as Kafka reports them.
    pub(super) fn describe(&self) -> GroupDescription {
        let stable = self.state == GroupState::Stable;
        let protocol = if stable {
            self.protocol.clone().unwrap_or_default()
        } else {
            String::new()
        };
        GroupDescription {
            group_id: self.id.clone(),
            state: self.state,
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            members: self
                .members
                .iter()
                .map(|m| MemberDescription {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: if stable {
                        m.metadata(&protocol)
                    } else {
                        Bytes::new()
                    },
                    assignment: if stable {
                        m.assignment.clone()
                    } else {
                        Bytes::new()
                    },
                })
                .collect(),
            protocol,
        }
    }

    /// The metadata each member sent for the group's protocol, for deciding which topics the
    /// group consumes. `None` when that is unknowable (no protocol chosen yet).
    pub(super) fn member_protocol_metadata(&self) -> Option<Vec<Bytes>> {
        let protocol = self.protocol.as_deref()?;
        Some(self.members.iter().map(|m| m.metadata(protocol)).collect())
    }

    /// Writes the durable part (generation, protocol type, static members) when it changed. A
    /// failure is logged, not returned: memory stays authoritative while we run, and the record
    /// is rewritten with the next change.
    pub(super) fn persist(&mut self, meta: &Meta) {
        if self.state == GroupState::Dead {
            return;
        }
        // Compared in place: this runs after every heartbeat.
        if self.persisted.generation == self.generation
            && self.persisted.protocol_type == self.protocol_type
            && self.persisted.static_members == self.static_members
        {
            return;
        }
        let record = GroupRecord {
            group_id: self.id.clone(),
            protocol_type: self.protocol_type.clone(),
            generation: self.generation,
            static_members: self.static_members.clone(),
        };
        match meta.put_group(&record) {
            Ok(()) => self.persisted = record,
            Err(e) => tracing::warn!(group = %self.id, error = %e, "persisting group state failed"),
        }
    }

    /// Answers every parked request with `error` (coordinator shutdown).
    pub(super) fn fail_parked(&mut self, error: &GroupError) {
        for m in &mut self.members {
            if let Some(reply) = m.join_reply.take() {
                let _ = reply.send(Err(error.clone()));
            }
            if let Some(reply) = m.sync_reply.take() {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}
