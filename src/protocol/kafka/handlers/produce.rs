//! Produce: validate acks, enqueue every partition's batches on its writer in request order,
//! then answer once each append is durable per the fsync policy.
//!
//! Batches are stored exactly as they arrive (compressed or not): the log validates framing and
//! CRC-32C and patches offsets in place. Produce v0–2 can only carry the pre-0.11 message
//! formats, which Ferry does not store; those requests get UNSUPPORTED_VERSION per partition.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::{Decodable, StrBytes};
use kafka_protocol::ResponseError;

use tracing::Instrument;

use super::{decode, ready, respond, Outcome, Work};
use crate::broker::schema_check::RecordRejection;
use crate::broker::txn::TxnError;
use crate::broker::BrokerError;
use crate::log::{LogError, PartitionHandle, PendingAppend};
use crate::protocol::kafka::authz::{operation, resource};
use crate::protocol::kafka::codec::{self, RawRequest};
use crate::protocol::kafka::connection::ConnInfo;
use crate::protocol::kafka::convert::{broker_error_code, log_error_code, NONE};
use crate::protocol::kafka::KafkaContext;

enum PartitionResult {
    /// The append, its partition, its `append` span and (only when TRACE is on) the batch
    /// bytes for per-record trace events.
    Pending(PendingAppend, PartitionHandle, tracing::Span, Option<Bytes>),
    Failed(i16, Option<String>),
    /// Records the topic's schema validation refused (KIP-467 record errors).
    Rejected(Vec<RecordRejection>),
}

/// Plain produce into an event-store topic would bypass its expected-revision checks.
fn refuses_plain_produce(topic: &crate::broker::Topic) -> bool {
    let config = topic.log_config();
    config.event_store && !config.event_store_allow_produce
}

/// Counts a produced batch in the event catalog, reading its records only when the topic is
/// due a sample (see `broker::catalog`).
fn observe_in_catalog(ctx: &KafkaContext, conn: &ConnInfo, topic: &str, records: &Bytes) {
    use crate::broker::catalog::{kafka_batch_events, kafka_record_count, FlowKind};
    let now_ms = ctx.core.clock().now_ms();
    ctx.core.catalog().observe(
        FlowKind::Topic,
        topic,
        now_ms,
        kafka_record_count(records),
        || {
            let producer = conn.client_id.as_deref().or(conn.user.as_deref());
            kafka_batch_events(records, producer)
        },
    );
}

