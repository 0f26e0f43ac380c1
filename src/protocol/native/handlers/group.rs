//! Topic subscriptions as consumer-group members (`SubscribeTopic.group`).
//!
//! The subscription is a member of the group in the broker's one group coordinator, the one
//! Kafka clients join, with Kafka's classic protocol type "consumer" and its wire formats for
//! the member's subscription and assignment (`consumer_protocol`), so a native subscription and
//! a librdkafka consumer can share a group and rebalance between them. The server runs the
//! member loop a Kafka client would: join, sync (computing a range assignment when it leads),
//! read the assigned partitions from the group's committed offsets (else from the request's
//! `start`), heartbeat every second, and on a rebalance commit what was acked and rejoin.
//!
//! Offsets: per partition, the deliveries sent and not yet settled are kept; the committed
//! offset is the first of those, or the next offset to read when none is outstanding, so a
//! commit never passes a delivery the client has not settled (at-least-once; Kafka's consumer
//! commits the same position). Commits follow each batch of settles and are durable before the
//! next delivery of that batch's credit. Settles of an earlier assignment (tags below the
//! current one's first) are ignored: their partitions may belong to another member now, which
//! reads them from the committed offset.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use super::super::connection::Ctx;
use super::super::convert::NativeError;
use super::subscribe::{
    deliver, prefetch, settle_reader, stream_error, subscribed, write, write_bytes, Settles,
    SETTLE_BATCH,
};
use crate::broker::group::{
    CommittedOffset, GroupCoordinator, GroupError, JoinRequest, LeavingMember, SyncRequest,
};
use crate::broker::stream::{StreamReader, StreamStart};
use crate::proto::v1::{self, response, ErrorCode};
use crate::protocol::consumer_protocol;

/// Kafka's protocol type for consumers: what lets Kafka clients and native members share a group.
const PROTOCOL_TYPE: &str = "consumer";
/// Assignor names offered, in order of preference (librdkafka's default list is
/// "range,roundrobin"). The leader decides the assignment whatever the name; a native leader
/// always assigns ranges, which satisfies both.
const ASSIGNORS: [&str; 2] = ["range", "roundrobin"];
/// Within the coordinator's default 6 s .. 30 min; a member that vanishes without leaving (a
/// killed connection) holds its partitions this long.
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);
const REBALANCE_TIMEOUT: Duration = Duration::from_secs(30);
/// Also how soon a running member notices a rebalance another member started.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Longest group id accepted, in bytes (Kafka sets none; this bounds what a peer makes us hold).
const MAX_GROUP_BYTES: usize = 255;

/// This subscription's place in the group. Dropping it leaves the group, however the
/// subscription ended (client gone, connection aborted), so its partitions move at once rather
/// than after the session timeout.
struct Membership {
    groups: GroupCoordinator,
    group: String,
    id: String,
    generation: i32,
}

impl Drop for Membership {
    fn drop(&mut self) {
        if self.id.is_empty() {
            return;
        }
        let leaving = vec![LeavingMember {
            member_id: std::mem::take(&mut self.id),
            instance_id: None,
        }];
        if let Err(e) = self.groups.leave(&self.group, leaving) {
            tracing::debug!(group = self.group, error = %e, "native group member could not leave");
        }
    }
}

/// How one assignment's reading ended.
enum Next {
    Rejoin,
    Ended,
}

