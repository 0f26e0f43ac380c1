//! The Kafka consumer-group coordinator: membership (JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup) and committed offsets (OffsetCommit, OffsetFetch, OffsetDelete), plus the admin
//! views (ListGroups, DescribeGroups, DeleteGroups).
//!
//! It follows Kafka's classic group protocol as the 3.x `GroupCoordinator` implements it,
//! including KIP-394 (MEMBER_ID_REQUIRED) and KIP-345 (static membership), and speaks only plain
//! Rust types: the Kafka adapter translates requests into calls here and [`GroupError`] into
//! Kafka error codes (each variant is named after its code).
//!
//! KIP-848 consumer groups (ConsumerGroupHeartbeat, ConsumerGroupDescribe) live in
//! [`consumer`], inside the same per-group state so one id is one group whatever its protocol:
//! a classic group with members refuses ConsumerGroupHeartbeat (GROUP_ID_NOT_FOUND, as Kafka
//! without the migration policy), a consumer group with members refuses JoinGroup
//! (INCONSISTENT_GROUP_PROTOCOL), and an empty group of either kind turns into the other on its
//! first member, keeping its committed offsets. Consumer-group membership is in memory only:
//! after a restart the group is Empty with its offsets, and members rejoin (their heartbeats
//! get UNKNOWN_MEMBER_ID, upon which a client rejoins with epoch 0).
//!
//! Design. Each group is a [`state::Group`] state machine behind its own mutex; requests that
//! must wait (JoinGroup until the rebalance completes, SyncGroup until the leader's assignment)
//! park a oneshot sender on their member and await it after the lock is released. Timeouts
//! (session, rebalance, initial delay, MEMBER_ID_REQUIRED rejoin, SyncGroup) are deadlines stored
//! in the state; one tokio task per group, started when the group first has a deadline and gone
//! when it has none, sleeps until the earliest one with `tokio::time`, so paused-time tests drive
//! every timeout and idle groups cost nothing.
//!
//! Durability. Offset commits are written to [`Meta`] and flushed before `commit_offsets`
//! returns, then cached for OffsetFetch. What survives a restart: committed offsets always; of
//! the membership, the generation, the protocol type and the static-member map (instance id ->
//! member id) from [`GroupRecord`]. Live members, assignments and rebalances in flight do not:
//! after a restart every group is Empty, its members get UNKNOWN_MEMBER_ID (or
//! FENCED_INSTANCE_ID, for a stale incarnation of a static member) and rejoin, which costs one
//! rebalance. Kafka would restore the members from `__consumer_offsets` and avoid it; that needs
//! member metadata and assignments in the record, which [`GroupRecord`] does not hold yet. Until
//! the group forms its next generation, offset commits stamped with the restored generation are
//! accepted from the forgotten members, so what they processed meanwhile is not delivered again.

mod consumer;
mod consumer_api;
mod member;
mod offsets;
mod state;
#[cfg(test)]
mod tests;
mod txn_offsets;
mod types;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::meta::{GroupRecord, Meta, MetaError};

pub use crate::meta::CommittedOffset;

pub use consumer::{
    Assignment, ConsumerGroupView, ConsumerHeartbeat, ConsumerHeartbeatResponse,
    ConsumerMemberView, TopicId, TopicMeta, TopicSnapshot, ASSIGNORS, DEFAULT_ASSIGNOR,
};
use state::{Group, Reply};
pub use txn_offsets::TxnCommitter;
pub use types::*;

/// The coordinator handle; cheap to clone and share with every connection.
#[derive(Clone)]
pub struct GroupCoordinator {
    inner: Arc<Inner>,
}

struct Inner {
    meta: Meta,
    clock: Clock,
    settings: GroupSettings,
    groups: RwLock<HashMap<String, Arc<GroupEntry>>>,
    /// Every group [`Meta`] knows was loaded at startup. If that failed, lookups of unknown
    /// groups ask [`Meta`] before treating the group as new.
    fully_loaded: AtomicBool,
    shutting_down: AtomicBool,
    /// Flipped to `true` at shutdown; every timer task watches it.
    shutdown_tx: watch::Sender<bool>,
    timers: Mutex<Vec<JoinHandle<()>>>,
}

type PartitionKey = (String, i32);