pub async fn submit(ctx: &Arc<KafkaContext>, conn: &ConnInfo, req: RawRequest) -> Work {
    if req.api_version < 3 {
        return ready(legacy(&req));
    }
    let request: ProduceRequest = match decode(&req) {
        Ok(r) => r,
        Err(close) => return ready(close),
    };
    let acks = request.acks;
    if !(-1..=1).contains(&acks) {
        let code = ResponseError::InvalidRequiredAcks.code();
        return ready(respond_all(&req, &request, code));
    }
    if let Some(id) = request.transactional_id.as_ref() {
        if !ctx.allowed(
            conn,
            operation::WRITE,
            resource::TRANSACTIONAL_ID,
            id.as_str(),
        ) {
            let code = ResponseError::TransactionalIdAuthorizationFailed.code();
            return ready(respond_all(&req, &request, code));
        }
    }

    let mut submitted = Vec::with_capacity(request.topic_data.len());
    for topic in request.topic_data {
        let name = topic.name.as_str().to_string();
        // Checked before resolving, which may auto-create the topic.
        let resolved = if ctx.allowed(conn, operation::WRITE, resource::TOPIC, &name) {
            resolve_topic(ctx, conn, &name)
                .await
                .map_err(|e| broker_error_code(&e))
        } else {
            Err(ResponseError::TopicAuthorizationFailed.code())
        };
        let mut partitions = Vec::with_capacity(topic.partition_data.len());
        for part in topic.partition_data {
            let result = match (&resolved, part.records) {
                (Err(code), _) => PartitionResult::Failed(*code, None),
                (Ok(_), None) => PartitionResult::Failed(
                    ResponseError::InvalidRecord.code(),
                    Some("records are null".into()),
                ),
                (Ok(t), Some(_)) if refuses_plain_produce(t) => PartitionResult::Failed(
                    ResponseError::InvalidRecord.code(),
                    Some(format!(
                        "topic `{name}` is an event store: append through the event-store API \
                         (set ferry.event.store.allow.produce=true to allow plain produce)"
                    )),
                ),
                (Ok(t), Some(records)) => match (
                    t.partition(part.index),
                    transaction_refusal(ctx, &name, part.index, &records),
                    // One bool test unless the topic validates its records.
                    ctx.core.check_kafka_records(t, &records),
                ) {
                    (None, _, _) => {
                        PartitionResult::Failed(ResponseError::UnknownTopicOrPartition.code(), None)
                    }
                    (Some(_), Some((code, message)), _) => {
                        PartitionResult::Failed(code, Some(message))
                    }
                    (Some(_), None, rejected) if !rejected.is_empty() => {
                        PartitionResult::Rejected(rejected)
                    }
                    (Some(handle), None, _) => {
                        // One span per batch, not per record: the hot path stays a callsite
                        // check when DEBUG is off. Per-record ids are TRACE events.
                        let span = tracing::debug_span!(
                            "append",
                            protocol = "kafka",
                            topic = %name,
                            partition = part.index,
                            bytes = records.len(),
                            base_offset = tracing::field::Empty,
                        );
                        let traced =
                            tracing::enabled!(tracing::Level::TRACE).then(|| records.clone());
                        match handle
                            .submit_append(BytesMut::from(&records[..]))
                            .instrument(span.clone())
                            .await
                        {
                            Ok(pending) => {
                                observe_in_catalog(ctx, conn, &name, &records);
                                PartitionResult::Pending(pending, handle.clone(), span, traced)
                            }
                            Err(e) => {
                                PartitionResult::Failed(log_error_code(&e), Some(e.to_string()))
                            }
                        }
                    }
                },
            };
            partitions.push((part.index, result));
        }
        submitted.push((name, partitions));
    }

    let version = req.api_version;
    let correlation_id = req.correlation_id;
    Box::pin(async move {
        let mut responses = Vec::with_capacity(submitted.len());
        let mut any_error = false;
        for (name, partitions) in submitted {
            let mut partition_responses = Vec::with_capacity(partitions.len());
            for (index, result) in partitions {
                let mut resp = PartitionProduceResponse::default().with_index(index);
                match result {
                    PartitionResult::Pending(pending, handle, span, traced) => match pending
                        .wait()
                        .instrument(span.clone())
                        .await
                    {
                        Ok(info) => {
                            span.record("base_offset", info.base_offset);
                            if let Some(batch) = traced {
                                let _in = span.enter();
                                crate::broker::event::trace_records(
                                    "produce",
                                    &name,
                                    index,
                                    info.base_offset,
                                    &batch,
                                );
                            }
                            resp = resp
                                .with_error_code(NONE)
                                .with_base_offset(info.base_offset)
                                .with_log_append_time_ms(info.log_append_time_ms);
                            if version >= 5 {
                                resp = resp.with_log_start_offset(handle.log_start_offset());
                            }
                        }
                        Err(e) => {
                            any_error = true;
                            resp =
                                with_error(resp, log_error_code(&e), Some(error_text(&e)), version);
                        }
                    },
                    PartitionResult::Failed(code, message) => {
                        any_error = true;
                        resp = with_error(resp, code, message, version);
                    }
                    PartitionResult::Rejected(rejected) => {
                        any_error = true;
                        resp = with_record_errors(resp, &rejected, version);
                    }
                }
                partition_responses.push(resp);
            }
            responses.push(
                TopicProduceResponse::default()
                    .with_name(TopicName(StrBytes::from_string(name)))
                    .with_partition_responses(partition_responses),
            );
        }
        if acks == 0 {
            // acks=0 producers never read a response; Kafka closes the connection on failure
            // so the client notices something went wrong.
            return if any_error {
                Outcome::Close("acks=0 produce failed".into())
            } else {
                Outcome::NoResponse
            };
        }
        let body = ProduceResponse::default().with_responses(responses);
        respond(ApiKey::Produce, version, correlation_id, &body)
    })
}

/// Why a partition's batches may not be appended on transactional grounds: a control batch
/// (only the coordinator writes markers; Kafka refuses them with INVALID_RECORD), or a
/// transactional batch from a fenced epoch or for a partition not added to the producer's
/// open transaction. `None`: append them.
fn transaction_refusal(
    ctx: &KafkaContext,
    topic: &str,
    partition: i32,
    records: &[u8],
) -> Option<(i16, String)> {
    for (h, _) in crate::log::BatchIter::new(records) {
        if h.is_control() {
            return Some((
                ResponseError::InvalidRecord.code(),
                "produce requests cannot carry control batches".into(),
            ));
        }
        if h.is_transactional() {
            if let Err(e) = ctx.core.check_transactional_produce(
                h.producer_id,
                h.producer_epoch,
                topic,
                partition,
            ) {
                let code = match e {
                    TxnError::ProducerFenced => ResponseError::InvalidProducerEpoch.code(),
                    TxnError::InvalidProducerIdMapping => {
                        ResponseError::InvalidProducerIdMapping.code()
                    }
                    _ => ResponseError::InvalidTxnState.code(),
                };
                return Some((code, e.to_string()));
            }
        }
    }
    None
}

