//! A group member as the coordinator tracks it, and how member ids are made.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{GroupError, JoinResponse, SyncResponse};

pub(super) type JoinReply = oneshot::Sender<Result<JoinResponse, GroupError>>;
pub(super) type SyncReply = oneshot::Sender<Result<SyncResponse, GroupError>>;

/// How long a brand-new member may sit in JoinGroup before it is dropped (Kafka's
/// `NewMemberJoinTimeoutMs`). Its session timeout cannot apply: it has no member id to heartbeat
/// with, and a client that timed out and retried would otherwise leave a defunct member behind
/// that holds every later rebalance up for the full rebalance timeout.
pub(super) const NEW_MEMBER_JOIN_TIMEOUT: Duration = Duration::from_secs(5 * 60);

pub(super) struct Member {
    pub(super) id: String,
    pub(super) instance_id: Option<String>,
    pub(super) client_id: String,
    pub(super) client_host: String,
    pub(super) session_timeout: Duration,
    pub(super) rebalance_timeout: Duration,
    /// (protocol name, metadata) in the member's order of preference.
    pub(super) protocols: Vec<(String, Bytes)>,
    pub(super) assignment: Bytes,
    /// Set while the member's JoinGroup is parked waiting for the rebalance to complete.
    pub(super) join_reply: Option<JoinReply>,
    /// Set while the member's SyncGroup is parked waiting for the leader's assignment.
    pub(super) sync_reply: Option<SyncReply>,
    /// Joined but never completed a rebalance (Kafka's `isNew`).
    pub(super) is_new: bool,
    /// When the member is removed unless it heartbeats (or joins, syncs, commits) first.
    pub(super) deadline: Instant,
}

impl Member {
    pub(super) fn supports(&self, protocol: &str) -> bool {
        self.protocols.iter().any(|(name, _)| name == protocol)
    }

    pub(super) fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, metadata)| metadata.clone())
            .unwrap_or_default()
    }

    /// The session deadline, if it currently applies. A member parked in JoinGroup or SyncGroup
    /// cannot heartbeat (its connection is busy), so Kafka counts it as alive; the rebalance
    /// timeout bounds that wait instead. A new member's deadline is the new-member join timeout.
    pub(super) fn expiry(&self) -> Option<Instant> {
        let parked = self.join_reply.is_some() || self.sync_reply.is_some();
        (self.is_new || !parked).then_some(self.deadline)
    }

    pub(super) fn touch(&mut self, now: Instant) {
        self.deadline = now + self.session_timeout;
    }
}

/// `{prefix}-{uuid}` like Kafka's `generateMemberId` (prefix: the client id, or the instance id
/// of a static member), from 128 random bits shaped as a version-4 UUID.
pub(super) fn new_member_id(prefix: &str) -> String {
    let mut b = crate::util::random_bytes16();
    b[6] = (b[6] & 0x0F) | 0x40;
    b[8] = (b[8] & 0x3F) | 0x80;
    let hex =
        |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!(
        "{prefix}-{}-{}-{}-{}-{}",
        hex(0..4),
        hex(4..6),
        hex(6..8),
        hex(8..10),
        hex(10..16)
    )
}
