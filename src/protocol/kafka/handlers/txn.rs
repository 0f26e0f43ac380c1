//! The transaction APIs: AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit, EndTxn,
//! DescribeTransactions and ListTransactions. The decisions are the transaction coordinator's
//! ([`crate::broker::txn`]); this adapter checks ACLs as Kafka does (TransactionalId WRITE for
//! every change, plus WRITE on each topic added, READ on the group whose offsets are carried,
//! DESCRIBE to see a transactional id) and maps the coordinator's errors to Kafka's codes.

use std::sync::Arc;

use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::list_transactions_response::TransactionState as ListedTransaction;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse, ApiKey, DescribeTransactionsRequest, DescribeTransactionsResponse,
    EndTxnRequest, EndTxnResponse, ListTransactionsRequest, ListTransactionsResponse, ProducerId,
    TopicName, TransactionalId, TxnOffsetCommitRequest, TxnOffsetCommitResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{decode, respond, Outcome};
use crate::broker::txn::{status_name, TxnError};
use crate::meta::CommittedOffset;
use crate::protocol::kafka::authz::{operation, resource};
use crate::protocol::kafka::codec::RawRequest;
use crate::protocol::kafka::connection::ConnInfo;
use crate::protocol::kafka::convert::NONE;
use crate::protocol::kafka::KafkaContext;

/// The Kafka code for a coordinator error. `fenced_code` says whether the request version
/// knows PRODUCER_FENCED; older versions get INVALID_PRODUCER_EPOCH, as Kafka answers them.
pub(crate) fn txn_error_code(e: &TxnError, fenced_code: bool) -> i16 {
    match e {
        TxnError::ProducerFenced if fenced_code => ResponseError::ProducerFenced.code(),
        TxnError::ProducerFenced => ResponseError::InvalidProducerEpoch.code(),
        TxnError::InvalidProducerIdMapping => ResponseError::InvalidProducerIdMapping.code(),
        TxnError::InvalidTxnState(_) => ResponseError::InvalidTxnState.code(),
        TxnError::ConcurrentTransactions => ResponseError::ConcurrentTransactions.code(),
        TxnError::InvalidTransactionTimeout(_) => ResponseError::InvalidTransactionTimeout.code(),
        TxnError::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition.code(),
        TxnError::Member(e) => super::groups::group_error_code(e),
        TxnError::Meta(_) | TxnError::Log(_) | TxnError::Group(_) => {
            tracing::warn!(error = %e, "transaction coordinator error");
            ResponseError::CoordinatorNotAvailable.code()
        }
    }
}

fn code_of(result: &Result<(), TxnError>, fenced_code: bool) -> i16 {
    match result {
        Ok(()) => NONE,
        Err(e) => txn_error_code(e, fenced_code),
    }
}

fn may_write_txn(ctx: &KafkaContext, conn: &ConnInfo, transactional_id: &str) -> bool {
    ctx.allowed(
        conn,
        operation::WRITE,
        resource::TRANSACTIONAL_ID,
        transactional_id,
    )
}

/// AddPartitionsToTxn v0–3 (v4+, the batched form, is broker-to-broker in Kafka; clients do
/// not send it). All partitions are added or none: an unknown or unauthorized one fails the
/// request and the others answer OPERATION_NOT_ATTEMPTED, as Kafka does.
pub async fn add_partitions(ctx: Arc<KafkaContext>, conn: ConnInfo, req: RawRequest) -> Outcome {
    let request: AddPartitionsToTxnRequest = match decode(&req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    let v = req.api_version;
    let transactional_id = request.v3_and_below_transactional_id.as_str();
    let txn_allowed = may_write_txn(&ctx, &conn, transactional_id);
    let mut wanted = Vec::new();
    let mut failures: Vec<(usize, usize, i16)> = Vec::new();
    for (ti, topic) in request.v3_and_below_topics.iter().enumerate() {
        let name = topic.name.as_str();
        let code = if !txn_allowed {
            ResponseError::TransactionalIdAuthorizationFailed.code()
        } else if !ctx.allowed(&conn, operation::WRITE, resource::TOPIC, name) {
            ResponseError::TopicAuthorizationFailed.code()
        } else {
            NONE
        };
        let known = ctx.core.topic(name);
        for (pi, p) in topic.partitions.iter().enumerate() {
            let code = match (&known, code) {
                (_, c) if c != NONE => c,
                (Some(t), _) if t.partition(*p).is_some() => NONE,
                _ => ResponseError::UnknownTopicOrPartition.code(),
            };
            if code == NONE {
                wanted.push((name.to_string(), *p));
            } else {
                failures.push((ti, pi, code));
            }
        }
    }
    let shared = if !failures.is_empty() {
        Some(ResponseError::OperationNotAttempted.code())
    } else {
        let result = ctx
            .core
            .add_partitions_to_txn(
                transactional_id,
                request.v3_and_below_producer_id.0,
                request.v3_and_below_producer_epoch,
                &wanted,
            )
            .await;
        Some(code_of(&result, v >= 2))
    };
    let results = request
        .v3_and_below_topics
        .iter()
        .enumerate()
        .map(|(ti, topic)| {
            let partitions = topic
                .partitions
                .iter()
                .enumerate()
                .map(|(pi, p)| {
                    let code = failures
                        .iter()
                        .find(|(t, q, _)| *t == ti && *q == pi)
                        .map(|(_, _, c)| *c)
                        .or(shared)
                        .unwrap_or(NONE);
                    AddPartitionsToTxnPartitionResult::default()
                        .with_partition_index(*p)
                        .with_partition_error_code(code)
                })
                .collect();
            AddPartitionsToTxnTopicResult::default()
                .with_name(topic.name.clone())
                .with_results_by_partition(partitions)
        })
        .collect();
    let body = AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results);
    respond(ApiKey::AddPartitionsToTxn, v, req.correlation_id, &body)
}