fn error_text(e: &LogError) -> String {
    e.to_string()
}

fn with_error(
    resp: PartitionProduceResponse,
    code: i16,
    message: Option<String>,
    version: i16,
) -> PartitionProduceResponse {
    let resp = resp.with_error_code(code).with_base_offset(-1);
    if version >= 8 {
        resp.with_error_message(message.map(StrBytes::from_string))
    } else {
        resp
    }
}

/// INVALID_RECORD with the first refusal as the message and every one as a record error
/// (KIP-467, Produce v8+), as Kafka answers a record its broker-side validation refuses.
fn with_record_errors(
    resp: PartitionProduceResponse,
    rejected: &[RecordRejection],
    version: i16,
) -> PartitionProduceResponse {
    let message = rejected.first().map(|r| r.message.clone());
    let resp = with_error(resp, ResponseError::InvalidRecord.code(), message, version);
    if version < 8 {
        return resp;
    }
    resp.with_record_errors(
        rejected
            .iter()
            .map(|r| {
                BatchIndexAndErrorMessage::default()
                    .with_batch_index(r.batch_index)
                    .with_batch_index_error_message(Some(StrBytes::from_string(r.message.clone())))
            })
            .collect(),
    )
}

async fn resolve_topic(
    ctx: &Arc<KafkaContext>,
    conn: &ConnInfo,
    name: &str,
) -> Result<Arc<crate::broker::Topic>, BrokerError> {
    if let Some(t) = ctx.core.topic(name) {
        return Ok(t);
    }
    // Auto-creation needs CREATE, as on the Metadata path.
    if !ctx.settings.kafka.auto_create_topics || !ctx.may_auto_create(conn, name) {
        return Err(BrokerError::UnknownTopic(name.to_string()));
    }
    match ctx
        .core
        .create_topic(name, ctx.settings.kafka.default_partitions, BTreeMap::new())
        .await
    {
        Ok(t) => Ok(t),
        Err(BrokerError::TopicExists(_)) => ctx
            .core
            .topic(name)
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_string())),
        Err(e) => Err(e),
    }
}

/// Answers every partition of a request with one error code.
fn respond_all(req: &RawRequest, request: &ProduceRequest, code: i16) -> Outcome {
    if request.acks == 0 {
        return Outcome::Close("acks=0 produce refused".into());
    }
    let responses = request
        .topic_data
        .iter()
        .map(|t| {
            TopicProduceResponse::default()
                .with_name(t.name.clone())
                .with_partition_responses(
                    t.partition_data
                        .iter()
                        .map(|p| {
                            with_error(
                                PartitionProduceResponse::default().with_index(p.index),
                                code,
                                None,
                                req.api_version,
                            )
                        })
                        .collect(),
                )
        })
        .collect();
    let body = ProduceResponse::default().with_responses(responses);
    respond(ApiKey::Produce, req.api_version, req.correlation_id, &body)
}

/// Produce v0–2: the body is v3's without the leading transactional id, so it is decoded as
/// v3 behind a null id; the response is written by hand since the codec starts at v3.
fn legacy(req: &RawRequest) -> Outcome {
    let mut body = BytesMut::with_capacity(req.body.len() + 2);
    body.put_i16(-1);
    body.put_slice(&req.body);
    let mut body: Bytes = body.freeze();
    let request = match ProduceRequest::decode(&mut body, 3) {
        Ok(r) => r,
        Err(e) => {
            return Outcome::Close(format!("malformed Produce v{} body: {e}", req.api_version))
        }
    };
    if request.acks == 0 {
        return Outcome::Close("message format v0/v1 is not supported".into());
    }
    let code = ResponseError::UnsupportedVersion.code();
    let mut out = BytesMut::new();
    out.put_i32(request.topic_data.len() as i32);
    for topic in &request.topic_data {
        let name = topic.name.as_bytes();
        out.put_i16(name.len() as i16);
        out.put_slice(name);
        out.put_i32(topic.partition_data.len() as i32);
        for p in &topic.partition_data {
            out.put_i32(p.index);
            out.put_i16(code);
            out.put_i64(-1);
            if req.api_version >= 2 {
                out.put_i64(-1);
            }
        }
    }
    if req.api_version >= 1 {
        out.put_i32(0);
    }
    Outcome::Respond(codec::encode_raw_response_v0(req.correlation_id, &out))
}
