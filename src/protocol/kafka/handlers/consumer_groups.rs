//! KIP-848 consumer groups on the wire: ConsumerGroupHeartbeat (API key 68) and
//! ConsumerGroupDescribe (API key 69), v0 and v1. The state machine is the core's
//! (`broker::group::consumer`); this file converts topic ids, snapshots the topic catalog for
//! the coordinator and maps `GroupError` to Kafka codes (see `groups::group_error_code`).

use std::sync::Arc;

use kafka_protocol::messages::consumer_group_describe_response::{
    Assignment as DescribedAssignment, DescribedGroup, Member,
    TopicPartitions as DescribedTopicPartitions,
};
use kafka_protocol::messages::consumer_group_heartbeat_response::{
    Assignment as HeartbeatAssignment, TopicPartitions as HeartbeatTopicPartitions,
};
use kafka_protocol::messages::{
    ApiKey, ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse,
    ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse, TopicName,
};

use super::groups::{group_error_code, s, GROUP_DENIED};
use super::{decode, respond, Outcome};
use crate::broker::group::Assignment;
use crate::broker::{ConsumerHeartbeat, GroupError, TopicMeta, TopicSnapshot};
use crate::protocol::kafka::authz::{operation, resource};
use crate::protocol::kafka::codec::RawRequest;
use crate::protocol::kafka::connection::ConnInfo;
use crate::protocol::kafka::KafkaContext;

/// Kafka's "authorized operations not requested" sentinel.
const OPERATIONS_NOT_REQUESTED: i32 = i32::MIN;

/// The topics that exist now, in the coordinator's terms.
fn topic_snapshot(ctx: &KafkaContext) -> TopicSnapshot {
    TopicSnapshot::new(ctx.core.topics().into_iter().map(|t| TopicMeta {
        name: t.name().to_string(),
        id: t.topic_id(),
        partitions: i32::try_from(t.partition_count()).unwrap_or(i32::MAX),
    }))
}

