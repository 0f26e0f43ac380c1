//! Consumer groups, classic protocol: FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup, OffsetCommit, OffsetFetch, ListGroups, DescribeGroups, DeleteGroups,
//! OffsetDelete. The state machine lives in the core (`broker::group`); this file only
//! translates between wire versions and core types and maps `GroupError` to Kafka codes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FindCoordinatorRequest, FindCoordinatorResponse, HeartbeatRequest,
    HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse,
    OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{decode, respond, Outcome};
use crate::broker::{GroupError, JoinRequest, LeavingMember, SyncRequest};
use crate::meta::CommittedOffset;
use crate::protocol::kafka::authz::{operation, resource};
use crate::protocol::kafka::codec::RawRequest;
use crate::protocol::kafka::connection::ConnInfo;
use crate::protocol::kafka::convert::NONE;
use crate::protocol::kafka::{KafkaContext, NODE_ID};

pub(super) fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

/// GROUP_AUTHORIZATION_FAILED: the principal may not use the group.
pub(super) const GROUP_DENIED: i16 = 30;

pub fn group_error_code(e: &GroupError) -> i16 {
    match e {
        GroupError::UnknownMemberId => ResponseError::UnknownMemberId.code(),
        GroupError::IllegalGeneration => ResponseError::IllegalGeneration.code(),
        GroupError::RebalanceInProgress => ResponseError::RebalanceInProgress.code(),
        GroupError::MemberIdRequired(_) => ResponseError::MemberIdRequired.code(),
        GroupError::InconsistentGroupProtocol => ResponseError::InconsistentGroupProtocol.code(),
        GroupError::InvalidSessionTimeout => ResponseError::InvalidSessionTimeout.code(),
        GroupError::GroupIdNotFound => ResponseError::GroupIdNotFound.code(),
        GroupError::NonEmptyGroup => ResponseError::NonEmptyGroup.code(),
        GroupError::FencedInstanceId => ResponseError::FencedInstanceId.code(),
        GroupError::GroupMaxSizeReached => ResponseError::GroupMaxSizeReached.code(),
        GroupError::GroupSubscribedToTopic => ResponseError::GroupSubscribedToTopic.code(),
        GroupError::InvalidGroupId => ResponseError::InvalidGroupId.code(),
        GroupError::FencedMemberEpoch => ResponseError::FencedMemberEpoch.code(),
        GroupError::StaleMemberEpoch => ResponseError::StaleMemberEpoch.code(),
        GroupError::UnreleasedInstanceId => ResponseError::UnreleasedInstanceId.code(),
        GroupError::UnsupportedAssignor(_) => ResponseError::UnsupportedAssignor.code(),
        GroupError::InvalidRegularExpression(_) => ResponseError::InvalidRegularExpression.code(),
        GroupError::InvalidRequest(_) => ResponseError::InvalidRequest.code(),
        // Storage trouble is transient from a client's view: it retries elsewhere/later.
        GroupError::CoordinatorNotAvailable | GroupError::Storage(_) => {
            ResponseError::CoordinatorNotAvailable.code()
        }
    }
}

pub(super) fn code_of<T>(r: &Result<T, GroupError>) -> i16 {
    r.as_ref().err().map(group_error_code).unwrap_or(NONE)
}

