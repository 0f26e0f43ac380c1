//! ListOffsets: earliest (-2), latest (-1), max timestamp (-3, v7+), and the first offset at or
//! after a timestamp, which the time index answers. With `isolation_level=read_committed`
//! "latest" is the last stable offset, as Kafka answers.

use std::sync::Arc;

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ApiKey, ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::ResponseError;

use super::{decode, respond, Outcome};
use crate::protocol::kafka::authz::{operation, resource};
use crate::protocol::kafka::codec::RawRequest;
use crate::protocol::kafka::connection::ConnInfo;
use crate::protocol::kafka::convert::log_error_code;
use crate::protocol::kafka::KafkaContext;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
/// KIP-734 (v7+): the record with the largest timestamp.
const MAX_TIMESTAMP: i64 = -3;

pub fn handle(ctx: &Arc<KafkaContext>, conn: &ConnInfo, req: &RawRequest) -> Outcome {
    let request: ListOffsetsRequest = match decode(req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    let v = req.api_version;
    // read_committed (v2+) sees the log only up to the last stable offset.
    let committed = v >= 2 && request.isolation_level == 1;
    let visible_end = |h: &crate::log::PartitionHandle| {
        if committed {
            h.last_stable_offset()
        } else {
            h.high_watermark()
        }
    };
    let topics = request
        .topics
        .iter()
        .map(|topic| {
            // Kafka asks DESCRIBE for ListOffsets (READ implies it).
            let authorized = ctx.allowed(
                conn,
                operation::DESCRIBE,
                resource::TOPIC,
                topic.name.as_str(),
            );
            let resolved = ctx.core.topic(topic.name.as_str()).filter(|_| authorized);
            let missing = if authorized {
                ResponseError::UnknownTopicOrPartition.code()
            } else {
                ResponseError::TopicAuthorizationFailed.code()
            };
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let mut resp = ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index);
                    if v >= 4 {
                        resp = resp.with_leader_epoch(0);
                    }
                    let Some(handle) = resolved
                        .as_ref()
                        .and_then(|t| t.partition(p.partition_index))
                    else {
                        return resp
                            .with_error_code(missing)
                            .with_offset(-1)
                            .with_timestamp(-1);
                    };
                    match p.timestamp {
                        LATEST => resp.with_offset(visible_end(handle)).with_timestamp(-1),
                        EARLIEST => resp
                            .with_offset(handle.log_start_offset())
                            .with_timestamp(-1),
                        MAX_TIMESTAMP if v >= 7 => match handle.max_timestamp_offset() {
                            Ok(Some((offset, ts))) => resp.with_offset(offset).with_timestamp(ts),
                            Ok(None) => resp.with_offset(-1).with_timestamp(-1),
                            Err(e) => resp
                                .with_error_code(log_error_code(&e))
                                .with_offset(-1)
                                .with_timestamp(-1),
                        },
                        ts if ts < 0 => resp
                            .with_error_code(ResponseError::UnsupportedVersion.code())
                            .with_offset(-1)
                            .with_timestamp(-1),
                        ts => match handle.offset_for_timestamp(ts) {
                            // Only offsets below the high watermark (the last stable offset
                            // for read_committed) are visible to consumers.
                            Ok(Some((offset, found_ts))) if offset < visible_end(handle) => {
                                resp.with_offset(offset).with_timestamp(found_ts)
                            }
                            Ok(_) => resp.with_offset(-1).with_timestamp(-1),
                            Err(e) => resp
                                .with_error_code(log_error_code(&e))
                                .with_offset(-1)
                                .with_timestamp(-1),
                        },
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    let body = ListOffsetsResponse::default().with_topics(topics);
    respond(ApiKey::ListOffsets, v, req.correlation_id, &body)
}