pub fn heartbeat(ctx: &Arc<KafkaContext>, conn: &ConnInfo, req: &RawRequest) -> Outcome {
    let request: ConsumerGroupHeartbeatRequest = match decode(req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    let v = req.api_version;
    let reply = |body: ConsumerGroupHeartbeatResponse| {
        respond(ApiKey::ConsumerGroupHeartbeat, v, req.correlation_id, &body)
    };
    if !ctx.allowed(
        conn,
        operation::READ,
        resource::GROUP,
        request.group_id.as_str(),
    ) {
        return reply(ConsumerGroupHeartbeatResponse::default().with_error_code(GROUP_DENIED));
    }
    let heartbeat = ConsumerHeartbeat {
        group_id: request.group_id.to_string(),
        member_id: request.member_id.to_string(),
        member_epoch: request.member_epoch,
        instance_id: request.instance_id.as_ref().map(|x| x.to_string()),
        rack_id: request.rack_id.as_ref().map(|x| x.to_string()),
        rebalance_timeout_ms: request.rebalance_timeout_ms,
        subscribed_topic_names: request
            .subscribed_topic_names
            .as_ref()
            .map(|names| names.iter().map(|n| n.to_string()).collect()),
        subscribed_topic_regex: request
            .subscribed_topic_regex
            .as_ref()
            .map(|x| x.to_string()),
        server_assignor: request.server_assignor.as_ref().map(|x| x.to_string()),
        owned: request.topic_partitions.as_ref().map(|tps| {
            tps.iter()
                .map(|tp| (*tp.topic_id.as_bytes(), tp.partitions.clone()))
                .collect()
        }),
        client_id: conn.client_id.clone().unwrap_or_default(),
        client_host: format!("/{}", conn.peer.ip()),
    };
    let topics = topic_snapshot(ctx);
    let body = match ctx.core.groups().consumer_heartbeat(heartbeat, &topics) {
        Ok(r) => ConsumerGroupHeartbeatResponse::default()
            .with_member_id(Some(s(r.member_id)))
            .with_member_epoch(r.member_epoch)
            .with_heartbeat_interval_ms(
                i32::try_from(r.heartbeat_interval.as_millis()).unwrap_or(i32::MAX),
            )
            .with_assignment(r.assignment.map(|a| {
                HeartbeatAssignment::default().with_topic_partitions(
                    a.into_iter()
                        .map(|(topic, partitions)| {
                            HeartbeatTopicPartitions::default()
                                .with_topic_id(uuid::Uuid::from_bytes(topic))
                                .with_partitions(partitions.into_iter().collect())
                        })
                        .collect(),
                )
            })),
        Err(e) => ConsumerGroupHeartbeatResponse::default()
            .with_error_code(group_error_code(&e))
            .with_error_message(Some(s(e.to_string()))),
    };
    reply(body)
}

pub fn describe(ctx: &Arc<KafkaContext>, conn: &ConnInfo, req: &RawRequest) -> Outcome {
    let request: ConsumerGroupDescribeRequest = match decode(req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    let v = req.api_version;
    let topics = ctx.core.topics();
    let name_of = |id: &[u8; 16]| {
        topics
            .iter()
            .find(|t| t.topic_id() == *id)
            .map(|t| t.name().to_string())
            .unwrap_or_default()
    };
    let assignment = |a: Assignment| {
        DescribedAssignment::default().with_topic_partitions(
            a.into_iter()
                .map(|(topic, partitions)| {
                    DescribedTopicPartitions::default()
                        .with_topic_id(uuid::Uuid::from_bytes(topic))
                        .with_topic_name(TopicName(s(name_of(&topic))))
                        .with_partitions(partitions.into_iter().collect())
                })
                .collect(),
        )
    };
    let groups = request
        .group_ids
        .iter()
        .map(|id| {
            let described = DescribedGroup::default()
                .with_group_id(id.clone())
                .with_authorized_operations(OPERATIONS_NOT_REQUESTED);
            if !ctx.allowed(conn, operation::DESCRIBE, resource::GROUP, id.as_str()) {
                return described.with_error_code(GROUP_DENIED);
            }
            match ctx.core.groups().consumer_describe(id.as_str()) {
                Err(e) => described
                    .with_error_code(group_error_code(&e))
                    .with_error_message(Some(s(match e {
                        GroupError::GroupIdNotFound => {
                            format!("group {} is not a consumer group", id.as_str())
                        }
                        other => other.to_string(),
                    }))),
                Ok(view) => described
                    .with_group_state(s(view.state.as_str()))
                    .with_group_epoch(view.group_epoch)
                    .with_assignment_epoch(view.assignment_epoch)
                    .with_assignor_name(s(view.assignor_name))
                    .with_members(
                        view.members
                            .into_iter()
                            .map(|m| {
                                let mut member = Member::default()
                                    .with_member_id(s(m.member_id))
                                    .with_instance_id(m.instance_id.map(s))
                                    .with_rack_id(m.rack_id.map(s))
                                    .with_member_epoch(m.member_epoch)
                                    .with_client_id(s(m.client_id))
                                    .with_client_host(s(m.client_host))
                                    .with_subscribed_topic_names(
                                        m.subscribed_topic_names
                                            .into_iter()
                                            .map(|n| TopicName(s(n)))
                                            .collect(),
                                    )
                                    .with_subscribed_topic_regex(m.subscribed_topic_regex.map(s))
                                    .with_assignment(assignment(m.assignment))
                                    .with_target_assignment(assignment(m.target_assignment));
                                if v >= 1 {
                                    // MemberType (KIP-1099): 1 = consumer protocol.
                                    member = member.with_member_type(1);
                                }
                                member
                            })
                            .collect(),
                    ),
            }
        })
        .collect();
    let body = ConsumerGroupDescribeResponse::default().with_groups(groups);
    respond(ApiKey::ConsumerGroupDescribe, v, req.correlation_id, &body)
}