pub(crate) async fn topic(
    ctx: &Ctx,
    s: v1::SubscribeTopic,
    send: &mut crate::proto::stream::SendStream,
    reader: crate::proto::framed::FrameReader<crate::proto::stream::RecvStream>,
) -> Result<(), NativeError> {
    if s.group.len() > MAX_GROUP_BYTES {
        return Err(NativeError::new(
            ErrorCode::InvalidArgument,
            format!("a group id is at most {MAX_GROUP_BYTES} bytes"),
        ));
    }
    if ctx.core.topic(&s.topic).is_none() {
        return Err(NativeError::new(
            ErrorCode::NotFound,
            format!("unknown topic `{}`", s.topic),
        ));
    }
    let fallback = super::subscribe::start_of(&s);
    let prefetch = prefetch(ctx, s.prefetch);
    let mut settles = settle_reader(reader);
    write(send, &subscribed(&s.topic)).await?;
    let mut member = Membership {
        groups: ctx.core.groups().clone(),
        group: s.group.clone(),
        id: String::new(),
        generation: -1,
    };
    let mut next_tag = 0_u64;
    loop {
        let Some(partitions) = join(ctx, &s.topic, &mut member, &mut settles).await? else {
            return Ok(());
        };
        let assigned = v1::Response {
            result: Some(response::Result::Assigned(v1::Assigned {
                generation: member.generation,
                member_id: member.id.clone(),
                partitions: partitions.clone(),
            })),
        };
        write(send, &assigned).await?;
        tracing::debug!(
            group = member.group,
            member = member.id,
            generation = member.generation,
            topic = s.topic,
            ?partitions,
            "native group member assigned"
        );
        let reading = Assignment {
            topic: &s.topic,
            partitions: &partitions,
            fallback,
            prefetch,
            first_tag: next_tag + 1,
        };
        match reading
            .read(ctx, &mut member, send, &mut settles, &mut next_tag)
            .await?
        {
            Next::Rejoin => continue,
            Next::Ended => return Ok(()),
        }
    }
}

/// Joins (or rejoins) the group and returns this member's partitions of `topic`; `None` when
/// the client ended the stream meanwhile. Settles arriving during the rebalance belong to the
/// previous assignment and are dropped.
async fn join(
    ctx: &Ctx,
    topic: &str,
    member: &mut Membership,
    settles: &mut Settles,
) -> Result<Option<Vec<i32>>, NativeError> {
    let joining = join_and_sync(ctx, topic, member);
    tokio::pin!(joining);
    loop {
        tokio::select! {
            joined = &mut joining => return joined.map(Some),
            settle = settles.recv() => match settle {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(None),
            },
        }
    }
}

async fn join_and_sync(
    ctx: &Ctx,
    topic: &str,
    member: &mut Membership,
) -> Result<Vec<i32>, NativeError> {
    let groups = member.groups.clone();
    let metadata = consumer_protocol::subscription(topic);
    loop {
        let joined = groups
            .join(JoinRequest {
                group_id: member.group.clone(),
                member_id: member.id.clone(),
                instance_id: None,
                protocol_type: PROTOCOL_TYPE.into(),
                protocols: ASSIGNORS
                    .iter()
                    .map(|name| (name.to_string(), metadata.clone()))
                    .collect(),
                session_timeout: SESSION_TIMEOUT,
                rebalance_timeout: REBALANCE_TIMEOUT,
                client_id: "ferry-native".into(),
                client_host: format!("/{}", ctx.peer.ip()),
                require_known_member_id: false,
                supports_skip_assignment: false,
                reason: None,
            })
            .await;
        let joined = match joined {
            Ok(joined) => joined,
            Err(GroupError::MemberIdRequired(id)) => {
                member.id = id;
                continue;
            }
            // Expired (a long pause): join again as a new member.
            Err(GroupError::UnknownMemberId) if !member.id.is_empty() => {
                member.id.clear();
                continue;
            }
            Err(e) => return Err(group_error(e)),
        };
        member.id = joined.member_id.clone();
        member.generation = joined.generation;
        let assignments = if joined.leader_id == joined.member_id && !joined.skip_assignment {
            consumer_protocol::assign_ranges(&joined.members, |t| {
                ctx.core.topic(t).map(|t| t.partition_count())
            })
        } else {
            Vec::new()
        };
        let synced = groups
            .sync(SyncRequest {
                group_id: member.group.clone(),
                generation: member.generation,
                member_id: member.id.clone(),
                instance_id: None,
                protocol_type: Some(PROTOCOL_TYPE.into()),
                protocol_name: Some(joined.protocol_name.clone()),
                assignments,
            })
            .await;
        match synced {
            Ok(synced) => return Ok(consumer_protocol::partitions_of(&synced.assignment, topic)),
            // Another member joined or left while this one synced: go round again.
            Err(GroupError::RebalanceInProgress | GroupError::IllegalGeneration) => continue,
            Err(GroupError::UnknownMemberId) => {
                member.id.clear();
                continue;
            }
            Err(e) => return Err(group_error(e)),
        }
    }
}

/// One assignment being read.
struct Assignment<'a> {
    topic: &'a str,
    partitions: &'a [i32],
    /// Where a partition without a committed offset starts.
    fallback: StreamStart,
    prefetch: usize,
    /// Tags below this one were sent for an earlier assignment.
    first_tag: u64,
}