pub fn find_coordinator(ctx: &Arc<KafkaContext>, conn: &ConnInfo, req: &RawRequest) -> Outcome {
    let request: FindCoordinatorRequest = match decode(req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    let v = req.api_version;
    let (host, port) = ctx.advertised_endpoint(conn);
    // Key type 0 is a group, 1 a transactional id; this node coordinates both. Kafka asks
    // DESCRIBE on the group or transactional id, checked per key from v4.
    let key_type = request.key_type;
    let group_code = |key: &str| {
        let (resource_type, what) = if key_type == 1 {
            (resource::TRANSACTIONAL_ID, "transactional id")
        } else {
            (resource::GROUP, "group")
        };
        if ctx.allowed(conn, operation::DESCRIBE, resource_type, key) {
            (NONE, None)
        } else if key_type == 1 {
            (
                ResponseError::TransactionalIdAuthorizationFailed.code(),
                Some(s(format!("not authorized to access the {what}"))),
            )
        } else {
            (
                GROUP_DENIED,
                Some(s(format!("not authorized to access the {what}"))),
            )
        }
    };
    let (code, message) = if key_type == 0 || key_type == 1 {
        if v >= 4 {
            (NONE, None)
        } else {
            group_code(request.key.as_str())
        }
    } else {
        (
            ResponseError::InvalidRequest.code(),
            Some(s(format!("unknown coordinator key type {key_type}"))),
        )
    };
    let body = if v >= 4 {
        let coordinators = request
            .coordinator_keys
            .iter()
            .map(|key| {
                let (code, message) = match code {
                    NONE => group_code(key.as_str()),
                    _ => (code, message.clone()),
                };
                let c = Coordinator::default()
                    .with_key(key.clone())
                    .with_error_code(code)
                    .with_error_message(message);
                if code == NONE {
                    c.with_node_id(BrokerId(NODE_ID))
                        .with_host(s(host.clone()))
                        .with_port(port)
                } else {
                    c.with_node_id(BrokerId(-1)).with_port(-1)
                }
            })
            .collect();
        FindCoordinatorResponse::default().with_coordinators(coordinators)
    } else {
        let mut body = FindCoordinatorResponse::default().with_error_code(code);
        if code == NONE {
            body = body
                .with_node_id(BrokerId(NODE_ID))
                .with_host(s(host))
                .with_port(port);
        } else {
            body = body.with_node_id(BrokerId(-1)).with_port(-1);
        }
        if v >= 1 {
            body = body.with_error_message(message);
        }
        body
    };
    respond(ApiKey::FindCoordinator, v, req.correlation_id, &body)
}

pub async fn join_group(ctx: Arc<KafkaContext>, conn: ConnInfo, req: RawRequest) -> Outcome {
    let request: JoinGroupRequest = match decode(&req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    let v = req.api_version;
    if !ctx.allowed(
        &conn,
        operation::READ,
        resource::GROUP,
        request.group_id.as_str(),
    ) {
        let body = JoinGroupResponse::default().with_error_code(GROUP_DENIED);
        return respond(ApiKey::JoinGroup, v, req.correlation_id, &body);
    }
    let session_timeout = Duration::from_millis(request.session_timeout_ms.max(0) as u64);
    let rebalance_timeout = if v >= 1 {
        Duration::from_millis(request.rebalance_timeout_ms.max(0) as u64)
    } else {
        session_timeout
    };
    let instance_id = request.group_instance_id.as_ref().map(|s| s.to_string());
    let join = JoinRequest {
        group_id: request.group_id.to_string(),
        member_id: request.member_id.to_string(),
        require_known_member_id: v >= 4 && instance_id.is_none(),
        supports_skip_assignment: v >= 9,
        instance_id,
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect(),
        session_timeout,
        rebalance_timeout,
        client_id: conn.client_id.clone().unwrap_or_default(),
        client_host: format!("/{}", conn.peer.ip()),
        reason: request.reason.as_ref().map(|r| r.to_string()),
    };
    let mut body = JoinGroupResponse::default();
    let mut shutdown = ctx.shutdown.clone();
    // A join can wait a whole rebalance timeout; a shutdown sends the member off to find the
    // coordinator again instead of holding the shutdown up.
    let joined = tokio::select! {
        joined = ctx.core.groups().join(join) => joined,
        _ = crate::util::stopped(&mut shutdown) => Err(GroupError::CoordinatorNotAvailable),
    };
    match joined {
        Ok(joined) => {
            body = body
                .with_generation_id(joined.generation)
                .with_protocol_name(Some(s(joined.protocol_name)))
                .with_leader(s(joined.leader_id))
                .with_member_id(s(joined.member_id))
                .with_members(
                    joined
                        .members
                        .into_iter()
                        .map(|m| {
                            let mut member = JoinGroupResponseMember::default()
                                .with_member_id(s(m.member_id))
                                .with_metadata(m.metadata);
                            if v >= 5 {
                                member = member.with_group_instance_id(m.instance_id.map(s));
                            }
                            member
                        })
                        .collect(),
                );
            if v >= 7 {
                body = body.with_protocol_type(Some(s(joined.protocol_type)));
            }
            if v >= 9 {
                body = body.with_skip_assignment(joined.skip_assignment);
            }
        }
        Err(e) => {
            let member_id = match &e {
                GroupError::MemberIdRequired(id) => id.clone(),
                _ => request.member_id.to_string(),
            };
            body = body
                .with_error_code(group_error_code(&e))
                .with_generation_id(-1)
                .with_member_id(s(member_id));
            if v >= 7 {
                body = body.with_protocol_name(None);
            }
        }
    }
    respond(ApiKey::JoinGroup, v, req.correlation_id, &body)
}

pub async fn sync_group(ctx: Arc<KafkaContext>, conn: ConnInfo, req: RawRequest) -> Outcome {
    let request: SyncGroupRequest = match decode(&req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    let v = req.api_version;
    if !ctx.allowed(
        &conn,
        operation::READ,
        resource::GROUP,
        request.group_id.as_str(),
    ) {
        let body = SyncGroupResponse::default()
            .with_error_code(GROUP_DENIED)
            .with_assignment(Bytes::new());
        return respond(ApiKey::SyncGroup, v, req.correlation_id, &body);
    }
    let sync = SyncRequest {
        group_id: request.group_id.to_string(),
        generation: request.generation_id,
        member_id: request.member_id.to_string(),
        instance_id: request.group_instance_id.as_ref().map(|s| s.to_string()),
        protocol_type: request.protocol_type.as_ref().map(|s| s.to_string()),
        protocol_name: request.protocol_name.as_ref().map(|s| s.to_string()),
        assignments: request
            .assignments
            .iter()
            .map(|a| (a.member_id.to_string(), a.assignment.clone()))
            .collect(),
    };
    let mut shutdown = ctx.shutdown.clone();
    let synced = tokio::select! {
        synced = ctx.core.groups().sync(sync) => synced,
        _ = crate::util::stopped(&mut shutdown) => Err(GroupError::CoordinatorNotAvailable),
    };
    let body = match synced {
        Ok(synced) => {
            let mut body = SyncGroupResponse::default().with_assignment(synced.assignment);
            if v >= 5 {
                body = body
                    .with_protocol_type(Some(s(synced.protocol_type)))
                    .with_protocol_name(Some(s(synced.protocol_name)));
            }
            body
        }
        Err(e) => SyncGroupResponse::default()
            .with_error_code(group_error_code(&e))
            .with_assignment(Bytes::new()),
    };
    respond(ApiKey::SyncGroup, v, req.correlation_id, &body)
}

pub fn heartbeat(ctx: &Arc<KafkaContext>, conn: &ConnInfo, req: &RawRequest) -> Outcome {
    let request: HeartbeatRequest = match decode(req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    if !ctx.allowed(
        conn,
        operation::READ,
        resource::GROUP,
        request.group_id.as_str(),
    ) {
        let body = HeartbeatResponse::default().with_error_code(GROUP_DENIED);
        return respond(
            ApiKey::Heartbeat,
            req.api_version,
            req.correlation_id,
            &body,
        );
    }
    let result = ctx.core.groups().heartbeat(
        request.group_id.as_str(),
        request.generation_id,
        request.member_id.as_str(),
        request.group_instance_id.as_deref(),
    );
    let body = HeartbeatResponse::default().with_error_code(code_of(&result));
    respond(
        ApiKey::Heartbeat,
        req.api_version,
        req.correlation_id,
        &body,
    )
}

pub fn leave_group(ctx: &Arc<KafkaContext>, conn: &ConnInfo, req: &RawRequest) -> Outcome {
    let request: LeaveGroupRequest = match decode(req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    let v = req.api_version;
    if !ctx.allowed(
        conn,
        operation::READ,
        resource::GROUP,
        request.group_id.as_str(),
    ) {
        let body = LeaveGroupResponse::default().with_error_code(GROUP_DENIED);
        return respond(ApiKey::LeaveGroup, v, req.correlation_id, &body);
    }
    let leaving: Vec<LeavingMember> = if v >= 3 {
        request
            .members
            .iter()
            .map(|m| LeavingMember {
                member_id: m.member_id.to_string(),
                instance_id: m.group_instance_id.as_ref().map(|s| s.to_string()),
            })
            .collect()
    } else {
        vec![LeavingMember {
            member_id: request.member_id.to_string(),
            instance_id: None,
        }]
    };
    let result = ctx
        .core
        .groups()
        .leave(request.group_id.as_str(), leaving.clone());
    let body = match result {
        Err(e) => LeaveGroupResponse::default().with_error_code(group_error_code(&e)),
        Ok(per_member) if v >= 3 => LeaveGroupResponse::default().with_members(
            leaving
                .into_iter()
                .zip(per_member)
                .map(|(m, r)| {
                    MemberResponse::default()
                        .with_member_id(s(m.member_id))
                        .with_group_instance_id(m.instance_id.map(s))
                        .with_error_code(code_of(&r))
                })
                .collect(),
        ),
        Ok(per_member) => LeaveGroupResponse::default()
            .with_error_code(per_member.first().map(code_of).unwrap_or(NONE)),
    };
    respond(ApiKey::LeaveGroup, v, req.correlation_id, &body)
}

pub async fn offset_commit(ctx: Arc<KafkaContext>, conn: ConnInfo, req: RawRequest) -> Outcome {
    let request: OffsetCommitRequest = match decode(&req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    let v = req.api_version;
    let now = ctx.core.clock().now_ms();
    // Partitions of unknown topics are refused one by one; the rest commit together.
    // READ on the group, then READ on each topic (Kafka's order of checks).
    let group_ok = ctx.allowed(
        &conn,
        operation::READ,
        resource::GROUP,
        request.group_id.as_str(),
    );
    let mut offsets = Vec::new();
    let mut refused: Vec<((String, i32), i16)> = Vec::new();
    for topic in &request.topics {
        let topic_ok =
            group_ok && ctx.allowed(&conn, operation::READ, resource::TOPIC, topic.name.as_str());
        let exists = ctx.core.topic(topic.name.as_str());
        for p in &topic.partitions {
            let valid = exists
                .as_ref()
                .is_some_and(|t| t.partition(p.partition_index).is_some());
            let key = (topic.name.to_string(), p.partition_index);
            if !group_ok {
                refused.push((key, GROUP_DENIED));
            } else if !topic_ok {
                refused.push((key, ResponseError::TopicAuthorizationFailed.code()));
            } else if valid {
                offsets.push(CommittedOffset {
                    topic: topic.name.to_string(),
                    partition: p.partition_index,
                    offset: p.committed_offset,
                    leader_epoch: if v >= 6 { p.committed_leader_epoch } else { -1 },
                    metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                    commit_ms: now,
                });
            } else {
                refused.push((key, ResponseError::UnknownTopicOrPartition.code()));
            }
        }
    }
    let groups = ctx.core.groups().clone();
    let group_id = request.group_id.to_string();
    let member_id = request.member_id.to_string();
    let instance_id = request.group_instance_id.as_ref().map(|s| s.to_string());
    let generation = request.generation_id_or_member_epoch;
    // The commit waits for the metadata store to flush to disk; keep that off async workers.
    let result = if offsets.is_empty() {
        Ok(())
    } else {
        tokio::task::spawn_blocking(move || {
            groups.commit_offsets(
                &group_id,
                generation,
                &member_id,
                instance_id.as_deref(),
                offsets,
            )
        })
        .await
        .unwrap_or(Err(GroupError::CoordinatorNotAvailable))
    };
    let group_code = code_of(&result);
    let topics = request
        .topics
        .iter()
        .map(|t| {
            OffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            let key = (t.name.to_string(), p.partition_index);
                            let code = refused
                                .iter()
                                .find(|(k, _)| *k == key)
                                .map_or(group_code, |(_, code)| *code);
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    let body = OffsetCommitResponse::default().with_topics(topics);
    respond(ApiKey::OffsetCommit, v, req.correlation_id, &body)
}

/// A group's committed offsets by topic, `None` where a wanted partition has none, with the
/// partition's error code (TOPIC_AUTHORIZATION_FAILED for a topic the client may not DESCRIBE).
type OffsetsByTopic = Vec<(String, Vec<(i32, Option<CommittedOffset>, i16)>)>;

/// TOPIC_AUTHORIZATION_FAILED.
const TOPIC_DENIED: i16 = 29;
/// UNSTABLE_OFFSET_COMMIT: a transaction holds an offset for the partition not yet applied.
const UNSTABLE: i16 = 88;

/// Offsets of one group for the wanted partitions (None = every committed one), with -1 for
/// partitions that have none. With `require_stable` (v7+, KIP-447) a partition whose offset
/// an open transaction is about to change answers UNSTABLE_OFFSET_COMMIT instead, so a
/// `read_committed` consumer retries rather than start from an offset about to move.
fn fetch_group(
    ctx: &KafkaContext,
    conn: &ConnInfo,
    group_id: &str,
    wanted: Option<Vec<(String, Vec<i32>)>>,
    require_stable: bool,
) -> Result<OffsetsByTopic, i16> {
    let unstable =
        |t: &str, p: i32| require_stable && ctx.core.has_pending_txn_offset(group_id, t, p);
    if !ctx.allowed(conn, operation::DESCRIBE, resource::GROUP, group_id) {
        return Err(GROUP_DENIED);
    }
    let flat: Option<Vec<(String, i32)>> = wanted.as_ref().map(|w| {
        w.iter()
            .flat_map(|(t, ps)| ps.iter().map(move |p| (t.clone(), *p)))
            .collect()
    });
    let mut committed = ctx
        .core
        .groups()
        .fetch_offsets(group_id, flat.as_deref())
        .map_err(|e| group_error_code(&e))?;
    // Offsets of topics the client may not DESCRIBE are never shown: asked for by name, their
    // partitions answer TOPIC_AUTHORIZATION_FAILED; asked for as "all", they are left out (as
    // Kafka does in both cases).
    committed.retain(|c| ctx.allowed(conn, operation::DESCRIBE, resource::TOPIC, &c.topic));
    let find = |t: &str, p: i32| {
        committed
            .iter()
            .find(|c| c.topic == t && c.partition == p)
            .cloned()
    };
    Ok(match wanted {
        Some(w) => w
            .into_iter()
            .map(|(t, ps)| {
                let denied = !ctx.allowed(conn, operation::DESCRIBE, resource::TOPIC, &t);
                let parts = ps
                    .into_iter()
                    .map(|p| match denied {
                        true => (p, None, TOPIC_DENIED),
                        false if unstable(&t, p) => (p, None, UNSTABLE),
                        false => (p, find(&t, p), 0),
                    })
                    .collect();
                (t, parts)
            })
            .collect(),
        None => {
            let mut topics: OffsetsByTopic = Vec::new();
            for c in committed {
                let entry = if unstable(&c.topic, c.partition) {
                    (c.partition, None, UNSTABLE)
                } else {
                    (c.partition, Some(c.clone()), 0)
                };
                match topics.iter_mut().find(|(t, _)| *t == c.topic) {
                    Some((_, parts)) => parts.push(entry),
                    None => topics.push((c.topic.clone(), vec![entry])),
                }
            }
            topics
        }
    })
}

pub fn offset_fetch(ctx: &Arc<KafkaContext>, conn: &ConnInfo, req: &RawRequest) -> Outcome {
    let request: OffsetFetchRequest = match decode(req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    let v = req.api_version;
    if v >= 8 {
        let groups = request
            .groups
            .iter()
            .map(|g| {
                let wanted = g.topics.as_ref().map(|ts| {
                    ts.iter()
                        .map(|t| (t.name.to_string(), t.partition_indexes.clone()))
                        .collect()
                });
                let mut out = OffsetFetchResponseGroup::default().with_group_id(g.group_id.clone());
                // v9 (KIP-848): a member fetching names itself and its epoch.
                let member_check = ctx.core.groups().check_offset_fetch(
                    g.group_id.as_str(),
                    g.member_id.as_deref().unwrap_or_default(),
                    g.member_epoch,
                );
                if let Err(e) = member_check {
                    return out.with_error_code(group_error_code(&e));
                }
                match fetch_group(
                    ctx,
                    conn,
                    g.group_id.as_str(),
                    wanted,
                    request.require_stable,
                ) {
                    Ok(topics) => {
                        out = out.with_topics(
                            topics
                                .into_iter()
                                .map(|(t, parts)| {
                                    OffsetFetchResponseTopics::default()
                                        .with_name(TopicName(s(t)))
                                        .with_partitions(
                                            parts
                                                .into_iter()
                                                .map(|(p, c, code)| {
                                                    let (offset, epoch, meta) = committed_fields(c);
                                                    OffsetFetchResponsePartitions::default()
                                                        .with_partition_index(p)
                                                        .with_error_code(code)
                                                        .with_committed_offset(offset)
                                                        .with_committed_leader_epoch(epoch)
                                                        .with_metadata(Some(s(meta)))
                                                })
                                                .collect(),
                                        )
                                })
                                .collect(),
                        )
                    }
                    Err(code) => out = out.with_error_code(code),
                }
                out
            })
            .collect();
        let body = OffsetFetchResponse::default().with_groups(groups);
        return respond(ApiKey::OffsetFetch, v, req.correlation_id, &body);
    }
    let wanted = request.topics.as_ref().map(|ts| {
        ts.iter()
            .map(|t| (t.name.to_string(), t.partition_indexes.clone()))
            .collect()
    });
    let require_stable = v >= 7 && request.require_stable;
    let body = match fetch_group(ctx, conn, request.group_id.as_str(), wanted, require_stable) {
        Ok(topics) => OffsetFetchResponse::default().with_topics(
            topics
                .into_iter()
                .map(|(t, parts)| {
                    OffsetFetchResponseTopic::default()
                        .with_name(TopicName(s(t)))
                        .with_partitions(
                            parts
                                .into_iter()
                                .map(|(p, c, code)| {
                                    let (offset, epoch, meta) = committed_fields(c);
                                    let mut part = OffsetFetchResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_error_code(code)
                                        .with_committed_offset(offset)
                                        .with_metadata(Some(s(meta)));
                                    if v >= 5 {
                                        part = part.with_committed_leader_epoch(epoch);
                                    }
                                    part
                                })
                                .collect(),
                        )
                })
                .collect(),
        ),
        Err(code) if v >= 2 => OffsetFetchResponse::default().with_error_code(code),
        Err(_) => OffsetFetchResponse::default(),
    };
    respond(ApiKey::OffsetFetch, v, req.correlation_id, &body)
}

fn committed_fields(c: Option<CommittedOffset>) -> (i64, i32, String) {
    match c {
        Some(c) => (c.offset, c.leader_epoch, c.metadata.unwrap_or_default()),
        None => (-1, -1, String::new()),
    }
}

pub fn offset_delete(ctx: &Arc<KafkaContext>, conn: &ConnInfo, req: &RawRequest) -> Outcome {
    let request: OffsetDeleteRequest = match decode(req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    if !ctx.allowed(
        conn,
        operation::DELETE,
        resource::GROUP,
        request.group_id.as_str(),
    ) {
        let body = OffsetDeleteResponse::default().with_error_code(GROUP_DENIED);
        return respond(
            ApiKey::OffsetDelete,
            req.api_version,
            req.correlation_id,
            &body,
        );
    }
    let partitions: Vec<(String, i32)> = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| (t.name.to_string(), p.partition_index))
        })
        .collect();
    let result = ctx.core.groups().delete_offsets(
        request.group_id.as_str(),
        &partitions,
        crate::protocol::consumer_protocol::subscribed_topics,
    );
    let body = match result {
        Err(e) => OffsetDeleteResponse::default().with_error_code(group_error_code(&e)),
        Ok(per_partition) => OffsetDeleteResponse::default().with_topics(
            request
                .topics
                .iter()
                .map(|t| {
                    OffsetDeleteResponseTopic::default()
                        .with_name(t.name.clone())
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    let code = per_partition
                                        .iter()
                                        .find(|((tn, pi), _)| {
                                            tn == t.name.as_str() && *pi == p.partition_index
                                        })
                                        .map(|(_, r)| code_of(r))
                                        .unwrap_or(NONE);
                                    OffsetDeleteResponsePartition::default()
                                        .with_partition_index(p.partition_index)
                                        .with_error_code(code)
                                })
                                .collect(),
                        )
                })
                .collect(),
        ),
    };
    respond(
        ApiKey::OffsetDelete,
        req.api_version,
        req.correlation_id,
        &body,
    )
}
