//! The Kafka consumer-group coordinator: membership (JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup) and committed offsets (OffsetCommit, OffsetFetch, OffsetDelete), plus the admin
//! views (ListGroups, DescribeGroups, DeleteGroups).
//!
//! It follows Kafka's classic group protocol as the 3.x `GroupCoordinator` implements it,
//! including KIP-394 (MEMBER_ID_REQUIRED) and KIP-345 (static membership), and speaks only plain
//! Rust types: the Kafka adapter translates requests into calls here and [`GroupError`] into
//! Kafka error codes (each variant is named after its code).
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

mod member;
mod state;
#[cfg(test)]
mod tests;

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

use state::{Group, Reply};

/// Errors of the coordinator, one per Kafka error code the adapter sends back.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum GroupError {
    #[error("unknown member id")]
    UnknownMemberId,
    #[error("illegal generation")]
    IllegalGeneration,
    #[error("the group is rebalancing; rejoin")]
    RebalanceInProgress,
    /// KIP-394: the member must rejoin with this id (JoinGroup v4+).
    #[error("member id required: rejoin with `{0}`")]
    MemberIdRequired(String),
    #[error("protocol type or protocols inconsistent with the group")]
    InconsistentGroupProtocol,
    #[error("session timeout outside the broker's allowed range")]
    InvalidSessionTimeout,
    #[error("group id not found")]
    GroupIdNotFound,
    #[error("the group has active members")]
    NonEmptyGroup,
    #[error("a newer member with the same group.instance.id replaced this one")]
    FencedInstanceId,
    #[error("the group has reached its maximum size")]
    GroupMaxSizeReached,
    #[error("the group consumes this topic")]
    GroupSubscribedToTopic,
    #[error("invalid group id")]
    InvalidGroupId,
    #[error("group coordinator not available")]
    CoordinatorNotAvailable,
    #[error("group storage error: {0}")]
    Storage(String),
}

impl From<MetaError> for GroupError {
    fn from(e: MetaError) -> Self {
        GroupError::Storage(e.to_string())
    }
}

/// A group's state, as Kafka names it (ListGroups v4+ filters by these names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    pub const ALL: [GroupState; 5] = [
        GroupState::Empty,
        GroupState::PreparingRebalance,
        GroupState::CompletingRebalance,
        GroupState::Stable,
        GroupState::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }

    /// Parses a state name case-insensitively, as Kafka's ListGroups filter does.
    pub fn parse(name: &str) -> Option<GroupState> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for GroupState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Broker-wide group settings (Kafka's `group.*` broker configs).
#[derive(Clone, Debug)]
pub struct GroupSettings {
    /// `group.initial.rebalance.delay.ms`: how long an Empty group's first rebalance waits for
    /// more members. Default 3 s.
    pub initial_rebalance_delay: Duration,
    /// `group.min.session.timeout.ms`. Default 6 s.
    pub min_session_timeout: Duration,
    /// `group.max.session.timeout.ms`. Default 30 min.
    pub max_session_timeout: Duration,
    /// `group.max.size`. Default unlimited.
    pub max_size: Option<usize>,
}

impl Default for GroupSettings {
    fn default() -> Self {
        Self {
            initial_rebalance_delay: Duration::from_secs(3),
            min_session_timeout: Duration::from_secs(6),
            max_session_timeout: Duration::from_secs(30 * 60),
            max_size: None,
        }
    }
}

/// A JoinGroup request.
#[derive(Clone, Debug, Default)]
pub struct JoinRequest {
    pub group_id: String,
    /// Empty for a member joining for the first time.
    pub member_id: String,
    /// `group.instance.id` of a static member (JoinGroup v5+).
    pub instance_id: Option<String>,
    pub protocol_type: String,
    /// (name, metadata) in order of preference.
    pub protocols: Vec<(String, Bytes)>,
    pub session_timeout: Duration,
    /// JoinGroup v0 has none: the adapter passes the session timeout, as Kafka does.
    pub rebalance_timeout: Duration,
    pub client_id: String,
    pub client_host: String,
    /// JoinGroup v4+: a first join with an empty member id gets MEMBER_ID_REQUIRED.
    pub require_known_member_id: bool,
    /// JoinGroup v9+: the client understands `skip_assignment` (see [`JoinResponse`]).
    pub supports_skip_assignment: bool,
    /// JoinGroup v8+: why the client (re)joins; logged.
    pub reason: Option<String>,
}

/// A member as the leader sees it in its JoinGroup response.
#[derive(Clone, Debug, PartialEq)]
pub struct JoinedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    /// The member's metadata for the chosen protocol.
    pub metadata: Bytes,
}