struct GroupEntry {
    id: String,
    state: Mutex<Group>,
    /// Cache of what [`Meta`] holds, for OffsetFetch.
    offsets: Mutex<BTreeMap<PartitionKey, CommittedOffset>>,
    /// Serializes writers of this group's offsets (commit, offset delete, group delete) so the
    /// store and the cache change in the same order. Taken before `state`, never inside it.
    commit_lock: Mutex<()>,
    /// Wakes the timer task when a deadline earlier than the one it sleeps until appears.
    wake: Notify,
}

impl GroupEntry {
    fn new(group: Group, offsets: Vec<CommittedOffset>) -> Self {
        Self {
            id: group.id.clone(),
            state: Mutex::new(group),
            offsets: Mutex::new(
                offsets
                    .into_iter()
                    .map(|o| ((o.topic.clone(), o.partition), o))
                    .collect(),
            ),
            commit_lock: Mutex::new(()),
            wake: Notify::new(),
        }
    }
}

impl GroupCoordinator {
    /// Loads every group [`Meta`] knows (record and committed offsets) as an Empty group. A
    /// storage error is logged and the affected groups are loaded on first use instead.
    pub fn new(meta: Meta, clock: Clock, settings: GroupSettings) -> Self {
        let (shutdown_tx, _) = watch::channel(false);
        let inner = Inner {
            meta,
            clock,
            settings,
            groups: RwLock::new(HashMap::new()),
            fully_loaded: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            shutdown_tx,
            timers: Mutex::new(Vec::new()),
        };
        match inner.meta.group_ids() {
            Ok(ids) => {
                let mut complete = true;
                let mut groups = inner.groups.write();
                for id in ids {
                    match load_group(&inner.meta, &id) {
                        Ok(Some(entry)) => {
                            groups.insert(id, Arc::new(entry));
                        }
                        Ok(None) => {}
                        Err(e) => {
                            complete = false;
                            tracing::error!(group = %id, error = %e, "loading consumer group failed");
                        }
                    }
                }
                tracing::info!(groups = groups.len(), "consumer groups loaded");
                drop(groups);
                inner.fully_loaded.store(complete, Ordering::Release);
            }
            Err(e) => tracing::error!(error = %e, "listing consumer groups failed"),
        }
        Self {
            inner: Arc::new(inner),
        }
    }

