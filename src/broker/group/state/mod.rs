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
//!
//! Rooms, one per API family as in tansu: [`join`], [`rebalance`], [`sync`], [`membership`]
//! (heartbeat, leave, commit checks) and [`timers`]; this file holds the [`Group`] type, its
//! views and persistence.

mod join;
mod membership;
mod rebalance;
mod sync;
mod timers;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::meta::{GroupRecord, Meta};

use super::consumer::ConsumerGroup;
use super::member::{new_member_id, Member, NEW_MEMBER_JOIN_TIMEOUT};
use super::{
    GroupDescription, GroupError, GroupSettings, GroupState, GroupType, JoinRequest, JoinResponse,
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
    /// Set while this id is a KIP-848 consumer group (then the classic fields above stay
    /// Empty and unused); dropped when a classic member joins it empty.
    pub(super) consumer: Option<ConsumerGroup>,
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
            consumer: None,
        }
    }

    /// The state the admin views show: the consumer group's own when it is one.
    pub(super) fn effective_state(&self) -> GroupState {
        match &self.consumer {
            Some(c) if self.state != GroupState::Dead => c.state(),
            _ => self.state,
        }
    }

    pub(super) fn group_type(&self) -> GroupType {
        if self.consumer.is_some() {
            GroupType::Consumer
        } else {
            GroupType::Classic
        }
    }

    /// Whether classic members are in (or joining) the group.
    pub(super) fn classic_in_use(&self) -> bool {
        !self.members.is_empty() || !self.pending.is_empty() || self.state != GroupState::Empty
    }

    /// Whether a classic member could join without disturbing anyone: no consumer-protocol
    /// members. An empty consumer group is turned back into a classic one (its offsets stay).
    pub(super) fn admit_classic(&mut self) -> Result<(), GroupError> {
        match &self.consumer {
            Some(c) if !c.members.is_empty() => Err(GroupError::InconsistentGroupProtocol),
            Some(_) => {
                tracing::info!(group = %self.id, "empty consumer group becomes a classic group");
                self.consumer = None;
                Ok(())
            }
            None => Ok(()),
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
    // --- views, persistence, shutdown -----------------------------------------------------------

    /// DescribeGroups: metadata and assignments only once Stable, as Kafka reports them.
    pub(super) fn describe(&self) -> GroupDescription {
        if let Some(c) = &self.consumer {
            // DescribeGroups of a consumer group: who is in it, without the classic
            // metadata and assignment bytes (ConsumerGroupDescribe has the details).
            return GroupDescription {
                group_id: self.id.clone(),
                state: self.effective_state(),
                protocol_type: "consumer".into(),
                protocol: c.assignor().to_string(),
                members: c
                    .members
                    .values()
                    .map(|m| MemberDescription {
                        member_id: m.id.clone(),
                        instance_id: m.instance_id.clone(),
                        client_id: m.client_id.clone(),
                        client_host: m.client_host.clone(),
                        metadata: Bytes::new(),
                        assignment: Bytes::new(),
                    })
                    .collect(),
            };
        }
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