/// A successful JoinGroup answer.
#[derive(Clone, Debug, PartialEq)]
pub struct JoinResponse {
    pub generation: i32,
    pub protocol_type: String,
    pub protocol_name: String,
    pub leader_id: String,
    pub member_id: String,
    /// A replaced static leader of a Stable group (v9+): it leads but must not reassign.
    pub skip_assignment: bool,
    /// Every member, for the leader only; empty for followers.
    pub members: Vec<JoinedMember>,
}

/// A SyncGroup request; `assignments` is non-empty only from the leader.
#[derive(Clone, Debug, Default)]
pub struct SyncRequest {
    pub group_id: String,
    pub generation: i32,
    pub member_id: String,
    pub instance_id: Option<String>,
    /// SyncGroup v5+: checked against the group's when present.
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    /// (member id, assignment).
    pub assignments: Vec<(String, Bytes)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SyncResponse {
    pub protocol_type: String,
    pub protocol_name: String,
    pub assignment: Bytes,
}

/// One member of a LeaveGroup request: v3+ may name it by instance id with an empty member id.
#[derive(Clone, Debug, Default)]
pub struct LeavingMember {
    pub member_id: String,
    pub instance_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct GroupListing {
    pub group_id: String,
    /// Empty when the group never had a member (offsets only).
    pub protocol_type: String,
    pub state: GroupState,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// Metadata for the chosen protocol; empty unless the group is Stable (as in Kafka).
    pub metadata: Bytes,
    /// Empty unless the group is Stable.
    pub assignment: Bytes,
}

#[derive(Clone, Debug, PartialEq)]
pub struct GroupDescription {
    pub group_id: String,
    pub state: GroupState,
    pub protocol_type: String,
    /// The chosen protocol; empty unless the group is Stable.
    pub protocol: String,
    pub members: Vec<MemberDescription>,
}

/// A per-partition outcome ((topic, partition), result), as OffsetDelete answers.
pub type PartitionResults = Vec<((String, i32), Result<(), GroupError>)>;

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

    // --- offsets --------------------------------------------------------------------------------

    /// OffsetCommit. `generation` -1 with an empty member id is a "simple" commit (admin tools,
    /// `assign()` consumers), allowed only while the group has no members (else
    /// UNKNOWN_MEMBER_ID, as Kafka); otherwise member and generation must be current. Allowed
    /// during PreparingRebalance, REBALANCE_IN_PROGRESS during CompletingRebalance (Kafka's
    /// rules). The offsets are in [`Meta`] and flushed before `Ok`; the commit timestamp is set
    /// from the clock. Blocks on that flush: call it from a blocking-tolerant context.
    pub fn commit_offsets(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        mut offsets: Vec<CommittedOffset>,
    ) -> Result<(), GroupError> {
        self.check_running()?;
        let Some(entry) = self.group(group_id, generation < 0)? else {
            // A generation for a group we do not know: a commit from an older generation.
            return Err(GroupError::IllegalGeneration);
        };
        let _writer = entry.commit_lock.lock();
        {
            let mut group = entry.state.lock();
            let checked = group.check_commit(generation, member_id, instance_id, Instant::now());
            self.settle(&entry, &mut group);
            checked?;
        }
        if offsets.is_empty() {
            return Ok(());
        }
        let now_ms = self.inner.clock.now_ms();
        for o in &mut offsets {
            o.commit_ms = now_ms;
        }
        self.inner.meta.commit_offsets(group_id, &offsets)?;
        self.inner.meta.flush()?;
        metrics::counter!("ferry_group_offset_commits_total").increment(offsets.len() as u64);
        let mut cache = entry.offsets.lock();
        for o in offsets {
            cache.insert((o.topic.clone(), o.partition), o);
        }
        Ok(())
    }