/// AddOffsetsToTxn: the group whose offsets the transaction will carry.
pub async fn add_offsets(ctx: Arc<KafkaContext>, conn: ConnInfo, req: RawRequest) -> Outcome {
    let request: AddOffsetsToTxnRequest = match decode(&req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    let v = req.api_version;
    let transactional_id = request.transactional_id.as_str();
    let group = request.group_id.as_str();
    let code = if !may_write_txn(&ctx, &conn, transactional_id) {
        ResponseError::TransactionalIdAuthorizationFailed.code()
    } else if !ctx.allowed(&conn, operation::READ, resource::GROUP, group) {
        ResponseError::GroupAuthorizationFailed.code()
    } else {
        let result = ctx
            .core
            .add_offsets_to_txn(
                transactional_id,
                request.producer_id.0,
                request.producer_epoch,
                group,
            )
            .await;
        code_of(&result, v >= 2)
    };
    let body = AddOffsetsToTxnResponse::default().with_error_code(code);
    respond(ApiKey::AddOffsetsToTxn, v, req.correlation_id, &body)
}

/// TxnOffsetCommit: offsets held by the transaction until it commits.
pub async fn txn_offset_commit(ctx: Arc<KafkaContext>, conn: ConnInfo, req: RawRequest) -> Outcome {
    let request: TxnOffsetCommitRequest = match decode(&req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    let v = req.api_version;
    let transactional_id = request.transactional_id.as_str();
    let group = request.group_id.as_str();
    let denied = if !may_write_txn(&ctx, &conn, transactional_id) {
        Some(ResponseError::TransactionalIdAuthorizationFailed.code())
    } else if !ctx.allowed(&conn, operation::READ, resource::GROUP, group) {
        Some(ResponseError::GroupAuthorizationFailed.code())
    } else {
        None
    };
    let mut offsets = Vec::new();
    let mut topic_denied = Vec::new();
    for topic in &request.topics {
        let name = topic.name.as_str();
        if !ctx.allowed(&conn, operation::READ, resource::TOPIC, name) {
            topic_denied.push(name.to_string());
            continue;
        }
        for p in &topic.partitions {
            offsets.push(CommittedOffset {
                topic: name.to_string(),
                partition: p.partition_index,
                offset: p.committed_offset,
                leader_epoch: p.committed_leader_epoch,
                metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                commit_ms: 0,
            });
        }
    }
    // v3+ (KIP-447): the consumer's group identity, checked against the group; older
    // versions carry none.
    let committer = if v >= 3 {
        crate::broker::group::TxnCommitter {
            generation: request.generation_id,
            member_id: request.member_id.to_string(),
            instance_id: request.group_instance_id.as_ref().map(|i| i.to_string()),
        }
    } else {
        crate::broker::group::TxnCommitter {
            generation: -1,
            ..Default::default()
        }
    };
    let code = match denied {
        Some(code) => code,
        None if !topic_denied.is_empty() => ResponseError::OperationNotAttempted.code(),
        None => {
            let result = ctx
                .core
                .txn_offset_commit(
                    transactional_id,
                    request.producer_id.0,
                    request.producer_epoch,
                    group,
                    &committer,
                    offsets,
                )
                .await;
            code_of(&result, v >= 2)
        }
    };
    let topics = request
        .topics
        .iter()
        .map(|topic| {
            let code = if topic_denied.iter().any(|t| t == topic.name.as_str()) {
                ResponseError::TopicAuthorizationFailed.code()
            } else {
                code
            };
            TxnOffsetCommitResponseTopic::default()
                .with_name(topic.name.clone())
                .with_partitions(
                    topic
                        .partitions
                        .iter()
                        .map(|p| {
                            TxnOffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    let body = TxnOffsetCommitResponse::default().with_topics(topics);
    respond(ApiKey::TxnOffsetCommit, v, req.correlation_id, &body)
}

/// EndTxn: commit or abort; answered once every marker is written.
pub async fn end_txn(ctx: Arc<KafkaContext>, conn: ConnInfo, req: RawRequest) -> Outcome {
    let request: EndTxnRequest = match decode(&req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    let v = req.api_version;
    let transactional_id = request.transactional_id.as_str();
    let code = if !may_write_txn(&ctx, &conn, transactional_id) {
        ResponseError::TransactionalIdAuthorizationFailed.code()
    } else {
        let result = ctx
            .core
            .end_txn(
                transactional_id,
                request.producer_id.0,
                request.producer_epoch,
                request.committed,
            )
            .await;
        code_of(&result, v >= 2)
    };
    let body = EndTxnResponse::default().with_error_code(code);
    respond(ApiKey::EndTxn, v, req.correlation_id, &body)
}

/// DescribeTransactions: the state of each id the client may DESCRIBE.
pub async fn describe(ctx: Arc<KafkaContext>, conn: ConnInfo, req: RawRequest) -> Outcome {
    let request: DescribeTransactionsRequest = match decode(&req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    let all = ctx.core.transactions().await;
    let states = request
        .transactional_ids
        .iter()
        .map(|id| {
            let state = TransactionState::default().with_transactional_id(id.clone());
            if !ctx.allowed(
                &conn,
                operation::DESCRIBE,
                resource::TRANSACTIONAL_ID,
                id.as_str(),
            ) {
                return state
                    .with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code());
            }
            let Some(r) = all.iter().find(|r| r.transactional_id == id.as_str()) else {
                return state.with_error_code(ResponseError::TransactionalIdNotFound.code());
            };
            let mut topics: Vec<TopicData> = Vec::new();
            for (topic, partition) in &r.partitions {
                match topics.iter_mut().find(|t| t.topic.as_str() == topic) {
                    Some(t) => t.partitions.push(*partition),
                    None => topics.push(
                        TopicData::default()
                            .with_topic(TopicName(StrBytes::from_string(topic.clone())))
                            .with_partitions(vec![*partition]),
                    ),
                }
            }
            state
                .with_transaction_state(StrBytes::from_static_str(status_name(r.status)))
                .with_transaction_timeout_ms(r.timeout_ms)
                .with_transaction_start_time_ms(if r.started_ms > 0 { r.started_ms } else { -1 })
                .with_producer_id(ProducerId(r.producer_id))
                .with_producer_epoch(r.epoch)
                .with_topics(topics)
        })
        .collect();
    let body = DescribeTransactionsResponse::default().with_transaction_states(states);
    respond(
        ApiKey::DescribeTransactions,
        req.api_version,
        req.correlation_id,
        &body,
    )
}

/// ListTransactions: the ids the client may DESCRIBE, filtered by state and producer id.
pub async fn list(ctx: Arc<KafkaContext>, conn: ConnInfo, req: RawRequest) -> Outcome {
    let request: ListTransactionsRequest = match decode(&req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    const STATES: [&str; 6] = [
        "Empty",
        "Ongoing",
        "PrepareCommit",
        "PrepareAbort",
        "CompleteCommit",
        "CompleteAbort",
    ];
    let unknown: Vec<StrBytes> = request
        .state_filters
        .iter()
        .filter(|s| !STATES.contains(&s.as_str()))
        .cloned()
        .collect();
    let now = ctx.core.clock().now_ms();
    let listed = ctx
        .core
        .transactions()
        .await
        .into_iter()
        .filter(|r| {
            let state = status_name(r.status);
            (request.state_filters.is_empty()
                || request.state_filters.iter().any(|s| s.as_str() == state))
                && (request.producer_id_filters.is_empty()
                    || request
                        .producer_id_filters
                        .iter()
                        .any(|p| p.0 == r.producer_id))
                // v1 (KIP-994): only transactions running longer than the filter.
                && (request.duration_filter < 0
                    || r.status == crate::meta::TxnStatus::Ongoing
                        && now - r.started_ms > request.duration_filter)
                && ctx.allowed(
                    &conn,
                    operation::DESCRIBE,
                    resource::TRANSACTIONAL_ID,
                    &r.transactional_id,
                )
        })
        .map(|r| {
            ListedTransaction::default()
                .with_transactional_id(TransactionalId(StrBytes::from_string(
                    r.transactional_id.clone(),
                )))
                .with_producer_id(ProducerId(r.producer_id))
                .with_transaction_state(StrBytes::from_static_str(status_name(r.status)))
        })
        .collect();
    let body = ListTransactionsResponse::default()
        .with_unknown_state_filters(unknown)
        .with_transaction_states(listed);
    respond(
        ApiKey::ListTransactions,
        req.api_version,
        req.correlation_id,
        &body,
    )
}
