//! What the log knows, for tools and consumers: DescribeProducers (the idempotent and
//! transactional producers each partition remembers, as `kafka-transactions.sh
//! describe-producers` shows them), OffsetForLeaderEpoch (KIP-320: where a leader epoch ends,
//! so a consumer can check its position was not truncated away) and DescribeLogDirs (the log
//! directory with partition sizes, as `kafka-log-dirs.sh` shows it).
//!
//! Ferry is one node that never changes leader: every partition has leader epoch
//! [`LEADER_EPOCH`] (what Metadata and ListOffsets report) from its first offset, so the only
//! epoch with an end is that one, and it ends at the log end. ACLs are Kafka's:
//! DescribeProducers needs READ on the topic; OffsetForLeaderEpoch CLUSTER_ACTION on the
//! cluster (brokers) or DESCRIBE on the topic (consumers, since KIP-320); DescribeLogDirs
//! DESCRIBE on the cluster.

use std::collections::HashMap;
use std::sync::Arc;

use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    ApiKey, DescribeLogDirsRequest, DescribeLogDirsResponse, DescribeProducersRequest,
    DescribeProducersResponse, OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse,
    ProducerId, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{decode, respond, Outcome};
use crate::protocol::kafka::authz::{operation, resource};
use crate::protocol::kafka::codec::RawRequest;
use crate::protocol::kafka::connection::ConnInfo;
use crate::protocol::kafka::KafkaContext;

/// The leader epoch of every partition (Metadata and ListOffsets say the same).
pub const LEADER_EPOCH: i32 = 0;
/// Kafka's "no epoch" / "no offset" answers.
const UNDEFINED_EPOCH: i32 = -1;
const UNDEFINED_OFFSET: i64 = -1;