    /// OffsetFetch: the committed offsets of the given partitions (`None`: all). Partitions
    /// without a committed offset, and unknown groups, are simply absent; the adapter answers
    /// those with offset -1 as Kafka does.
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        partitions: Option<&[(String, i32)]>,
    ) -> Result<Vec<CommittedOffset>, GroupError> {
        self.check_running()?;
        let Some(entry) = self.group(group_id, false)? else {
            return Ok(Vec::new());
        };
        let cache = entry.offsets.lock();
        Ok(match partitions {
            None => cache.values().cloned().collect(),
            Some(wanted) => wanted
                .iter()
                .filter_map(|(t, p)| cache.get(&(t.clone(), *p)).cloned())
                .collect(),
        })
    }

    /// OffsetDelete. An Empty group loses any of the offsets; a consumer group with members
    /// keeps those of topics its members subscribe to (GROUP_SUBSCRIBED_TO_TOPIC per partition);
    /// a group of another protocol type with members refuses (NON_EMPTY_GROUP). Unknown group:
    /// GROUP_ID_NOT_FOUND.
    ///
    /// `subscribed_topics` decodes one member's metadata (for the group's protocol) into the
    /// topics it subscribes to; `None` if it cannot, in which case every topic counts as
    /// subscribed (Kafka's safe default). For protocol type "consumer" the adapter passes a
    /// ConsumerProtocol subscription decoder.
    pub fn delete_offsets(
        &self,
        group_id: &str,
        partitions: &[(String, i32)],
        subscribed_topics: impl Fn(&[u8]) -> Option<Vec<String>>,
    ) -> Result<PartitionResults, GroupError> {
        if group_id.is_empty() {
            return Err(GroupError::InvalidGroupId);
        }
        self.check_running()?;
        let Some(entry) = self.group(group_id, false)? else {
            return Err(GroupError::GroupIdNotFound);
        };
        let _writer = entry.commit_lock.lock();
        let member_metadata = {
            let group = entry.state.lock();
            match group.state {
                GroupState::Dead => return Err(GroupError::GroupIdNotFound),
                GroupState::Empty => None,
                _ if group.protocol_type.as_deref() == Some("consumer") => {
                    Some(group.member_protocol_metadata())
                }
                _ => return Err(GroupError::NonEmptyGroup),
            }
        };
        // Decode outside the group lock: the closure is the adapter's code.
        let subscribed: Option<HashSet<String>> = match member_metadata {
            None => Some(HashSet::new()),
            Some(None) => None,
            Some(Some(all)) => all
                .iter()
                .map(|m| subscribed_topics(m))
                .collect::<Option<Vec<_>>>()
                .map(|lists| lists.into_iter().flatten().collect()),
        };
        let mut results = Vec::with_capacity(partitions.len());
        let mut eligible = Vec::new();
        for (topic, partition) in partitions {
            let key = (topic.clone(), *partition);
            if subscribed.as_ref().is_none_or(|s| s.contains(topic)) {
                results.push((key, Err(GroupError::GroupSubscribedToTopic)));
            } else {
                eligible.push(key);
            }
        }
        for (topic, partition) in &eligible {
            self.inner
                .meta
                .delete_committed_offset(group_id, topic, *partition)?;
        }
        if !eligible.is_empty() {
            self.inner.meta.flush()?;
        }
        let mut cache = entry.offsets.lock();
        for key in eligible {
            cache.remove(&key);
            results.push((key, Ok(())));
        }
        Ok(results)
    }

    /// Forgets every committed offset of a deleted topic (cache and store; the store side is
    /// usually gone already through `Meta::delete_topic`).
    pub fn remove_topic(&self, topic: &str) {
        for entry in self.all_groups() {
            let _writer = entry.commit_lock.lock();
            let doomed: Vec<PartitionKey> = entry
                .offsets
                .lock()
                .keys()
                .filter(|(t, _)| t == topic)
                .cloned()
                .collect();
            for (t, p) in &doomed {
                if let Err(e) = self.inner.meta.delete_committed_offset(&entry.id, t, *p) {
                    tracing::warn!(group = %entry.id, topic, error = %e, "dropping offset failed");
                }
            }
            let mut cache = entry.offsets.lock();
            for key in doomed {
                cache.remove(&key);
            }
        }
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
                let keep = group.state != GroupState::Dead
                    && (states_filter.is_empty() || states_filter.contains(&group.state));
                keep.then(|| GroupListing {
                    group_id: group.id.clone(),
                    protocol_type: group.protocol_type.clone().unwrap_or_default(),
                    state: group.state,
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
            match group.state {
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