impl Assignment<'_> {
    async fn read(
        &self,
        ctx: &Ctx,
        member: &mut Membership,
        send: &mut crate::proto::stream::SendStream,
        settles: &mut Settles,
        next_tag: &mut u64,
    ) -> Result<Next, NativeError> {
        let wanted: Vec<(String, i32)> = self
            .partitions
            .iter()
            .map(|p| (self.topic.to_string(), *p))
            .collect();
        let committed: HashMap<i32, i64> = member
            .groups
            .fetch_offsets(&member.group, Some(&wanted))
            .map_err(group_error)?
            .into_iter()
            .filter(|c| c.offset >= 0)
            .map(|c| (c.partition, c.offset))
            .collect();
        let starts: Vec<(i32, StreamStart)> = self
            .partitions
            .iter()
            .map(|p| {
                let start = committed
                    .get(p)
                    .map_or(self.fallback, |o| StreamStart::Offset(*o));
                (*p, start)
            })
            .collect();
        let mut stream =
            StreamReader::open_partitions(&ctx.core, self.topic, &starts).map_err(stream_error)?;
        let mut progress = Progress::new(stream.positions(), committed);
        let mut heartbeat_at = Instant::now() + HEARTBEAT_INTERVAL;
        loop {
            if Instant::now() >= heartbeat_at {
                heartbeat_at = Instant::now() + HEARTBEAT_INTERVAL;
                if let Some(next) = self.heartbeat(member, &mut progress).await? {
                    return Ok(next);
                }
            }
            let credit = self.prefetch.saturating_sub(progress.tags.len());
            if credit > 0 && !self.partitions.is_empty() {
                let records = stream.poll(credit).map_err(stream_error)?;
                if !records.is_empty() {
                    let mut out = bytes::BytesMut::new();
                    for r in records {
                        *next_tag += 1;
                        progress.delivered(*next_tag, r.partition, r.offset);
                        let delivery = super::subscribe::topic_delivery(self.topic, *next_tag, r);
                        crate::proto::codec::encode_into(&deliver(delivery), &mut out);
                    }
                    write_bytes(send, &out).await?;
                    continue;
                }
            }
            tokio::select! {
                _ = stream.wait(), if credit > 0 && !self.partitions.is_empty() => {}
                _ = tokio::time::sleep_until(heartbeat_at) => {}
                settle = settles.recv() => match settle {
                    Some(Ok(first)) => {
                        let mut batch = vec![first];
                        while batch.len() < SETTLE_BATCH {
                            match settles.try_recv() {
                                Ok(Ok(s)) => batch.push(s),
                                Ok(Err(e)) => {
                                    self.commit(member, &mut progress).await;
                                    return Err(e);
                                }
                                Err(_) => break,
                            }
                        }
                        for s in batch {
                            if s.delivery_tag < self.first_tag {
                                continue;
                            }
                            if !progress.settled(s.delivery_tag) {
                                self.commit(member, &mut progress).await;
                                return Err(NativeError::new(
                                    ErrorCode::UnknownDelivery,
                                    format!("unknown delivery tag {}", s.delivery_tag),
                                ));
                            }
                        }
                        if let Some(next) = self.commit(member, &mut progress).await {
                            return Ok(next);
                        }
                    }
                    Some(Err(e)) => {
                        self.commit(member, &mut progress).await;
                        return Err(e);
                    }
                    None => {
                        self.commit(member, &mut progress).await;
                        return Ok(Next::Ended);
                    }
                },
            }
        }
    }

    /// Keeps the membership alive; `Some` when the member must rejoin (what was acked is
    /// committed first, as a Kafka consumer does when its partitions are revoked).
    async fn heartbeat(
        &self,
        member: &mut Membership,
        progress: &mut Progress,
    ) -> Result<Option<Next>, NativeError> {
        match member
            .groups
            .heartbeat(&member.group, member.generation, &member.id, None)
        {
            Ok(()) => Ok(None),
            Err(GroupError::RebalanceInProgress) => {
                self.commit(member, progress).await;
                Ok(Some(Next::Rejoin))
            }
            Err(GroupError::UnknownMemberId) => {
                member.id.clear();
                Ok(Some(Next::Rejoin))
            }
            Err(GroupError::IllegalGeneration) => Ok(Some(Next::Rejoin)),
            Err(e) => Err(group_error(e)),
        }
    }

    /// Commits each partition's new position. `Some(Rejoin)` when the group moved on (the
    /// commit was refused, and the next owner rereads from the last committed offset).
    async fn commit(&self, member: &mut Membership, progress: &mut Progress) -> Option<Next> {
        let changed = progress.uncommitted();
        if changed.is_empty() {
            return None;
        }
        let offsets = changed
            .iter()
            .map(|&(partition, offset)| CommittedOffset {
                topic: self.topic.to_string(),
                partition,
                offset,
                leader_epoch: -1,
                metadata: None,
                commit_ms: 0,
            })
            .collect();
        let (groups, group, member_id) = (
            member.groups.clone(),
            member.group.clone(),
            member.id.clone(),
        );
        let generation = member.generation;
        // The commit waits for the metadata store's flush: off the async workers.
        let result = tokio::task::spawn_blocking(move || {
            groups.commit_offsets(&group, generation, &member_id, None, offsets)
        })
        .await
        .unwrap_or(Err(GroupError::CoordinatorNotAvailable));
        match result {
            Ok(()) => {
                progress.committed.extend(changed);
                None
            }
            Err(e) => {
                tracing::debug!(group = member.group, error = %e, "native group commit refused; rejoining");
                if e == GroupError::UnknownMemberId {
                    member.id.clear();
                }
                Some(Next::Rejoin)
            }
        }
    }
}

