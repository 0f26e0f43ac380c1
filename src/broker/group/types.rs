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