/// DescribeProducers v0: per partition, every producer id the partition's idempotence state
/// remembers, with its epoch, last sequence and timestamp, and where its open transaction
/// (if any) starts. Ferry runs no coordinator epochs: `coordinator_epoch` is -1.
pub fn describe_producers(ctx: &Arc<KafkaContext>, conn: &ConnInfo, req: &RawRequest) -> Outcome {
    let request: DescribeProducersRequest = match decode(req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    let topics = request
        .topics
        .iter()
        .map(|t| {
            let name = t.name.as_str();
            let topic = if ctx.allowed(conn, operation::READ, resource::TOPIC, name) {
                ctx.core
                    .topic(name)
                    .ok_or(ResponseError::UnknownTopicOrPartition)
            } else {
                Err(ResponseError::TopicAuthorizationFailed)
            };
            let partitions = t
                .partition_indexes
                .iter()
                .map(|p| {
                    let out = PartitionResponse::default().with_partition_index(*p);
                    let handle = topic.as_ref().map_err(|e| *e).and_then(|t| {
                        t.partition(*p)
                            .ok_or(ResponseError::UnknownTopicOrPartition)
                    });
                    let handle = match handle {
                        Ok(h) => h,
                        Err(e) => return out.with_error_code(e.code()),
                    };
                    let producers = handle
                        .producers()
                        .into_iter()
                        .map(|s| {
                            ProducerState::default()
                                .with_producer_id(ProducerId(s.producer_id))
                                .with_producer_epoch(i32::from(s.epoch))
                                .with_last_sequence(s.last_sequence)
                                .with_last_timestamp(s.last_timestamp)
                                .with_coordinator_epoch(-1)
                                .with_current_txn_start_offset(
                                    handle.open_transaction_start(s.producer_id).unwrap_or(-1),
                                )
                        })
                        .collect();
                    out.with_active_producers(producers)
                })
                .collect();
            TopicResponse::default()
                .with_name(t.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    let body = DescribeProducersResponse::default().with_topics(topics);
    respond(
        ApiKey::DescribeProducers,
        req.api_version,
        req.correlation_id,
        &body,
    )
}

/// Where `leader_epoch` ends in a log whose end offset is `log_end`: the only epoch there is
/// ends at the log end; an older one would end where the next begins (there is none: every
/// offset belongs to [`LEADER_EPOCH`]), and an unknown or newer one is undefined, as Kafka's
/// leader epoch cache answers.
fn epoch_end(leader_epoch: i32, log_end: i64) -> (i32, i64) {
    if leader_epoch == LEADER_EPOCH {
        (LEADER_EPOCH, log_end)
    } else {
        (UNDEFINED_EPOCH, UNDEFINED_OFFSET)
    }
}

/// OffsetForLeaderEpoch v2–4. A `current_leader_epoch` other than -1 (no check) must be ours:
/// newer is UNKNOWN_LEADER_EPOCH, older FENCED_LEADER_EPOCH, so a client with stale metadata
/// refreshes it first.
pub fn offset_for_leader_epoch(
    ctx: &Arc<KafkaContext>,
    conn: &ConnInfo,
    req: &RawRequest,
) -> Outcome {
    let request: OffsetForLeaderEpochRequest = match decode(req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    let cluster_action = ctx.allowed_on_cluster(conn, operation::CLUSTER_ACTION);
    let topics = request
        .topics
        .iter()
        .map(|t| {
            let name = t.topic.as_str();
            let topic = if cluster_action
                || ctx.allowed(conn, operation::DESCRIBE, resource::TOPIC, name)
            {
                ctx.core
                    .topic(name)
                    .ok_or(ResponseError::UnknownTopicOrPartition)
            } else {
                Err(ResponseError::TopicAuthorizationFailed)
            };
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let out = EpochEndOffset::default()
                        .with_partition(p.partition)
                        .with_leader_epoch(UNDEFINED_EPOCH)
                        .with_end_offset(UNDEFINED_OFFSET);
                    let handle = topic.as_ref().map_err(|e| *e).and_then(|t| {
                        t.partition(p.partition)
                            .ok_or(ResponseError::UnknownTopicOrPartition)
                    });
                    let handle = match handle {
                        Ok(h) => h,
                        Err(e) => return out.with_error_code(e.code()),
                    };
                    // -1: the client does not know the leader epoch; nothing to check.
                    if p.current_leader_epoch >= 0 {
                        match p.current_leader_epoch.cmp(&LEADER_EPOCH) {
                            std::cmp::Ordering::Greater => {
                                return out
                                    .with_error_code(ResponseError::UnknownLeaderEpoch.code())
                            }
                            std::cmp::Ordering::Less => {
                                return out.with_error_code(ResponseError::FencedLeaderEpoch.code())
                            }
                            std::cmp::Ordering::Equal => {}
                        }
                    }
                    let (epoch, end) = epoch_end(p.leader_epoch, handle.log_end_offset());
                    out.with_leader_epoch(epoch).with_end_offset(end)
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic.clone())
                .with_partitions(partitions)
        })
        .collect();
    let body = OffsetForLeaderEpochResponse::default().with_topics(topics);
    respond(
        ApiKey::OffsetForLeaderEpoch,
        req.api_version,
        req.correlation_id,
        &body,
    )
}

/// DescribeLogDirs v1–4: the one log directory, with the size of every partition asked for
/// (a null topic list: all of them) and offset lag 0 (nothing is being moved between
/// directories). Partitions that do not exist are left out, as Kafka does. v4 adds the file
/// system's total and usable bytes.
pub fn describe_log_dirs(ctx: &Arc<KafkaContext>, conn: &ConnInfo, req: &RawRequest) -> Outcome {
    let request: DescribeLogDirsRequest = match decode(req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    let v = req.api_version;
    if !ctx.allowed_on_cluster(conn, operation::DESCRIBE) {
        let mut body = DescribeLogDirsResponse::default();
        if v >= 3 {
            body = body.with_error_code(ResponseError::ClusterAuthorizationFailed.code());
        }
        return respond(ApiKey::DescribeLogDirs, v, req.correlation_id, &body);
    }
    let wanted: Option<HashMap<String, Vec<i32>>> = request.topics.as_ref().map(|ts| {
        let mut map: HashMap<String, Vec<i32>> = HashMap::new();
        for t in ts {
            map.entry(t.topic.to_string())
                .or_default()
                .extend(t.partitions.iter().copied());
        }
        map
    });
    let mut topics = Vec::new();
    for topic in ctx.core.topics() {
        let indexes: Vec<i32> = match &wanted {
            None => (0..topic.partition_count() as i32).collect(),
            Some(map) => match map.get(topic.name()) {
                Some(ps) => ps.clone(),
                None => continue,
            },
        };
        let partitions: Vec<DescribeLogDirsPartition> = indexes
            .iter()
            .filter_map(|p| {
                topic.partition(*p).map(|h| {
                    DescribeLogDirsPartition::default()
                        .with_partition_index(*p)
                        .with_partition_size(i64::try_from(h.size_bytes()).unwrap_or(i64::MAX))
                        .with_offset_lag(0)
                        .with_is_future_key(false)
                })
            })
            .collect();
        if partitions.is_empty() {
            continue;
        }
        topics.push(
            DescribeLogDirsTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.name().to_string())))
                .with_partitions(partitions),
        );
    }
    let dir = ctx.core.logs_dir();
    let mut result = DescribeLogDirsResult::default()
        .with_log_dir(StrBytes::from_string(dir.display().to_string()))
        .with_topics(topics);
    if v >= 4 {
        let (total, usable) = crate::util::fs_space(dir)
            .map(|(t, u)| {
                (
                    i64::try_from(t).unwrap_or(i64::MAX),
                    i64::try_from(u).unwrap_or(i64::MAX),
                )
            })
            .unwrap_or((-1, -1));
        result = result.with_total_bytes(total).with_usable_bytes(usable);
    }
    let body = DescribeLogDirsResponse::default().with_results(vec![result]);
    respond(ApiKey::DescribeLogDirs, v, req.correlation_id, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_current_epoch_has_an_end() {
        assert_eq!(epoch_end(0, 42), (0, 42));
        assert_eq!(epoch_end(1, 42), (UNDEFINED_EPOCH, UNDEFINED_OFFSET));
        assert_eq!(epoch_end(-1, 42), (UNDEFINED_EPOCH, UNDEFINED_OFFSET));
    }
}