    fn check_running(&self) -> Result<(), GroupError> {
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return Err(GroupError::CoordinatorNotAvailable);
        }
        Ok(())
    }

    /// The group, loading it from [`Meta`] if startup could not, or creating it (Empty) when
    /// `create` is set and it exists nowhere.
    fn group(&self, id: &str, create: bool) -> Result<Option<Arc<GroupEntry>>, GroupError> {
        if let Some(entry) = self.inner.groups.read().get(id) {
            return Ok(Some(entry.clone()));
        }
        let mut groups = self.inner.groups.write();
        if let Some(entry) = groups.get(id) {
            return Ok(Some(entry.clone()));
        }
        let loaded = if self.inner.fully_loaded.load(Ordering::Acquire) {
            None
        } else {
            load_group(&self.inner.meta, id)?
        };
        let entry = match loaded {
            Some(entry) => entry,
            None if create => GroupEntry::new(
                Group::restore(GroupRecord {
                    group_id: id.to_string(),
                    ..GroupRecord::default()
                }),
                Vec::new(),
            ),
            None => return Ok(None),
        };
        let entry = Arc::new(entry);
        groups.insert(id.to_string(), entry.clone());
        Ok(Some(entry))
    }

    fn all_groups(&self) -> Vec<Arc<GroupEntry>> {
        self.inner.groups.read().values().cloned().collect()
    }

    /// After any change under the group lock: persist what changed and make sure the timer task
    /// knows about the earliest deadline.
    fn settle(&self, entry: &Arc<GroupEntry>, group: &mut Group) {
        group.persist(&self.inner.meta);
        let Some(next) = group.next_deadline() else {
            return;
        };
        if group.timer_running {
            if group.timer_at.is_none_or(|at| next < at) {
                entry.wake.notify_one();
            }
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(group = %entry.id, "no tokio runtime: group timeouts cannot run");
            return;
        };
        group.timer_running = true;
        group.timer_at = None;
        let task = runtime.spawn(run_timer(
            entry.clone(),
            self.inner.meta.clone(),
            self.inner.settings.clone(),
            self.inner.shutdown_tx.subscribe(),
        ));
        let mut timers = self.inner.timers.lock();
        timers.retain(|t| !t.is_finished());
        timers.push(task);
    }

    // --- membership -----------------------------------------------------------------------------

    /// JoinGroup. Completes when the rebalance this join takes part in completes (or at once,
    /// with MEMBER_ID_REQUIRED, an error, or the current generation when no rebalance is needed).
    pub async fn join(&self, req: JoinRequest) -> Result<JoinResponse, GroupError> {
        if req.group_id.is_empty() {
            return Err(GroupError::InvalidGroupId);
        }
        self.check_running()?;
        let settings = &self.inner.settings;
        if req.session_timeout < settings.min_session_timeout
            || req.session_timeout > settings.max_session_timeout
        {
            return Err(GroupError::InvalidSessionTimeout);
        }
        // Only a first join may create the group; a member id for an unknown group is stale.
        let Some(entry) = self.group(&req.group_id, req.member_id.is_empty())? else {
            return Err(GroupError::UnknownMemberId);
        };
        let reply = {
            let mut group = entry.state.lock();
            let reply = group.join(req, Instant::now(), settings);
            self.settle(&entry, &mut group);
            reply
        };
        match reply {
            Reply::Now(result) => result,
            // A dropped sender means the coordinator went away mid-rebalance.
            Reply::Later(rx) => rx.await.unwrap_or(Err(GroupError::CoordinatorNotAvailable)),
        }
    }

    /// SyncGroup. The leader's call installs the assignment; followers' calls wait for it.
    pub async fn sync(&self, req: SyncRequest) -> Result<SyncResponse, GroupError> {
        if req.group_id.is_empty() {
            return Err(GroupError::InvalidGroupId);
        }
        self.check_running()?;
        let Some(entry) = self.group(&req.group_id, false)? else {
            return Err(GroupError::UnknownMemberId);
        };
        let reply = {
            let mut group = entry.state.lock();
            let reply = group.sync(req, Instant::now());
            self.settle(&entry, &mut group);
            reply
        };
        match reply {
            Reply::Now(result) => result,
            Reply::Later(rx) => rx.await.unwrap_or(Err(GroupError::CoordinatorNotAvailable)),
        }
    }

    /// Heartbeat: refreshes the member's session; tells it to rejoin while a rebalance runs.
    pub fn heartbeat(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<(), GroupError> {
        if group_id.is_empty() {
            return Err(GroupError::InvalidGroupId);
        }
        self.check_running()?;
        let Some(entry) = self.group(group_id, false)? else {
            return Err(GroupError::UnknownMemberId);
        };
        let mut group = entry.state.lock();
        let result = group.heartbeat(generation, member_id, instance_id, Instant::now());
        self.settle(&entry, &mut group);
        result
    }

    /// LeaveGroup: one result per member (v3+ batches), or a group-level error. A member named
    /// only by instance id is removed whoever holds the id; a member id that does not match its
    /// instance id's current holder is fenced. As in Kafka, a static member *can* be removed by
    /// its member id alone (KIP-345 clients simply do not send LeaveGroup on shutdown).
    pub fn leave(
        &self,
        group_id: &str,
        members: Vec<LeavingMember>,
    ) -> Result<Vec<Result<(), GroupError>>, GroupError> {
        if group_id.is_empty() {
            return Err(GroupError::InvalidGroupId);
        }
        self.check_running()?;
        let Some(entry) = self.group(group_id, false)? else {
            return Ok(members
                .iter()
                .map(|_| Err(GroupError::UnknownMemberId))
                .collect());
        };
        let mut group = entry.state.lock();
        if group.state == GroupState::Dead {
            return Err(GroupError::CoordinatorNotAvailable);
        }
        let now = Instant::now();
        let results = members
            .iter()
            .map(|m| {
                group.leave(
                    &m.member_id,
                    m.instance_id.as_deref(),
                    now,
                    &self.inner.settings,
                )
            })
            .collect();
        self.settle(&entry, &mut group);
        Ok(results)
    }

    // --- admin views ----------------------------------------------------------------------------

    /// ListGroups: every group (including offsets-only ones, as Empty), optionally only those in
    /// `states_filter`; sorted by id.
    pub fn list_groups(&self, states_filter: &[GroupState]) -> Vec<GroupListing> {
        let mut listings: Vec<GroupListing> = self
            .all_groups()
            .iter()
            .filter_map(|entry| {
                let group = entry.state.lock();
                let state = group.effective_state();
                let keep = state != GroupState::Dead
                    && (states_filter.is_empty() || states_filter.contains(&state));
                keep.then(|| GroupListing {
                    group_id: group.id.clone(),
                    protocol_type: group.protocol_type.clone().unwrap_or_default(),
                    state,
                    group_type: group.group_type(),
                })
            })
            .collect();
        listings.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        listings
    }

    /// DescribeGroups for one group; an unknown group is reported Dead with no members (Kafka
    /// before DescribeGroups v6; for v6+ the adapter turns Dead into GROUP_ID_NOT_FOUND).
    pub fn describe_group(&self, group_id: &str) -> GroupDescription {
        match self.group(group_id, false) {
            Ok(Some(entry)) => entry.state.lock().describe(),
            Ok(None) | Err(_) => GroupDescription {
                group_id: group_id.to_string(),
                state: GroupState::Dead,
                protocol_type: String::new(),
                protocol: String::new(),
                members: Vec::new(),
            },
        }
    }

    /// DeleteGroups: removes Empty groups with their offsets (NON_EMPTY_GROUP while members
    /// remain, GROUP_ID_NOT_FOUND for a group with neither members nor offsets nor record).
    pub fn delete_groups(&self, ids: &[String]) -> Vec<(String, Result<(), GroupError>)> {
        ids.iter()
            .map(|id| (id.clone(), self.delete_group(id)))
            .collect()
    }

    fn delete_group(&self, id: &str) -> Result<(), GroupError> {
        self.check_running()?;
        let Some(entry) = self.group(id, false)? else {
            return Err(GroupError::GroupIdNotFound);
        };
        {
            let _writer = entry.commit_lock.lock();
            let mut group = entry.state.lock();
            match group.effective_state() {
                GroupState::Dead => return Err(GroupError::GroupIdNotFound),
                GroupState::Empty => {}
                _ => return Err(GroupError::NonEmptyGroup),
            }
            self.inner.meta.delete_group(id)?;
            self.inner.meta.flush()?;
            // Requests that already hold this entry see Dead and retry against a fresh group.
            group.state = GroupState::Dead;
            entry.wake.notify_one();
        }
        let mut groups = self.inner.groups.write();
        if groups.get(id).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
            groups.remove(id);
        }
        tracing::info!(group = id, "group deleted");
        Ok(())
    }

    /// Stops the timers, answers every parked JoinGroup/SyncGroup with COORDINATOR_NOT_AVAILABLE
    /// (clients rediscover the coordinator and rejoin) and flushes [`Meta`]. Idempotent; later
    /// requests get COORDINATOR_NOT_AVAILABLE.
    pub async fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Release);
        self.inner.shutdown_tx.send_replace(true);
        for entry in self.all_groups() {
            let mut group = entry.state.lock();
            group.fail_parked(&GroupError::CoordinatorNotAvailable);
            group.persist(&self.inner.meta);
        }
        let timers = std::mem::take(&mut *self.inner.timers.lock());
        for task in timers {
            let _ = task.await;
        }
        if let Err(e) = self.inner.meta.flush() {
            tracing::error!(error = %e, "flushing group state at shutdown failed");
        }
    }
}

