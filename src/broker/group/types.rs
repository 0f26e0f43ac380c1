//! The coordinator's vocabulary in plain Rust types: requests, answers, views, settings and
//! [`GroupError`] (one variant per Kafka error code the adapter sends back).

use super::*;

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
    /// KIP-848: the member's epoch is not one the group knows; it must rejoin with epoch 0.
    #[error("the member epoch is fenced; rejoin")]
    FencedMemberEpoch,
    /// KIP-848: an OffsetCommit or OffsetFetch at an older member epoch.
    #[error("the member epoch is stale")]
    StaleMemberEpoch,
    /// KIP-848: a static member's instance id is still held by a member that did not leave.
    #[error("the instance id is still used by another member")]
    UnreleasedInstanceId,
    #[error("server assignor `{0}` is not supported (uniform, range)")]
    UnsupportedAssignor(String),
    #[error("invalid regular expression: {0}")]
    InvalidRegularExpression(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("group storage error: {0}")]
    Storage(String),
}

impl From<MetaError> for GroupError {
    fn from(e: MetaError) -> Self {
        GroupError::Storage(e.to_string())
    }
}

/// A group's state, as Kafka names it (ListGroups v4+ filters by these names). Classic
/// groups go through Empty, PreparingRebalance, CompletingRebalance, Stable and Dead; KIP-848
/// consumer groups through Empty, Assigning, Reconciling and Stable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
    /// Consumer group: a new target assignment is due.
    Assigning,
    /// Consumer group: members are catching up with the target assignment.
    Reconciling,
}

impl GroupState {
    pub const ALL: [GroupState; 7] = [
        GroupState::Empty,
        GroupState::PreparingRebalance,
        GroupState::CompletingRebalance,
        GroupState::Stable,
        GroupState::Dead,
        GroupState::Assigning,
        GroupState::Reconciling,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
            GroupState::Assigning => "Assigning",
            GroupState::Reconciling => "Reconciling",
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
    /// `group.consumer.session.timeout.ms`: a KIP-848 consumer-group member that sends no
    /// heartbeat for this long is fenced. Default 45 s.
    pub consumer_session_timeout: Duration,
    /// `group.consumer.heartbeat.interval.ms`: how often KIP-848 members heartbeat (told in
    /// every ConsumerGroupHeartbeat answer; it is also how fast a rebalance converges).
    /// Default 5 s.
    pub consumer_heartbeat_interval: Duration,
}

impl Default for GroupSettings {
    fn default() -> Self {
        Self {
            initial_rebalance_delay: Duration::from_secs(3),
            min_session_timeout: Duration::from_secs(6),
            max_session_timeout: Duration::from_secs(30 * 60),
            max_size: None,
            consumer_session_timeout: Duration::from_secs(45),
            consumer_heartbeat_interval: Duration::from_secs(5),
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
    pub group_type: GroupType,
}

/// Which membership protocol a group speaks (ListGroups v5's `GroupType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GroupType {
    /// JoinGroup/SyncGroup with a leader client assigning.
    Classic,
    /// KIP-848 ConsumerGroupHeartbeat with server-side assignment.
    Consumer,
}

impl GroupType {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupType::Classic => "classic",
            GroupType::Consumer => "consumer",
        }
    }

    pub fn parse(name: &str) -> Option<GroupType> {
        [GroupType::Classic, GroupType::Consumer]
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(name))
    }
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
