//! The coordinator's entry points for KIP-848 consumer groups: ConsumerGroupHeartbeat,
//! ConsumerGroupDescribe and the member check of OffsetFetch v9+. The state machine is in
//! [`super::consumer`]; this file finds the group, takes its lock and keeps the timer task in
//! step, like the classic entry points in `group/mod.rs`.

use super::consumer::{ConsumerGroup, ConsumerGroupView, ConsumerHeartbeat};
use super::consumer::{ConsumerHeartbeatResponse, TopicSnapshot};
use super::*;

impl GroupCoordinator {
    /// ConsumerGroupHeartbeat. `topics` is what the core's catalog holds now (subscriptions are
    /// resolved against it). A join (epoch 0) creates the group, or turns an empty classic
    /// group into a consumer group; a classic group with members refuses with
    /// GROUP_ID_NOT_FOUND, as Kafka does when a group id is taken by the other protocol.
    pub fn consumer_heartbeat(
        &self,
        req: ConsumerHeartbeat,
        topics: &TopicSnapshot,
    ) -> Result<ConsumerHeartbeatResponse, GroupError> {
        if req.group_id.trim().is_empty() {
            return Err(GroupError::InvalidRequest("GroupId can't be empty.".into()));
        }
        self.check_running()?;
        let joining = req.member_epoch == 0;
        let Some(entry) = self.group(&req.group_id, joining)? else {
            // Membership is in memory: after a restart a member finds no group. Unknown, it
            // rejoins with epoch 0 (a leave needs nothing done).
            return Err(GroupError::UnknownMemberId);
        };
        let mut group = entry.state.lock();
        if group.state == GroupState::Dead {
            return Err(GroupError::CoordinatorNotAvailable);
        }
        if group.consumer.is_none() {
            if group.classic_in_use() {
                return Err(GroupError::GroupIdNotFound);
            }
            if !joining {
                return Err(GroupError::UnknownMemberId);
            }
            tracing::info!(group = %group.id, "group becomes a consumer group (KIP-848)");
            group.consumer = Some(ConsumerGroup::default());
            group.protocol_type = Some("consumer".into());
        }
        let now = Instant::now();
        let result = match group.consumer.as_mut() {
            Some(c) => c.heartbeat(&req, topics, now, &self.inner.settings),
            None => Err(GroupError::CoordinatorNotAvailable),
        };
        self.settle(&entry, &mut group);
        result
    }

    /// ConsumerGroupDescribe of one group: GROUP_ID_NOT_FOUND for an unknown group or one that
    /// is not a consumer group.
    pub fn consumer_describe(&self, group_id: &str) -> Result<ConsumerGroupView, GroupError> {
        self.check_running()?;
        let Some(entry) = self.group(group_id, false)? else {
            return Err(GroupError::GroupIdNotFound);
        };
        let group = entry.state.lock();
        match &group.consumer {
            Some(c) if group.state != GroupState::Dead => Ok(c.view(&group.id)),
            _ => Err(GroupError::GroupIdNotFound),
        }
    }

    /// OffsetFetch v9+ with a member id and epoch: for a consumer group the member must be
    /// in it at that epoch (UNKNOWN_MEMBER_ID, STALE_MEMBER_EPOCH). Classic groups and epoch
    /// -1 are not checked, as in Kafka.
    pub fn check_offset_fetch(
        &self,
        group_id: &str,
        member_id: &str,
        member_epoch: i32,
    ) -> Result<(), GroupError> {
        if member_epoch < 0 {
            return Ok(());
        }
        let Some(entry) = self.group(group_id, false)? else {
            return Ok(());
        };
        let group = entry.state.lock();
        match &group.consumer {
            Some(c) => c.check_fetch(member_epoch, member_id),
            None => Ok(()),
        }
    }
}