/// What one assignment delivered and what of it was settled.
struct Progress {
    /// Unsettled deliveries: tag -> (partition, offset).
    tags: HashMap<u64, (i32, i64)>,
    /// Per partition, the offsets of unsettled deliveries.
    in_flight: HashMap<i32, BTreeSet<i64>>,
    /// Per partition, the offset after the last delivered.
    read_to: HashMap<i32, i64>,
    /// Per partition, the offset last committed (or found committed).
    committed: HashMap<i32, i64>,
}

impl Progress {
    fn new(positions: Vec<(i32, i64)>, committed: HashMap<i32, i64>) -> Self {
        Self {
            tags: HashMap::new(),
            in_flight: HashMap::new(),
            read_to: positions.into_iter().collect(),
            committed,
        }
    }

    fn delivered(&mut self, tag: u64, partition: i32, offset: i64) {
        self.tags.insert(tag, (partition, offset));
        self.in_flight.entry(partition).or_default().insert(offset);
        self.read_to.insert(partition, offset + 1);
    }

    /// False for a tag this assignment never sent (or already settled).
    fn settled(&mut self, tag: u64) -> bool {
        let Some((partition, offset)) = self.tags.remove(&tag) else {
            return false;
        };
        if let Some(offsets) = self.in_flight.get_mut(&partition) {
            offsets.remove(&offset);
        }
        true
    }

    /// (partition, position) for each partition delivered from whose position moved past its
    /// commit. A partition read nothing from needs no commit: it starts where it started.
    fn uncommitted(&self) -> Vec<(i32, i64)> {
        // `in_flight` has an entry (maybe empty) for every partition delivered from.
        self.in_flight
            .iter()
            .filter_map(|(&partition, unsettled)| {
                let read_to = *self.read_to.get(&partition)?;
                let position = unsettled.first().copied().unwrap_or(read_to);
                let moved = self.committed.get(&partition).is_none_or(|c| *c < position);
                moved.then_some((partition, position))
            })
            .collect()
    }
}

fn group_error(e: GroupError) -> NativeError {
    let code = match &e {
        GroupError::InvalidGroupId | GroupError::InvalidSessionTimeout => {
            ErrorCode::InvalidArgument
        }
        GroupError::InconsistentGroupProtocol | GroupError::FencedInstanceId => ErrorCode::Conflict,
        GroupError::GroupMaxSizeReached => ErrorCode::Rejected,
        GroupError::CoordinatorNotAvailable | GroupError::Storage(_) => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    };
    let message = match &e {
        GroupError::InconsistentGroupProtocol => {
            "the group's members use another protocol or assignor (a native member offers \
             protocol type `consumer` with the `range` and `roundrobin` assignors)"
                .to_string()
        }
        GroupError::Storage(_) => "the group's offsets could not be stored".to_string(),
        other => format!("consumer group: {other}"),
    };
    NativeError::new(code, message)
}