/// A group as [`Meta`] holds it, or `None` if it has neither record nor offsets.
fn load_group(meta: &Meta, id: &str) -> Result<Option<GroupEntry>, MetaError> {
    let record = meta.group(id)?;
    let offsets = meta.committed_offsets(id)?;
    if record.is_none() && offsets.is_empty() {
        return Ok(None);
    }
    let record = record.unwrap_or_else(|| GroupRecord {
        group_id: id.to_string(),
        ..GroupRecord::default()
    });
    Ok(Some(GroupEntry::new(Group::restore(record), offsets)))
}

/// The group's timer: sleeps until the earliest deadline, applies what is due, and exits when
/// nothing is left to time (the next change that sets a deadline starts a new one).
async fn run_timer(
    entry: Arc<GroupEntry>,
    meta: Meta,
    settings: GroupSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let next = {
            let mut group = entry.state.lock();
            let next = if *shutdown.borrow() {
                None
            } else {
                group.fire_timers(Instant::now(), &settings);
                group.persist(&meta);
                group.next_deadline()
            };
            group.timer_at = next;
            if next.is_none() {
                group.timer_running = false;
            }
            next
        };
        let Some(next) = next else { return };
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = entry.wake.notified() => {}
            changed = shutdown.changed() => {
                if changed.is_err() {
                    // The coordinator is gone.
                    entry.state.lock().timer_running = false;
                    return;
                }
            }
        }
    }
}
