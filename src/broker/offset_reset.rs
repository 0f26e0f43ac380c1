//! Resetting a consumer group's committed offsets, as Kafka's `kafka-consumer-groups
//! --reset-offsets` does: only while the group is empty (a member would overwrite the new
//! offsets at its next commit), to the earliest or latest offset, a given offset (clamped to
//! the log, as Kafka's tool does) or the first offset at or after a timestamp.
//!
//! The admin API (`POST /api/groups/{id}/reset-offsets`) is one caller; the rule lives in the
//! core beside the group coordinator, whose simple (generation -1) commit it uses, so a member
//! that joins during the reset makes it fail instead of being overwritten.

use super::{BrokerCore, BrokerError, GroupError};
use crate::meta::CommittedOffset;

/// Where to move the offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetTarget {
    Earliest,
    Latest,
    /// This offset, clamped to the partition's log.
    Offset(i64),
    /// The first offset whose timestamp is at or after this (ms), else the log end.
    Timestamp(i64),
}

/// Which partitions to reset.
#[derive(Clone, Debug, Default)]
pub struct ResetScope {
    /// One topic; `None` is every topic the group has committed offsets for.
    pub topic: Option<String>,
    /// Partitions of `topic`; `None` is all of them.
    pub partitions: Option<Vec<i32>>,
}

/// One partition's reset.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct OffsetReset {
    pub topic: String,
    pub partition: i32,
    pub previous_offset: Option<i64>,
    pub new_offset: i64,
}

/// Why a reset was refused.
#[derive(Debug, thiserror::Error)]
pub enum OffsetResetError {
    #[error("group '{group}' has {members} active member(s) (state {state}): offsets can be reset only while the group is empty; stop its consumers first")]
    GroupNotEmpty {
        group: String,
        members: usize,
        state: &'static str,
    },
    #[error("group '{group}' gained a member during the reset; stop its consumers and retry")]
    MemberJoined { group: String },
    #[error("group '{0}' has no committed offsets; name a topic to reset")]
    NothingToReset(String),
    #[error("partitions needs topic")]
    PartitionsNeedTopic,
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Group(#[from] GroupError),
}

impl BrokerCore {
    /// Computes the new offsets of `group` and, unless `dry_run`, commits them.
    pub async fn reset_group_offsets(
        &self,
        group: &str,
        scope: &ResetScope,
        target: ResetTarget,
        dry_run: bool,
    ) -> Result<Vec<OffsetReset>, OffsetResetError> {
        let d = self.groups().describe_group(group);
        if !d.members.is_empty() {
            return Err(OffsetResetError::GroupNotEmpty {
                group: group.into(),
                members: d.members.len(),
                state: d.state.as_str(),
            });
        }
        let committed = self.groups().fetch_offsets(group, None)?;
        let mut partitions: Vec<(String, i32)> = match &scope.topic {
            Some(t) => {
                let topic = self
                    .topic(t)
                    .ok_or_else(|| BrokerError::UnknownTopic(t.clone()))?;
                match &scope.partitions {
                    Some(ps) => {
                        if let Some(p) = ps.iter().find(|p| topic.partition(**p).is_none()) {
                            return Err(BrokerError::UnknownPartition {
                                topic: t.clone(),
                                partition: *p,
                            }
                            .into());
                        }
                        ps.iter().map(|p| (t.clone(), *p)).collect()
                    }
                    None => (0..topic.partition_count() as i32)
                        .map(|p| (t.clone(), p))
                        .collect(),
                }
            }
            None => {
                if scope.partitions.is_some() {
                    return Err(OffsetResetError::PartitionsNeedTopic);
                }
                committed
                    .iter()
                    .map(|o| (o.topic.clone(), o.partition))
                    .collect()
            }
        };
        partitions.sort();
        partitions.dedup();
        if partitions.is_empty() {
            return Err(OffsetResetError::NothingToReset(group.into()));
        }
        let mut resets = Vec::with_capacity(partitions.len());
        let mut offsets = Vec::with_capacity(partitions.len());
        for (topic, p) in partitions {
            // A topic deleted since the commit has nothing to reset to.
            let Ok(h) = self.partition(&topic, p) else {
                continue;
            };
            let (start, end) = (h.log_start_offset(), h.high_watermark());
            let new_offset = match target {
                ResetTarget::Earliest => start,
                ResetTarget::Latest => end,
                ResetTarget::Offset(o) => o.clamp(start, end),
                ResetTarget::Timestamp(ts) => h
                    .offset_for_timestamp(ts)
                    .map_err(BrokerError::from)?
                    .map_or(end, |(o, _)| o),
            };
            resets.push(OffsetReset {
                previous_offset: committed
                    .iter()
                    .find(|c| c.topic == topic && c.partition == p)
                    .map(|c| c.offset),
                topic: topic.clone(),
                partition: p,
                new_offset,
            });
            offsets.push(CommittedOffset {
                topic,
                partition: p,
                offset: new_offset,
                leader_epoch: -1,
                metadata: None,
                commit_ms: 0,
            });
        }
        if !dry_run {
            let core = self.clone();
            let gid = group.to_string();
            // A simple (generation -1) commit is refused if a member joined meanwhile.
            let committed = tokio::task::spawn_blocking(move || {
                core.groups().commit_offsets(&gid, -1, "", None, offsets)
            })
            .await
            .map_err(|_| GroupError::CoordinatorNotAvailable)?;
            committed.map_err(|e| match e {
                GroupError::UnknownMemberId => OffsetResetError::MemberJoined {
                    group: group.into(),
                },
                other => other.into(),
            })?;
        }
        Ok(resets)
    }
}
