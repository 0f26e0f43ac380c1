//! Fetch: serve stored batches as they are, long-polling until `min_bytes` arrive or
//! `max_wait_ms` passes.
//!
//! Per-partition and whole-response byte limits follow KIP-74: the first batch of the first
//! non-empty partition is returned whole even when larger than the limits, so a consumer can
//! always make progress. Fetch sessions are not kept: every answer has session id 0, which
//! clients treat as "send full fetches".
//!
//! `isolation_level=read_committed` (v4+) reads only up to the last stable offset and returns
//! the aborted transactions overlapping what it read, from the partition's transaction index,
//! so the client drops their records (and skips control batches, as it always does).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::select_all;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse, ProducerId};
use kafka_protocol::ResponseError;

use super::{decode, respond, Outcome};
use crate::log::{LogError, PartitionHandle};
use crate::protocol::kafka::authz::{operation, resource};
use crate::protocol::kafka::codec::RawRequest;
use crate::protocol::kafka::connection::ConnInfo;
use crate::protocol::kafka::convert::log_error_code;
use crate::protocol::kafka::KafkaContext;

/// Longest long-poll we honour, whatever the client asks.
const MAX_WAIT_CAP: Duration = Duration::from_secs(30);

pub async fn handle(ctx: Arc<KafkaContext>, conn: ConnInfo, req: RawRequest) -> Outcome {
    let request: FetchRequest = match decode(&req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    let max_wait = Duration::from_millis(request.max_wait_ms.max(0) as u64).min(MAX_WAIT_CAP);
    let deadline = tokio::time::Instant::now() + max_wait;
    let min_bytes = request.min_bytes.max(0) as usize;
    // A client cannot make one response (and so the connection's write buffer) bigger than
    // fetch.max.bytes.
    let cap = ctx.settings.kafka.fetch_max_bytes;
    let max_bytes = if request.max_bytes <= 0 {
        cap
    } else {
        (request.max_bytes as usize).min(cap)
    };

    // Resolve handles once; a topic deleted mid-poll keeps answering from its old handle.
    // A topic the client may not READ answers TOPIC_AUTHORIZATION_FAILED per partition.
    let targets: Vec<(usize, usize, Result<PartitionHandle, i16>)> = request
        .topics
        .iter()
        .enumerate()
        .flat_map(|(ti, topic)| {
            let name = topic.topic.as_str();
            let resolved = if ctx.allowed(&conn, operation::READ, resource::TOPIC, name) {
                ctx.core
                    .topic(name)
                    .ok_or(ResponseError::UnknownTopicOrPartition.code())
            } else {
                Err(ResponseError::TopicAuthorizationFailed.code())
            };
            topic.partitions.iter().enumerate().map(move |(pi, p)| {
                let handle = resolved.as_ref().map_err(|code| *code).and_then(|t| {
                    t.partition(p.partition)
                        .cloned()
                        .ok_or(ResponseError::UnknownTopicOrPartition.code())
                });
                (ti, pi, handle)
            })
        })
        .collect();

    loop {
        // Subscribe before reading so an append between the read and the wait still wakes us.
        let mut watchers: Vec<_> = targets
            .iter()
            .filter_map(|(_, _, h)| h.as_ref().ok().map(|h| h.subscribe_high_watermark()))
            .collect();
        let (body, total) = build(&request, &targets, max_bytes, req.api_version);
        let now = tokio::time::Instant::now();
        if total >= min_bytes
            || total > 0 && min_bytes == 0
            || now >= deadline
            || watchers.is_empty()
        {
            return respond(ApiKey::Fetch, req.api_version, req.correlation_id, &body);
        }
        let any_change = select_all(watchers.iter_mut().map(|w| Box::pin(w.changed())));
        let mut shutdown = ctx.shutdown.clone();
        let woken = tokio::select! {
            changed = tokio::time::timeout_at(deadline, any_change) => changed.is_ok(),
            // Shutting down: answer with what there is rather than hold the shutdown up.
            _ = crate::util::stopped(&mut shutdown) => false,
        };
        if !woken {
            let (body, _) = build(&request, &targets, max_bytes, req.api_version);
            return respond(ApiKey::Fetch, req.api_version, req.correlation_id, &body);
        }
    }
}

fn build(
    request: &FetchRequest,
    targets: &[(usize, usize, Result<PartitionHandle, i16>)],
    max_bytes: usize,
    version: i16,
) -> (FetchResponse, usize) {
    let mut remaining = max_bytes;
    let mut total = 0usize;
    let read_committed = request.isolation_level == 1;
    let mut topics: Vec<FetchableTopicResponse> = request
        .topics
        .iter()
        .map(|t| FetchableTopicResponse::default().with_topic(t.topic.clone()))
        .collect();
    for (ti, pi, handle) in targets {
        let wanted = &request.topics[*ti].partitions[*pi];
        let mut data = PartitionData::default().with_partition_index(wanted.partition);
        match handle {
            Err(code) => {
                data = data.with_error_code(*code);
            }
            Ok(h) => {
                let hw = h.high_watermark();
                data = data
                    .with_high_watermark(hw)
                    .with_last_stable_offset(h.last_stable_offset())
                    .with_log_start_offset(h.log_start_offset());
                let limit = (wanted.partition_max_bytes.max(0) as usize).min(remaining);
                // KIP-74: until something is in the response, let one whole batch through.
                let limit = if total == 0 { limit.max(1) } else { limit };
                if limit == 0 {
                    data = data.with_records(Some(Bytes::new()));
                } else {
                    let topic = request.topics[*ti].topic.as_str();
                    // One span per partition read; per-record ids only as TRACE events.
                    let span = tracing::debug_span!(
                        "deliver",
                        protocol = "kafka",
                        topic,
                        partition = wanted.partition,
                        fetch_offset = wanted.fetch_offset,
                        bytes = tracing::field::Empty,
                    );
                    let _in = span.enter();
                    let read = if read_committed {
                        h.read_committed(wanted.fetch_offset, limit)
                    } else {
                        h.read(wanted.fetch_offset, limit)
                            .map(|slice| (slice, Vec::new()))
                    };
                    match read {
                        Ok((slice, aborted)) => {
                            if read_committed {
                                data = data.with_aborted_transactions(Some(
                                    aborted
                                        .iter()
                                        .map(|a| {
                                            AbortedTransaction::default()
                                                .with_producer_id(ProducerId(a.producer_id))
                                                .with_first_offset(a.first_offset)
                                        })
                                        .collect(),
                                ));
                            }
                            let n = slice.bytes.len();
                            if total > 0 && n > remaining {
                                data = data.with_records(Some(Bytes::new()));
                            } else {
                                span.record("bytes", n);
                                crate::broker::event::trace_records(
                                    "fetch",
                                    topic,
                                    wanted.partition,
                                    0,
                                    &slice.bytes,
                                );
                                total += n;
                                remaining = remaining.saturating_sub(n);
                                data = data.with_records(Some(slice.bytes));
                            }
                        }
                        Err(e @ LogError::OffsetOutOfRange { .. }) => {
                            data = data
                                .with_error_code(log_error_code(&e))
                                .with_high_watermark(hw)
                                .with_records(Some(Bytes::new()));
                        }
                        Err(e) => {
                            data = data
                                .with_error_code(log_error_code(&e))
                                .with_records(Some(Bytes::new()));
                        }
                    }
                }
            }
        }
        topics[*ti].partitions.push(data);
    }
    let mut body = FetchResponse::default().with_responses(topics);
    if version >= 7 {
        body = body.with_session_id(0).with_error_code(0);
    }
    (body, total)
}
